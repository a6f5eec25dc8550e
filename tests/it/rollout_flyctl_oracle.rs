//! Deploy behaviour checked against what flyctl's own unit tests say flyctl does
//! (`internal/command/deploy/*_test.go`, superfly/flyctl), against the Fly API double. Each
//! test names the flyctl test whose expectation it carries over; the unit-level cases are in
//! `src/rollout/launch_input_tests.rs`.

use crate::support;

use support::fly_api::{FlyApi, MachineSpec};
use support::rollout::{APP, assert_no_leases, assert_no_violations, image, run_rollout};
use support::{TestDir, assert_success};

/// flyctl `machines_launchinput_test.go`, `testLaunchInputForBasic`, and `machines_test.go`,
/// `Test_resolveUpdatedMachineConfig_restartOnlyProcessGroup`: an app that is not a postgres
/// cluster loses `fly-managed-postgres` on its machines; metadata the user added stays.
#[test]
fn managed_postgres_metadata_goes_and_user_metadata_stays() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let mut config = MachineSpec::new("app").config();
    config["metadata"]["fly-managed-postgres"] = "true".into();
    config["metadata"]["user-added-me"] = "keep it".into();
    let id = fly.add_machine_with_config(APP, "ams", "started", config);
    let t = TestDir::new();
    let out = run_rollout(&fly, &t, &image(3), &[]);
    assert_success(&out);
    let metadata = &fly.machine(&id).config["metadata"];
    assert!(metadata.get("fly-managed-postgres").is_none(), "{metadata}");
    assert_eq!(metadata["user-added-me"], "keep it");
    assert_eq!(metadata["fly_process_group"], "app");
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

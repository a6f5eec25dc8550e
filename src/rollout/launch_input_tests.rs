//! The config a machine gets on a deploy, checked against what flyctl's own unit tests say
//! flyctl gives it (`internal/command/deploy/machines_launchinput_test.go` and
//! `machines_test.go`, superfly/flyctl): an independent oracle, where the rest of the suite
//! checks nixfly against expectations written with it.
//!
//! Each test names the flyctl test whose input and expected output it carries over. The
//! pipeline is nixfly's own: fly.toml → `AppConfig::machine_config` per group →
//! `ConfigChange::apply` over the machine's current config (an update) or over
//! `AppConfig::launch`'s config (a new machine), and `update::replacement` for whether the
//! machine is updated in place or replaced (flyctl's `RequiresReplacement`).
//!
//! Where nixfly differs on purpose (README "Where nixfly differs from flyctl"), the test says
//! so and checks nixfly's side: new machines carry no `fly_flyctl_version`, and a renamed
//! `[[mounts]]` source is refused before any change (flyctl's `validateVolumeConfig` refuses it
//! too, before `launchInputForUpdate` would replace the machine).

use super::update::{Replacement, replacement};
use super::waves::ConfigChange;
use crate::fly::appconfig::AppConfig;
use crate::fly::appconfig::apply::{VolumeChange, apply};
use crate::fly::types::Machine;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;

fn fly_toml(text: &str) -> AppConfig {
    AppConfig::parse(text, Path::new("fly.toml"))
        .unwrap_or_else(|err| panic!("{err}"))
        .0
}

/// The change `rollout::run` builds from a fly.toml: fly.toml's config per process group, its
/// `[env]` and `host_dedication_id`, the image and the release (for an app that is no
/// postgres cluster).
fn change(config: &AppConfig, image: &str, release: Option<(&str, &str)>) -> ConfigChange {
    ConfigChange {
        image: image.to_string(),
        env: Some(config.env.clone()),
        env_flags: BTreeMap::new(),
        release_id: release.map(|(id, _)| id.to_string()),
        release_version: release.map(|(_, version)| version.to_string()),
        fly_toml: config
            .process_groups()
            .into_iter()
            .map(|group| {
                let translated = config.machine_config(&group).unwrap();
                (group, translated)
            })
            .collect::<BTreeMap<_, _>>(),
        host_dedication_id: config.host_dedication_id.clone(),
        postgres: false,
    }
}

/// A new machine of `group`, as `GroupChanges::create` makes it (before its volume id).
fn launched(config: &AppConfig, change: &ConfigChange, group: &str) -> Value {
    change.apply(&config.launch(group).unwrap().config)
}

fn machine(id: &str, region: &str, state: &str, host_status: &str, config: Value) -> Machine {
    serde_json::from_value(json!({
        "id": id, "region": region, "state": state, "host_status": host_status, "config": config,
    }))
    .unwrap()
}

/// What nixfly does with `machine` on this deploy: its new config, and whether it is replaced
/// (`Ctx::put_config`, with fly.toml's `host_dedication_id` as the spec has it).
fn update(change: &ConfigChange, machine: &Machine) -> (Value, Option<Replacement>) {
    let config = change.apply(&machine.config);
    let replaced = replacement(machine, &config, change.host_dedication_id.as_deref());
    (config, replaced)
}

/// `launchInputForUpdate`'s first-mount rules, as `GroupChanges::new` sees them: the mount the
/// machine keeps, or the volume change that replaces it.
fn mounts_after(fly_toml_text: &str, current_mounts: Value) -> Result<Value, VolumeChange> {
    let config = fly_toml(fly_toml_text);
    let translated = config.machine_config("app").unwrap();
    apply(&translated, &json!({"mounts": current_mounts})).map(|c| c["mounts"].clone())
}

/// flyctl `machines_launchinput_test.go`, `testLaunchInputForBasic`: a new machine gets
/// fly.toml's env with `PRIMARY_REGION` and `FLY_PROCESS_GROUP`, the image and the release
/// metadata; updating it later keeps metadata the user added, drops `fly-managed-postgres`
/// (not a postgres app), and takes the new image, env and release.
#[test]
fn basic_launch_then_update() {
    let config = fly_toml("app = \"my-cool-app\"\nprimary_region = \"scl\"\n[env]\nOTHER = \"value\"\n");
    let first = change(&config, "super/balloon", Some(("release_id", "3")));
    let new = launched(&config, &first, "app");
    assert_eq!(
        new["env"],
        json!({"PRIMARY_REGION": "scl", "OTHER": "value", "FLY_PROCESS_GROUP": "app"})
    );
    assert_eq!(new["image"], "super/balloon");
    // flyctl adds fly_flyctl_version too; nixfly on purpose does not (README).
    assert_eq!(
        new["metadata"],
        json!({
            "fly_platform_version": "v2",
            "fly_process_group": "app",
            "fly_release_id": "release_id",
            "fly_release_version": "3",
        })
    );

    let mut current = new.clone();
    current["metadata"]["user-added-me"] = json!("keep it");
    current["metadata"]["fly-managed-postgres"] = json!("removes me");
    let running = machine("ab1234567890", "scl", "started", "ok", current);
    let config = fly_toml(
        "app = \"my-cool-app\"\nprimary_region = \"scl\"\n[env]\nOTHER = \"value\"\n\
         NOT_SET_ON_RESTART_ONLY = \"true\"\n",
    );
    let second = change(&config, "super/globe", Some(("new_release_id", "4")));
    let (updated, replaced) = update(&second, &running);
    assert!(replaced.is_none());
    let mut want = new;
    want["image"] = json!("super/globe");
    want["env"]["NOT_SET_ON_RESTART_ONLY"] = json!("true");
    want["metadata"]["fly_release_id"] = json!("new_release_id");
    want["metadata"]["fly_release_version"] = json!("4");
    want["metadata"]["user-added-me"] = json!("keep it");
    assert_eq!(updated, want);
}

/// flyctl `machines_test.go`, `Test_resolveUpdatedMachineConfig_restartOnlyProcessGroup`:
/// `fly-managed-postgres` is dropped from a machine of an app that is not a postgres cluster
/// (flyctl's `setMachineReleaseData`, which every update goes through); a postgres cluster's
/// machines get it set (`md.app.IsPostgresApp()`, app_role `postgres_cluster`).
#[test]
fn managed_postgres_metadata_follows_the_apps_role() {
    let config = fly_toml("app = \"my-cool-app\"\n");
    let current = json!({
        "image": "instead-use/the-redmoon",
        "metadata": {
            "fly_platform_version": "v2",
            "fly_process_group": "awesome-group",
            "fly_release_version": "1",
            "fly-managed-postgres": "true",
        },
    });
    let not_postgres = ConfigChange {
        image: "new".into(),
        release_version: Some("2".into()),
        ..ConfigChange::default()
    };
    let updated = not_postgres.apply(&current);
    assert_eq!(
        updated["metadata"],
        json!({
            "fly_platform_version": "v2",
            "fly_process_group": "awesome-group",
            "fly_release_version": "2",
        })
    );
    let postgres = ConfigChange {
        postgres: true,
        ..change(&config, "new", None)
    };
    let mut plain = current.clone();
    plain["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("fly-managed-postgres");
    assert_eq!(postgres.apply(&plain)["metadata"]["fly-managed-postgres"], "true");
}

/// flyctl `machines_launchinput_test.go`, `testLaunchInputForUpdateHostStatusUnreachable`: a
/// machine on an unreachable host is replaced, in its own region; with a volume that stays
/// its volume, it cannot be (the error names the host as unreachable).
#[test]
fn a_machine_on_an_unreachable_host_is_replaced_in_its_region() {
    let config = fly_toml("app = \"my-cool-app\"\nprimary_region = \"scl\"\n[env]\nOTHER = \"value\"\n");
    let unreachable = machine(
        "ab1234567890",
        "ord",
        "started",
        "unreachable",
        json!({"metadata": {"fly_process_group": "app"}}),
    );
    let (_, replaced) = update(&change(&config, "super/balloon", None), &unreachable);
    assert!(matches!(replaced, Some(Replacement::Host(_))), "{replaced:?}");
    // The replacement goes where the machine was (`create_replacement`: its region).
    assert_eq!(unreachable.region.as_deref(), Some("ord"));

    // Same volume on an unreachable host: refused before any change (`rollout::validate`).
    let config = fly_toml(
        "app = \"my-cool-app\"\nprimary_region = \"scl\"\n[mounts]\nsource = \"data\"\n\
         destination = \"/data\"\n",
    );
    let with_volume = machine(
        "ab1234567890",
        "ord",
        "started",
        "unreachable",
        json!({"metadata": {"fly_process_group": "app"},
               "mounts": [{"volume": "vol_attached", "path": "/data", "name": "data"}]}),
    );
    let mounting = change(&config, "super/balloon", None);
    let refused = super::stuck_with_volume(std::iter::once(&with_volume), &mounting, None);
    assert_eq!(
        refused.map(|(m, v, why)| (m.id.as_str(), v, why)),
        Some((
            "ab1234567890",
            "vol_attached",
            "its host is unreachable".to_string()
        ))
    );
    // The same on a reachable host that is not fly.toml's host dedication: refused before
    // any machine changes (it was found at the machine's turn, after others were replaced).
    let reachable = machine(
        "cd1234567890",
        "ord",
        "started",
        "ok",
        json!({"metadata": {"fly_process_group": "app"},
               "mounts": [{"volume": "vol_attached", "path": "/data", "name": "data"}]}),
    );
    assert!(super::stuck_with_volume(std::iter::once(&reachable), &mounting, None).is_none());
    let refused = super::stuck_with_volume(std::iter::once(&reachable), &mounting, Some("hd-1"));
    assert_eq!(
        refused.map(|(m, _, why)| (m.id.as_str(), why)),
        Some((
            "cd1234567890",
            "fly.toml's host_dedication_id is hd-1".to_string()
        ))
    );
}

/// flyctl `machines_launchinput.go`, `launchInputForUpdate` (the rule behind the test above):
/// only a machine that keeps its volume is stuck on an unreachable host; one whose
/// `[[mounts]]` fly.toml dropped is replaced by a machine without a volume.
#[test]
fn an_unreachable_machine_losing_its_volume_is_replaced() {
    let config = fly_toml("app = \"my-cool-app\"\nprimary_region = \"scl\"\n");
    let dropping = change(&config, "super/balloon", None);
    let with_volume = machine(
        "ab1234567890",
        "ord",
        "started",
        "unreachable",
        json!({"metadata": {"fly_process_group": "app"},
               "mounts": [{"volume": "vol_attached", "path": "/data", "name": "data"}]}),
    );
    assert!(super::stuck_with_volume(std::iter::once(&with_volume), &dropping, None).is_none());
    let (config, replaced) = update(&dropping, &with_volume);
    assert!(matches!(replaced, Some(Replacement::Volume(_))), "{replaced:?}");
    assert!(config.get("mounts").is_none(), "{config}");
}

/// flyctl `machines_launchinput_test.go`,
/// `testLaunchInputForUpdateHostStatusUnreachableWithDedicationID`: a machine on an
/// unreachable host in an app with a top-level `host_dedication_id` is replaced, in its
/// region; its replacement asks for that host dedication (`launchInputForUpdate` sets
/// `guest.host_dedication_id` whenever the machine's differs).
#[test]
fn an_unreachable_machine_is_replaced_on_flytomls_host_dedication() {
    let config =
        fly_toml("app = \"my-cool-app\"\nprimary_region = \"scl\"\nhost_dedication_id = \"host-a\"\n");
    let dedicated = change(&config, "super/balloon", None);
    let unreachable = machine(
        "ab1234567890",
        "ord",
        "started",
        "unreachable",
        json!({"metadata": {"fly_process_group": "app"}}),
    );
    let (config, replaced) = update(&dedicated, &unreachable);
    assert!(replaced.is_some());
    assert_eq!(config["guest"]["host_dedication_id"], "host-a");
}

/// flyctl `machines_launchinput_test.go`, `testLaunchInputForOnMounts`.
#[test]
fn mounts_on_update_and_launch() {
    let toml = "app = \"a\"\n[mounts]\nsource = \"data\"\ndestination = \"/data\"\n";
    // A new machine mounts fly.toml's volume (an unattached one of that name is looked up when
    // it is created: `GroupChanges::volume_for`).
    let config = fly_toml(toml);
    let launch = config.launch("app").unwrap();
    assert_eq!(launch.volume.as_ref().map(|v| v.name.as_str()), Some("data"));
    assert_eq!(launch.count, 1);
    assert!(!launch.standby);
    assert_eq!(
        launch.config["mounts"],
        json!([{"path": "/data", "name": "data"}])
    );

    // The machine's volume matches fly.toml: kept, no replacement.
    assert_eq!(
        mounts_after(
            toml,
            json!([{"volume": "vol_attached", "path": "/data", "name": "data"}])
        ),
        Ok(json!([{"volume": "vol_attached", "path": "/data", "name": "data"}]))
    );
    // Same volume, another path: the path follows fly.toml, in place.
    assert_eq!(
        mounts_after(
            toml,
            json!([{"volume": "vol_attached", "path": "/update-me", "name": "data"}])
        ),
        Ok(json!([{"volume": "vol_attached", "path": "/data", "name": "data"}]))
    );
    // A mount without a name is kept as it is.
    assert_eq!(
        mounts_after(toml, json!([{"volume": "vol_attached", "path": "/keep-me"}])),
        Ok(json!([{"volume": "vol_attached", "path": "/keep-me"}]))
    );
    // Another volume name: flyctl's launchInputForUpdate would replace the machine, but its
    // validateVolumeConfig refuses the deploy first; nixfly refuses it too (`GroupChanges::new`).
    assert!(matches!(
        mounts_after(
            toml,
            json!([{"volume": "vol_attached", "path": "/replace-me", "name": "replace-me"}])
        ),
        Err(VolumeChange::Renamed { .. })
    ));
    // fly.toml mounts nothing: the machine is replaced by one without a volume.
    let removed = mounts_after(
        "app = \"a\"\n",
        json!([{"volume": "vol_attached", "path": "/replace-me", "name": "replace-me"}]),
    );
    assert!(
        matches!(removed, Err(VolumeChange::Removed { .. })),
        "{removed:?}"
    );
    let config = fly_toml("app = \"a\"\n");
    let current = machine(
        "ab1234567890",
        "ams",
        "started",
        "ok",
        json!({"metadata": {"fly_platform_version": "v2", "fly_process_group": "app"},
               "mounts": [{"volume": "vol_attached", "path": "/replace-me", "name": "replace-me"}]}),
    );
    let (config, replaced) = update(&change(&config, "i", None), &current);
    assert!(matches!(replaced, Some(Replacement::Volume(_))), "{replaced:?}");
    assert!(config.get("mounts").is_none(), "{config}");
}

/// flyctl `machines_launchinput_test.go`, `testLaunchInputForOnMountsAndAutoResize`: the
/// auto-extend settings always come from fly.toml ("3GB" is 3, "100GB" 100), on a new
/// machine as on an updated one, whatever the machine's mount had.
#[test]
fn mount_auto_extend_settings_follow_fly_toml() {
    let toml = "app = \"a\"\n[mounts]\nsource = \"data\"\ndestination = \"/data\"\n\
                auto_extend_size_threshold = 80\nauto_extend_size_increment = \"3GB\"\n\
                auto_extend_size_limit = \"100GB\"\n";
    let config = fly_toml(toml);
    assert_eq!(
        config.launch("app").unwrap().config["mounts"],
        json!([{"path": "/data", "name": "data", "extend_threshold_percent": 80,
                "add_size_gb": 3, "size_gb_limit": 100}])
    );
    let old = |path: &str, name: Option<&str>| {
        let mut mount = json!({"volume": "vol_attached", "path": path,
                               "extend_threshold_percent": 90, "add_size_gb": 5, "size_gb_limit": 200});
        if let Some(name) = name {
            mount["name"] = json!(name);
        }
        json!([mount])
    };
    let new = |path: &str, name: Option<&str>| {
        let mut mount = json!({"volume": "vol_attached", "path": path,
                               "extend_threshold_percent": 80, "add_size_gb": 3, "size_gb_limit": 100});
        if let Some(name) = name {
            mount["name"] = json!(name);
        }
        json!([mount])
    };
    assert_eq!(
        mounts_after(toml, old("/data", Some("data"))),
        Ok(new("/data", Some("data")))
    );
    assert_eq!(
        mounts_after(toml, old("/update-me", Some("data"))),
        Ok(new("/data", Some("data")))
    );
    assert_eq!(
        mounts_after(toml, old("/keep-me", None)),
        Ok(new("/keep-me", None))
    );
    assert!(matches!(
        mounts_after("app = \"a\"\n", old("/replace-me", Some("replace-me"))),
        Err(VolumeChange::Removed { .. })
    ));
}

/// flyctl `machines_launchinput_test.go`, `testLaunchInputForUpdateKeepUnmanagedFields`:
/// what fly.toml does not own stays as the machine has it: region, schedule, auto_destroy,
/// the guest (no `[[vm]]`), dns, processes.
#[test]
fn an_update_keeps_what_fly_toml_does_not_own() {
    let config = fly_toml("app = \"my-cool-app\"\nprimary_region = \"scl\"\n");
    let current = machine(
        "ab1234567890",
        "ord",
        "stopped",
        "ok",
        json!({
            "schedule": "24/7",
            "auto_destroy": true,
            "guest": {"cpu_kind": "other"},
            "dns": {"skip_registration": true},
            "processes": [{"cmd": ["foo"]}],
        }),
    );
    let (updated, replaced) = update(&change(&config, "i", Some(("release_id", "3"))), &current);
    assert!(replaced.is_none());
    assert_eq!(
        super::waves::update_body(&current, updated.clone(), true)["region"],
        "ord"
    );
    assert_eq!(updated["schedule"], "24/7");
    assert_eq!(updated["auto_destroy"], true);
    assert_eq!(updated["guest"], json!({"cpu_kind": "other"}));
    assert_eq!(updated["dns"], json!({"skip_registration": true}));
    assert_eq!(updated["processes"], json!([{"cmd": ["foo"]}]));
}

/// flyctl `machines_launchinput_test.go`, `testLaunchInputForUpdateClearStandbysWithServices`:
/// a standby whose group now has services is a standby no more.
#[test]
fn a_standby_whose_group_gains_services_stops_standing_by() {
    let config =
        fly_toml("app = \"my-cool-app\"\nprimary_region = \"scl\"\n[http_service]\ninternal_port = 8080\n");
    let standby = machine(
        "ab1234567890",
        "scl",
        "stopped",
        "ok",
        json!({"standbys": ["xy0987654321"]}),
    );
    let (updated, _) = update(&change(&config, "i", None), &standby);
    assert!(
        updated["standbys"].as_array().is_none_or(Vec::is_empty),
        "{updated}"
    );
}

/// flyctl `machines_launchinput_test.go`, `testLaunchInputForLaunchFiles`: a new machine gets
/// fly.toml's `[[files]]`, the raw value base64-encoded.
#[test]
fn a_new_machine_gets_fly_tomls_files() {
    let config = fly_toml(
        "app = \"my-files-app\"\nprimary_region = \"atl\"\n[[files]]\n\
         guest_path = \"/path/to/hello.txt\"\nraw_value = \"hello world\\n\"\n",
    );
    let new = launched(
        &config,
        &change(&config, "super/balloon", Some(("release_id", "3"))),
        "app",
    );
    assert_eq!(
        new["files"],
        json!([{"guest_path": "/path/to/hello.txt", "raw_value": "aGVsbG8gd29ybGQK"}])
    );
    assert_eq!(
        new["env"],
        json!({"PRIMARY_REGION": "atl", "FLY_PROCESS_GROUP": "app"})
    );
}

/// flyctl `machines_launchinput_test.go`, `testLaunchInputForUpdateFiles`: an update's files
/// are fly.toml's, in its order; a file fly.toml no longer has is gone.
#[test]
fn an_update_replaces_the_machines_files_with_fly_tomls() {
    let config = fly_toml(
        "app = \"my-files-app\"\nprimary_region = \"atl\"\n\
         [[files]]\nguest_path = \"/path/to/config/yaml\"\nsecret_name = \"SECRET_CONFIG\"\n\
         [[files]]\nguest_path = \"/path/to/hello.txt\"\nraw_value = \"goodbye\\n\"\n",
    );
    let current = machine(
        "m1",
        "atl",
        "started",
        "ok",
        json!({"files": [
            {"guest_path": "/path/to/hello.txt", "raw_value": "aGVsbG8gd29ybGQK"},
            {"guest_path": "/path/to/be/deleted", "raw_value": "ZGVsZXRlIG1lCg=="},
        ]}),
    );
    let (updated, _) = update(&change(&config, "i", None), &current);
    assert_eq!(
        updated["files"],
        json!([
            {"guest_path": "/path/to/config/yaml", "secret_name": "SECRET_CONFIG"},
            {"guest_path": "/path/to/hello.txt", "raw_value": "Z29vZGJ5ZQo="},
        ])
    );
}

/// flyctl `machines_test.go`, `Test_resolveUpdatedMachineConfig_Basic`: without
/// `primary_region`, `PRIMARY_REGION` comes from `[env]` as it is (that the create then names
/// no region, for Fly to place the machine, is checked against the double in
/// `tests/it/rollout_flyctl_oracle.rs`).
#[test]
fn without_primary_region_env_keeps_its_primary_region() {
    let config = fly_toml("app = \"my-cool-app\"\n[env]\nPRIMARY_REGION = \"scl\"\nOTHER = \"value\"\n");
    let new = launched(&config, &change(&config, "super/balloon", None), "app");
    assert_eq!(
        new["env"],
        json!({"PRIMARY_REGION": "scl", "OTHER": "value", "FLY_PROCESS_GROUP": "app"})
    );
    assert_eq!(
        new["metadata"],
        json!({"fly_platform_version": "v2", "fly_process_group": "app"})
    );
}

/// The fly.toml of flyctl `machines_test.go`, `Test_resolveUpdatedMachineConfig_ReleaseCommand`:
/// every section an app machine gets and a release command machine does not. Its two halves
/// are `a_new_machine_gets_every_section_of_fly_toml` here and
/// `the_release_command_machine_is_flyctls` in `release_command.rs`.
pub(super) const FLYCTL_RELEASE_COMMAND_TOML: &str = "app = \"my-cool-app\"\n\
    [env]\nPRIMARY_REGION = \"scl\"\nOTHER = \"value\"\n\
    [metrics]\nport = 9000\npath = \"/prometheus\"\n\
    [deploy]\nrelease_command = \"touch sky\"\n\
    [mounts]\nsource = \"data\"\ndestination = \"/data\"\n\
    [checks.alive]\nport = 8080\ntype = \"tcp\"\n\
    [[statics]]\nguest_path = \"/app/assets\"\nurl_prefix = \"/statics\"\n\
    [[services]]\nprotocol = \"tcp\"\ninternal_port = 8080\n";

/// flyctl `machines_test.go`, `Test_resolveUpdatedMachineConfig_ReleaseCommand` (the app
/// machine half): a new machine gets fly.toml's metrics, mount, statics, services and checks;
/// the release command machine gets none of them (`release_command_tests` in
/// `release_command.rs` has the other half).
#[test]
fn a_new_machine_gets_every_section_of_fly_toml() {
    let config = fly_toml(FLYCTL_RELEASE_COMMAND_TOML);
    let new = launched(&config, &change(&config, "super/balloon", None), "app");
    assert_eq!(new["metrics"], json!({"port": 9000, "path": "/prometheus"}));
    assert_eq!(new["mounts"], json!([{"path": "/data", "name": "data"}]));
    assert_eq!(new["statics"][0]["guest_path"], "/app/assets");
    assert_eq!(new["statics"][0]["url_prefix"], "/statics");
    assert_eq!(new["services"][0]["protocol"], "tcp");
    assert_eq!(new["services"][0]["internal_port"], 8080);
    assert_eq!(new["checks"]["alive"]["port"], 8080);
    assert_eq!(new["checks"]["alive"]["type"], "tcp");
    let rc = config.release_command_config().unwrap().unwrap();
    for section in ["metrics", "mounts", "statics", "services", "checks"] {
        assert!(
            rc.get(section).is_none(),
            "release command machine has {section}: {rc}"
        );
    }
}

/// flyctl `machines_test.go`, `Test_resolveUpdatedMachineConfig_Mounts`: a machine whose
/// mount has no name keeps it as it is; without primary_region the env has no
/// `PRIMARY_REGION`.
#[test]
fn an_unnamed_mount_is_kept_on_update() {
    let config = fly_toml("app = \"a\"\n[mounts]\nsource = \"data\"\ndestination = \"/data\"\n");
    let current = machine(
        "m1",
        "ams",
        "started",
        "ok",
        json!({"mounts": [{"volume": "vol_alreadyattached", "path": "/data"}]}),
    );
    let (updated, replaced) = update(&change(&config, "super/balloon", None), &current);
    assert!(replaced.is_none(), "{replaced:?}");
    assert_eq!(
        updated["mounts"],
        json!([{"volume": "vol_alreadyattached", "path": "/data"}])
    );
    assert_eq!(updated["env"], json!({"FLY_PROCESS_GROUP": "app"}));
    assert_eq!(
        updated["metadata"],
        json!({"fly_platform_version": "v2", "fly_process_group": "app"})
    );
    assert_eq!(updated["image"], "super/balloon");
}

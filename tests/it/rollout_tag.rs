//! `nixfly rollout --image host/repo:tag`: the tag is looked up in the real registry and the
//! machines get the digest it points at, never the moving tag.

use crate::support;

use support::fly_api::{FlyApi, MachineSpec};
use support::images::{self, Fault};
use support::readback::pushed_reference;
use support::registry::{AuthMode, Registry};
use support::rollout::{APP, assert_no_violations, run_rollout, stderr};
use support::{TestDir, run};

#[test]
fn a_tag_is_rolled_out_as_the_digest_the_registry_has_for_it() {
    let registry = Registry::start(AuthMode::None);
    let fly = FlyApi::start();
    fly.add_app(APP);
    let machines = fly.add_machines(APP, &MachineSpec::new("app").count(2));
    let t = TestDir::new();
    let archive = t.join("image.tar");
    images::write_stream_layered(
        std::fs::File::create(&archive).unwrap(),
        &images::small_layers(),
        Fault::None,
    )
    .unwrap();
    let repo = format!("{}/{APP}", registry.host());
    let pushed = run(t
        .nixfly()
        .args(["push", archive.to_str().unwrap(), "--to", &repo, "--tag", "v7"]));
    let reference = pushed_reference(&pushed, &registry.host(), APP);

    let out = run_rollout(&fly, &t, &format!("{repo}:v7"), &[]);
    support::assert_success(&out);
    for id in &machines {
        assert_eq!(fly.machine(id).image(), reference, "machine {id}");
    }
    assert_eq!(fly.releases()[0].image, reference);

    let missing = run_rollout(&fly, &t, &format!("{repo}:nope"), &[]);
    let err = stderr(&missing);
    assert_eq!(missing.status.code(), Some(1), "{err}");
    assert!(err.contains("has no tag nope"), "{err}");
    assert_eq!(fly.releases().len(), 1, "a release was made for a missing tag");
    assert_no_violations(&fly);
}

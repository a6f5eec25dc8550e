//! Golden tests (fly.toml corpus → expected machine configs: 01-19 written by hand from
//! flyctl's rules, 20 on taken from flyctl's own unit tests, each naming its test) and
//! validation tests.

use super::apply::{VolumeChange, apply, apply_replacing, diff};
use super::*;
use serde_json::{Value, json};
use std::path::Path;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flytoml")
}

#[test]
fn golden_corpus_translates_like_flyctl() {
    let dir = fixtures();
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 15, "corpus has {} files", names.len());
    let prefix = format!("{}/", dir.display());
    let mut failures = Vec::new();
    for toml_path in &names {
        let mut expected: Value =
            serde_json::from_str(&std::fs::read_to_string(toml_path.with_extension("json")).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", toml_path.display()));
        let expected_warnings = expected
            .as_object_mut()
            .unwrap()
            .remove("warnings")
            .unwrap_or(json!([]));
        let (config, warnings) = match AppConfig::load(toml_path) {
            Ok(parsed) => parsed,
            Err(err) => {
                failures.push(format!("{}: {err}", toml_path.display()));
                continue;
            }
        };
        let actual = serde_json::to_value(config.machine_configs().unwrap()).unwrap();
        if actual != expected {
            failures.push(format!(
                "{}:\n--- expected\n{}\n--- actual\n{}",
                toml_path.display(),
                serde_json::to_string_pretty(&expected).unwrap(),
                serde_json::to_string_pretty(&actual).unwrap()
            ));
        }
        let warnings: Vec<String> = warnings
            .iter()
            .map(|w| w.to_string().replace(&prefix, ""))
            .collect();
        if json!(warnings) != expected_warnings {
            failures.push(format!(
                "{}: warnings {warnings:#?}, expected {expected_warnings:#}",
                toml_path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn parse(text: &str) -> Result<(AppConfig, Vec<Warning>), AppConfigError> {
    AppConfig::parse(text, Path::new("fly.toml"))
}

fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected fly.toml to be refused:\n{text}"),
        Err(AppConfigError::Invalid { problems, .. }) => problems.iter().map(ToString::to_string).collect(),
        Err(other) => vec![other.to_string()],
    }
}

#[test]
fn deploy_section_is_read_for_the_rollout() {
    let (config, warnings) = AppConfig::load(&fixtures().join("15-release-command.toml")).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.app.as_deref(), Some("django-app"));
    assert_eq!(config.primary_region.as_deref(), Some("yyz"));
    assert_eq!(
        config.build.image.as_deref(),
        Some("registry.fly.io/django-app:deployment-01J0000000000000000000000")
    );
    let deploy = &config.deploy;
    assert_eq!(deploy.strategy, Some(Strategy::Bluegreen));
    assert_eq!(deploy.max_unavailable, Some(MaxUnavailable::Fraction(0.5)));
    assert_eq!(deploy.wait_timeout, Some(std::time::Duration::from_secs(600)));
    assert_eq!(
        deploy.release_command.as_deref(),
        Some("python manage.py migrate --noinput")
    );
    assert_eq!(
        deploy.release_command_timeout,
        Some(std::time::Duration::from_secs(900))
    );
    let vm = deploy.release_command_vm.as_ref().unwrap();
    assert_eq!(
        config.guest(vm),
        json!({"cpu_kind": "performance", "cpus": 1, "memory_mb": 2048})
    );
    assert_eq!(config.env["DJANGO_SETTINGS_MODULE"], "app.settings");
    assert_eq!(config.definition["deploy"]["strategy"], "bluegreen");
}

#[test]
fn max_unavailable_is_a_count_or_a_fraction() {
    let read = |v: &str| {
        parse(&format!("[deploy]\nmax_unavailable = {v}\n"))
            .unwrap()
            .0
            .deploy
            .max_unavailable
            .unwrap()
    };
    assert_eq!(read("2"), MaxUnavailable::Count(2));
    assert_eq!(read("1.0"), MaxUnavailable::Count(1));
    assert_eq!(read("0.33"), MaxUnavailable::Fraction(0.33));
    assert_eq!(MaxUnavailable::Fraction(0.33).pool_size(6), 2);
    assert_eq!(MaxUnavailable::Fraction(0.1).pool_size(3), 1);
    assert_eq!(MaxUnavailable::Count(2).pool_size(6), 2);
}

/// flyctl `platformversion_test.go`, `TestSetMachinesPlatform`: a fly.toml that is TOML but
/// does not decode into an app config cannot be deployed (flyctl `platformversion.go` returns
/// the decode error); nixfly refuses it too, naming every bad value.
#[test]
fn wrong_types_are_errors_with_file_line_and_key() {
    let text = "app = \"x\"\n\n[deploy]\n  strategy = \"rolling\"\n  max_unavailable = -1\n  wait_timeout = \"soon\"\n";
    assert_eq!(
        problems(text),
        vec![
            "fly.toml:5: [deploy] max_unavailable: must be above 0 (a machine count like 2, or a fraction of each group like 0.33), got -1",
            "fly.toml:6: [deploy] wait_timeout: \"soon\" is not a duration; write it like \"10s\" or \"5m\"",
        ]
    );
    let text = "[http_service]\ninternal_port = \"http\"\nforce_https = \"yes\"\n";
    assert_eq!(
        problems(text),
        vec![
            "fly.toml:2: [http_service] internal_port: expected a port number, got \"http\"",
            "fly.toml:3: [http_service] force_https: expected true or false, got the string \"yes\"",
        ]
    );
    let text = "[env]\nLIST = [1, 2]\n";
    assert_eq!(
        problems(text),
        vec!["fly.toml:2: [env] LIST: expected a string, got a list"]
    );
}

#[test]
fn impossible_values_are_errors() {
    let cases = [
        (
            "[[services]]\nprotocol = \"tcp\"\ninternal_port = 70000\n",
            "fly.toml:3: [services[0]] internal_port: 70000 is not a port number (0-65535)",
        ),
        (
            "[[vm]]\nsize = \"shared-cpu-3x\"\n",
            "fly.toml:2: [vm[0]] size: \"shared-cpu-3x\" is not a machine size",
        ),
        (
            "[[vm]]\nmemory = \"0mb\"\n",
            "fly.toml:2: [vm[0]] memory: memory cannot be zero",
        ),
        (
            "[[vm]]\nsize = \"shared-cpu-1x\"\nmemory = \"300mb\"\n",
            "fly.toml:1: [vm[0]] memory: 300 MiB is not a memory size Fly takes for shared CPUs: use a multiple of 256 MiB (256 MiB would work)",
        ),
        (
            "[[vm]]\nsize = \"shared-cpu-2x\"\ncpus = 3\n",
            "fly.toml:1: [vm[0]] cpus: shared machines come with 1, 2, 4, 6 or 8 CPUs, not 3",
        ),
        (
            "[[vm]]\nmemory = \"4gb\"\n",
            "fly.toml:1: [vm[0]] memory: 4096 MiB is too much for 1 shared CPU: Fly allows at most 2048 MiB (2048 MiB per CPU); add CPUs or use performance CPUs",
        ),
        (
            "[deploy]\nrelease_command = \"migrate\"\n[deploy.release_command_vm]\nsize = \"performance-2x\"\nmemory_mb = 2048\n",
            "fly.toml:3: [deploy.release_command_vm] memory: 2048 MiB is too little for 2 performance CPUs: Fly needs at least 4096 MiB (2048 MiB per CPU)",
        ),
        (
            "[http_service]\ninternal_port = 8080\n[checks.alive]\ntype = \"http\"\ninterval = \"1s\"\npath = \"/\"\n",
            "fly.toml:5: [checks.alive] interval: 1s is out of range for a machine check: use at least 2s (Fly's minimum)",
        ),
        (
            "[checks.db]\ntype = \"tcp\"\nport = 5432\ntimeout = \"90s\"\n",
            "fly.toml:4: [checks.db] timeout: 1m30s is out of range for a machine check: use at most 60s (Fly's maximum)",
        ),
        (
            "[[mounts]]\nsource = \"data\"\ndestination = \"/data\"\nauto_extend_size_threshold = 80\n",
            "fly.toml:4: [mounts[0]] auto_extend_size_threshold: auto_extend_size_threshold, auto_extend_size_increment and auto_extend_size_limit go together",
        ),
        (
            "[[mounts]]\nsource = \"data\"\ndestination = \"/data\"\nauto_extend_size_threshold = 40\nauto_extend_size_increment = \"1gb\"\n",
            "fly.toml:4: [mounts[0]] auto_extend_size_threshold: the percentage full that extends the volume is 50-99, got 40",
        ),
        (
            "[[mounts]]\nsource = \"data\"\ndestination = \"/data\"\nauto_extend_size_limit = \"50gb\"\n",
            "fly.toml:1: [mounts[0]] auto_extend_size_increment: missing: auto-extension needs an increment, 1-100 GB",
        ),
        (
            "[[mounts]]\nsource = \"data\"\ndestination = \"/data\"\nauto_extend_size_threshold = 80\nauto_extend_size_increment = \"200gb\"\nauto_extend_size_limit = \"600gb\"\n",
            "fly.toml:5: [mounts[0]] auto_extend_size_increment: each extension adds 1-100 GB, got 200 GB",
        ),
        (
            "[[mounts]]\nsource = \"data\"\ndestination = \"/data\"\nauto_extend_size_threshold = 80\nauto_extend_size_increment = \"2gb\"\nauto_extend_size_limit = \"600gb\"\n",
            "fly.toml:6: [mounts[0]] auto_extend_size_limit: volumes extend up to 1-500 GB, got 600 GB",
        ),
        (
            "kill_signal = \"SIGWINCH\"\n",
            "fly.toml:1: kill_signal: \"SIGWINCH\" is not a signal the Machines API can send",
        ),
        (
            "[deploy]\nstrategy = \"yolo\"\n",
            "fly.toml:2: [deploy] strategy: \"yolo\" is not a strategy (rolling, immediate, canary, bluegreen)",
        ),
        // flyctl compares the strategy case-sensitively (`internal/appconfig/validation.go`,
        // `MachinesDeployStrategies`).
        (
            "[deploy]\nstrategy = \"Rolling\"\n",
            "fly.toml:2: [deploy] strategy: \"Rolling\" is not a strategy: flyctl compares them case-sensitively; write \"rolling\"",
        ),
        // flyctl converts the old "soft,hard" string only in [[services]] (`patches.go`,
        // `_patchService`); in [http_service] it fails to decode.
        (
            "[http_service]\ninternal_port = 8080\nconcurrency = \"20,25\"\n",
            "fly.toml:3: [http_service] concurrency: flyctl reads the old \"<soft>,<hard>\" string only in [[services]]",
        ),
        // strconv.Atoi takes no spaces.
        (
            "[[services]]\nprotocol = \"tcp\"\ninternal_port = 80\nconcurrency = \"20, 25\"\n",
            "fly.toml:4: [services[0]] concurrency: \"20, 25\" is not \"<soft>,<hard>\"",
        ),
        (
            "[deploy]\nrelease_command = \"migrate \\\\\"\n",
            "fly.toml:2: [deploy] release_command: cannot split \"migrate \\\\\" into arguments: EOF found after escape character",
        ),
        (
            "[deploy]\nwait_timeout = 300\n",
            "fly.toml:2: [deploy] wait_timeout: a bare number has no unit (flyctl would read 300 as nanoseconds)",
        ),
        // flyctl's patches read bare numbers in [[services]]' and [checks]' checks as
        // milliseconds, but none reaches [http_service]: there fly-go reads nanoseconds.
        (
            "[http_service]\ninternal_port = 8080\n[[http_service.checks]]\ninterval = 15000\n",
            "fly.toml:4: [http_service.checks[0]] interval: a bare number has no unit (flyctl would read 15000 as nanoseconds)",
        ),
        (
            "[[restart]]\npolicy = \"sometimes\"\n",
            "fly.toml:2: [restart[0]] policy: \"sometimes\" is not a restart policy (always, never, on-failure)",
        ),
        (
            "[processes]\nweb = \"run\"\n[[services]]\nprotocol = \"tcp\"\ninternal_port = 80\nprocesses = [\"wbe\"]\n",
            "fly.toml:3: [services[0]] processes: no process group \"wbe\"; [processes] defines web",
        ),
        (
            "[checks.db]\ntype = \"tcp\"\n",
            "fly.toml:1: [checks.db] port: missing: process group \"app\" has no [http_service] to take the port from",
        ),
        (
            "[[mounts]]\nsource = \"a\"\ndestination = \"/a\"\n[[mounts]]\nsource = \"b\"\ndestination = \"/b\"\n",
            "fly.toml:4: [mounts] source: process group \"app\" gets 2 volumes (a, b); a machine mounts at most one",
        ),
        (
            "[deploy]\nstrategy = \"canary\"\n[[mounts]]\nsource = \"data\"\ndestination = \"/data\"\n",
            "fly.toml:3: [deploy] strategy: the canary strategy does not work with [[mounts]] (flyctl refuses it too): use rolling or immediate",
        ),
        (
            "[[mounts]]\nsource = \"data\"\ndestination = \"/data\"\nsnapshot_retention = 90\n",
            "fly.toml:4: [mounts[0]] snapshot_retention: days of snapshots to keep, 1-60, got 90",
        ),
        (
            "app = \"x\"\nmachine_config = \"cfg.json\"\n",
            "fly.toml:2: machine_config: nixfly does not build multi-container machines",
        ),
        (
            "[experimental]\nmachine_config = \"{}\"\n",
            "fly.toml:2: [experimental] machine_config: nixfly does not build multi-container machines",
        ),
        (
            "[build]\ncompose = { file = \"compose.yml\" }\n",
            "fly.toml:2: [build] compose: nixfly does not build multi-container machines",
        ),
        (
            "[processes]\nweb = \"run 'unclosed\"\n",
            "fly.toml:2: [processes] web: cannot split \"run 'unclosed\" into arguments",
        ),
        // One table where flyctl decodes only a list of tables (no ensureArrayOfMap patch).
        (
            "[restart]\npolicy = \"always\"\n",
            "fly.toml:1: restart: a single table; flyctl reads only a list of tables here and \
             refuses the whole fly.toml otherwise: write [[restart]]",
        ),
        (
            "[files]\nguest_path = \"/etc/a\"\nraw_value = \"YQ==\"\n",
            "fly.toml:1: files: a single table",
        ),
        (
            "[statics]\nguest_path = \"/app/public\"\nurl_prefix = \"/\"\n",
            "fly.toml:1: statics: a single table",
        ),
        (
            "[http_service]\ninternal_port = 8080\n[http_service.checks]\npath = \"/\"\n",
            "fly.toml:3: [http_service] checks: a single table; flyctl reads only a list of tables \
             here and refuses the whole fly.toml otherwise: write [[http_service.checks]]",
        ),
        (
            "[[services]]\ninternal_port = 8080\nprotocol = \"tcp\"\n[services.machine_checks]\ncommand = [\"true\"]\n",
            "fly.toml:4: [services[0]] machine_checks: a single table; flyctl reads only a list of \
             tables here and refuses the whole fly.toml otherwise: write [[services.machine_checks]]",
        ),
        (
            "[deploy]\nrelease_command = \"  \"\n",
            "fly.toml:2: [deploy] release_command: holds only blanks",
        ),
        // The old list form is checked as the table form is (flyctl's patchProcesses, then
        // validateProcessesSection).
        (
            "processes = [{ name = \"web\", command = \"run 'unclosed\" }]\n",
            "fly.toml:1: [processes[0]] command: cannot split \"run 'unclosed\" into arguments",
        ),
        (
            "processes = [{ name = \"web app\", command = \"run\" }]\n",
            "fly.toml:1: [processes[0]] name: a process group name may only hold letters",
        ),
        (
            "[[files]]\nguest_path = \"/etc/x\"\nlocal_path = \"does-not-exist.txt\"\n",
            "fly.toml:1: [files] local_path: cannot read does-not-exist.txt",
        ),
        (
            "[[statics]]\nguest_path = \"public\"\nurl_prefix = \"/static\"\n",
            "fly.toml:2: [statics[0]] guest_path: \"public\" is relative: `fly deploy` uploads",
        ),
    ];
    for (text, expected) in cases {
        let found = problems(text);
        assert!(
            found.iter().any(|p| p.starts_with(expected)),
            "for\n{text}\nexpected a problem starting with\n  {expected}\ngot\n  {found:#?}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = "kill_timeout = \"forever\"\n[deploy]\nstrategy = 3\n[[vm]]\ncpus = -1\n";
    let found = problems(text);
    assert_eq!(found.len(), 3, "{found:#?}");
    let err = parse(text).unwrap_err().to_string();
    assert!(
        err.starts_with("fly.toml has 3 problems:\n  fly.toml:1: kill_timeout:"),
        "{err}"
    );
}

#[test]
fn toml_syntax_errors_name_the_line() {
    let err = parse("app = \"x\"\n[deploy\nstrategy = \"rolling\"\n").unwrap_err();
    assert!(matches!(err, AppConfigError::Syntax { line: 2, .. }), "{err}");
    assert!(err.to_string().starts_with("fly.toml:2: not valid TOML"), "{err}");
}

#[test]
fn unknown_keys_are_warnings_not_errors() {
    let text = "app = \"x\"\nprimary_regoin = \"ams\"\n\n[http_service]\ninternal_port = 8080\nforce_http = true\n\n[deploy]\nstrategy = \"canary\"\n";
    let (config, warnings) = parse(text).unwrap();
    assert_eq!(config.app.as_deref(), Some("x"));
    let warnings: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        vec![
            "fly.toml:2: primary_regoin: unknown key, ignored (not something fly.toml takes)",
            "fly.toml:6: [http_service] force_http: unknown key, ignored (not something [http_service] takes)",
        ]
    );
}

/// flyctl `internal/command/deploy/common_secrets_test.go`, `TestContainsCommonSecretSubstring`
/// (THIRDPARTY_SERVICE_SECRET looks like a secret), and the rule it tests: the substrings, case
/// sensitive as in flyctl, and the two access key ids let through. Each such `[env]` name is
/// warned about with its line.
#[test]
fn env_names_that_look_like_secrets_are_warned_about() {
    assert!(parse::looks_like_secret("THIRDPARTY_SERVICE_SECRET"));
    for name in ["API_KEY", "PRIVATE_PEM", "DATABASE_URL", "DB_PASSWORD"] {
        assert!(parse::looks_like_secret(name), "{name}");
    }
    for name in ["AWS_ACCESS_KEY_ID", "TIGRIS_ACCESS_KEY_ID", "PORT", "secret_path"] {
        assert!(!parse::looks_like_secret(name), "{name}");
    }
    let text = "app = \"x\"\n\n[env]\n  PORT = 8080\n  STRIPE_SECRET = \"sk_live_x\"\n  AWS_ACCESS_KEY_ID = \"AKIA\"\n";
    let (config, warnings) = parse(text).unwrap();
    assert_eq!(config.env["STRIPE_SECRET"], "sk_live_x");
    let warnings: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].starts_with("fly.toml:5: [env] STRIPE_SECRET: may hold a sensitive value"),
        "{warnings:#?}"
    );
}

/// Service checks outside 1s-1m are moved into it by Fly: warned about, as flyctl does, while
/// machine checks (`[checks]`) are errors (`impossible_values_are_errors`).
#[test]
fn service_check_durations_fly_moves_are_warnings() {
    let text = "[http_service]\ninternal_port = 8080\n[[http_service.checks]]\ninterval = \"500ms\"\ntimeout = \"2m\"\ngrace_period = \"0s\"\n\n[[services]]\nprotocol = \"tcp\"\ninternal_port = 9000\n[[services.tcp_checks]]\ninterval = \"15s\"\ngrace_period = \"200ms\"\n";
    let (_, warnings) = parse(text).unwrap();
    let warnings: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        vec![
            "fly.toml:4: [http_service.checks[0]] interval: 500ms is under 1s: Fly raises it to 1s",
            "fly.toml:5: [http_service.checks[0]] timeout: 2m0s is over 1m: Fly lowers it to 1m",
            "fly.toml:8: [services[0]] ports: missing: without [[services.ports]] the service exposes no port (`fly deploy` warns too)",
            "fly.toml:13: [services[0].tcp_checks[0]] grace_period: 200ms is under 1s: Fly raises it to 1s",
        ]
    );
}

/// flyctl has no rule against a soft_limit above the hard_limit (`internal/appconfig/
/// validation.go`) and deploys it as given: so does nixfly, with a warning, where it used to
/// refuse the fly.toml.
#[test]
fn a_soft_limit_above_the_hard_limit_is_a_warning() {
    let text = "[http_service]\ninternal_port = 8080\n[http_service.concurrency]\ntype = \"requests\"\nsoft_limit = 50\nhard_limit = 25\n";
    let (config, warnings) = parse(text).unwrap();
    let warnings: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0]
            .starts_with("fly.toml:3: [http_service] concurrency: soft_limit 50 is above hard_limit 25"),
        "{warnings:#?}"
    );
    let concurrency = config.http_service.and_then(|h| h.concurrency).expect("kept");
    assert_eq!(
        (concurrency.soft_limit, concurrency.hard_limit),
        (Some(50), Some(25))
    );
}

#[test]
fn service_check_names_follow_the_platform() {
    let (config, _) = AppConfig::load(&fixtures().join("04-tcp-udp-services.toml")).unwrap();
    let machine = config.machine_config("app").unwrap();
    assert_eq!(
        machine::service_check_names(&machine),
        vec!["servicecheck-00-tcp-5432"]
    );
}

fn current_machine_config() -> Value {
    json!({
        "image": "registry.fly.io/notes@sha256:aaaa",
        "init": {"tty": false, "cmd": ["old"]},
        "env": {"OLD": "1", "FLY_PROCESS_GROUP": "app"},
        "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256},
        "metadata": {"fly_platform_version": "v2", "fly_process_group": "app", "fly_release_id": "r1", "custom": "kept"},
        "mounts": [{"volume": "vol_123", "name": "notes_data", "path": "/data", "size_gb": 10, "encrypted": true}],
        "services": [{"protocol": "tcp", "internal_port": 8080, "autostop": true, "ports": [{"port": 80, "handlers": ["http"], "force_https": true}, {"port": 443, "handlers": ["http", "tls"]}]}],
        "dns": {"skip_registration": false},
        "restart": {"policy": "always"},
        "auto_destroy": false
    })
}

#[test]
fn apply_keeps_what_fly_toml_does_not_own() {
    let (config, _) = AppConfig::load(&fixtures().join("03-volume-autoextend.toml")).unwrap();
    let translated = config.machine_config("app").unwrap();
    let applied = apply(&translated, &current_machine_config()).unwrap();
    assert_eq!(
        applied,
        json!({
            "image": "registry.fly.io/notes@sha256:aaaa",
            "init": {"tty": false},
            "env": {"FLY_PROCESS_GROUP": "app", "PRIMARY_REGION": "fra"},
            "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256},
            "metadata": {"fly_platform_version": "v2", "fly_process_group": "app", "fly_release_id": "r1", "custom": "kept"},
            "mounts": [{"volume": "vol_123", "name": "notes_data", "path": "/data", "size_gb": 10, "encrypted": true,
                        "extend_threshold_percent": 80, "add_size_gb": 1, "size_gb_limit": 50}],
            "services": translated["services"].clone(),
            "dns": {"skip_registration": false},
            "auto_destroy": false
        })
    );
}

/// A standby (no services) whose group gains services in fly.toml serves itself: its
/// `standbys` and FLY_STANDBY_FOR go (flyctl `launchInputForUpdate`); without services it stays
/// a standby.
#[test]
fn apply_makes_a_standby_that_gains_services_a_machine_of_its_own() {
    let standby = json!({
        "image": "registry.fly.io/notes@sha256:aaaa",
        "env": {"FLY_STANDBY_FOR": "m1"},
        "standbys": ["m1"],
        "metadata": {"fly_process_group": "worker"},
    });
    let services = json!([{"protocol": "tcp", "internal_port": 8080}]);
    let with_services = json!({"env": {"FLY_STANDBY_FOR": "m1", "A": "1"}, "services": services});
    let applied = apply(&with_services, &standby).unwrap();
    assert!(applied.get("standbys").is_none(), "{applied}");
    assert_eq!(applied["env"], json!({"A": "1"}));
    let still = apply(&json!({"env": {"FLY_STANDBY_FOR": "m1"}}), &standby).unwrap();
    assert_eq!(still["standbys"], json!(["m1"]));
    assert_eq!(still["env"], json!({"FLY_STANDBY_FOR": "m1"}));
}

#[test]
fn apply_moves_a_mount_path_but_never_swaps_volumes() {
    let mut current = current_machine_config();
    let moved = apply(
        &json!({"mounts": [{"name": "notes_data", "path": "/srv/data"}]}),
        &current,
    )
    .unwrap();
    assert_eq!(
        moved["mounts"],
        json!([{"name": "notes_data", "path": "/srv/data", "volume": "vol_123"}])
    );
    let renamed = apply(&json!({"mounts": [{"name": "other", "path": "/data"}]}), &current);
    assert!(
        matches!(renamed, Err(VolumeChange::Renamed { .. })),
        "{renamed:?}"
    );
    let removed = apply(&json!({}), &current).unwrap_err();
    assert!(removed.to_string().contains("vol_123"), "{removed}");
    current.as_object_mut().unwrap().remove("mounts");
    let added = apply(&json!({"mounts": [{"name": "data", "path": "/data"}]}), &current);
    assert!(matches!(added, Err(VolumeChange::Added { .. })), "{added:?}");
}

#[test]
fn a_replacement_takes_fly_tomls_mounts_as_they_are() {
    let current = current_machine_config();
    let renamed = json!({"mounts": [{"name": "other", "path": "/data", "add_size_gb": 2}]});
    let replacing = apply_replacing(&renamed, &current);
    // No volume id: the replacement gets an unattached volume of that name.
    assert_eq!(replacing["mounts"], renamed["mounts"]);
    assert_eq!(apply(&renamed, &current).unwrap_err().needs(), Some("other"));
    let removed = apply_replacing(&json!({}), &current);
    assert!(removed.get("mounts").is_none(), "{removed}");
    assert_eq!(apply(&json!({}), &current).unwrap_err().needs(), None);
    // Everything else is laid over as for an update.
    assert_eq!(removed["guest"], current["guest"]);
}

#[test]
fn diff_shows_config_changes_and_ignores_image_release_and_old_spellings() {
    let (config, _) = AppConfig::load(&fixtures().join("03-volume-autoextend.toml")).unwrap();
    let current = current_machine_config();
    let mut proposed = apply(&config.machine_config("app").unwrap(), &current).unwrap();
    proposed["image"] = json!("registry.fly.io/notes@sha256:bbbb");
    proposed["metadata"]["fly_release_id"] = json!("r2");
    let changes: Vec<String> = diff(&current, &proposed)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        changes,
        vec![
            "- env.OLD: \"1\"",
            "+ env.PRIMARY_REGION: \"fra\"",
            "- init.cmd: [\"old\"]",
            "+ mounts[0].add_size_gb: 1",
            "+ mounts[0].extend_threshold_percent: 80",
            "+ mounts[0].size_gb_limit: 50",
            "- restart.policy: \"always\"",
            "- services[0].autostop: \"stop\"",
            "+ services[0].min_machines_running: 1",
        ]
    );
    // flyctl's boolean autostop and nixfly's string are the same setting.
    let a = json!({"services": [{"autostop": false}]});
    let b = json!({"services": [{"autostop": "off"}]});
    assert!(diff(&a, &b).is_empty());
}

#[test]
fn new_groups_get_as_many_machines_as_flyctl_creates() {
    let load = |name: &str| AppConfig::load(&fixtures().join(name)).unwrap().0;
    // Services and no volume: two machines for availability; the [[vm]] guest is kept.
    let web = load("01-web-launch-default.toml").launch("app").unwrap();
    assert_eq!((web.count, web.standby, web.volume.is_none()), (2, false, true));
    assert_eq!(web.config["guest"]["memory_mb"], 1024);
    // A volume: one machine, which mounts it.
    let notes = load("03-volume-autoextend.toml").launch("app").unwrap();
    let volume = launch::VolumeNeed {
        name: "notes_data".into(),
        size_gb: 10,
        snapshot_retention: None,
        auto_backup_enabled: None,
    };
    assert_eq!(
        (notes.count, notes.standby, notes.volume),
        (1, false, Some(volume))
    );
    // No services: one machine and a standby; no [[vm]]: flyctl's default guest.
    let cron = load("09-metrics.toml").launch("cron").unwrap();
    assert_eq!((cron.count, cron.standby, cron.total()), (1, true, 2));
    assert_eq!(
        cron.config["guest"],
        json!({"cpu_kind": "shared", "cpus": 1, "memory_mb": 256})
    );
    let (dedicated, _) = parse("host_dedication_id = \"h1\"\n").unwrap();
    assert_eq!(
        dedicated.launch("app").unwrap().config["guest"],
        json!({"cpu_kind": "shared", "cpus": 1, "memory_mb": 256, "host_dedication_id": "h1"})
    );
    // A volume without initial_size: 1 GB, 100 GB on a GPU machine (flyctl deploy_first.go).
    let mounts = "[[mounts]]\nsource = \"data\"\ndestination = \"/data\"\n";
    let (plain, _) = parse(mounts).unwrap();
    assert_eq!(plain.launch("app").unwrap().volume.unwrap().size_gb, 1);
    let (gpu, _) = parse(&format!("{mounts}[[vm]]\nsize = \"a100-40gb\"\n")).unwrap();
    assert_eq!(gpu.launch("app").unwrap().volume.unwrap().size_gb, 100);
    let standby = launch::standby_config(&cron.config, "m1");
    assert_eq!(standby["standbys"], json!(["m1"]));
    assert_eq!(standby["env"]["FLY_STANDBY_FOR"], "m1");
    assert_eq!(standby["env"]["FLY_PROCESS_GROUP"], "cron");
}

#[test]
fn public_ips_follow_flyctls_first_deploy() {
    use launch::PublicIps;
    let load = |name: &str| AppConfig::load(&fixtures().join(name)).unwrap().0;
    assert_eq!(load("01-web-launch-default.toml").public_ips(), PublicIps::Shared);
    assert_eq!(load("16-legacy-v1-format.toml").public_ips(), PublicIps::Shared);
    assert_eq!(
        load("04-tcp-udp-services.toml").public_ips(),
        PublicIps::Dedicated
    );
    assert_eq!(load("19-old-spellings.toml").public_ips(), PublicIps::Shared);
    assert_eq!(load("10-restart-policy.toml").public_ips(), PublicIps::None);
}

/// [processes] commands and release_command are split by google/shlex's rules, as flyctl
/// splits them (`internal/appconfig/processgroups.go`, `machines.go`), not a POSIX shell's: a
/// backslash in double quotes escapes any character, and `#` where a word starts comments out
/// the rest of the line.
#[test]
fn commands_are_split_as_flyctl_splits_them() {
    let text = r#"app = "x"
[deploy]
release_command = 'bin/migrate --sep "a\tb" # after a comment'
[processes]
web = '''printf "a\tb" 'c\d' e#f'''
"#;
    let (config, _) = parse(text).unwrap();
    let release = config.release_command_config().unwrap().unwrap();
    assert_eq!(release["init"]["cmd"], json!(["bin/migrate", "--sep", "atb"]));
    let web = config.machine_config("web").unwrap();
    assert_eq!(web["init"]["cmd"], json!(["printf", "atb", "c\\d", "e#f"]));
}

#[test]
fn release_command_machine_is_built_like_flyctls() {
    let text = "app = \"x\"\nprimary_region = \"ams\"\nswap_size_mb = 256\nkill_signal = \"SIGINT\"\n\
        [deploy]\nrelease_command = \"bin/rails db:migrate\"\n\
        [experimental]\nentrypoint = [\"/entry.sh\"]\ncmd = [\"ignored\"]\n\
        [env]\nRAILS_ENV = \"production\"\n\
        [processes]\nweb = \"./web\"\n\
        [[files]]\nguest_path = \"/etc/a\"\nraw_value = \"a\"\nprocesses = [\"web\"]\n";
    let (config, _) = parse(text).unwrap();
    assert_eq!(
        config.release_command_config().unwrap().unwrap(),
        json!({
            "init": {"cmd": ["bin/rails", "db:migrate"], "entrypoint": ["/entry.sh"], "swap_size_mb": 256},
            "restart": {"policy": "no"},
            "auto_destroy": true,
            "dns": {"skip_registration": true},
            "metadata": {"fly_platform_version": "v2", "fly_process_group": "fly_app_release_command"},
            "env": {"RAILS_ENV": "production", "RELEASE_COMMAND": "1", "FLY_PROCESS_GROUP": "fly_app_release_command", "PRIMARY_REGION": "ams"},
            "stop_config": {"signal": "SIGINT"},
            "files": [{"guest_path": "/etc/a", "raw_value": "YQ=="}]
        })
    );
    assert!(
        parse("app = \"x\"\n")
            .unwrap()
            .0
            .release_command_config()
            .unwrap()
            .is_none()
    );
}

// flyctl's own unit tests as an oracle (internal/appconfig/*_test.go in superfly/flyctl):
// each test below names the flyctl test whose expectation it encodes. The golden fixtures
// 20-39 encode the rest.

/// flyctl machines_test.go, TestToReleaseMachineConfig (input as in fixture 20): the
/// release_command machine, its guest from `[deploy.release_command_vm]` ("4G" of memory over
/// performance-2x), without fly_flyctl_version (nixfly leaves it out on purpose).
#[test]
fn flyctl_release_machine_config() {
    let (config, _) = AppConfig::load(&fixtures().join("20-flyctl-tomachine.toml")).unwrap();
    assert_eq!(
        config.release_command_config().unwrap().unwrap(),
        json!({
            "init": {"cmd": ["migrate-db"], "swap_size_mb": 512},
            "env": {"FOO": "BAR", "PRIMARY_REGION": "mia", "RELEASE_COMMAND": "1", "FLY_PROCESS_GROUP": "fly_app_release_command"},
            "metadata": {"fly_platform_version": "v2", "fly_process_group": "fly_app_release_command"},
            "auto_destroy": true,
            "restart": {"policy": "no"},
            "dns": {"skip_registration": true},
            "stop_config": {"timeout": "10s", "signal": "SIGTERM"}
        })
    );
    let vm = config.deploy.release_command_vm.as_ref().unwrap();
    assert_eq!(
        config.guest(vm),
        json!({"cpu_kind": "performance", "cpus": 2, "memory_mb": 4096})
    );
    assert_eq!(
        config.deploy.release_command_timeout,
        Some(std::time::Duration::from_secs(180))
    );
}

/// flyctl machines_test.go, TestToMachineConfig (second half): fly.toml laid over an existing
/// machine keeps the machine's guest (no [[vm]]), schedule, auto_destroy, dns and its own
/// metadata, and replaces env, services, checks, restart and init's cmd. The machine mounts a
/// volume of another name: flyctl's update would replace the machine, nixfly refuses the
/// rename before deploying (on purpose, README), so the replacement's config is compared.
#[test]
fn flyctl_update_keeps_the_machines_own_fields() {
    let (config, _) = AppConfig::load(&fixtures().join("20-flyctl-tomachine.toml")).unwrap();
    let translated = config.machine_config("app").unwrap();
    let src = json!({
        "guest": {"cpus": 3},
        "schedule": "24/7",
        "auto_destroy": true,
        "restart": {"policy": "always"},
        "dns": {"skip_registration": true},
        "env": {"removed": "by-update"},
        "mounts": [{"name": "removed", "path": "/by/update"}],
        "metadata": {"retain": "propagated"},
        "init": {"cmd": ["removed", "by", "update"]}
    });
    assert!(matches!(
        apply(&translated, &src),
        Err(VolumeChange::Renamed { .. })
    ));
    let got = apply_replacing(&translated, &src);
    assert_eq!(
        got["env"],
        json!({"FOO": "BAR", "PRIMARY_REGION": "mia", "FLY_PROCESS_GROUP": "app"})
    );
    assert_eq!(got["services"], translated["services"]);
    assert_eq!(got["checks"], translated["checks"]);
    assert_eq!(got["guest"], json!({"cpus": 3}));
    assert_eq!(got["schedule"], "24/7");
    assert_eq!(got["auto_destroy"], true);
    assert_eq!(got["restart"], json!({"policy": "always"}));
    assert_eq!(got["dns"], json!({"skip_registration": true}));
    assert_eq!(got["metadata"]["retain"], "propagated");
    assert!(got["init"].get("cmd").is_none(), "{got}");
}

/// flyctl machines_test.go, TestToMachineConfig_nullifyManagedFields: an empty fly.toml laid
/// over a machine with env, services, checks, metrics, statics and a mount leaves only
/// FLY_PROCESS_GROUP in env and none of the rest. Removing the mount needs a new machine
/// (flyctl's deploy replaces it too): `apply` says so, the replacement has no mount.
#[test]
fn flyctl_update_clears_what_fly_toml_does_not_set() {
    let (config, _) = parse("").unwrap();
    let translated = config.machine_config("app").unwrap();
    let src = json!({
        "env": {"FOO": "BAR", "PRIMARY_REGION": "mia"},
        "services": [{"protocol": "tcp", "internal_port": 8080, "ports": [
            {"port": 80, "handlers": ["http"], "force_https": true},
            {"port": 443, "handlers": ["http", "tls"]}
        ]}],
        "metrics": {"port": 9999, "path": "/metrics"},
        "statics": [{"guest_path": "/guest/path", "url_prefix": "/url/prefix", "tigris_bucket": "example-bucket", "index_document": "index.html"}],
        "mounts": [{"name": "data", "path": "/data"}],
        "checks": {
            "listening": {"port": 8080, "type": "tcp"},
            "status": {"port": 8080, "type": "http", "interval": "10s", "timeout": "1s", "path": "/status"}
        }
    });
    assert!(matches!(
        apply(&translated, &src),
        Err(VolumeChange::Removed { .. })
    ));
    let got = apply_replacing(&translated, &src);
    assert_eq!(got["env"], json!({"FLY_PROCESS_GROUP": "app"}));
    for key in ["metrics", "services", "checks", "mounts", "statics"] {
        assert!(got.get(key).is_none(), "{key} in {got}");
    }
}

/// flyctl machines_test.go, TestToMachineConfig_defaultV2flytoml (second half): without
/// [http_service], a [checks] entry without a port has none to take.
#[test]
fn flyctl_check_without_port_needs_an_http_service() {
    let text = "app = \"foo\"\nprimary_region = \"ord\"\n[checks]\n  [checks.alive]\n    type = \"tcp\"\n    interval = \"15s\"\n    timeout = \"2s\"\n    grace_period = \"5s\"\n";
    assert_eq!(
        problems(text),
        vec![
            "fly.toml:4: [checks.alive] port: missing: process group \"app\" has no [http_service] to take the port from"
        ]
    );
}

/// flyctl processgroups_test.go, TestProcessNames: the groups are the [processes] names
/// sorted, `app` without any; the default group is `app` when present, else the first name.
#[test]
fn flyctl_process_names_and_default_group() {
    let cases = [
        ("", "app", vec!["app"]),
        ("app = \"foo\"\n[processes]\n", "app", vec!["app"]),
        ("[processes]\nweb = \"/app/server\"\n", "web", vec!["web"]),
        (
            "[processes]\nzzz = \"/zzzz\"\nbar = \"/app/bar\"\nfoo = \"/app/foo\"\n",
            "bar",
            vec!["bar", "foo", "zzz"],
        ),
        (
            "[processes]\naaa = \"/run1\"\nass = \"/run2\"\napp = \"/run2\"\nbbb = \"/run3\"\nabc = \"/run1\"\n",
            "app",
            vec!["aaa", "abc", "app", "ass", "bbb"],
        ),
    ];
    for (text, default, groups) in cases {
        let (config, _) = parse(text).unwrap();
        assert_eq!(config.default_group(), default, "{text}");
        assert_eq!(config.process_groups(), groups, "{text}");
    }
}

/// flyctl config_test.go, TestDetermineIPType (public addresses; its "private" answers are
/// for `--flycast`, which nixfly does not offer): HTTP on 80 and HTTP+TLS on 443 (either
/// order) share an IPv4; other handlers on 443, or UDP, need a dedicated one.
#[test]
fn flyctl_first_deploy_ip_type() {
    use launch::PublicIps;
    let ip_type = |protocol: &str, port: u16, handlers: &str| {
        let text = format!(
            "[[services]]\nprotocol = \"{protocol}\"\ninternal_port = 8080\n[[services.ports]]\nport = {port}\nhandlers = {handlers}\n"
        );
        parse(&text).unwrap().0.public_ips()
    };
    assert_eq!(ip_type("tcp", 80, "[\"http\"]"), PublicIps::Shared);
    assert_eq!(ip_type("tcp", 443, "[\"tls\", \"http\"]"), PublicIps::Shared);
    assert_eq!(ip_type("tcp", 443, "[\"http\", \"tls\"]"), PublicIps::Shared);
    assert_eq!(ip_type("tcp", 443, "[\"tls\", \"weird\"]"), PublicIps::Dedicated);
    assert_eq!(ip_type("tcp", 443, "[\"tls\"]"), PublicIps::Dedicated);
    assert_eq!(ip_type("udp", 443, "[\"tls\", \"http\"]"), PublicIps::Dedicated);
}

/// flyctl's first deploy (config.go, DetermineIPType, through fly-go's
/// MachinePort.HasNonHttpPorts and ContainsPort) reads a one-port range like that port:
/// 80-80 with the HTTP handler shares an IPv4, 80-81 does not.
#[test]
fn a_one_port_range_is_that_port_for_the_ip_type() {
    use launch::PublicIps;
    let ip_type = |end: u16| {
        let text = format!(
            "[[services]]\nprotocol = \"tcp\"\ninternal_port = 8080\n[[services.ports]]\nstart_port = 80\nend_port = {end}\nhandlers = [\"http\"]\n"
        );
        parse(&text).unwrap().0.public_ips()
    };
    assert_eq!(ip_type(80), PublicIps::Shared);
    assert_eq!(ip_type(81), PublicIps::Dedicated);
}

/// flyctl validation_test.go, TestConfig_ValidateGroups (input testdata/validate-groups.toml
/// with the canary strategy): canary with a volume is refused.
#[test]
fn flyctl_validation_refuses_canary_with_volumes() {
    let text = "app = \"foo\"\nprimary_region = \"ord\"\n[deploy]\nstrategy = \"canary\"\n\
        [processes]\napp = \"run-nginx\"\nvpn = \"run-tailscale\"\nfoo = \"keep me alive\"\n\
        [http_service]\ninternal_port = 8080\nprocesses = [\"app\"]\n\
        [[services]]\ninternal_port = 9999\nprotocol = \"udp\"\nprocesses = [\"vpn\"]\n[[services.ports]]\nport = 80\n\
        [[services]]\ninternal_port = 1111\nprotocol = \"tcp\"\nprocesses = [\"vpn\", \"app\", \"foo\"]\n[[services.ports]]\nport = 81\n\
        [checks.listening]\nport = 8080\ntype = \"tcp\"\nprocesses = [\"app\", \"foo\"]\n\
        [[mounts]]\nsource = \"foo\"\ndestination = \"bar\"\nprocesses = [\"app\"]\n";
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].contains("[deploy] strategy: the canary strategy does not work with [[mounts]]"),
        "{found:#?}"
    );
    // Without canary the same file is fine.
    parse(&text.replace("strategy = \"canary\"", "strategy = \"rolling\"")).unwrap();
}

/// flyctl validation_test.go, TestConfig_ValidateMounts (input testdata/validate-mounts.toml):
/// an initial_size under 1 GB, one that is no size, and two mounts for one group are refused.
#[test]
fn flyctl_validation_of_mounts() {
    let text = "app = \"foo\"\nprimary_region = \"ord\"\n\
        [processes]\napp = \"\"\nvpn = \"\"\nfoo = \"\"\n\
        [[mounts]]\nsource = \"data\"\ndestination = \"/data\"\ninitial_size = \"15Mb\"\nprocesses = [\"vpn\"]\n\
        [[mounts]]\nsource = \"data\"\ndestination = \"/data\"\ninitial_size = \"unparseable\"\nprocesses = [\"foo\"]\n\
        [[mounts]]\nsource = \"foo\"\ndestination = \"bar\"\nprocesses = [\"app\"]\n\
        [[mounts]]\nsource = \"data\"\ndestination = \"/data\"\nprocesses = [\"app\"]\n";
    let found = problems(text);
    let expected = [
        "fly.toml:10: [mounts[0]] initial_size: a volume is at least 1 GB",
        "fly.toml:15: [mounts[1]] initial_size:",
        "fly.toml:21: [mounts] source: process group \"app\" gets 2 volumes (foo, data)",
    ];
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    for (got, want) in found.iter().zip(expected) {
        assert!(got.starts_with(want), "{got}\ndoes not start with\n{want}");
    }
}

/// flyctl validation_test.go, TestConfig_ValidateServices (input
/// testdata/validate-services.toml, with protocol = "tcp" added: nixfly refuses a service
/// without a protocol): a service without ports is warned about; one without processes in an
/// app with [processes] is refused by flyctl and served on the default group with a warning by
/// nixfly (on purpose, README).
#[test]
fn flyctl_validation_of_services() {
    let text = "app = \"foo\"\nprimary_region = \"ord\"\n\
        [processes]\napp = \"\"\nfoo = \"\"\nsuccess = \"\"\n\
        [[services]]\nprotocol = \"tcp\"\ninternal_port = 8080\n\
        [[services]]\nprotocol = \"tcp\"\ninternal_port = 8080\nprocesses = [\"success\"]\n[[services.ports]]\nport = 80\n";
    let (_, warnings) = parse(text).unwrap();
    let warnings: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        vec![
            "fly.toml:7: [services[0]] ports: missing: without [[services.ports]] the service exposes no port (`fly deploy` warns too)",
            "fly.toml:7: [services[0]] processes: missing: nixfly serves it on process group \"app\" (the default), but `fly deploy` refuses a service without processes once [processes] exists; add processes = [\"app\"]",
        ]
    );
}

/// flyctl validation.go (validateRestartPolicy) refuses a [[restart]] naming a process group
/// that does not exist, as nixfly does for every section's `processes`.
#[test]
fn restart_names_existing_groups() {
    let text = "[processes]\nweb = \"run\"\n[[restart]]\npolicy = \"always\"\nprocesses = [\"wbe\"]\n";
    assert_eq!(
        problems(text),
        vec!["fly.toml:3: [restart[0]] processes: no process group \"wbe\"; [processes] defines web"]
    );
}

/// flyctl serde_test.go, TestLoadTOMLAppConfigInvalidV2 (input testdata/always-invalid-v2.toml):
/// a bare number for a service's concurrency is not a fly.toml flyctl can deploy.
#[test]
fn flyctl_refuses_a_bare_number_concurrency() {
    let text = "app = \"unsupported-format\"\n[[services]]\nprotocol = \"tcp\"\ninternal_port = \"8080\"\nconcurrency = 20\n";
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("fly.toml:5: [services[0]] concurrency:"),
        "{found:#?}"
    );
}

/// flyctl patches.go (patchCompute) lists [[compute]] entries before [[vm]] ones, and
/// processgroups.go (ComputeForGroup) gives a group the first entry that applies unless a later
/// one names the group: with both spellings and no `processes`, [[compute]] wins wherever it
/// stands in the file.
#[test]
fn compute_comes_before_vm_as_in_flyctl() {
    let text = "[[vm]]\nsize = \"shared-cpu-2x\"\n[[compute]]\nsize = \"shared-cpu-4x\"\n";
    let (config, _) = parse(text).unwrap();
    assert_eq!(
        config.machine_config("app").unwrap()["guest"],
        json!({"cpu_kind": "shared", "cpus": 4, "memory_mb": 1024})
    );
}

/// flyctl patches.go (patchExperimental) turns [experimental] metrics_port/metrics_path into
/// [metrics] only when fly.toml has no [metrics]: with both, [metrics] is the machine's.
#[test]
fn metrics_table_wins_over_experimental_metrics() {
    let text = "[metrics]\nport = 9999\npath = \"/metrics\"\n[experimental]\nmetrics_port = 9000\n";
    let (config, warnings) = parse(text).unwrap();
    assert_eq!(
        config.machine_config("app").unwrap()["metrics"],
        json!({"port": 9999, "path": "/metrics"})
    );
    let warnings: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        vec![
            "fly.toml:5: [experimental] metrics_port: ignored: [metrics] is set, and it wins (as in flyctl)"
        ]
    );
}

/// flyctl definition_test.go, TestFromDefinition: the app config a release records (JSON, with
/// the empty lists and Nomad-era keys the GraphQL API returns) reads as fly.toml, and gives the
/// machine config of its parts (a bare kill_timeout in seconds, the restart policy, the
/// service with its concurrency, ports and TCP check).
#[test]
fn flyctl_release_definition_reads_as_fly_toml() {
    let definition = json!({
        "env": {},
        "experimental": {"auto_rollback": true},
        "kill_signal": "SIGINT",
        "kill_timeout": 5,
        "processes": [],
        "restart": [{"policy": "always", "retries": 3, "processes": ["app"]}],
        "services": [{
            "concurrency": {"hard_limit": 25, "soft_limit": 20, "type": "connections"},
            "http_checks": [],
            "internal_port": 8080,
            "ports": [
                {"force_https": true, "handlers": ["http"], "port": 80},
                {"handlers": ["tls", "http"], "port": 443}
            ],
            "processes": ["app"],
            "protocol": "tcp",
            "script_checks": [],
            "tcp_checks": [{"grace_period": "1s", "interval": "15s", "restart_limit": 0, "timeout": "2s"}]
        }]
    });
    let (config, _) = AppConfig::from_definition(&definition, "release v1").unwrap();
    assert_eq!(
        config.machine_config("app").unwrap(),
        json!({
            "init": {},
            "metadata": {"fly_platform_version": "v2", "fly_process_group": "app"},
            "services": [{
                "protocol": "tcp",
                "internal_port": 8080,
                "ports": [
                    {"port": 80, "handlers": ["http"], "force_https": true},
                    {"port": 443, "handlers": ["tls", "http"]}
                ],
                "checks": [{"type": "tcp", "interval": "15s", "timeout": "2s", "grace_period": "1s"}],
                "concurrency": {"type": "connections", "hard_limit": 25, "soft_limit": 20}
            }],
            "env": {"FLY_PROCESS_GROUP": "app"},
            "stop_config": {"timeout": "5s", "signal": "SIGINT"},
            "restart": {"policy": "always", "max_retries": 3}
        })
    );
}

/// flyctl serde_test.go, TestLoadTOMLAppConfigReferenceFormat (fixture 40): what the full
/// reference says beyond the machine configs. The release_command machine's guest is
/// performance-2x with "8g" of memory and the app's host_dedication_id (machines.go,
/// computeToGuest); the volume a new machine needs is 30 GB with 17 days of snapshots.
#[test]
fn flyctl_full_reference_deploy_and_volume() {
    let (config, _) = AppConfig::load(&fixtures().join("40-flyctl-full-reference.toml")).unwrap();
    assert_eq!(config.console_command.as_deref(), Some("/bin/bash"));
    let deploy = &config.deploy;
    assert_eq!(deploy.max_unavailable, Some(MaxUnavailable::Fraction(0.2)));
    assert_eq!(deploy.release_command.as_deref(), Some("release command"));
    assert_eq!(
        deploy.release_command_timeout,
        Some(std::time::Duration::from_secs(180))
    );
    assert_eq!(
        config.guest(deploy.release_command_vm.as_ref().unwrap()),
        json!({"cpu_kind": "performance", "cpus": 2, "memory_mb": 8192, "host_dedication_id": "06031957"})
    );
    let task = config.launch("task").unwrap();
    assert_eq!(
        task.volume,
        Some(launch::VolumeNeed {
            name: "data".into(),
            size_gb: 30,
            snapshot_retention: Some(17),
            auto_backup_enabled: Some(true),
        })
    );
    assert_eq!(task.config["guest"]["host_dedication_id"], "06031957");
    assert!(config.launch("web").unwrap().volume.is_none());
}

/// flyctl's validation.go refuses a process group [processes] does not define only in a
/// service or a restart policy; in [checks], [[vm]], [[mounts]] and [[files]] it passes and
/// applies to no machine, so nixfly warns there instead of refusing a fly.toml `fly deploy`
/// takes.
#[test]
fn an_unknown_group_is_refused_in_services_and_restart_and_a_warning_elsewhere() {
    let head = "app = \"a\"\n[processes]\nweb = \"serve\"\n";
    let (config, warnings) = parse(&format!(
        "{head}[[vm]]\nsize = \"shared-cpu-2x\"\nprocesses = [\"worker\"]\n\
         [[mounts]]\nsource = \"data\"\ndestination = \"/data\"\nprocesses = [\"worker\"]\n\
         [[files]]\nguest_path = \"/etc/x\"\nraw_value = \"eA==\"\nprocesses = [\"worker\"]\n\
         [checks.alive]\ntype = \"tcp\"\nport = 8080\nprocesses = [\"worker\"]\n"
    ))
    .unwrap();
    let warnings: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    for section in ["[vm[0]]", "[mounts[0]]", "[files[0]]", "[checks.alive]"] {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(&format!("{section} processes"))
                    && w.contains("no process group \"worker\"")
                    && w.contains("applies to no machine")),
            "{section}: {warnings:#?}"
        );
    }
    let web = config.machine_config("web").unwrap();
    assert!(
        web.get("mounts").is_none() && web.get("files").is_none(),
        "{web:#}"
    );
    assert!(web.get("guest").is_none(), "the [[vm]] is not web's: {web:#}");

    let service =
        format!("{head}[[services]]\nprotocol = \"tcp\"\ninternal_port = 8080\nprocesses = [\"worker\"]\n");
    assert!(
        problems(&service)
            .iter()
            .any(|p| p.contains("no process group \"worker\""))
    );
    let restart = format!("{head}[[restart]]\npolicy = \"never\"\nprocesses = [\"worker\"]\n");
    assert!(
        problems(&restart)
            .iter()
            .any(|p| p.contains("no process group \"worker\""))
    );
}

/// `[build] compression` and `compression_level` as flyctl reads and checks them
/// (`internal/appconfig/config.go` Build, `validation.go` validateCompression with
/// `internal/flag/validation/compression.go`): "gzip", "zstd" or "" (unset), a level 0-9;
/// anything else makes the fly.toml invalid. They were "unknown keys" to nixfly.
#[test]
fn build_compression_is_read_and_checked_as_flyctl_does() {
    let (config, warnings) =
        parse("app = \"x\"\n[build]\n  compression = \"zstd\"\n  compression_level = 9\n").unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.build.compression, Some(crate::blob::Algorithm::Zstd));
    assert_eq!(config.build.compression_level, Some(9));
    let (config, _) = parse("[build]\n  compression = \"gzip\"\n  compression_level = 0\n").unwrap();
    assert_eq!(config.build.compression, Some(crate::blob::Algorithm::Gzip));
    assert_eq!(config.build.compression_level, Some(0));
    let (config, _) = parse("[build]\n  compression = \"\"\n").unwrap();
    assert_eq!(config.build.compression, None);
    assert_eq!(config.build.compression_level, None);

    let refused = problems("[build]\n  compression = \"brotli\"\n  compression_level = 10\n");
    assert_eq!(refused.len(), 2, "{refused:#?}");
    assert!(
        refused[0].starts_with("fly.toml:2: [build] compression: \"brotli\" is not a compression"),
        "{refused:#?}"
    );
    assert!(
        refused[1].starts_with("fly.toml:3: [build] compression_level: 10 is not a compression level"),
        "{refused:#?}"
    );
    assert_eq!(problems("[build]\n  compression_level = -1\n").len(), 1);
}

/// The keys nixfly warns about, as `section key` (`fly.toml` for the top level).
fn warned_keys(text: &str) -> Vec<String> {
    let (_, warnings) = parse(text).unwrap();
    warnings.iter().map(|w| w.key.clone()).collect()
}

/// flyctl `strict_validate_test.go`, `TestStrictValidate`: the keys and sections flyctl's
/// strict validation reports as unrecognized are the ones nixfly warns about (flyctl
/// `internal/appconfig/strict_validate.go`), and a config it accepts gets no warning;
/// in the real-world case, the two keys of `[[http_service.machine_checks]]` flyctl reports.
#[test]
fn unknown_keys_are_the_ones_flyctl_strict_validation_reports() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "valid config",
            "app = \"test-app\"\nprimary_region = \"iad\"\n[build]\nbuilder = \"dockerfile\"\n\
             [env]\nNODE_ENV = \"production\"\n",
            &[],
        ),
        (
            "unrecognized top-level section",
            "app = \"test-app\"\n[unknown_section]\nkey = \"value\"\n",
            &["unknown_section"],
        ),
        (
            "unrecognized key in build section",
            "app = \"test-app\"\n[build]\nbuilder = \"dockerfile\"\nunknown_key = \"value\"\n",
            &["[build] unknown_key"],
        ),
        (
            "unrecognized key in checks value",
            // With a port: nixfly refuses an http check that has none to take (flyctl too, when
            // it makes the machine config: `machines.go`).
            "app = \"test-app\"\n[checks.health_check]\ntype = \"http\"\nport = 8080\ninvalid_key = \"value\"\n",
            &["[checks.health_check] invalid_key"],
        ),
        (
            "real-world example",
            STRICT_VALIDATE_REAL_WORLD,
            &[
                "[deploy] processes",
                "[http_service.checks[0]] processes",
                "http_machine",
                "[http_service.machine_checks[0]] processes",
                "[http_service.machine_checks[0]] grace_period",
                "[http_service.concurrency] processes",
                "[http_service.http_options] xyz",
                "[checks.my_check_bla] invalid_key",
            ],
        ),
    ];
    for (name, text, expected) in cases {
        assert_eq!(warned_keys(text), *expected, "{name}");
    }
}

/// The real-world fly.toml of `TestStrictValidate` (values shortened).
const STRICT_VALIDATE_REAL_WORLD: &str = r#"app = "bla"
primary_region = "mia"
console_command = "bin/rails console"

[build]
dockerfile = "Dockerfile.web"
build-target = "deploy"

[build.args]
RAILS_ENV = "staging"
APPUID = "1000"

[deploy]
processes = ["app"]
release_command = "./bin/rails db:prepare"
strategy = "bluegreen"

[env]
RAILS_MAX_THREADS = 5

[http_service]
processes = ["app"]
internal_port = 3000
auto_stop_machines = "suspend"
auto_start_machines = true
min_machines_running = 1

[[http_service.checks]]
processes = ['app']
grace_period = "10s"
interval = "30s"
protocol = "http"
method = "GET"
timeout = "5s"
path = "/up"

[[http_machine.checks]]
processes = ['app']
grace_period = "30s"
image = "curlimages/curl"

[[http_service.machine_checks]]
processes = ['app']
grace_period = "30s"
image = "curlimages/curl"
entrypoint = ["/bin/sh", "-c"]
command = ["curl http://[$FLY_TEST_MACHINE_IP]/up"]
kill_signal = "SIGKILL"
kill_timeout = "5s"

[http_service.concurrency]
processes = ['app']
type = "requests"
soft_limit = 50
hard_limit = 70

[http_service.http_options]
h2_backend = true
xyz = "123"

[[vm]]
processes = ["app"]
size = "shared-cpu-2x"
memory = '2gb'

[[vm]]
processes = ["worker"]
size = "shared-cpu-2x"
memory = '2gb'

[[statics]]
guest_path = "/rails/public"
url_prefix = "/"

[processes]
app = "bundle exec rails s -b 0.0.0.0 -p 3000"
worker = "bundle exec sidekiq"

[checks.my_check_bla]
type = "http"
grace_period = "30s"
invalid_key = 123
"#;

/// flyctl serde_test.go, TestLoadTOMLAppConfigReferenceFormat: the machine checks of
/// `[http_service]`, `[[services]]` and the top level are read with all their fields.
#[test]
fn flyctl_machine_checks_are_read() {
    let (config, _) = AppConfig::load(&fixtures().join("40-flyctl-full-reference.toml")).unwrap();
    let expected = MachineCheck {
        line: 0,
        command: vec!["curl".into(), "https://fly.io".into()],
        image: Some("curlimages/curl".into()),
        entrypoint: Some(vec!["/bin/sh".into()]),
        kill_signal: Some("SIGKILL".into()),
        kill_timeout: Some(std::time::Duration::from_secs(5)),
    };
    let without_line = |checks: &[MachineCheck]| -> Vec<MachineCheck> {
        checks
            .iter()
            .map(|c| MachineCheck { line: 0, ..c.clone() })
            .collect()
    };
    let http = config.http_service.as_ref().unwrap();
    assert_eq!(
        without_line(&http.machine_checks),
        std::slice::from_ref(&expected)
    );
    assert_eq!(
        without_line(&config.services[0].machine_checks),
        std::slice::from_ref(&expected)
    );
    assert_eq!(without_line(&config.machine_checks), [expected]);
    assert_eq!(
        [
            http.machine_checks[0].line,
            config.machine_checks[0].line,
            config.services[0].machine_checks[0].line
        ],
        [87, 153, 207]
    );
}

/// flyctl's `runTestMachines` (`machinebasedtest.go`): a machine gets the checks of the
/// services of its group or of no group, then the top-level ones.
#[test]
fn machine_checks_apply_to_the_groups_of_their_service() {
    let (config, _) = AppConfig::load(&fixtures().join("41-flyctl-tomachine-machinechecks.toml")).unwrap();
    let count = |group: &str| config.machine_checks_for(group).len();
    assert_eq!(
        [count("greeting"), count("salutation"), count("farewell")],
        [1, 1, 0]
    );
    assert!(config.has_machine_checks());
    let (config, _) = parse(
        "app = \"a\"\n[processes]\nweb = \"w\"\nworker = \"k\"\n\
         [[services]]\nprotocol = \"tcp\"\ninternal_port = 1\nprocesses = [\"web\"]\n\
         [[services.ports]]\nport = 1\n\
         [[services.machine_checks]]\ncommand = [\"web-check\"]\n\
         [[machine_checks]]\ncommand = [\"everyone\"]\n",
    )
    .unwrap();
    let commands = |group: &str| -> Vec<String> {
        config
            .machine_checks_for(group)
            .iter()
            .map(|c| c.command.join(" "))
            .collect()
    };
    assert_eq!(commands("web"), ["web-check", "everyone"]);
    assert_eq!(commands("worker"), ["everyone"]);
    assert!(!parse("app = \"a\"\n").unwrap().0.has_machine_checks());
}

#[test]
fn machine_checks_need_a_command_and_valid_kill_settings() {
    let found = problems(
        "app = \"a\"\n[[machine_checks]]\nimage = \"curlimages/curl\"\n\
         [[machine_checks]]\ncommand = []\n\
         [[machine_checks]]\ncommand = \"curl x\"\n\
         [[machine_checks]]\ncommand = [\"x\"]\nkill_timeout = 5\nkill_signal = \"SIGNOPE\"\nwhat = 1\n",
    );
    assert!(
        found[0].contains("fly.toml:2: [machine_checks[0]] command: missing"),
        "{found:#?}"
    );
    assert!(
        found[1].contains("fly.toml:4: [machine_checks[1]] command: missing"),
        "{found:#?}"
    );
    assert!(
        found[2].contains("fly.toml:7: [machine_checks[2]] command: expected a list of strings"),
        "{found:#?}"
    );
    assert_eq!(found.len(), 5, "{found:#?}");
    assert!(
        found
            .iter()
            .any(|p| p.contains("kill_timeout") && p.contains("nanoseconds")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.contains("kill_signal") && p.contains("SIGNOPE")),
        "{found:#?}"
    );
    let (_, warnings) = parse("app = \"a\"\n[[machine_checks]]\ncommand = [\"x\"]\nwhat = 1\n").unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .to_string()
            .contains("[machine_checks[0]] what: unknown key"),
        "{warnings:?}"
    );
}

/// The machine a test machine checks, as the flyctl tests below give it.
fn tested_machine(value: Value) -> crate::fly::types::Machine {
    serde_json::from_value(json!({"id": "tested", "config": value})).unwrap()
}

/// flyctl machines_test.go's expectation shared by its TestToTestMachineConfig* tests, with
/// the parts that vary: image, env beside the test variables, stop config. Without
/// fly_flyctl_version (nixfly leaves it out on purpose).
fn flyctl_test_machine(image: &str, env: Value, stop: Value) -> Value {
    let mut all_env = json!({
        "PRIMARY_REGION": "mia",
        "FLY_TEST_COMMAND": "1",
        "FLY_PROCESS_GROUP": "fly_app_test_machine_command",
        "FLY_TEST_MACHINE_IP": "",
    });
    for (k, v) in env.as_object().unwrap() {
        all_env[k] = v.clone();
    }
    json!({
        "init": {"cmd": ["curl", "https://fly.io"], "swap_size_mb": 512, "entrypoint": ["/bin/sh"]},
        "image": image,
        "env": all_env,
        "metadata": {"fly_platform_version": "v2", "fly_process_group": "fly_app_test_machine_command"},
        "auto_destroy": true,
        "restart": {"policy": "no"},
        "dns": {"skip_registration": true},
        "stop_config": stop,
    })
}

fn machinechecks_fixture() -> (AppConfig, MachineCheck) {
    let (config, _) = AppConfig::load(&fixtures().join("41-flyctl-tomachine-machinechecks.toml")).unwrap();
    let check = config.http_service.as_ref().unwrap().machine_checks[0].clone();
    (config, check)
}

/// flyctl machines_test.go, TestToTestMachineConfig and TestToTestMachineConfigWKillInfo: no
/// machine under test; fly.toml's kill settings do not reach a check with an image of its own.
#[test]
fn flyctl_test_machine_config_without_a_machine() {
    let (mut config, check) = machinechecks_fixture();
    let expected = flyctl_test_machine("curlimages/curl", json!({}), json!({}));
    assert_eq!(config.test_machine_config(&check, None).unwrap(), expected);
    config.kill_signal = Some("SIGABRT".into());
    config.kill_timeout = Some(std::time::Duration::from_secs(60));
    assert_eq!(config.test_machine_config(&check, None).unwrap(), expected);
}

/// flyctl machines_test.go, TestToTestMachineConfigWKillInfoAndOrigMachineKillInfo: the
/// check's own kill settings; the machine's stop config does not count.
#[test]
fn flyctl_test_machine_config_with_the_checks_kill_settings() {
    let (config, mut check) = machinechecks_fixture();
    check.kill_signal = Some("SIGTERM".into());
    check.kill_timeout = Some(std::time::Duration::from_secs(10));
    let machine = tested_machine(json!({"stop_config": {"signal": "SIGTERM", "timeout": "10s"}}));
    assert_eq!(
        config.test_machine_config(&check, Some(&machine)).unwrap(),
        flyctl_test_machine(
            "curlimages/curl",
            json!({}),
            json!({"signal": "SIGTERM", "timeout": "10s"})
        )
    );
}

/// flyctl machines_test.go, TestToTestMachineConfigWKillInfoNoImageAndOrigMachineKillInfo and
/// TestToTestMachineConfigNoImageAndOrigMachineKillInfo: without an image the check runs the
/// machine's, and its kill settings fall back to fly.toml's (not the machine's).
#[test]
fn flyctl_test_machine_config_on_the_machines_image() {
    let (mut config, mut check) = machinechecks_fixture();
    check.image = None;
    config.kill_signal = Some("SIGTERM".into());
    config.kill_timeout = Some(std::time::Duration::from_secs(60));
    let machine = tested_machine(json!({
        "image": "nginx",
        "stop_config": {"signal": "SIGTERM", "timeout": "60s"},
    }));
    assert_eq!(
        config.test_machine_config(&check, Some(&machine)).unwrap(),
        flyctl_test_machine(
            "nginx",
            json!({}),
            json!({"signal": "SIGTERM", "timeout": "1m0s"})
        )
    );
    check.kill_signal = Some("SIGABRT".into());
    check.kill_timeout = Some(std::time::Duration::from_secs(30));
    assert_eq!(
        config.test_machine_config(&check, Some(&machine)).unwrap(),
        flyctl_test_machine("nginx", json!({}), json!({"signal": "SIGABRT", "timeout": "30s"}))
    );
    // flyctl's MissingImage: no image anywhere.
    assert!(matches!(
        config.test_machine_config(&check, None),
        Err(AppConfigError::MachineCheckImage { line: 19, .. })
    ));
}

/// flyctl machines_test.go, TestToTestMachineConfigWTestMachine (input as in fixture 20): the
/// machine's private IP and env (over fly.toml's [env]); the machine's command is not the
/// check's.
#[test]
fn flyctl_test_machine_config_for_a_machine() {
    let (config, _) = AppConfig::load(&fixtures().join("20-flyctl-tomachine.toml")).unwrap();
    let check = &config.http_service.as_ref().unwrap().machine_checks[0];
    let mut machine = tested_machine(json!({
        "env": {"BAR": "BAZ"},
        "init": {"cmd": ["echo", "hello"]},
        "image": "nginx",
    }));
    machine.private_ip = Some("1.2.3.4".into());
    assert_eq!(
        config.test_machine_config(check, Some(&machine)).unwrap(),
        flyctl_test_machine(
            "curlimages/curl",
            json!({"FOO": "BAR", "BAR": "BAZ", "FLY_TEST_MACHINE_IP": "1.2.3.4"}),
            json!({})
        )
    );
}

/// Values `fly deploy` refuses, which nixfly accepted: the release records fly.toml as it is,
/// and flyctl reading that record back (`FromDefinition`, `internal/appconfig/definition.go`,
/// then `mapToConfig` in `patches.go`) fails on them, breaking later `fly` commands for the
/// app. A quoted port is read in `[[services]]` only, as flyctl's `_patchService` does.
#[test]
fn values_flyctl_refuses_are_refused() {
    for (text, expected) in [
        (
            "[http_service]\ninternal_port = \"8080\"\n",
            "fly.toml:2: [http_service] internal_port: expected a port number, got the string \"8080\": flyctl reads a quoted port only in [[services]] and refuses it here; write 8080 without quotes",
        ),
        (
            "[metrics]\nport = \"9091\"\npath = \"/metrics\"\n",
            "fly.toml:2: [metrics] port: expected a port number, got the string \"9091\"",
        ),
        (
            "[[services]]\ninternal_port = 8080\nprotocol = \"tcp\"\n[[services.ports]]\nstart_port = \"8000\"\nend_port = 8010\n",
            "fly.toml:5: [services[0].ports[0]] start_port: expected a port number, got the string \"8000\"",
        ),
        (
            "[http_service]\ninternal_port = 8080\nauto_stop_machines = \"true\"\n",
            "fly.toml:3: [http_service] auto_stop_machines: \"true\" is a string: flyctl refuses it (write true without quotes, or \"off\", \"stop\" or \"suspend\")",
        ),
        (
            "[[mounts]]\nsource = \"data\"\ndestination = \"/data\"\nauto_extend_size_threshold = 80\nauto_extend_size_increment = 1\nauto_extend_size_limit = \"10gb\"\n",
            "fly.toml:5: [mounts[0]] auto_extend_size_increment: expected a size like \"1gb\": flyctl reads this one only as a string and refuses a number",
        ),
        (
            "console_command = \"bin/rails 'console\"\n",
            "fly.toml:1: console_command: cannot split \"bin/rails 'console\" into arguments",
        ),
    ] {
        let found = problems(text);
        assert!(
            found.len() == 1 && found[0].starts_with(expected),
            "{text}\nexpected {expected:?}\nfound {found:#?}"
        );
    }
    // What flyctl does read: quoted ports in [[services]], a number as `initial_size`.
    let (config, _) = parse(
        "[[services]]\ninternal_port = \"8080\"\nprotocol = \"tcp\"\n[[services.ports]]\nport = \"443\"\nhandlers = [\"tls\"]\n\
         \n[[mounts]]\nsource = \"data\"\ndestination = \"/data\"\ninitial_size = 3\n",
    )
    .unwrap();
    let machine = config.machine_config("app").unwrap();
    assert_eq!(machine["services"][0]["internal_port"], 8080);
    assert_eq!(machine["services"][0]["ports"][0]["port"], 443);
}

/// flyctl's `LoadConfig` (`internal/appconfig/serde.go`) reads a `.json` path as JSON: the same
/// config, its problems named by key (no TOML line to point at); `.yaml` is refused with the
/// command that converts it.
#[test]
fn a_fly_json_is_read_as_the_same_config_and_yaml_is_refused_with_the_conversion() {
    let dir = std::env::temp_dir().join(format!("nixfly-flyjson-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let toml_text = std::fs::read_to_string(fixtures().join("02-web-and-worker.toml")).unwrap();
    let (from_toml, _) = parse(&toml_text).unwrap();
    let json_path = dir.join("fly.json");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&from_toml.definition).unwrap(),
    )
    .unwrap();
    let (from_json, warnings) = AppConfig::load(&json_path).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        serde_json::to_value(from_json.machine_configs().unwrap()).unwrap(),
        serde_json::to_value(from_toml.machine_configs().unwrap()).unwrap()
    );

    std::fs::write(&json_path, r#"{"http_service": {"internal_port": "8080"}}"#).unwrap();
    let err = AppConfig::load(&json_path).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "{}: [http_service] internal_port: expected a port number",
            json_path.display()
        )),
        "{err}"
    );
    std::fs::write(&json_path, "[1]").unwrap();
    assert!(
        AppConfig::load(&json_path)
            .unwrap_err()
            .to_string()
            .ends_with("not a JSON object")
    );

    let yaml_path = dir.join("fly.yaml");
    std::fs::write(&yaml_path, "app: demo\n").unwrap();
    let err = AppConfig::load(&yaml_path).unwrap_err().to_string();
    assert!(err.contains("fly config show --local --toml -c"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Values `fly deploy` reads and nixfly refused: a `[[checks]]` list of named checks
/// (`patchTopLevelChecks`, `patches.go`), a fractional `kill_timeout` (its whole seconds,
/// `_castDuration`), an empty `[deploy] strategy` (none: rolling), a `[[vm]]` value of 0
/// (ignored, `computeToGuest`'s IgnoreEmpty copy).
#[test]
fn values_flyctl_reads_are_read_as_it_reads_them() {
    let text = "kill_timeout = 5.5\n\
                [deploy]\nstrategy = \"\"\n\
                [[vm]]\nsize = \"shared-cpu-2x\"\ncpus = 0\nmemory_mb = 0\n\
                [[checks]]\nname = \"alive\"\ntype = \"tcp\"\nport = 8080\ninterval = \"15s\"\ntimeout = \"2s\"\n\
                [[checks]]\nname = \"ready\"\ntype = \"http\"\nport = 8080\npath = \"/ready\"\ninterval = 15000.9\ntimeout = \"2s\"\n";
    let (config, warnings) = parse(text).unwrap();
    let warnings: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "fly.toml:1: kill_timeout: 5.5 is read as 5s, as flyctl reads it",
            "fly.toml:6: [vm[0]] cpus: 0 is ignored, as flyctl ignores it: the size's default stays",
            "fly.toml:7: [vm[0]] memory_mb: 0 is ignored, as flyctl ignores it: the size's default stays",
            "fly.toml:19: [checks[1]] interval: 15000.9 is read as 15000ms, as flyctl reads it",
        ]
    );
    assert_eq!(config.kill_timeout, Some(std::time::Duration::from_secs(5)));
    assert_eq!(config.deploy.strategy, None);
    let machine = config.machine_config("app").unwrap();
    assert_eq!(
        machine["guest"],
        json!({"cpu_kind": "shared", "cpus": 2, "memory_mb": 512})
    );
    assert_eq!(machine["stop_config"]["timeout"], "5s");
    assert_eq!(
        machine["checks"],
        json!({
            "alive": {"type": "tcp", "port": 8080, "interval": "15s", "timeout": "2s"},
            "ready": {"type": "http", "port": 8080, "path": "/ready", "interval": "15s", "timeout": "2s"},
        })
    );
    let found = problems("[[checks]]\ntype = \"tcp\"\nport = 8080\n");
    assert_eq!(
        found,
        ["fly.toml:1: [checks[0]] name: missing: a check in a [[checks]] list needs a name"]
    );
}

/// `[env]` floats come out as flyctl's `%v` writes them. The expected strings were printed by
/// Go 1.19's `fmt.Sprintf("%v", f)` for the same float64 values.
#[test]
fn env_floats_are_written_as_go_writes_them() {
    use super::parse::go_float;
    let cases: [(f64, &str); 22] = [
        (0.0, "0"),
        (-0.0, "-0"),
        (1.0, "1"),
        (-1.5, "-1.5"),
        (0.1, "0.1"),
        (1.0 / 3.0, "0.3333333333333333"),
        (100000.0, "100000"),
        (999999.0, "999999"),
        (1000000.0, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (123456.5, "123456.5"),
        (1e21, "1e+21"),
        (1e-4, "0.0001"),
        (1e-5, "1e-05"),
        (0.000123, "0.000123"),
        (1.5e-7, "1.5e-07"),
        (8080.0, "8080"),
        (-2.5e10, "-2.5e+10"),
        (6.02214076e23, "6.02214076e+23"),
        (f64::INFINITY, "+Inf"),
        (f64::NEG_INFINITY, "-Inf"),
        (f64::MAX, "1.7976931348623157e+308"),
    ];
    for (f, go) in cases {
        assert_eq!(go_float(f), go, "{f:?}");
    }
    assert_eq!(go_float(f64::NAN), "NaN");
    assert_eq!(go_float(5e-324), "5e-324");
    let (config, _) = parse("[env]\nRATIO = 1000000.0\nSMALL = 0.5\n").unwrap();
    assert_eq!(config.env["RATIO"], "1e+06");
    assert_eq!(config.env["SMALL"], "0.5");
}

/// Empty strings flyctl reads as unset (`computeToGuest`'s `Size != ""` and `Memory != ""`,
/// copier's IgnoreEmpty for the guest's other fields, `validateMounts`' `!= ""`) leave the
/// defaults, where a value nixfly did not know would be an error.
#[test]
fn empty_strings_flyctl_reads_as_unset_leave_the_defaults() {
    let text = "[[vm]]\nsize = \"\"\nmemory = \"\"\ncpu_kind = \"\"\npersist_rootfs = \"\"\n\
                [[mounts]]\nsource = \"data\"\ndestination = \"/data\"\ninitial_size = \"\"\n\
                auto_extend_size_increment = \"\"\nauto_extend_size_limit = \"\"\n";
    let (config, warnings) = parse(text).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let machine = config.machine_config("app").unwrap();
    assert_eq!(
        machine["guest"],
        json!({"cpu_kind": "shared", "cpus": 1, "memory_mb": 256})
    );
    assert_eq!(config.mounts[0].initial_size_gb, None);
    assert_eq!(config.mounts[0].auto_extend_size_increment_gb, None);
    // Not empty, still checked.
    assert!(problems("[[vm]]\nsize = \"huge\"\n")[0].contains("is not a machine size"));
}

/// A `[[metrics]]` entry that sets only `processes` leaves flyctl's embedded
/// `*fly.MachineMetrics` nil: the group's machines get no metrics, not `"metrics": {}`.
#[test]
fn metrics_with_only_processes_send_no_metrics() {
    let text = "[processes]\napp = \"run\"\nworker = \"work\"\n\
                [[metrics]]\nprocesses = [\"app\"]\n\
                [[metrics]]\nport = 9091\nprocesses = [\"worker\"]\n";
    let (config, _) = parse(text).unwrap();
    assert!(config.machine_config("app").unwrap().get("metrics").is_none());
    assert_eq!(
        config.machine_config("worker").unwrap()["metrics"],
        json!({"port": 9091})
    );
}

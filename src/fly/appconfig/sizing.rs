//! The machine sizes Fly accepts: a `[[vm]]` that becomes a guest Fly would refuse is an error
//! in fly.toml, found before any upload, rather than a 400 on the first machine update after the
//! image is pushed (or, for a new process group, on its first create).
//!
//! The rules are flyctl's `internal/machine/update.go` (the check `fly machine update` runs
//! before it calls the API, with `cpusPerKind`) and fly-go's `machine_types.go`
//! (`MIN_MEMORY_MB_PER_SHARED_CPU` and friends); Fly's docs (`docs/machines/guides-examples/
//! machine-sizing`) state the same limits. The docs say performance memory comes in 2048 MiB
//! steps where flyctl checks 1024 MiB steps; this follows flyctl, so nixfly never refuses a size
//! that flyctl lets through.
use serde_json::Value;

/// The CPU counts each kind comes in (flyctl's `cpusPerKind`).
const SHARED_CPUS: &[u64] = &[1, 2, 4, 6, 8];
const PERFORMANCE_CPUS: &[u64] = &[1, 2, 4, 6, 8, 10, 12, 14, 16, 32, 64, 128];

/// Why Fly would refuse this Machines API guest: the fly.toml field to blame (`cpus` or
/// `memory`) and what to change. None when Fly takes it.
pub fn guest_problem(guest: &Value) -> Option<(&'static str, String)> {
    let kind = guest.get("cpu_kind").and_then(Value::as_str).unwrap_or("shared");
    let cpus = guest.get("cpus").and_then(Value::as_u64).unwrap_or(1);
    let memory = guest.get("memory_mb").and_then(Value::as_u64).unwrap_or(256);
    // (CPU counts, memory step, least memory per CPU, most memory per CPU), in MiB.
    let (counts, step, min_per_cpu, max_per_cpu) = match kind {
        "shared" => (SHARED_CPUS, 256, 256, 2048),
        "performance" => (PERFORMANCE_CPUS, 1024, 2048, 8192),
        // parse() refuses other kinds.
        _ => return None,
    };
    let cpu_s = if cpus == 1 { "CPU" } else { "CPUs" };
    if !counts.contains(&cpus) {
        let list: Vec<String> = counts.iter().map(u64::to_string).collect();
        return Some((
            "cpus",
            format!("{kind} machines come with {} CPUs, not {cpus}", or_list(&list)),
        ));
    }
    if !memory.is_multiple_of(step) {
        let would_work = (memory - memory % step).max(step);
        return Some((
            "memory",
            format!(
                "{memory} MiB is not a memory size Fly takes for {kind} CPUs: use a multiple of \
                 {step} MiB ({would_work} MiB would work)"
            ),
        ));
    }
    let (least, most) = (min_per_cpu * cpus, max_per_cpu * cpus);
    if memory < least {
        return Some((
            "memory",
            format!(
                "{memory} MiB is too little for {cpus} {kind} {cpu_s}: Fly needs at least \
                 {least} MiB ({min_per_cpu} MiB per CPU)"
            ),
        ));
    }
    if memory > most {
        let fix = if kind == "shared" {
            "add CPUs or use performance CPUs"
        } else {
            "add CPUs"
        };
        return Some((
            "memory",
            format!(
                "{memory} MiB is too much for {cpus} {kind} {cpu_s}: Fly allows at most {most} MiB \
                 ({max_per_cpu} MiB per CPU); {fix}"
            ),
        ));
    }
    None
}

fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problem(kind: &str, cpus: u64, memory: u64) -> Option<String> {
        guest_problem(&json!({"cpu_kind": kind, "cpus": cpus, "memory_mb": memory})).map(|(_, m)| m)
    }

    #[test]
    fn every_preset_is_accepted() {
        for size in crate::fly::appconfig::parse::VM_SIZES {
            let (kind, cpus, memory, _) = crate::fly::appconfig::machine::preset(size).expect("preset");
            assert_eq!(problem(kind, cpus, memory), None, "{size}");
        }
    }

    /// The examples on Fly's machine-sizing page: 4 shared CPUs take up to 8192 MiB, 4
    /// performance CPUs up to 32768 MiB; the least is 256 MiB per shared CPU, 2048 per
    /// performance CPU.
    #[test]
    fn the_limits_fly_documents() {
        assert_eq!(problem("shared", 4, 8192), None);
        assert_eq!(
            problem("shared", 4, 8448).unwrap(),
            "8448 MiB is too much for 4 shared CPUs: Fly allows at most 8192 MiB (2048 MiB per \
             CPU); add CPUs or use performance CPUs"
        );
        assert_eq!(problem("performance", 4, 32768), None);
        assert!(
            problem("performance", 4, 33792)
                .unwrap()
                .contains("at most 32768 MiB")
        );
        assert_eq!(
            problem("shared", 2, 256).unwrap(),
            "256 MiB is too little for 2 shared CPUs: Fly needs at least 512 MiB (256 MiB per CPU)"
        );
        assert!(
            problem("performance", 1, 1024)
                .unwrap()
                .contains("at least 2048 MiB")
        );
    }

    #[test]
    fn steps_and_cpu_counts() {
        assert_eq!(
            problem("shared", 1, 300).unwrap(),
            "300 MiB is not a memory size Fly takes for shared CPUs: use a multiple of 256 MiB \
             (256 MiB would work)"
        );
        assert!(
            problem("shared", 1, 100)
                .unwrap()
                .contains("(256 MiB would work)")
        );
        assert_eq!(problem("performance", 1, 3072), None, "flyctl's 1024 MiB steps");
        assert!(
            problem("performance", 1, 2560)
                .unwrap()
                .contains("(2048 MiB would work)")
        );
        assert_eq!(
            problem("shared", 3, 768).unwrap(),
            "shared machines come with 1, 2, 4, 6 or 8 CPUs, not 3"
        );
        assert_eq!(problem("performance", 32, 65536), None);
        assert!(problem("shared", 16, 4096).unwrap().contains("not 16"));
    }
}

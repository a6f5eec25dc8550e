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
        for size in super::super::parse::VM_SIZES {
            let (kind, cpus, memory, _) = super::super::machine::preset(size).expect("preset");
            assert_eq!(problem(kind, cpus, memory), None, "{size}");
        }
    }

    /// The examples on Fly's machine-sizing page (4 shared CPUs take up to 8192 MiB, 4
    /// performance CPUs up to 32768 MiB; the least is 256 MiB per shared CPU, 2048 per
    /// performance CPU), flyctl's steps and CPU counts, and the messages that name the fix.
    #[test]
    fn limits_steps_and_cpu_counts() {
        let cases: [(&str, u64, u64, Option<&str>); 14] = [
            ("shared", 4, 8192, None),
            (
                "shared",
                4,
                8448,
                Some(
                    "8448 MiB is too much for 4 shared CPUs: Fly allows at most 8192 MiB (2048 MiB per CPU); add CPUs or use performance CPUs",
                ),
            ),
            ("performance", 4, 32768, None),
            (
                "performance",
                4,
                33792,
                Some(
                    "33792 MiB is too much for 4 performance CPUs: Fly allows at most 32768 MiB (8192 MiB per CPU); add CPUs",
                ),
            ),
            (
                "shared",
                2,
                256,
                Some("256 MiB is too little for 2 shared CPUs: Fly needs at least 512 MiB (256 MiB per CPU)"),
            ),
            (
                "performance",
                1,
                1024,
                Some(
                    "1024 MiB is too little for 1 performance CPU: Fly needs at least 2048 MiB (2048 MiB per CPU)",
                ),
            ),
            (
                "shared",
                1,
                300,
                Some(
                    "300 MiB is not a memory size Fly takes for shared CPUs: use a multiple of 256 MiB (256 MiB would work)",
                ),
            ),
            (
                "shared",
                1,
                100,
                Some(
                    "100 MiB is not a memory size Fly takes for shared CPUs: use a multiple of 256 MiB (256 MiB would work)",
                ),
            ),
            // flyctl's 1024 MiB steps for performance CPUs (Fly's docs say 2048).
            ("performance", 1, 3072, None),
            (
                "performance",
                1,
                2560,
                Some(
                    "2560 MiB is not a memory size Fly takes for performance CPUs: use a multiple of 1024 MiB (2048 MiB would work)",
                ),
            ),
            (
                "shared",
                3,
                768,
                Some("shared machines come with 1, 2, 4, 6 or 8 CPUs, not 3"),
            ),
            ("performance", 32, 65536, None),
            (
                "shared",
                16,
                4096,
                Some("shared machines come with 1, 2, 4, 6 or 8 CPUs, not 16"),
            ),
            (
                "performance",
                20,
                40960,
                Some(
                    "performance machines come with 1, 2, 4, 6, 8, 10, 12, 14, 16, 32, 64 or 128 CPUs, not 20",
                ),
            ),
        ];
        for (kind, cpus, memory, expected) in cases {
            assert_eq!(
                problem(kind, cpus, memory).as_deref(),
                expected,
                "{kind} {cpus} {memory}"
            );
        }
    }
}

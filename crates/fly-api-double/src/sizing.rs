//! The guest sizes the double refuses on create and update, as Fly does (400).
//!
//! Rules, in the order flyctl's `internal/machine/update.go` checks them before it calls the
//! API: the CPU kind, the CPU count (`cpusPerKind`), the memory step (256 MiB shared, 1024 MiB
//! performance), then memory per CPU from fly-go's `machine_types.go` (`MIN_MEMORY_MB_PER_*`,
//! `MAX_MEMORY_MB_PER_*`: shared 256-2048, performance 2048-8192). Fly's docs
//! (`docs/machines/guides-examples/machine-sizing`) give the same per-CPU limits. The status and
//! wording of Fly's own refusal are unverified; the Machines OpenAPI file lists 400 for update.
//!
//! Written apart from nixfly's `fly::appconfig::sizing` on purpose: the tests hold the two
//! against each other.
use serde_json::Value;

struct Kind {
    name: &'static str,
    cpus: &'static [i64],
    memory_step: i64,
    memory_per_cpu: (i64, i64),
}

const KINDS: [Kind; 2] = [
    Kind {
        name: "shared",
        cpus: &[1, 2, 4, 6, 8],
        memory_step: 256,
        memory_per_cpu: (256, 2048),
    },
    Kind {
        name: "performance",
        cpus: &[1, 2, 4, 6, 8, 10, 12, 14, 16, 32, 64, 128],
        memory_step: 1024,
        memory_per_cpu: (2048, 8192),
    },
];

/// Why a config's guest would be refused. A config without a guest gets Fly's default size.
pub fn guest_refusal(config: &Value) -> Option<String> {
    let guest = config.get("guest")?;
    let kind_name = guest["cpu_kind"].as_str().unwrap_or("shared");
    let Some(kind) = KINDS.iter().find(|k| k.name == kind_name) else {
        return Some(format!("invalid config.guest.cpu_kind {kind_name:?}"));
    };
    let cpus = guest["cpus"].as_i64().unwrap_or(1);
    if !kind.cpus.contains(&cpus) {
        return Some(format!(
            "invalid config.guest.cpus {cpus} for cpu_kind {kind_name}: valid are {:?}",
            kind.cpus
        ));
    }
    // nixfly always sends memory_mb; what Fly does without it is not modelled.
    let memory = guest["memory_mb"].as_i64()?;
    if memory % kind.memory_step != 0 {
        return Some(format!(
            "invalid config.guest.memory_mb {memory}: {kind_name} memory comes in {} MiB increments",
            kind.memory_step
        ));
    }
    let (low, high) = (kind.memory_per_cpu.0 * cpus, kind.memory_per_cpu.1 * cpus);
    if !(low..=high).contains(&memory) {
        return Some(format!(
            "invalid config.guest.memory_mb {memory}: {cpus} {kind_name} cpus take {low} to {high} MiB"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(kind: &str, cpus: i64, memory: i64) -> bool {
        guest_refusal(&json!({"guest": {"cpu_kind": kind, "cpus": cpus, "memory_mb": memory}})).is_some()
    }

    #[test]
    fn the_documented_examples() {
        // Fly's machine-sizing page: 4 shared CPUs up to 2048 * 4, 4 performance up to 8192 * 4.
        assert!(!refused("shared", 4, 8192));
        assert!(refused("shared", 4, 8192 + 256));
        assert!(!refused("performance", 4, 32768));
        assert!(refused("performance", 4, 32768 + 1024));
        assert!(refused("shared", 2, 256));
        assert!(refused("performance", 1, 1024));
        assert!(refused("shared", 1, 300));
        assert!(refused("shared", 3, 768));
        assert!(refused("gpu", 1, 256));
        assert!(!refused("shared", 1, 256));
        assert!(guest_refusal(&json!({"image": "x"})).is_none());
    }
}

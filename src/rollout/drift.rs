//! fly.toml sections this deploy does not apply: what differs from what the machines run, so
//! that nothing drifts silently. The image and `[env]` are applied, so they are not listed.

use super::plan::Fleet;
use crate::fly::appconfig::{self, AppConfig};

/// One block of lines per process group whose first machine differs from fly.toml.
pub fn lines(config: &AppConfig, fleet: &Fleet) -> Vec<String> {
    let groups = config.process_groups();
    let mut lines = Vec::new();
    for (group, machines) in &fleet.groups {
        let Some(machine) = machines.first() else {
            continue;
        };
        if !groups.contains(group) {
            lines.push(format!(
                "process group {group} is not in {}'s [processes]; its machines get the new image anyway",
                config.path.display()
            ));
            continue;
        }
        let after = config
            .machine_config(group)
            .map_err(|err| err.to_string())
            .and_then(|translated| {
                appconfig::apply::apply(&translated, &machine.config).map_err(|err| err.to_string())
            });
        let after = match after {
            Ok(after) => after,
            Err(err) => {
                lines.push(format!("process group {group}: machine {} {err}", machine.id));
                continue;
            }
        };
        let changes: Vec<String> = appconfig::apply::diff(&machine.config, &after)
            .into_iter()
            .filter(|change| change.path != "env" && !change.path.starts_with("env."))
            .map(|change| format!("  {change}"))
            .collect();
        if !changes.is_empty() {
            lines.push(format!(
                "process group {group}: {} differs from what machine {} runs; this deploy applies \
                 only the image and [env] and does NOT change:",
                config.path.display(),
                machine.id
            ));
            lines.extend(changes);
        }
    }
    lines
}

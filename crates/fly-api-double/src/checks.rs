//! Machine checks (`config.checks`) Fly refuses on create and update (400): polled more often
//! than every 2 seconds, or allowed more than 60 seconds to answer. flyctl's
//! `internal/appconfig/validation.go` (`validateChecksSection`) states both as flaps' limits
//! and refuses such a fly.toml before deploying; the wording of Fly's own refusal is unverified.
//! Service checks (`services[].checks`) are not refused: Fly moves them into 1s-1m.
//!
//! Written apart from nixfly's fly.toml checks on purpose: the tests hold the two against each
//! other.
use serde_json::Value;
use std::time::Duration;

const MIN_INTERVAL: Duration = Duration::from_secs(2);
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a config's machine checks would be refused.
pub fn checks_refusal(config: &Value) -> Option<String> {
    let checks = config.get("checks")?.as_object()?;
    for (name, check) in checks {
        for field in ["interval", "timeout"] {
            let Some(text) = check.get(field).and_then(Value::as_str) else {
                continue;
            };
            let Some(value) = go_duration(text) else {
                return Some(format!(
                    "invalid config.checks.{name}.{field} {text:?}: not a duration"
                ));
            };
            if field == "interval" && value < MIN_INTERVAL {
                return Some(format!(
                    "invalid config.checks.{name}.interval {text}: the minimum is 2s"
                ));
            }
            if field == "timeout" && value > MAX_TIMEOUT {
                return Some(format!(
                    "invalid config.checks.{name}.timeout {text}: the maximum is 60s"
                ));
            }
        }
    }
    None
}

/// A Go `time.Duration` string ("1m30s", "1.5s", "250ms"), as fly-go's `fly.Duration`
/// marshals it.
fn go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&n| n > 0)?;
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(go_duration("0"), Some(Duration::ZERO));
        assert_eq!(go_duration("10"), None);
        assert_eq!(go_duration("s"), None);
    }

    #[test]
    fn limits() {
        let refused = |interval: &str, timeout: &str| {
            checks_refusal(
                &json!({"checks": {"c": {"type": "tcp", "port": 80, "interval": interval, "timeout": timeout}}}),
            )
        };
        assert_eq!(refused("2s", "1m0s"), None);
        assert!(refused("1.999s", "5s").unwrap().contains("interval"));
        assert!(refused("15s", "1m0.001s").unwrap().contains("timeout"));
        assert_eq!(checks_refusal(&json!({"image": "x"})), None);
    }
}

//! The value syntaxes fly.toml borrows from Go: durations as `time.ParseDuration` reads them
//! and `time.Duration.String` prints them (what flyctl sends to the Machines API), and sizes as
//! docker/go-units reads them.

use std::time::Duration;

/// Parse a Go duration: `"5m"`, `"1m30s"`, `"1.5h"`, `"300ms"`, `"0"`. Negative durations are
/// refused: nothing in fly.toml can wait a negative time.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s == "0" || s == "+0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err(format!("{text:?} is negative"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.is_empty() {
        return Err("empty duration; write it like \"10s\" or \"5m\"".into());
    }
    let mut rest = s;
    let mut total_nanos: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(format!(
                "{text:?} is not a duration; write it like \"10s\" or \"5m\""
            ));
        }
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("{text:?} has no unit; write it like \"10s\" or \"5m\"")),
            other => {
                return Err(format!(
                    "{text:?} has an unknown unit {other:?} (units: ns, us, ms, s, m, h)"
                ));
            }
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration"))?;
        total_nanos += value * scale;
    }
    if total_nanos > u64::MAX as f64 {
        return Err(format!("{text:?} is too long"));
    }
    Ok(Duration::from_nanos(total_nanos.round() as u64))
}

/// Format like Go's `time.Duration.String`: `10s`, `5m0s`, `1h0m0s`, `1.5s`, `500ms`, `0s`.
/// flyctl marshals every duration of a machine config this way, so the API sees the same text.
pub fn format_go_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        let (unit, scale) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", decimal(nanos, scale));
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = (nanos / 60_000_000_000) % 60;
    let second_nanos = nanos % 60_000_000_000;
    let seconds = decimal(second_nanos, 1_000_000_000);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// `value / scale` with the fraction's trailing zeros trimmed, as Go prints it.
fn decimal(value: u128, scale: u128) -> String {
    let whole = value / scale;
    let fraction = value % scale;
    if fraction == 0 {
        return whole.to_string();
    }
    let width = scale.to_string().len() - 1;
    let digits = format!("{fraction:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Which multiplier a size suffix means: go-units' `RAMInBytes` is binary (1gb = 1024 MiB),
/// `FromHumanSize` is decimal (1gb = 1000 MB). flyctl uses the first for `[[vm]] memory` and the
/// second for `[[mounts]]` auto-extend sizes.
#[derive(Clone, Copy, Debug)]
pub enum SizeBase {
    Binary,
    Decimal,
}

/// A size like flyctl's `helpers.ParseSize`: a plain integer is already in `unit_bytes`;
/// otherwise `<number>[ ][k|m|g|t|p][i][b]` in bytes, divided by `unit_bytes` (integer division,
/// as flyctl does).
pub fn parse_size(text: &str, base: SizeBase, unit_bytes: u64) -> Result<u64, String> {
    let s = text.trim();
    if let Ok(plain) = s.parse::<u64>() {
        return Ok(plain);
    }
    let number_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_len);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; write it like \"512mb\" or \"1gb\""))?;
    let mut suffix = suffix.strip_prefix(' ').unwrap_or(suffix).to_ascii_lowercase();
    if suffix.ends_with('b') {
        suffix.pop();
    }
    if suffix.len() == 2 && suffix.ends_with('i') {
        suffix.pop();
    }
    let step: f64 = match base {
        SizeBase::Binary => 1024.0,
        SizeBase::Decimal => 1000.0,
    };
    let exponent = match suffix.as_str() {
        "" => 0,
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        "p" => 5,
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit; write it like \"512mb\" or \"1gb\""
            ));
        }
    };
    let bytes = value * step.powi(exponent);
    Ok((bytes as u64) / unit_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_and_print_like_go() {
        for (input, printed) in [
            ("10s", "10s"),
            ("5m", "5m0s"),
            ("1h", "1h0m0s"),
            ("90s", "1m30s"),
            ("1.5s", "1.5s"),
            ("300ms", "300ms"),
            ("1m0s", "1m0s"),
            ("2h45m", "2h45m0s"),
            ("0", "0s"),
            ("1500us", "1.5ms"),
            ("100ns", "100ns"),
        ] {
            let parsed = parse_go_duration(input).unwrap();
            assert_eq!(format_go_duration(parsed), printed, "{input}");
        }
        assert_eq!(parse_go_duration("5m").unwrap(), Duration::from_secs(300));
        for bad in ["", "5", "-1s", "5 minutes", "1.2.3s", "s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn sizes_follow_go_units() {
        let mib = 1024 * 1024;
        assert_eq!(parse_size("1gb", SizeBase::Binary, mib).unwrap(), 1024);
        assert_eq!(parse_size("512mb", SizeBase::Binary, mib).unwrap(), 512);
        assert_eq!(parse_size("2GiB", SizeBase::Binary, mib).unwrap(), 2048);
        assert_eq!(parse_size("1024", SizeBase::Binary, mib).unwrap(), 1024);
        assert_eq!(parse_size("1.5 gb", SizeBase::Binary, mib).unwrap(), 1536);
        let gb = 1_000_000_000;
        assert_eq!(parse_size("10gb", SizeBase::Decimal, gb).unwrap(), 10);
        assert_eq!(parse_size("500mb", SizeBase::Decimal, gb).unwrap(), 0);
        assert!(parse_size("lots", SizeBase::Binary, mib).is_err());
        assert!(parse_size("1xb", SizeBase::Binary, mib).is_err());
    }
}

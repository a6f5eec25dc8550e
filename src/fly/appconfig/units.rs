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

/// A size like flyctl's `helpers.ParseSize` (helpers/units.go): a plain integer is already in
/// `unit_bytes`; anything else goes through go-units v0.5.0's `parseSize` (size.go) and is
/// divided by `unit_bytes` (integer division, as flyctl does). That splits the text after its
/// last digit, `.` or space (one space may stand before the unit: `1 gb`, not `1  gb` nor
/// ` 1gb`), reads the number as a float (`1e3`, `.5`), and takes `b`, or `k`/`m`/`g`/`t`/`p`
/// alone or followed by `b` or `ib`, in any case (`gi` is refused). A negative integer, which
/// flyctl would pass on as is, is refused here.
pub fn parse_size(text: &str, base: SizeBase, unit_bytes: u64) -> Result<u64, String> {
    if let Ok(plain) = text.parse::<u64>() {
        return Ok(plain);
    }
    let not_a_size = || format!("{text:?} is not a size; write it like \"512mb\" or \"1gb\"");
    let sep = text
        .rfind(|c: char| c.is_ascii_digit() || c == '.' || c == ' ')
        .ok_or_else(not_a_size)?;
    let (number, suffix) = if text.as_bytes()[sep] == b' ' {
        (&text[..sep], &text[sep + 1..])
    } else {
        (&text[..=sep], &text[sep + 1..])
    };
    let value: f64 = number.parse().map_err(|_| not_a_size())?;
    if !value.is_finite() || value < 0.0 {
        return Err(not_a_size());
    }
    let bad_unit = || format!("{text:?} has an unknown unit; write it like \"512mb\" or \"1gb\"");
    let suffix = suffix.to_ascii_lowercase();
    let step: f64 = match base {
        SizeBase::Binary => 1024.0,
        SizeBase::Decimal => 1000.0,
    };
    let bytes = match suffix.as_bytes() {
        [] | [b'b'] => value,
        [unit, rest @ ..] if rest.is_empty() || rest == b"b" || rest == b"ib" => {
            let exponent = match unit {
                b'k' => 1,
                b'm' => 2,
                b'g' => 3,
                b't' => 4,
                b'p' => 5,
                _ => return Err(bad_unit()),
            };
            value * step.powi(exponent)
        }
        _ => return Err(bad_unit()),
    };
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

    /// What flyctl's `helpers.ParseSize` over go-units v0.5.0's `RAMInBytes` (MiB) and
    /// `FromHumanSize` (GB) gives for each text: printed by Go 1.19 running those two functions
    /// (None: an error).
    #[test]
    fn sizes_follow_go_units() {
        let cases: [(&str, Option<u64>, Option<u64>); 29] = [
            ("1gb", Some(1024), Some(1)),
            ("512mb", Some(512), Some(0)),
            ("2GiB", Some(2048), Some(2)),
            ("1024", Some(1024), Some(1024)),
            ("1.5 gb", Some(1536), Some(1)),
            ("1gi", None, None),
            ("1g", Some(1024), Some(1)),
            ("1e3", Some(0), Some(0)),
            ("1e3mb", Some(1000), Some(1)),
            (" 1gb", None, None),
            ("1gb ", None, None),
            ("1 gb", Some(1024), Some(1)),
            ("1  gb", None, None),
            ("1.5", Some(0), Some(0)),
            ("+2gb", Some(2048), Some(2)),
            ("-1gb", None, None),
            ("2b", Some(0), Some(0)),
            ("2bb", None, None),
            ("1kib", Some(0), Some(0)),
            ("1kb", Some(0), Some(0)),
            ("1xb", None, None),
            ("lots", None, None),
            ("1.gb", Some(1024), Some(1)),
            (".5gb", Some(512), Some(0)),
            ("1gib", Some(1024), Some(1)),
            ("1GIB", Some(1024), Some(1)),
            ("3.9mb", Some(3), Some(0)),
            ("0gb", Some(0), Some(0)),
            ("007", Some(7), Some(7)),
        ];
        for (text, mib, gb) in cases {
            assert_eq!(
                parse_size(text, SizeBase::Binary, 1024 * 1024).ok(),
                mib,
                "{text:?} in MiB"
            );
            assert_eq!(
                parse_size(text, SizeBase::Decimal, 1_000_000_000).ok(),
                gb,
                "{text:?} in GB"
            );
        }
    }
}

//! Compose durations and byte sizes.

use std::time::Duration;

/// A duration or size string that Compose would reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {reason}")]
pub struct UnitError {
    /// `"duration"` or `"size"`.
    pub what: &'static str,
    /// The text given.
    pub input: String,
    /// Why it was rejected.
    pub reason: String,
}

fn unit_err(what: &'static str, input: &str, reason: impl Into<String>) -> UnitError {
    UnitError {
        what,
        input: input.to_string(),
        reason: reason.into(),
    }
}

/// Parses a Compose duration (`"1m30s"`, `"10s"`, `"500ms"`, `"1h"`, `"2us"`).
///
/// Compose uses Go's duration syntax: one or more `<number><unit>` parts with
/// units `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`; fractions are allowed
/// (`"1.5s"`). A bare number is read as seconds because older Compose files
/// write `stop_grace_period: 10`; `"0"` is zero.
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    const W: &str = "duration";
    let s = input.trim();
    if s.is_empty() {
        return Err(unit_err(W, input, "empty"));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = s.parse().map_err(|_| unit_err(W, input, "number too large"))?;
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| unit_err(W, input, "missing unit (ns, us, ms, s, m, h)"))?;
        if num_len == 0 {
            return Err(unit_err(W, input, "expected a number"));
        }
        let num: f64 = rest[..num_len].parse().map_err(|_| unit_err(W, input, "bad number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(unit_err(
                    W,
                    input,
                    format!("unknown unit {other:?} (use ns, us, ms, s, m, h)"),
                ));
            }
        };
        total += num * factor;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|e| unit_err(W, input, e.to_string()))
}

/// Parses a Compose byte size (`"512m"`, `"1g"`, `"100k"`, `"1024b"`, `"2048"`).
///
/// Units are binary (`k` = 1024) and case-insensitive, with an optional
/// trailing `b` (`"512mb"`), as Docker reads `shm_size` and memory limits.
pub fn parse_size(input: &str) -> Result<u64, UnitError> {
    const W: &str = "size";
    let s = input.trim().to_ascii_lowercase();
    let num_len = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    if num_len == 0 {
        return Err(unit_err(W, input, "expected a number"));
    }
    let num: f64 = s[..num_len].parse().map_err(|_| unit_err(W, input, "bad number"))?;
    let factor: u64 = match s[num_len..].trim() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        "t" | "tb" => 1 << 40,
        other => {
            return Err(unit_err(W, input, format!("unknown unit {other:?} (use b, k, m, g)")));
        }
    };
    let bytes = num * factor as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(unit_err(W, input, "too large"));
    }
    Ok(bytes.round() as u64)
}

/// Reads a Compose boolean: YAML `true`/`false` or the strings `"true"`/`"false"`
/// (which interpolation produces, e.g. `read_only: ${RO:-true}`).
pub(crate) fn parse_bool_str(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" => Some(true),
        "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_go_syntax_are_parsed() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("2us").unwrap(), Duration::from_micros(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
    }

    #[test]
    fn durations_with_unknown_units_are_rejected_with_the_input() {
        let err = parse_duration("10 days").unwrap_err().to_string();
        assert!(err.contains("\"10 days\""), "{err}");
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1d").is_err());
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("100k").unwrap(), 100 << 10);
        assert_eq!(parse_size("1024b").unwrap(), 1024);
        assert_eq!(parse_size("2048").unwrap(), 2048);
        assert_eq!(parse_size("256mb").unwrap(), 256 << 20);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
    }

    #[test]
    fn sizes_with_unknown_units_are_rejected() {
        assert!(parse_size("12q").is_err());
        assert!(parse_size("m").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn boolean_strings_are_understood() {
        assert_eq!(parse_bool_str("true"), Some(true));
        assert_eq!(parse_bool_str("False"), Some(false));
        assert_eq!(parse_bool_str("maybe"), None);
    }
}

//! Human-friendly durations (`5s`, `500ms`, `1.5m`) and sizes (`512MiB`, `1GiB`, `64k`) for CLI flags and TOML.

use std::time::Duration;

use crate::error::{Error, Result};

/// Parse `500ms`, `5s`, `1.5s`, `2m`, `1h`, `250us`; a bare number means seconds.
pub fn parse_duration(input: &str) -> Result<Duration> {
    let err = |why: &str| Error::Unit { input: input.to_string(), what: "duration", why: why.to_string() };
    let s = input.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| err("expected a number followed by ms, s, m or h"))?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(err("unknown unit (use us, ms, s, m or h)")),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(err("out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parse `512MiB`, `1GiB`, `64KiB`, `10MB`, `1.5G`, `4096`; a bare number means bytes. `k`/`M`/`G` without `i` are
/// read as binary units too (as `ulimit`, `docker --memory` do); `KB`/`MB`/`GB` are decimal.
pub fn parse_size(input: &str) -> Result<u64> {
    let err = |why: &str| Error::Unit { input: input.to_string(), what: "size", why: why.to_string() };
    let s = input.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| err("expected a number followed by a unit such as MiB"))?;
    let mult: f64 = match unit.trim() {
        "" | "B" | "b" => 1.0,
        "k" | "K" | "KiB" | "Ki" => 1024.0,
        "M" | "m" | "MiB" | "Mi" => 1024.0 * 1024.0,
        "G" | "g" | "GiB" | "Gi" => 1024.0 * 1024.0 * 1024.0,
        "T" | "TiB" | "Ti" => 1024.0f64.powi(4),
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => return Err(err("unknown unit (use B, KiB, MiB, GiB, KB, MB, GB)")),
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(err("out of range"));
    }
    Ok(bytes.round() as u64)
}

/// Format a byte count the way [`parse_size`] reads it back (`512MiB`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (name, mult) in UNITS {
        if bytes >= mult && bytes.is_multiple_of(mult) {
            return format!("{}{name}", bytes / mult);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_parse_human_forms() -> anyhow::Result<()> {
        assert_eq!(parse_duration("5s")?, Duration::from_secs(5));
        assert_eq!(parse_duration("500ms")?, Duration::from_millis(500));
        assert_eq!(parse_duration("1.5")?, Duration::from_millis(1500));
        assert_eq!(parse_duration("2m")?, Duration::from_secs(120));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
        Ok(())
    }

    #[test]
    fn sizes_parse_human_forms() -> anyhow::Result<()> {
        assert_eq!(parse_size("512MiB")?, 512 << 20);
        assert_eq!(parse_size("1GiB")?, 1 << 30);
        assert_eq!(parse_size("64k")?, 64 << 10);
        assert_eq!(parse_size("10MB")?, 10_000_000);
        assert_eq!(parse_size("4096")?, 4096);
        assert!(parse_size("12 parsecs").is_err());
        Ok(())
    }

    proptest! {
        #[test]
        fn format_size_round_trips(n in 0u64..(1 << 40)) {
            prop_assert_eq!(parse_size(&format_size(n)).map_err(|e| TestCaseError::fail(e.to_string()))?, n);
        }

        #[test]
        fn duration_parser_never_panics(s in "\\PC{0,12}") {
            let _ = parse_duration(&s);
            let _ = parse_size(&s);
        }
    }
}

//! Durations on the command line: `500ms`, `10s`, `2m`, `24h`, `365d`, `10y`.

use std::time::Duration;

/// Parses `<number><unit>` with unit `ms`, `s`, `m`, `h`, `d` or `y` (365 days).
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit; use e.g. 500ms, 10s, 2m, 24h, 365d, 10y"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} does not start with a number"))?;
    let secs = |k: u64| Duration::from_secs(n.saturating_mul(k));
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        "y" => secs(365 * 86_400),
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}; use ms, s, m, h, d or y"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("1y").unwrap(), Duration::from_secs(365 * 86_400));
        assert!(parse("10").unwrap_err().contains("no unit"));
        assert!(parse("10w").unwrap_err().contains("unknown unit"));
    }
}

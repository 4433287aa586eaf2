//! Sizes (`"4MiB"`) and durations (`"30s"`) as written in the agent's and the hub's
//! configuration files: one parser, so both accept the same units.

use std::time::Duration;

/// Parses `"1GiB"`, `"512MiB"`, `"4MB"`, `"1024"` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let expected = || {
        crate::tr!(
            "`{t}` is not a size; expected a number of bytes or a string such as \"4MiB\" (units B, KiB, MiB, GiB, TiB, KB, MB, GB)",
            "`{t}` 不是有效的大小；应为字节数，或 \"4MiB\" 这样带单位的字符串（单位可用 B、KiB、MiB、GiB、TiB、KB、MB、GB）"
        )
    };
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| expected())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(expected()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| crate::tr!("`{t}` is too large", "大小 `{t}` 超出上限"))
}

/// Parses `"30s"`, `"5m"`, `"2h"`, `"1d"`, `"500ms"`, `"1m30s"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        crate::tr!(
            "`{s}` is not a duration; expected e.g. \"30s\", \"5m\", \"2h\" or \"500ms\"",
            "`{s}` 不是有效的时长；应写成 \"30s\"、\"5m\"、\"2h\" 或 \"500ms\" 这样的形式"
        )
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (num, tail) = rest.split_at(split);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let too_long = || crate::tr!("`{s}` is too long", "时长 `{s}` 超出上限");
        let secs = |mult: u64| {
            n.checked_mul(mult)
                .map(Duration::from_secs)
                .ok_or_else(too_long)
        };
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => secs(1)?,
            "m" => secs(60)?,
            "h" => secs(3600)?,
            "d" => secs(86400)?,
            _ => return Err(bad()),
        };
        total = total.checked_add(part).ok_or_else(too_long)?;
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("4 furlongs").is_err());
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("18446744073709551615s1s").is_err());
        assert!(parse_duration("999999999999999999d").is_err());
    }
}

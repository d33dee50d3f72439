//! Durations (`250ms`, `1m30s`), sizes (`512KiB`), permissions (`"0640"`) and signal names, as users write them.

use std::time::Duration;

/// Parses `250ms`, `10s`, `1m30s`, `2h`, `1d`, or `0`. A bare number other than 0 is refused: the
/// unit is what tells `60` seconds from `60` milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err("empty duration; write it with a unit, e.g. `10s` or `250ms`".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("`{s}` is not a duration; write a number then a unit, e.g. `10s`, `250ms`, `1m30s`"));
        }
        let (num, tail) = rest.split_at(digits);
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let n: f64 = num.parse().map_err(|_| format!("`{s}`: `{num}` is not a number"))?;
        let secs = match unit {
            "ns" => n / 1e9,
            "us" | "µs" => n / 1e6,
            "ms" => n / 1e3,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            "d" => n * 86400.0,
            "" => return Err(format!("`{s}` has no unit; write e.g. `{num}s` or `{num}ms`")),
            other => return Err(format!("`{s}`: unknown unit `{other}` (use ns, us, ms, s, m, h or d)")),
        };
        total += Duration::from_secs_f64(secs);
        rest = tail;
    }
    Ok(total)
}

/// Formats a duration the way `parse_duration` reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms % 1000 != 0 {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

/// Parses a size: `1048576`, `512KiB`, `4MiB`, `1GiB` (also KB/MB/GB as powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size; write e.g. `1048576`, `512KiB` or `4MiB`"))?;
    let mul: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("`{s}`: unknown size unit `{other}` (use KiB, MiB, GiB)")),
    };
    n.checked_mul(mul).ok_or_else(|| format!("`{s}` is too large"))
}

/// Parses an octal permission string such as `"0640"` or `"640"`.
pub fn parse_perms(s: &str) -> Result<u32, String> {
    let t = s.trim().trim_start_matches("0o");
    let mode = u32::from_str_radix(t, 8)
        .map_err(|_| format!("`{s}` is not an octal mode; write it quoted, e.g. perms: \"0640\""))?;
    if mode > 0o7777 {
        return Err(format!("`{s}` is larger than 07777"));
    }
    Ok(mode)
}

/// The signals kvsync can send, by name (`SIGHUP` or `HUP`, any case).
pub fn parse_signal(s: &str) -> Result<i32, String> {
    let up = s.trim().to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    Ok(match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        "CONT" => 18,
        "STOP" => 19,
        "WINCH" => 28,
        _ => {
            return Err(format!(
                "unknown signal `{s}`; use one of SIGHUP, SIGINT, SIGQUIT, SIGKILL, SIGUSR1, SIGUSR2, SIGTERM, SIGCONT, SIGSTOP, SIGWINCH"
            ))
        }
    })
}

/// The name of a signal number, for messages.
pub fn signal_name(n: i32) -> &'static str {
    match n {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        12 => "SIGUSR2",
        15 => "SIGTERM",
        18 => "SIGCONT",
        19 => "SIGSTOP",
        28 => "SIGWINCH",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("60").unwrap_err().contains("no unit"));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("10y").unwrap_err().contains("unknown unit `y`"));
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn sizes_perms_signals() {
        assert_eq!(parse_size("512KiB").unwrap(), 524288);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_perms("0640").unwrap(), 0o640);
        assert_eq!(parse_perms("600").unwrap(), 0o600);
        assert!(parse_perms("0999").is_err());
        assert_eq!(parse_signal("sighup").unwrap(), 1);
        assert_eq!(parse_signal("TERM").unwrap(), 15);
        assert!(parse_signal("SIGFOO").unwrap_err().contains("SIGHUP"));
    }
}

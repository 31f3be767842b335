//! Sizes, rates and durations as people read them, one way everywhere: the shell's tables
//! and bars, and the lines sync writes to its activity feed.

/// Sizes as people read them: `512 B`, `1.5 KiB`, `3.0 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Durations as people read them: `42s`, `3m05s`, `2h10m`.
pub fn human_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// A rate in bytes per second as people read it: `41.0 MiB/s`.
pub fn human_rate(bytes_per_second: u64) -> String {
    format!("{}/s", human_size(bytes_per_second))
}

/// The time left for `left` bytes at `bytes_per_second`, in seconds; `None` when nothing
/// moves yet (no estimate is better than an infinite one).
pub fn eta_seconds(left: u64, bytes_per_second: u64) -> Option<u64> {
    (bytes_per_second > 0).then(|| left.div_ceil(bytes_per_second))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes take the largest unit under 1024 with one decimal; bytes stay whole.
    #[test]
    fn sizes() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }

    /// Rates are sizes per second.
    #[test]
    fn rates() {
        assert_eq!(human_rate(0), "0 B/s");
        assert_eq!(human_rate(41 << 20), "41.0 MiB/s");
    }

    /// The time left rounds up (a transfer one byte short is not "0s left") and is unknown
    /// while nothing moves.
    #[test]
    fn time_left() {
        assert_eq!(eta_seconds(100, 0), None);
        assert_eq!(eta_seconds(0, 10), Some(0));
        assert_eq!(eta_seconds(101, 10), Some(11));
        assert_eq!(eta_seconds(800 << 20, 32 << 20), Some(25));
    }

    /// Durations: seconds, then minutes and seconds, then hours and minutes.
    #[test]
    fn durations() {
        assert_eq!(human_duration(4.4), "4s");
        assert_eq!(human_duration(185.0), "3m05s");
        assert_eq!(human_duration(7800.0), "2h10m");
    }
}

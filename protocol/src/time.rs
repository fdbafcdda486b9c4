//! Times for people: signed times (milliseconds since the Unix epoch, UTC) as dates, and
//! durations in their two largest units. Pure functions: the caller supplies `now`.

/// Days since 1970-01-01 to a civil date (proleptic Gregorian).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A UTC date and time: `2026-11-23 06:10:00 UTC`.
pub fn date(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!("{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

/// A UTC date and time to the millisecond: `2026-11-23 06:10:00.781 UTC`.
pub fn date_ms(ms: u64) -> String {
    let d = date(ms);
    let (day_time, _) = d.split_at(d.len() - " UTC".len());
    format!("{day_time}.{:03} UTC", ms % 1000)
}

/// A duration to the millisecond when it is short (`0.150 s`, `12.004 s`), else as
/// [`duration`].
pub fn duration_ms(ms: u64) -> String {
    if ms < 60_000 { format!("{}.{:03} s", ms / 1000, ms % 1000) } else { duration(ms) }
}

/// A duration in the two largest units: `3 h 12 min`, `45 s`, `2 d 4 h`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec} s"),
        (0, 0, _) if sec == 0 => format!("{m} min"),
        (0, 0, _) => format!("{m} min {sec} s"),
        (0, _, 0) => format!("{h} h"),
        (0, _, _) => format!("{h} h {m} min"),
        (_, 0, _) => format!("{d} d"),
        _ => format!("{d} d {h} h"),
    }
}

/// A time relative to `now`: `2026-11-23 06:10:00 UTC (in 3 h 12 min)` or `(5 min ago)`.
pub fn when(ms: u64, now: u64) -> String {
    if ms >= now {
        format!("{} (in {})", date(ms), duration(ms - now))
    } else {
        format!("{} ({} ago)", date(ms), duration(now - ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_durations() {
        assert_eq!(date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(date(1_795_450_583_781), "2026-11-23 16:16:23 UTC");
        assert_eq!(date(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(duration(11_520_000), "3 h 12 min");
        assert_eq!(duration(45_000), "45 s");
        assert_eq!(duration(187_200_000), "2 d 4 h");
        assert_eq!(when(10_000, 4_000), "1970-01-01 00:00:10 UTC (in 6 s)");
        assert_eq!(when(4_000, 10_000), "1970-01-01 00:00:04 UTC (6 s ago)");
        assert_eq!(date_ms(1_795_450_583_781), "2026-11-23 16:16:23.781 UTC");
        assert_eq!(duration_ms(150), "0.150 s");
        assert_eq!(duration_ms(61_000), "1 min 1 s");
    }
}

//! Event times as the report prints them: UTC, to the minute on axes.

use std::time::{Duration, UNIX_EPOCH};

/// `2025-11-20 13:37:00 UTC`.
pub fn utc(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{} {} UTC", &s[..10], &s[11..19])
}

/// `13:37`: axis labels (the page header says which day).
pub fn hhmm(ms: i64) -> String {
    utc(ms)[11..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_event_time_in_utc() {
        assert_eq!(utc(1_763_645_820_000), "2025-11-20 13:37:00 UTC");
        assert_eq!(hhmm(1_763_645_820_000), "13:37");
        assert_eq!(utc(-5), "1970-01-01 00:00:00 UTC");
    }
}

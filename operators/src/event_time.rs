//! Which event times are believable, per input (a file, a Kafka partition).
//!
//! The watermark follows the newest event time an input delivers, so one
//! event with a skewed producer clock (hours ahead) would make every later
//! real event "late" and hide an incident, and a producer sending seconds
//! instead of milliseconds would write points dated 1970. The guard sits in
//! the decode stage, before an event reaches the window engine:
//!
//! - `ts` must read as milliseconds between 2000 and 2100; otherwise the
//!   reason says which unit it looks like (seconds, microseconds,
//!   nanoseconds).
//! - It may be at most `max_event_age` behind the newest event time the
//!   input has delivered.
//! - It may be at most `max_future_skew` ahead of the wall clock (the live
//!   monitor), and at most that far ahead of the input's newest event time,
//!   unless the input really jumped: [`JUMP_CONFIRMATION`] events in a row
//!   that far ahead (traffic after a quiet night, a backfill's gap), or, live,
//!   an event within `max_future_skew` of the wall clock (real-time traffic
//!   after a quiet spell). Offline such an event is [`Check::Ahead`]: the
//!   caller holds it until the input shows which it is, and the median of
//!   the held events decides ([`EventTimeGuard::settle`]); so are an input's
//!   first events, so that a skewed first line cannot set its time. Live
//!   nothing can be held (offsets are committed in order): the events of an
//!   unconfirmed jump go to the DLQ with their reason.
//!
//! Known limit: a burst of [`JUMP_CONFIRMATION`] or more skewed events in a
//! row is taken for a real jump.
//!
//! Kafka's own `message.timestamp.difference.max.ms` bounds broker-side
//! timestamps against the broker clock the same way.

use std::time::Duration;

use infermon_schemas::decode::{PLAUSIBLE_MS, unit_of};

/// The low-cardinality reason code of events rejected here (counters,
/// rejects file, DLQ).
pub const REASON_CODE: &str = "implausible_ts";

/// Consecutive events this far ahead of an input's progress that confirm
/// the input really moved on (offline).
pub const JUMP_CONFIRMATION: usize = 8;

/// What the guard says of one event time.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// Believable; the input's progress now includes it.
    Accept,
    /// Not believable: the reason (for the DLQ / rejects file; it starts
    /// with `ts:`).
    Reject(String),
    /// Offline only: more than `max_future_skew` ahead of the input's
    /// progress. Hold it; [`EventTimeGuard::jump`] if the input goes on
    /// from there, else reject it with [`EventTimeGuard::ahead_reason`].
    Ahead,
}

/// Event-time plausibility of one input.
#[derive(Debug, Clone)]
pub struct EventTimeGuard {
    max_future_ms: i64,
    max_age_ms: i64,
    /// Newest event time accepted.
    progress: Option<i64>,
    /// Live: events in a row refused for being far ahead of `progress`.
    ahead_run: usize,
}

impl EventTimeGuard {
    /// A guard for one input.
    pub fn new(max_future_skew: Duration, max_event_age: Duration) -> Self {
        Self {
            max_future_ms: max_future_skew.as_millis() as i64,
            max_age_ms: max_event_age.as_millis() as i64,
            progress: None,
            ahead_run: 0,
        }
    }

    /// Judge `ts` (ms); `wall_now_ms` is the wall clock in the live
    /// monitor, `None` offline.
    pub fn check(&mut self, ts: i64, wall_now_ms: Option<i64>) -> Check {
        if !PLAUSIBLE_MS.contains(&ts) {
            return Check::Reject(unit_reason(ts));
        }
        if let Some(now) = wall_now_ms
            && ts - now > self.max_future_ms
        {
            return Check::Reject(format!(
                "ts: {} is {} ahead of the wall clock (max_future_skew {}): a skewed producer clock?",
                rfc3339(ts),
                span(ts - now),
                span(self.max_future_ms)
            ));
        }
        let Some(p) = self.progress else {
            // Offline, the first events are held until there are enough to
            // tell the input's time from a skewed one (see `settle`).
            return if wall_now_ms.is_none() {
                Check::Ahead
            } else {
                self.accept(ts)
            };
        };
        if p - ts > self.max_age_ms {
            return Check::Reject(format!(
                "ts: {} is {} behind this input's newest event time {} (max_event_age {})",
                rfc3339(ts),
                span(p - ts),
                rfc3339(p),
                span(self.max_age_ms)
            ));
        }
        let real_time = wall_now_ms.is_some_and(|now| (now - ts).abs() <= self.max_future_ms);
        if ts - p > self.max_future_ms && !real_time {
            if wall_now_ms.is_none() {
                return Check::Ahead;
            }
            self.ahead_run += 1;
            if self.ahead_run < JUMP_CONFIRMATION {
                return Check::Reject(self.ahead_reason(ts));
            }
        }
        self.accept(ts)
    }

    fn accept(&mut self, ts: i64) -> Check {
        self.ahead_run = 0;
        self.progress = Some(self.progress.map_or(ts, |p| p.max(ts)));
        Check::Accept
    }

    /// Whether the input's time is known yet (offline, the first events are
    /// held until [`EventTimeGuard::settle`]).
    pub fn has_progress(&self) -> bool {
        self.progress.is_some()
    }

    /// Offline: decide the held events (their event times, in order) once
    /// the input confirmed a jump ([`JUMP_CONFIRMATION`] of them) or, for
    /// the first events of an input, once there are that many or the input
    /// ended. Those within `max_future_skew` of the held events' median are
    /// the input's time and are kept (`true`); the rest are outliers, to be
    /// rejected with [`EventTimeGuard::ahead_reason`].
    pub fn settle(&mut self, held: &[i64]) -> Vec<bool> {
        let mut sorted = held.to_vec();
        sorted.sort_unstable();
        let Some(&median) = sorted.get(sorted.len().saturating_sub(1) / 2) else {
            return Vec::new();
        };
        let keep: Vec<bool> = held
            .iter()
            .map(|&ts| ts - median <= self.max_future_ms && median - ts <= self.max_age_ms)
            .collect();
        for (&ts, _) in held.iter().zip(&keep).filter(|(_, k)| **k) {
            self.progress = Some(self.progress.map_or(ts, |p| p.max(ts)));
        }
        self.ahead_run = 0;
        keep
    }

    /// Why an event at `ts`, far from the rest of the input, is rejected.
    pub fn ahead_reason(&self, ts: i64) -> String {
        let p = self.progress.unwrap_or(ts);
        let (gap, side) = if ts >= p {
            (ts - p, "ahead of")
        } else {
            (p - ts, "behind")
        };
        format!(
            "ts: {} is {} {side} this input's newest event time {} (max_future_skew {}): a skewed producer clock?",
            rfc3339(ts),
            span(gap),
            rfc3339(p),
            span(self.max_future_ms)
        )
    }
}

/// The reason for a `ts` outside the plausible range, naming the unit it
/// looks like.
fn unit_reason(ts: i64) -> String {
    match unit_of(ts as f64) {
        Some(unit) => format!(
            "ts: {ts} is not milliseconds since the Unix epoch (as ms it is {}); it looks like {unit}",
            rfc3339(ts)
        ),
        None => format!(
            "ts: {ts} is not milliseconds since the Unix epoch between 2000 and 2100 (as ms it is {})",
            rfc3339(ts)
        ),
    }
}

/// A duration for humans, to the second.
fn span(ms: i64) -> String {
    humantime::format_duration(Duration::from_secs(ms.max(0) as u64 / 1000)).to_string()
}

/// Event time as RFC 3339 (UTC), or the raw number when out of range.
fn rfc3339(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) if ms < 253_402_300_800_000 => {
            humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        }
        _ => format!("{ms} ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_996_800_000; // 2026-11-30T00:00:00Z
    const MIN: i64 = 60_000;

    fn guard() -> EventTimeGuard {
        EventTimeGuard::new(Duration::from_secs(300), Duration::from_secs(7 * 86_400))
    }

    fn rejected(c: Check) -> String {
        match c {
            Check::Reject(r) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn wrong_units_are_named() {
        let mut g = guard();
        for (ts, unit) in [
            (T0 / 1000, "seconds"),
            (T0 * 1000, "microseconds"),
            (T0 * 1_000_000, "nanoseconds"),
            (1_500_000_000, "seconds"),
        ] {
            let r = rejected(g.check(ts, None));
            assert!(
                r.starts_with("ts: ") && r.ends_with(&format!("looks like {unit}")),
                "{r}"
            );
        }
        let r = rejected(g.check(-5, None));
        assert!(r.contains("between 2000 and 2100"), "{r}");
        assert_eq!(
            g.check(T0, None),
            Check::Ahead,
            "offline, first events are held"
        );
        assert_eq!(g.check(T0, Some(T0)), Check::Accept);
    }

    #[test]
    fn the_wall_clock_bounds_the_future_live() {
        let mut g = guard();
        assert_eq!(g.check(T0 + 4 * MIN, Some(T0)), Check::Accept);
        let r = rejected(g.check(T0 + 6 * 60 * MIN, Some(T0)));
        assert!(r.contains("6h ahead of the wall clock"), "{r}");
        // Old data (a backfill) is fine live, as long as it is not ancient
        // for its own input.
        assert_eq!(g.check(T0 - 2 * 86_400_000, Some(T0)), Check::Accept);
        let r = rejected(g.check(T0 - 9 * 86_400_000, Some(T0)));
        assert!(r.contains("behind this input's newest event time"), "{r}");
    }

    #[test]
    fn live_a_far_ahead_event_of_a_backfill_is_refused_until_the_input_confirms_the_jump() {
        // A backfill: the data is hours behind the wall clock.
        let wall = T0 + 15 * 60 * MIN;
        let mut g = guard();
        assert_eq!(g.check(T0, Some(wall)), Check::Accept);
        let r = rejected(g.check(T0 + 6 * 60 * MIN, Some(wall)));
        assert!(r.contains("ahead of this input's newest event time"), "{r}");
        assert_eq!(g.check(T0 + MIN, Some(wall)), Check::Accept);
        // A real gap in the backfill: the first events of the run are
        // refused, then the input has moved on.
        let later = T0 + 3 * 60 * MIN;
        for i in 0..JUMP_CONFIRMATION as i64 - 1 {
            assert!(matches!(g.check(later + i, Some(wall)), Check::Reject(_)));
        }
        assert_eq!(g.check(later + 10, Some(wall)), Check::Accept);
        assert_eq!(g.check(later + 11, Some(wall)), Check::Accept);
        // Real-time traffic after a quiet spell is what the wall clock says.
        let mut g = guard();
        assert_eq!(g.check(wall - 60 * MIN, Some(wall)), Check::Accept);
        assert_eq!(g.check(wall - 1000, Some(wall)), Check::Accept);
    }

    #[test]
    fn offline_a_jump_is_held_until_the_input_confirms_it() {
        let mut g = guard();
        // The first events are held until the input's time is known.
        assert_eq!(g.check(T0, None), Check::Ahead);
        assert_eq!(g.settle(&[T0]), vec![true]);
        assert_eq!(g.check(T0 + 6 * 60 * MIN, None), Check::Ahead);
        // The input goes on in line: that event was an outlier.
        assert_eq!(g.check(T0 + MIN, None), Check::Accept);
        let r = g.ahead_reason(T0 + 6 * 60 * MIN);
        assert!(
            r.contains("5h 59m ahead of this input's newest event time"),
            "{r}"
        );
        // A real jump, with an outlier of its own among the held events:
        // the median decides.
        let later = T0 + 3 * 60 * MIN;
        let mut held: Vec<i64> = (0..7).map(|i| later + i * 1000).collect();
        held.insert(3, later + 3 * 24 * 60 * MIN);
        assert_eq!(
            g.settle(&held),
            vec![true, true, true, false, true, true, true, true]
        );
        assert_eq!(g.check(later + 10_000, None), Check::Accept);
        assert_eq!(g.check(later + 17 * MIN, None), Check::Ahead);
    }

    #[test]
    fn offline_a_skewed_first_event_is_told_by_the_ones_after_it() {
        let mut g = guard();
        let mut held = vec![T0 + 6 * 60 * MIN];
        held.extend((0..7).map(|i| T0 + i * 1000));
        for &ts in &held {
            assert_eq!(g.check(ts, None), Check::Ahead);
        }
        assert_eq!(
            g.settle(&held),
            vec![false, true, true, true, true, true, true, true]
        );
        assert_eq!(g.check(T0 + 8000, None), Check::Accept);
    }
}

//! Watermarks: how far event time has progressed, across all inputs.
//!
//! Each input (a file, a Kafka partition) tracks the newest event time it has
//! delivered. The watermark is the minimum over inputs that are still live,
//! minus the allowed lateness, and it never goes backwards. An input that is
//! finished, or idle for longer than the idle timeout, stops holding it back;
//! when *every* input is idle or finished the newest event time of any input
//! is used, so the last windows of a stream that went quiet still close.

/// Identifies an input to the tracker.
pub type InputId = usize;

#[derive(Debug, Clone)]
struct Input {
    max_ts: Option<i64>,
    last_active_ms: i64,
    finished: bool,
}

/// Per-input event-time progress, merged by minimum.
#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    lateness_ms: i64,
    idle_timeout_ms: i64,
    inputs: Vec<Input>,
    current: Option<i64>,
}

impl WatermarkTracker {
    /// A tracker with no inputs yet.
    pub fn new(lateness_ms: i64, idle_timeout_ms: i64) -> Self {
        Self {
            lateness_ms,
            idle_timeout_ms,
            inputs: Vec::new(),
            current: None,
        }
    }

    /// Register an input; until it delivers data or goes idle it holds the
    /// watermark back (it may have older events to come). `now_ms` is
    /// processing time, used only for idleness.
    pub fn add_input(&mut self, now_ms: i64) -> InputId {
        self.inputs.push(Input {
            max_ts: None,
            last_active_ms: now_ms,
            finished: false,
        });
        self.inputs.len() - 1
    }

    /// Record that `input` delivered events up to `max_ts`.
    ///
    /// An idle input that delivers again wakes every input: after a quiet
    /// spell the others get `idle_timeout` to show their data too, rather
    /// than having the first partition to speak run the watermark past them.
    pub fn observe(&mut self, input: InputId, max_ts: i64, now_ms: i64) {
        if now_ms - self.inputs[input].last_active_ms >= self.idle_timeout_ms {
            for other in self.inputs.iter_mut().filter(|i| !i.finished) {
                other.last_active_ms = other.last_active_ms.max(now_ms);
            }
        }
        let i = &mut self.inputs[input];
        i.max_ts = Some(i.max_ts.map_or(max_ts, |m| m.max(max_ts)));
        i.last_active_ms = now_ms;
        i.finished = false;
    }

    /// `input` is known to have data still to deliver (e.g. a partition
    /// with consumer lag): silence does not make it idle.
    pub fn touch(&mut self, input: InputId, now_ms: i64) {
        let i = &mut self.inputs[input];
        i.last_active_ms = i.last_active_ms.max(now_ms);
    }

    /// The input has no more data (end of file, partition revoked).
    pub fn finish(&mut self, input: InputId) {
        self.inputs[input].finished = true;
    }

    /// The current watermark (`None` before any event time is known).
    pub fn current(&self) -> Option<i64> {
        self.current
    }

    /// What the other live inputs allow, for judging rows of `input` one by
    /// one inside a batch: `None` when one of them has no data yet (it holds
    /// the watermark where it is), `Some(None)` when no other input is live,
    /// else `Some(Some(min of their newest event times))`.
    pub fn others_bound(&self, input: InputId, now_ms: i64) -> Option<Option<i64>> {
        let mut bound = None;
        for (id, i) in self.inputs.iter().enumerate() {
            if id == input || i.finished || now_ms - i.last_active_ms >= self.idle_timeout_ms {
                continue;
            }
            let m = i.max_ts?;
            bound = Some(bound.map_or(m, |b: i64| b.min(m)));
        }
        Some(bound)
    }

    /// The watermark once `input` has delivered up to `input_max`, given
    /// `others` from [`WatermarkTracker::others_bound`]. Never below the
    /// current watermark.
    pub fn with_input_at(&self, others: Option<Option<i64>>, input_max: i64) -> Option<i64> {
        let candidate = match others {
            None => return self.current,
            Some(None) => input_max,
            Some(Some(m)) => m.min(input_max),
        }
        .saturating_sub(self.lateness_ms);
        Some(self.current.map_or(candidate, |w| w.max(candidate)))
    }

    /// Every input is finished or idle at processing time `now_ms`: this
    /// tracker's watermark holds nothing back (a partial monitor says so
    /// to the merge stage).
    pub fn is_idle(&self, now_ms: i64) -> bool {
        self.inputs
            .iter()
            .all(|i| i.finished || now_ms - i.last_active_ms >= self.idle_timeout_ms)
    }

    /// Newest event time `input` has delivered.
    pub fn input_max(&self, input: InputId) -> Option<i64> {
        self.inputs[input].max_ts
    }

    /// Recompute the watermark at processing time `now_ms`; returns it.
    /// Strictly monotonic: a smaller candidate leaves it unchanged.
    pub fn advance(&mut self, now_ms: i64) -> Option<i64> {
        let live = |i: &&Input| !i.finished && now_ms - i.last_active_ms < self.idle_timeout_ms;
        let candidate = if self.inputs.iter().any(|i| live(&i)) {
            // Every live input must have data, else it may still deliver old events.
            self.inputs
                .iter()
                .filter(live)
                .map(|i| i.max_ts)
                .collect::<Option<Vec<_>>>()
                .and_then(|v| v.into_iter().min())
        } else {
            self.inputs.iter().filter_map(|i| i.max_ts).max()
        };
        if let Some(c) = candidate.map(|c| c.saturating_sub(self.lateness_ms))
            && self.current.is_none_or(|w| c > w)
        {
            self.current = Some(c);
        }
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_of_live_inputs_minus_lateness() {
        let mut w = WatermarkTracker::new(10, 1_000);
        let a = w.add_input(0);
        let b = w.add_input(0);
        w.observe(a, 500, 0);
        assert_eq!(w.advance(0), None, "b has not delivered yet");
        w.observe(b, 300, 0);
        assert_eq!(w.advance(0), Some(290));
        w.observe(b, 900, 1);
        assert_eq!(w.advance(1), Some(490));
    }

    #[test]
    fn never_moves_backwards() {
        let mut w = WatermarkTracker::new(0, 1_000);
        let a = w.add_input(0);
        w.observe(a, 500, 0);
        assert_eq!(w.advance(0), Some(500));
        let b = w.add_input(0);
        w.observe(b, 100, 0);
        assert_eq!(
            w.advance(0),
            Some(500),
            "a new slow input cannot pull it back"
        );
    }

    #[test]
    fn idle_and_finished_inputs_are_ignored() {
        let mut w = WatermarkTracker::new(0, 1_000);
        let a = w.add_input(0);
        let b = w.add_input(0);
        w.observe(a, 100, 0);
        w.observe(b, 5_000, 0);
        assert_eq!(w.advance(0), Some(100));
        w.observe(b, 5_500, 900);
        w.observe(b, 6_000, 1_500); // a silent since t=0
        assert_eq!(w.advance(1_500), Some(6_000), "idle a no longer holds back");
        w.observe(a, 200, 1_600); // a wakes up: it counts again, but no regress
        assert_eq!(w.advance(1_600), Some(6_000));
        w.finish(a);
        w.finish(b);
        assert_eq!(w.advance(1_600), Some(6_000));
    }

    #[test]
    fn an_input_waking_from_idleness_wakes_the_others() {
        let mut w = WatermarkTracker::new(0, 1_000);
        let a = w.add_input(0);
        let b = w.add_input(0);
        w.observe(a, 100, 0);
        w.observe(b, 100, 0);
        // Both quiet for 5 s, then a burst reaches b first: a (whose part of
        // the burst is on its way) holds the watermark for another second.
        w.observe(b, 9_000, 5_000);
        assert_eq!(w.advance(5_000), Some(100));
        w.observe(a, 8_000, 5_100);
        assert_eq!(w.advance(5_100), Some(8_000));
        // a says nothing more: after the idle timeout b alone decides.
        w.observe(b, 9_500, 5_900);
        assert_eq!(w.advance(6_200), Some(9_500));
    }

    #[test]
    fn row_level_watermark_uses_other_inputs_as_they_are() {
        let mut w = WatermarkTracker::new(10, 1_000);
        let a = w.add_input(0);
        let b = w.add_input(0);
        assert_eq!(
            w.others_bound(a, 0),
            None,
            "b has no data: it holds the watermark"
        );
        w.observe(b, 400, 0);
        let others = w.others_bound(a, 0);
        assert_eq!(others, Some(Some(400)));
        assert_eq!(w.with_input_at(others, 100), Some(90));
        assert_eq!(w.with_input_at(others, 900), Some(390));
        w.finish(b);
        assert_eq!(w.with_input_at(w.others_bound(a, 0), 900), Some(890));
    }

    #[test]
    fn all_idle_uses_the_newest_input() {
        let mut w = WatermarkTracker::new(10, 1_000);
        let a = w.add_input(0);
        let b = w.add_input(0);
        w.observe(a, 100, 0);
        w.observe(b, 700, 0);
        assert_eq!(w.advance(5_000), Some(690));
    }
}

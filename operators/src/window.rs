//! Event-time window assignment: tumbling or hopping, aligned to the epoch.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How events are grouped in time. Durations are human strings ("60s", "5m").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    /// Window length. Windows are aligned to the Unix epoch, so a 60 s window
    /// ends on a whole minute.
    #[serde(with = "humantime_serde")]
    pub size: Duration,
    /// Hop between window starts; equal to `size` (or absent) for tumbling
    /// windows, smaller for overlapping (hopping) windows.
    #[serde(with = "humantime_serde")]
    pub slide: Option<Duration>,
    /// How far behind the newest event time the watermark trails; events
    /// arriving later than that are counted as late.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// An input (file, partition) silent for this long (processing time)
    /// stops holding the watermark back.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Segment keys, e.g. `["site", "surface"]`: each is a dimension of
    /// its own, so besides the (model, model_version) series every value of
    /// each key gets a series (`site=mx` across all surfaces), tagged
    /// `dimension=<key>` and `<key>=<value>`.
    pub segment_keys: Vec<String>,
    /// Values per segment key with a series of their own (the first ones
    /// seen); further values share the series `__other__`.
    pub max_segment_values: usize,
    /// An event this far ahead of the wall clock (the monitor) or of its
    /// input's newest event time (offline) is rejected, naming `ts`, so a
    /// skewed producer clock cannot drag the watermark ahead (see
    /// [`crate::event_time`]).
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// An event this far behind its input's newest event time is rejected
    /// as implausible rather than counted late.
    #[serde(with = "humantime_serde")]
    pub max_event_age: Duration,
}

impl WindowConfig {
    /// A fresh event-time guard for one input.
    pub fn event_time_guard(&self) -> crate::EventTimeGuard {
        crate::EventTimeGuard::new(self.max_future_skew, self.max_event_age)
    }
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            size: Duration::from_secs(60),
            slide: None,
            allowed_lateness: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            segment_keys: Vec::new(),
            max_segment_values: 20,
            max_future_skew: Duration::from_secs(5 * 60),
            max_event_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Error for window settings that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("window config: {0}")]
pub struct WindowConfigError(String);

/// Window geometry in milliseconds, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    /// Window length, ms.
    pub size_ms: i64,
    /// Hop between starts, ms (== size for tumbling).
    pub slide_ms: i64,
}

impl WindowSpec {
    /// Validate a config: positive size, slide dividing size.
    pub fn new(config: &WindowConfig) -> Result<Self, WindowConfigError> {
        let size_ms = config.size.as_millis() as i64;
        let slide_ms = config.slide.map_or(size_ms, |s| s.as_millis() as i64);
        if size_ms <= 0 || slide_ms <= 0 {
            return Err(WindowConfigError(
                "size and slide must be at least 1 ms".into(),
            ));
        }
        if slide_ms > size_ms || size_ms % slide_ms != 0 {
            return Err(WindowConfigError(format!(
                "slide ({slide_ms} ms) must divide size ({size_ms} ms)"
            )));
        }
        Ok(Self { size_ms, slide_ms })
    }

    /// Tumbling windows of `size_ms`.
    pub fn tumbling(size_ms: i64) -> Self {
        Self {
            size_ms,
            slide_ms: size_ms,
        }
    }

    /// Starts of every window containing `ts`, oldest first.
    pub fn starts(&self, ts: i64) -> impl Iterator<Item = i64> + use<> {
        let last = ts.div_euclid(self.slide_ms) * self.slide_ms;
        let first = last - self.size_ms + self.slide_ms;
        let slide = self.slide_ms as usize;
        (first..=last).step_by(slide)
    }

    /// End (exclusive) of the window starting at `start`.
    pub fn end(&self, start: i64) -> i64 {
        start + self.size_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_windows_align_to_the_epoch() {
        let w = WindowSpec::tumbling(60_000);
        assert_eq!(
            w.starts(1_763_800_000_123).collect::<Vec<_>>(),
            [1_763_799_960_000]
        );
        assert_eq!(w.starts(60_000).collect::<Vec<_>>(), [60_000]);
        assert_eq!(w.starts(59_999).collect::<Vec<_>>(), [0]);
        assert_eq!(w.starts(-1).collect::<Vec<_>>(), [-60_000]);
    }

    #[test]
    fn hopping_windows_cover_each_event_size_over_slide_times() {
        let cfg = WindowConfig {
            size: Duration::from_secs(60),
            slide: Some(Duration::from_secs(20)),
            ..Default::default()
        };
        let w = WindowSpec::new(&cfg).unwrap();
        assert_eq!(
            w.starts(65_000).collect::<Vec<_>>(),
            [20_000, 40_000, 60_000]
        );
        for s in w.starts(65_000) {
            assert!(s <= 65_000 && 65_000 < w.end(s));
        }
    }

    #[test]
    fn slide_must_divide_size() {
        let cfg = WindowConfig {
            slide: Some(Duration::from_secs(7)),
            ..Default::default()
        };
        assert!(
            WindowSpec::new(&cfg)
                .unwrap_err()
                .to_string()
                .contains("must divide")
        );
    }
}

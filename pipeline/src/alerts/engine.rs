//! The alert state machine: per rule × series, inactive → pending (`for`)
//! → firing → resolved, driven by event time only, so a replay gives the
//! same notifications however fast it runs.
//!
//! Points come in as windows close ([`AlertEngine::observe`]), then
//! [`AlertEngine::tick`] at the window's end handles series that had no
//! point (missing data, quiet event rules, `keep_firing_for` running out).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use infermon_schemas::Point;

use super::notification::{AlertStatus, Notification};
use super::rule::{NoData, RuleConfig, Verdict};

/// Where one series of one rule stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Inactive,
    Pending { since: i64 },
    Firing { since: i64 },
}

#[derive(Debug)]
struct Series {
    labels: BTreeMap<String, String>,
    state: State,
    /// Event time of the last point seen.
    seen_at: i64,
    /// Event time the firing condition last held.
    last_true: i64,
    last: Verdict,
    /// Times of recent firing/resolved transitions, for flap detection.
    transitions: VecDeque<i64>,
    /// Notifications are held back until the series is stable again.
    flapping: bool,
}

/// Trailing values of one field for one baseline key, bounded by time.
#[derive(Debug, Default)]
struct Baseline {
    values: VecDeque<(i64, f64)>,
}

impl Baseline {
    fn median(&mut self, now: i64, over: Duration, min_values: usize) -> Option<f64> {
        let horizon = now - over.as_millis() as i64;
        while self.values.front().is_some_and(|(t, _)| *t < horizon) {
            self.values.pop_front();
        }
        if self.values.len() < min_values.max(1) {
            return None;
        }
        let mut v: Vec<f64> = self.values.iter().map(|(_, x)| *x).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        })
    }
}

/// Flap detection settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flapping {
    /// Transitions counted within this span...
    pub window: Duration,
    /// ...above this many make a series flapping.
    pub limit: usize,
}

/// Evaluates rules over points and produces notifications.
#[derive(Debug)]
pub struct AlertEngine {
    rules: Vec<RuleConfig>,
    flapping: Flapping,
    series: HashMap<(usize, Vec<(String, String)>), Series>,
    baselines: HashMap<(usize, Vec<String>), Baseline>,
    /// Points skipped because their series had already seen that time.
    replayed: u64,
}

impl AlertEngine {
    /// An engine for these rules.
    pub fn new(rules: Vec<RuleConfig>, flapping: Flapping) -> Self {
        Self {
            rules,
            flapping,
            series: HashMap::new(),
            baselines: HashMap::new(),
            replayed: 0,
        }
    }

    /// The rules, in evaluation order.
    pub fn rules(&self) -> &[RuleConfig] {
        &self.rules
    }

    /// Points ignored as re-processed (not newer than their series' last).
    pub fn replayed(&self) -> u64 {
        self.replayed
    }

    /// Judge points (of one closed window, or anomaly events).
    pub fn observe(&mut self, points: &[Point]) -> Vec<Notification> {
        let mut out = Vec::new();
        for p in points {
            let now = p.timestamp_ns / 1_000_000;
            for idx in 0..self.rules.len() {
                let rule = &self.rules[idx];
                if !rule.matches(p) {
                    continue;
                }
                let Some(value) = rule.value(p) else { continue };
                let median = rule.baseline.as_ref().and_then(|b| {
                    let key = baseline_key(idx, &b.by, p);
                    self.baselines
                        .entry(key)
                        .or_default()
                        .median(now, b.over, b.min_values)
                });
                let verdict = rule.judge(p, value, median);
                if let Some(b) = &rule.baseline
                    && !verdict.firing
                {
                    // Firing values stay out of the baseline they are judged by.
                    let key = baseline_key(idx, &b.by, p);
                    let baseline = self.baselines.entry(key).or_default();
                    baseline.values.push_back((now, value));
                }
                let key = (idx, p.tags.iter().cloned().collect::<BTreeMap<_, _>>());
                let key = (key.0, key.1.into_iter().collect::<Vec<_>>());
                // A window (or event) at or before the last one this series
                // saw is a re-processed one: it never notifies twice.
                if self.series.get(&key).is_some_and(|s| now <= s.seen_at) {
                    self.replayed += 1;
                    continue;
                }
                let series = self.series.entry(key).or_insert_with(|| Series {
                    labels: labels_of(rule, p),
                    state: State::Inactive,
                    seen_at: now,
                    last_true: i64::MIN,
                    last: verdict,
                    transitions: VecDeque::new(),
                    flapping: false,
                });
                series.seen_at = now;
                step(rule, self.flapping, series, verdict, now, &mut out);
            }
        }
        out
    }

    /// A window ending at `now` (of length `window_ms`) has been observed:
    /// series without a point in it get their missing-data treatment.
    pub fn tick(&mut self, now: i64, window_ms: i64) -> Vec<Notification> {
        let mut out = Vec::new();
        let mut keys: Vec<_> = self
            .series
            .iter()
            .filter(|(_, s)| s.seen_at <= now - window_ms)
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        for key in keys {
            let rule = &self.rules[key.0];
            let series = self.series.get_mut(&key).expect("listed above");
            let quiet = Verdict {
                firing: false,
                resolved: true,
                ..series.last
            };
            let verdict = if rule.events {
                quiet
            } else {
                match rule.no_data {
                    NoData::Keep => continue,
                    NoData::Resolve => quiet,
                    NoData::Alert => Verdict {
                        firing: true,
                        resolved: false,
                        ..series.last
                    },
                }
            };
            step(rule, self.flapping, series, verdict, now, &mut out);
        }
        out
    }
}

fn baseline_key(idx: usize, by: &[String], p: &Point) -> (usize, Vec<String>) {
    let values = by
        .iter()
        .map(|k| p.tag_value(k).unwrap_or_default().to_string())
        .collect();
    (idx, values)
}

fn labels_of(rule: &RuleConfig, p: &Point) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = p.tags.iter().cloned().collect();
    labels.extend(rule.labels.clone());
    labels.insert("alertname".into(), rule.name.clone());
    labels.insert("severity".into(), rule.severity.clone());
    labels.entry("model".into()).or_default();
    labels
}

/// Advance one series by one verdict at event time `now`.
fn step(
    rule: &RuleConfig,
    flapping: Flapping,
    s: &mut Series,
    v: Verdict,
    now: i64,
    out: &mut Vec<Notification>,
) {
    let for_ms = rule.for_.as_millis() as i64;
    let keep_ms = rule.keep_firing_for.as_millis() as i64;
    if v.firing {
        s.last_true = now;
    }
    s.last = v;
    let fired = |since: i64| (State::Firing { since }, Some(AlertStatus::Firing));
    let (next, change) = match s.state {
        State::Inactive if v.firing && for_ms == 0 => fired(now),
        State::Inactive if v.firing => (State::Pending { since: now }, None),
        State::Pending { since } if v.firing && now - since >= for_ms => fired(since),
        State::Pending { .. } if !v.firing => (State::Inactive, None),
        State::Firing { .. } if v.resolved && now - s.last_true >= keep_ms => {
            (State::Inactive, Some(AlertStatus::Resolved))
        }
        state => (state, None),
    };
    let since = match s.state {
        State::Firing { since } | State::Pending { since } => since,
        State::Inactive => now,
    };
    s.state = next;
    let Some(status) = change else { return };

    // Flap detection: too many transitions recently → one notification
    // saying so, then silence until a whole window passes without one.
    let horizon = now - flapping.window.as_millis() as i64;
    while s.transitions.front().is_some_and(|t| *t < horizon) {
        s.transitions.pop_front();
    }
    let was_flapping = s.flapping;
    s.transitions.push_back(now);
    if s.transitions.len() > flapping.limit {
        s.flapping = true;
    } else if s.flapping && s.transitions.len() == 1 {
        s.flapping = false; // stable for a whole window before this change
    }
    if s.flapping && was_flapping {
        return;
    }

    let mut annotations = BTreeMap::new();
    annotations.insert("summary".into(), rule.render(&rule.summary, &s.labels, &v));
    annotations.insert(
        "description".into(),
        rule.render(&rule.description, &s.labels, &v),
    );
    if s.flapping {
        annotations.insert(
            "flapping".into(),
            format!(
                "more than {} state changes within {}; further changes are held back until it is stable",
                flapping.limit,
                humantime::format_duration(flapping.window)
            ),
        );
    }
    out.push(Notification {
        status,
        labels: s.labels.clone(),
        annotations,
        starts_at_ms: since,
        ends_at_ms: (status == AlertStatus::Resolved).then_some(now),
        value: v.value,
        at_ms: now,
    });
}

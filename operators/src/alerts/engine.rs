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

use super::horizon::{EventCount, Horizon};
use super::notification::{AlertStatus, Notification, fingerprint};
use super::rule::{BaselineConfig, NoData, RuleConfig, Verdict};

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
    /// When the series last started firing (its `startsAt`).
    fired_since: i64,
    /// When the series last went from firing to resolved (its `endsAt`).
    resolved_at: i64,
}

/// Where a series stood when the monitor last wrote its alerts log: read
/// back at start-up so a restarted monitor neither re-notifies a firing
/// alert as new nor forgets to resolve it.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    /// The alert's labels.
    pub labels: BTreeMap<String, String>,
    /// Its annotations as last notified.
    pub annotations: BTreeMap<String, String>,
    /// The last status notified.
    pub status: AlertStatus,
    /// `startsAt` of that notification, ms.
    pub starts_at_ms: i64,
    /// Event time of that notification, ms: windows up to it were judged.
    pub at_ms: i64,
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
    /// Count fields over the horizon of rules with a test, per series.
    horizons: HashMap<(usize, Vec<(String, String)>), Horizon>,
    /// Recent event times of rules with an event rate, per series.
    event_counts: HashMap<(usize, Vec<(String, String)>), EventCount>,
    /// Points skipped because their series had already seen that time.
    replayed: u64,
    /// Series state from an earlier run, by fingerprint, taken up when the
    /// series shows up again.
    restored: HashMap<String, Restored>,
    /// Windows close this often (learnt from [`AlertEngine::tick`]): a
    /// longer gap between two points of a series is missing data.
    window_ms: Option<i64>,
}

impl AlertEngine {
    /// An engine for these rules.
    pub fn new(rules: Vec<RuleConfig>, flapping: Flapping) -> Self {
        Self {
            rules,
            flapping,
            series: HashMap::new(),
            baselines: HashMap::new(),
            horizons: HashMap::new(),
            event_counts: HashMap::new(),
            replayed: 0,
            restored: HashMap::new(),
            window_ms: None,
        }
    }

    /// Take up series state from an earlier run (by fingerprint). Series
    /// that were firing are set up at once, so that they resolve (missing
    /// data, an event rule's quiet) even when no point of theirs comes
    /// again; the others are taken up when their next point comes.
    pub fn restore(&mut self, restored: HashMap<String, Restored>) {
        for r in restored
            .values()
            .filter(|r| r.status == AlertStatus::Firing)
        {
            let Some(idx) = self
                .rules
                .iter()
                .position(|rule| r.labels.get("alertname") == Some(&rule.name))
            else {
                continue; // the rule is gone from the config
            };
            let rule = &self.rules[idx];
            // The series key is the point's tags: the labels without what
            // the rule added (see `labels_of`).
            let tags: Vec<(String, String)> = r
                .labels
                .iter()
                .filter(|(k, v)| {
                    let added = matches!(k.as_str(), "alertname" | "severity")
                        || rule.labels.contains_key(*k)
                        || (k.as_str() == "model" && v.is_empty());
                    !added
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            // The condition held when the alert was last notified; its
            // value is not in the journal.
            let held = Verdict {
                value: f64::NAN,
                firing: true,
                resolved: false,
                bound: None,
            };
            let series = Series {
                labels: r.labels.clone(),
                state: State::Firing {
                    since: r.starts_at_ms,
                },
                seen_at: r.at_ms,
                last_true: r.at_ms,
                last: held,
                transitions: VecDeque::new(),
                flapping: false,
                fired_since: r.starts_at_ms,
                resolved_at: r.at_ms,
            };
            self.series.insert((idx, tags), series);
        }
        self.restored = restored;
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
                // The series key: the point's tags, sorted by name.
                let tags: Vec<(String, String)> = p
                    .tags
                    .iter()
                    .cloned()
                    .collect::<BTreeMap<_, _>>()
                    .into_iter()
                    .collect();
                // Rules with a test judge the horizon's counts (every
                // window's, also one whose own value is undefined, such as
                // calibration without a click).
                let mut significant = true;
                let value = match &rule.test {
                    Some(test) => {
                        let horizon = self.horizons.entry((idx, tags.clone())).or_default();
                        let Some((v, pvalue)) = horizon.judge(test, p, now) else {
                            continue;
                        };
                        significant = pvalue < test.max_pvalue();
                        v
                    }
                    None => match rule.value(p) {
                        Some(v) => v,
                        None => continue,
                    },
                };
                let median = rule.baseline.as_ref().and_then(|b| {
                    let key = baseline_key(idx, b, p);
                    self.baselines
                        .entry(key)
                        .or_default()
                        .median(now, b.over, b.min_values)
                });
                let mut verdict = rule.judge(p, value, median);
                if let Some(rate) = rule.rate {
                    let count = self.event_counts.entry((idx, tags.clone())).or_default();
                    significant &= count.add(now, rate.over) >= rate.min;
                }
                if !significant {
                    verdict.firing = false;
                    if rule.resolve_threshold.is_none() {
                        verdict.resolved = true;
                    }
                }
                if let Some(b) = &rule.baseline
                    && !verdict.firing
                {
                    // Firing values stay out of the baseline they are judged by.
                    let key = baseline_key(idx, b, p);
                    let baseline = self.baselines.entry(key).or_default();
                    baseline.values.push_back((now, value));
                }
                let key = (idx, tags);
                let restored = &self.restored;
                let series = self
                    .series
                    .entry(key)
                    .or_insert_with(|| new_series(rule, p, verdict, now, restored));
                // A window (or event) at or before the last one this series
                // saw is a re-processed one: it never notifies twice.
                if now <= series.seen_at {
                    self.replayed += 1;
                    continue;
                }
                // Windows without a point in between are missing data: a
                // pending timer does not run through them (unless the rule
                // says missing data is the condition holding).
                let gap = self.window_ms.is_some_and(|w| now - series.seen_at > w);
                let missing_data_holds = rule.no_data == NoData::Alert && !rule.events;
                if gap && !missing_data_holds && matches!(series.state, State::Pending { .. }) {
                    series.state = State::Inactive;
                }
                series.seen_at = now;
                step(rule, self.flapping, series, verdict, now, &mut out);
            }
        }
        out
    }

    /// A window ending at `now` (of length `window_ms`) has been observed:
    /// series without a point in it get their missing-data treatment.
    pub fn tick(&mut self, now: i64, window_ms: i64) -> Vec<Notification> {
        self.window_ms = Some(window_ms);
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
                    // A pending timer is reset by `observe` when the next
                    // point comes after a gap: here the point may simply
                    // be late (quality points come a label wait later).
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
        out.extend(self.settle_flapping(now));
        out
    }

    /// Series that were flapping and have had no state change for a whole
    /// flap window are stable again: receivers get the current state, which
    /// they may have missed while changes were held back (a resolve, most
    /// often).
    fn settle_flapping(&mut self, now: i64) -> Vec<Notification> {
        let window_ms = self.flapping.window.as_millis() as i64;
        let mut keys: Vec<_> = self
            .series
            .iter()
            .filter(|(_, s)| {
                s.flapping && s.transitions.back().is_none_or(|t| now - t >= window_ms)
            })
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        let mut out = Vec::new();
        for key in keys {
            let rule = &self.rules[key.0];
            let s = self.series.get_mut(&key).expect("listed above");
            s.flapping = false;
            s.transitions.clear();
            let (status, since) = match s.state {
                State::Firing { since } => (AlertStatus::Firing, since),
                _ => (AlertStatus::Resolved, s.fired_since),
            };
            // Sent even when the status is the one last sent: its startsAt
            // (or endsAt) and the dropped `flapping` note are news.
            let v = s.last;
            out.push(notify(rule, self.flapping, s, status, since, now, &v));
        }
        out
    }
}

/// A series seen for the first time in this run, in the state an earlier
/// run left it in (if its alerts log says so).
fn new_series(
    rule: &RuleConfig,
    p: &Point,
    verdict: Verdict,
    now: i64,
    restored: &HashMap<String, Restored>,
) -> Series {
    let labels = labels_of(rule, p);
    let earlier = restored.get(&fingerprint(&labels));
    let state = match earlier {
        Some(r) if r.status == AlertStatus::Firing => State::Firing {
            since: r.starts_at_ms,
        },
        _ => State::Inactive,
    };
    Series {
        labels,
        state,
        // Windows the earlier run judged are re-processed ones.
        seen_at: earlier.map_or(now - 1, |r| r.at_ms),
        last_true: earlier.map_or(i64::MIN, |r| r.at_ms),
        last: verdict,
        transitions: VecDeque::new(),
        flapping: false,
        fired_since: earlier.map_or(now, |r| r.starts_at_ms),
        resolved_at: earlier.map_or(now, |r| r.at_ms),
    }
}

fn baseline_key(idx: usize, b: &BaselineConfig, p: &Point) -> (usize, Vec<String>) {
    let values = match &b.except {
        Some(except) => {
            let mut tags: Vec<String> = p
                .tags
                .iter()
                .filter(|(k, _)| !except.contains(k))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            tags.sort();
            tags
        }
        None => {
            b.by.iter()
                .map(|k| p.tag_value(k).unwrap_or_default().to_string())
                .collect()
        }
    };
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
    match status {
        AlertStatus::Firing => s.fired_since = since,
        AlertStatus::Resolved => s.resolved_at = now,
    }

    // Flap detection: too many transitions recently → one notification
    // saying so, then silence until a whole window passes without one
    // (see `AlertEngine::settle_flapping` for what is sent then).
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
    out.push(notify(rule, flapping, s, status, since, now, &v));
}

/// The notification of `status` for series `s` at event time `now`.
fn notify(
    rule: &RuleConfig,
    flapping: Flapping,
    s: &Series,
    status: AlertStatus,
    since: i64,
    now: i64,
    v: &Verdict,
) -> Notification {
    let mut annotations = BTreeMap::new();
    annotations.insert("summary".into(), rule.render(&rule.summary, &s.labels, v));
    annotations.insert(
        "description".into(),
        rule.render(&rule.description, &s.labels, v),
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
    Notification {
        status,
        labels: s.labels.clone(),
        annotations,
        starts_at_ms: since,
        ends_at_ms: (status == AlertStatus::Resolved).then_some(s.resolved_at),
        value: v.value,
        at_ms: now,
    }
}

impl Restored {
    /// The notification this state was last told as.
    pub fn notification(&self) -> Notification {
        Notification {
            status: self.status,
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            starts_at_ms: self.starts_at_ms,
            ends_at_ms: (self.status == AlertStatus::Resolved).then_some(self.at_ms),
            value: f64::NAN,
            at_ms: self.at_ms,
        }
    }
}

//! What happens in each recording, and when: the documented incidents.

use std::fmt;

/// A named recording; each one carries one incident on top of normal traffic
/// (the `Day` scenario carries all of them, for benchmarks and demos).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// `ctr-ranker` v3 → v4 deploy; v4's inference stage is 5× slower.
    LatencyRegression,
    /// `recsys-ranker` returns errors for 8% of requests for a while.
    ErrorBurst,
    /// `ads-ctr` sees pricier items and a different category mix.
    InputShift,
    /// `ads-ctr`'s `user_ctr_7d` feature goes null for 40% of requests.
    FeatureNull,
    /// The `ctr-ranker` online fine-tuning run explodes, then emits NaNs.
    GradientExplosion,
    /// Every model and every incident, one after another.
    Day,
    /// A realistic day (cycle, promotion, segments, late labels, a
    /// low-traffic model) with one incident of each kind the built-in rules
    /// must catch: a segment's latency, a broken calibration, a slow
    /// latency creep, a segment's errors, errors of the low-traffic model,
    /// a burst of gradient spikes.
    RealisticDay,
    /// Three days of the same realistic traffic with no incident.
    QuietDays,
    /// A search ranker's ranked lists (ten results, position bias, every
    /// shown item labelled), healthy.
    RankedSearch,
    /// The same, and from 60 % of the recording the order breaks while the
    /// score distribution stays the same.
    BrokenOrder,
    /// The same bug in a canary version beside the healthy stable one.
    RankedCanary,
}

impl Scenario {
    /// Every scenario, in file order.
    pub const ALL: [Scenario; 11] = [
        Scenario::LatencyRegression,
        Scenario::ErrorBurst,
        Scenario::InputShift,
        Scenario::FeatureNull,
        Scenario::GradientExplosion,
        Scenario::Day,
        Scenario::RealisticDay,
        Scenario::QuietDays,
        Scenario::RankedSearch,
        Scenario::BrokenOrder,
        Scenario::RankedCanary,
    ];

    /// The scenarios committed under `replay-data/recordings/` (the
    /// others are generated when wanted: a day takes ~100 MB).
    pub fn is_bundled(self) -> bool {
        !matches!(
            self,
            Scenario::Day
                | Scenario::RealisticDay
                | Scenario::QuietDays
                | Scenario::RankedSearch
                | Scenario::BrokenOrder
                | Scenario::RankedCanary
        )
    }

    /// File-name style name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::LatencyRegression => "latency-regression",
            Scenario::ErrorBurst => "error-burst",
            Scenario::InputShift => "input-shift",
            Scenario::FeatureNull => "feature-null",
            Scenario::GradientExplosion => "gradient-explosion",
            Scenario::Day => "day",
            Scenario::RealisticDay => "realistic-day",
            Scenario::QuietDays => "quiet-days",
            Scenario::RankedSearch => "ranked-search",
            Scenario::BrokenOrder => "broken-order",
            Scenario::RankedCanary => "ranked-canary",
        }
    }

    /// Parse a [`Scenario::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Incidents as (fraction of the recording when it starts, when it ends).
    pub(crate) fn windows(self) -> Vec<(IncidentKind, f64, f64)> {
        use IncidentKind::*;
        match self {
            Scenario::LatencyRegression => vec![(SlowDeploy, 0.6, 1.0)],
            Scenario::ErrorBurst => vec![(Errors, 0.6, 0.75)],
            Scenario::InputShift => vec![(Shift, 0.6, 1.0)],
            Scenario::FeatureNull => vec![(Nulls, 0.6, 0.75)],
            Scenario::GradientExplosion => vec![(Explosion, 0.6, 0.6)],
            Scenario::Day => vec![
                (SlowDeploy, 0.2, 1.0),
                (Errors, 0.35, 0.4),
                (Shift, 0.5, 1.0),
                (Nulls, 0.65, 0.7),
                (Explosion, 0.8, 0.8),
            ],
            Scenario::RealisticDay => crate::realistic::INCIDENTS
                .iter()
                .map(|&(kind, from, to)| (kind, from / 24.0, to / 24.0))
                .collect(),
            Scenario::QuietDays | Scenario::RankedSearch => Vec::new(),
            Scenario::BrokenOrder => vec![(BrokenOrder, 0.6, 1.0)],
            Scenario::RankedCanary => vec![(CanaryBrokenOrder, 0.5, 1.0)],
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kinds of incident the generator can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IncidentKind {
    SlowDeploy,
    Errors,
    Shift,
    Nulls,
    Explosion,
    SegmentLatency,
    Miscalibration,
    LatencyCreep,
    SegmentErrors,
    LowTrafficErrors,
    GradientSpikes,
    BrokenOrder,
    CanaryBrokenOrder,
}

/// A documented incident: where and when it is in a recording, what changes,
/// and which alert must fire.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    /// Short name.
    pub name: &'static str,
    /// Affected model.
    pub model: &'static str,
    /// Affected version (or training run id for gradient incidents).
    pub series: &'static str,
    /// Event time the incident starts, ms.
    pub start_ms: i64,
    /// Event time it ends, ms (equal to start for a one-off event).
    pub end_ms: i64,
    /// What changes in the data.
    pub what: &'static str,
    /// The alert (rule) that must fire, and the measurement that shows it.
    pub alert: &'static str,
}

impl IncidentKind {
    pub(crate) fn describe(self, start_ms: i64, end_ms: i64) -> Incident {
        let (name, model, series, what, alert) = match self {
            IncidentKind::SlowDeploy => (
                "latency regression after deploy",
                "ctr-ranker",
                "4",
                "ctr-ranker v4 replaces v3; its inference stage is 5x slower (total p99 >= 3x v3's)",
                "latency_p99_regression (latency, stage=total, p99)",
            ),
            IncidentKind::Errors => (
                "error burst",
                "recsys-ranker",
                "7",
                "8% of recsys-ranker requests fail (CUDA OOM / timeout), status=error",
                "error_rate_high (throughput.error_rate >= 0.02)",
            ),
            IncidentKind::Shift => (
                "input distribution shift",
                "ads-ctr",
                "12",
                "ads-ctr prices x2.5 and category mix moves to electronics; the mean score drops",
                "feature_drift (drift, feature=price and category, drifted=true)",
            ),
            IncidentKind::Nulls => (
                "feature going null",
                "ads-ctr",
                "12",
                "ads-ctr user_ctr_7d is null for 40% of requests (feature store outage)",
                "null_rate_jump (drift, feature=user_ctr_7d, null_rate)",
            ),
            IncidentKind::Explosion => (
                "gradient explosion with non-finite steps",
                "ctr-ranker",
                "online-ft-ctr-ranker",
                "grad norm grows 10-300x over 12 steps, then 5 steps of NaN/Inf gradients and a diverging loss; the run restarts 60 s later with a lower lr",
                "gradient_nonfinite / gradient_explosion / gradient_spikes (gradients.nonfinite, anomalies)",
            ),
            IncidentKind::SegmentLatency => (
                "one site slow",
                "search-ranker",
                "21",
                "search-ranker requests from site=mx (20 % of its traffic) take 4x as long",
                "latency_p99_regression on the segment series dimension=site,site=mx",
            ),
            IncidentKind::Miscalibration => (
                "broken calibration",
                "home-feed",
                "6",
                "home-feed v6 replaces v5; its score distribution is v5's but clicks come at half the predicted rate",
                "calibration_over_predicts (quality.calibration over 3 h of labels)",
            ),
            IncidentKind::LatencyCreep => (
                "slow latency creep",
                "catalog-ranker",
                "3",
                "catalog-ranker gets slower by 20 % of its first latency an hour for five hours (every stage), then stays at twice",
                "latency_p99_creep (latency p99 over 1.5x its 24 h median), before p99 doubles",
            ),
            IncidentKind::SegmentErrors => (
                "one surface failing",
                "search-ranker",
                "21",
                "10 % of search-ranker requests on surface=email (6 % of its traffic) fail; the version's error rate stays under 1 %",
                "segment_error_rate on dimension=surface,surface=email",
            ),
            IncidentKind::LowTrafficErrors => (
                "errors on a low-traffic model",
                "size-advisor",
                "2",
                "30 % of size-advisor requests fail (about 1.6 requests/s at that hour)",
                "error_rate_high (binomial test of the window's errors)",
            ),
            IncidentKind::GradientSpikes => (
                "repeated gradient spikes",
                "home-feed",
                "online-ft-home-feed",
                "every third step of run online-ft-home-feed has 5x the gradient norm for four minutes (an isolated spike at 06:00 is normal)",
                "gradient_spikes (3 spikes within 10 minutes)",
            ),
            IncidentKind::BrokenOrder => (
                "ranking order broken",
                crate::ranked::MODEL.0,
                crate::ranked::MODEL.1,
                "search-ltr hands its scores to the wrong items of each list: the score distribution is the same, the order no longer follows relevance",
                "ranking_quality_drop (ranking.ndcg_at_10 below 0.8x its 1 h median); mrr falls too",
            ),
            IncidentKind::CanaryBrokenOrder => (
                "canary with a broken order",
                crate::ranked::MODEL.0,
                crate::ranked::CANARY.0,
                "search-ltr v6 serves 30 % of the queries as a canary beside v5, handing its scores to the wrong items",
                "canary_worse (comparison, model_version=6, metric=ndcg_at_10)",
            ),
        };
        Incident {
            name,
            model,
            series,
            start_ms,
            end_ms,
            what,
            alert,
        }
    }
}

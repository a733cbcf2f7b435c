//! Label quality: feedback joined to predictions by `request_id` (and
//! `item_id` for items of ranked lists), judged per window once its label
//! wait is over.
//!
//! - [`join`]: the bounded store where predictions wait for their labels.
//! - [`metrics`]: pointwise quality (AUC, log loss, CTR, calibration,
//!   precision / recall / F1 at the decision threshold) → `quality`.
//! - [`ranking`]: per-list NDCG@k, MRR, HitRate@k → `ranking`, and CTR by
//!   position → `position_ctr`.

pub mod join;
pub mod metrics;
pub mod ranking;

pub use join::{JoinStats, Judged, LabelJoin, QualityConfig, QualityConfigError, Scored};
pub use metrics::{Confusion, LabelCounts, Quality, auc};
pub use ranking::Ranking;

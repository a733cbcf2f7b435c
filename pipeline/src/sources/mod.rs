//! Where events come from: recorded traffic files (replays) and Kafka (the
//! monitor).

pub mod kafka;
pub mod offsets;
pub mod recording;

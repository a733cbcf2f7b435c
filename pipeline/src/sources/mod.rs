//! Where events come from. Offline: recorded traffic files.

pub mod recording;

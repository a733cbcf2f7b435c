//! Where results go. Offline: a line-protocol file, a rejects file and an
//! alerts log.

pub mod alerts_file;

pub mod line_protocol_file;
pub mod rejects_file;

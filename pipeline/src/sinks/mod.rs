//! Where results go. Offline: a line-protocol file and a rejects file.

pub mod line_protocol_file;
pub mod rejects_file;

//! Where results go. Offline: a line-protocol file, a rejects file and an
//! alerts log; the monitor adds InfluxDB servers behind on-disk spools.

pub mod alerts_file;
pub mod influxdb;
pub mod line_protocol_file;
pub mod rejects_file;
pub mod spool;

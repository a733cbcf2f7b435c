//! `infermon report`: one self-contained HTML page (inline SVG, no script,
//! nothing fetched) from a backtest's line protocol and alerts log, for
//! "what happened yesterday at 14:36?".
//!
//! Reading the files is the only I/O ([`write_report`]); [`data`] regroups
//! the points, [`alerts`] pairs notifications into firing spans,
//! [`charts`] draws with plotters, [`page`] lays out the HTML.

pub mod alerts;
pub mod charts;
pub mod data;
pub mod decimate;
pub mod page;
pub mod time;

use std::path::{Path, PathBuf};

use infermon_schemas::Point;

use self::alerts::{AlertSpan, spans_from_notifications, spans_from_points};
use self::data::ReportData;

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A line of the metrics file is not line protocol.
    #[error("{path}:{line}: {source}")]
    LineProtocol {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parser's reason.
        source: infermon_schemas::line_protocol::ParseError,
    },
    /// A chart could not be drawn.
    #[error(transparent)]
    Chart(#[from] charts::ChartError),
}

fn read(path: &Path) -> Result<String, ReportError> {
    std::fs::read_to_string(path).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Every point of a line-protocol file.
///
/// # Errors
/// Unreadable file, or a line that is not line protocol.
pub fn read_points(path: &Path) -> Result<Vec<Point>, ReportError> {
    let text = read(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            infermon_schemas::line_protocol::parse_line(l).map_err(|source| {
                ReportError::LineProtocol {
                    path: path.to_path_buf(),
                    line: i + 1,
                    source,
                }
            })
        })
        .collect()
}

/// What [`write_report`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// Bytes of HTML.
    pub bytes: usize,
    /// Points read.
    pub points: usize,
    /// Alert spans shown.
    pub alerts: usize,
    /// Models with a section.
    pub models: usize,
}

/// Read `metrics` (line protocol) and, when given, the alerts log
/// `alerts` (richer than the `alerts` points: version, feature, summary),
/// and write the page to `out`.
///
/// # Errors
/// Unreadable input, a bad line, a chart that cannot be drawn, or `out`
/// cannot be written.
pub fn write_report(
    metrics: &Path,
    alerts: Option<&Path>,
    out: &Path,
) -> Result<Written, ReportError> {
    let points = read_points(metrics)?;
    let spans: Vec<AlertSpan> = match alerts {
        Some(path) => {
            let text = read(path)?;
            let (spans, bad) = spans_from_notifications(text.lines());
            if bad > 0 {
                tracing::warn!(file = %path.display(), lines = bad, "skipped alert lines that are not notifications");
            }
            spans
        }
        None => spans_from_points(points.iter()),
    };
    let data = ReportData::build(&points, spans);
    let source = match alerts {
        Some(a) => format!("{} and {}", metrics.display(), a.display()),
        None => metrics.display().to_string(),
    };
    let html = page::render(&data, &source)?;
    std::fs::write(out, &html).map_err(|source| ReportError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(Written {
        bytes: html.len(),
        points: data.points,
        alerts: data.alerts.len(),
        models: data.models.len(),
    })
}

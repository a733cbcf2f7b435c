//! The report's charts as inline SVG, drawn by `plotters` (SVG backend
//! only: no fonts are read, text is left to the browser).
//!
//! Alert spans are added on top of plotters' drawing as `<rect
//! class="alert-span">` elements at plotters' own pixel coordinates, with
//! the alert's labels as `data-` attributes and a `<title>` tooltip:
//! plotters cannot tag what it draws, and readers (and the browser test)
//! need to find a span by its alert.

use std::fmt::Write;

use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};
use plotters::coord::Shift;
use plotters::coord::types::{RangedCoordf64, RangedCoordi64};
use plotters::prelude::*;

use super::alerts::AlertSpan;
use super::decimate::{columns, decimate};
use super::time::hhmm;

/// Chart width in pixels (the page is laid out for it).
pub const WIDTH: u32 = 920;
const HEIGHT: u32 = 250;
/// Most points per line: about one per two pixel columns.
const MAX_POINTS: usize = 450;
/// Width of the row labels of heat maps and timelines.
const LABELS: u32 = 200;
/// Most columns of a heat map.
const MAX_COLUMNS: usize = 180;

/// A chart plotters could not draw.
#[derive(Debug, thiserror::Error)]
#[error("chart {chart}: {message}")]
pub struct ChartError {
    /// Which chart.
    pub chart: String,
    /// plotters' message.
    pub message: String,
}

/// One line of a time chart.
pub struct Line {
    /// Legend text.
    pub label: String,
    /// (ms, value), time-ordered.
    pub points: Vec<(i64, f64)>,
    /// Dashed (e.g. the p50 beside a solid p99).
    pub dashed: bool,
    /// Palette index: lines of one version share a colour.
    pub color: usize,
}

/// A chart over time: lines, deploy markers, event dots and alert spans.
pub struct TimeChart<'a> {
    /// Caption.
    pub title: String,
    /// Y axis description.
    pub y_desc: String,
    /// The lines.
    pub lines: Vec<Line>,
    /// (ms, label) vertical markers: deploys.
    pub markers: &'a [(i64, String)],
    /// (ms, value, label) dots: gradient anomalies.
    pub dots: Vec<(i64, f64, String)>,
    /// Alert spans laid over the plot.
    pub spans: &'a [&'a AlertSpan],
    /// Time axis range, ms.
    pub range: (i64, i64),
}

fn err(chart: &str) -> impl Fn(DrawingAreaErrorKind<std::io::Error>) -> ChartError + '_ {
    move |e| ChartError {
        chart: chart.to_string(),
        message: e.to_string(),
    }
}

fn color(i: usize) -> RGBColor {
    let (r, g, b) = Palette99::pick(i).rgb();
    RGBColor(r, g, b)
}

fn y_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    let lo = if lo >= 0.0 { 0.0 } else { lo };
    if hi - lo < 1e-12 {
        (lo, lo + 1.0)
    } else {
        (lo, hi + (hi - lo) * 0.08)
    }
}

/// Span rectangles over the plot area `[x0, x1] × [y0, y1]` (pixels),
/// `map` turning event time into an x pixel.
fn span_rects(
    out: &mut String,
    spans: &[&AlertSpan],
    end_of_data: i64,
    (x0, x1): (i32, i32),
    rows: impl Fn(usize) -> (i32, i32),
    map: impl Fn(i64) -> i32,
) {
    out.push_str("<g class=\"alert-spans\">");
    for (i, s) in spans.iter().enumerate() {
        let a = map(s.start_ms).clamp(x0, x1);
        let b = map(s.end_or(end_of_data)).clamp(x0, x1);
        let (top, bottom) = rows(i);
        let end = s.end_ms.map_or("still firing at the end".to_string(), hhmm);
        let _ = write!(
            out,
            "<rect class=\"alert-span\" data-alertname=\"{}\" data-model=\"{}\" data-severity=\"{}\" \
             data-feature=\"{}\" data-start-ms=\"{}\" data-end-ms=\"{}\" x=\"{a}\" y=\"{top}\" \
             width=\"{}\" height=\"{}\" fill=\"{}\" fill-opacity=\"0.18\" stroke=\"{}\"><title>{}</title></rect>",
            attr(&s.alertname),
            attr(&s.model),
            attr(&s.severity),
            attr(s.feature.as_deref().unwrap_or("")),
            s.start_ms,
            s.end_or(end_of_data),
            (b - a).max(2),
            (bottom - top).max(1),
            if s.severity == "critical" {
                "#d62728"
            } else {
                "#ff7f0e"
            },
            if s.severity == "critical" {
                "#d62728"
            } else {
                "#ff7f0e"
            },
            text(&format!(
                "{} ({}) {} – {}: {}",
                s.series_label(),
                s.severity,
                hhmm(s.start_ms),
                end,
                s.summary
            )),
        );
    }
    out.push_str("</g>");
}

/// `svg` with `overlay` inserted before its closing tag.
fn with_overlay(mut svg: String, overlay: &str) -> String {
    if let Some(at) = svg.rfind("</svg>") {
        svg.insert_str(at, overlay);
    }
    svg
}

fn root(svg: &mut String, height: u32) -> DrawingArea<SVGBackend<'_>, Shift> {
    SVGBackend::with_string(svg, (WIDTH, height)).into_drawing_area()
}

/// A chart over `range` (ms) with one labelled row per `labels` entry, top
/// to bottom, row `i` spanning y from `n − i − 1` to `n − i`: the frame of
/// the heat map and the alert timeline.
fn rows_frame<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    title: &str,
    labels: &[&str],
    font_size: u32,
    (start, end): (i64, i64),
) -> Result<ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordi64, RangedCoordf64>>, ChartError>
{
    let e = err(title);
    let n = labels.len().max(1);
    root.fill(&WHITE).map_err(&e)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(LABELS)
        .build_cartesian_2d(start..end, 0.0..n as f64)
        .map_err(&e)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_labels(10)
        .x_label_formatter(&|t| hhmm(*t))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(&e)?;
    for (i, label) in labels.iter().enumerate() {
        let (_, y) = chart.backend_coord(&(start, (n - i) as f64 - 0.35));
        root.draw(&Text::new(
            label.to_string(),
            (10, y),
            ("sans-serif", font_size).into_font(),
        ))
        .map_err(&e)?;
    }
    Ok(chart)
}

/// Draw a [`TimeChart`].
///
/// # Errors
/// plotters failed (never for finite input; reported, not panicked).
pub fn time_chart(c: &TimeChart) -> Result<String, ChartError> {
    let e = err(&c.title);
    let lines: Vec<(&Line, Vec<(i64, f64)>)> = c
        .lines
        .iter()
        .map(|l| {
            let finite: Vec<(i64, f64)> = l
                .points
                .iter()
                .copied()
                .filter(|p| p.1.is_finite())
                .collect();
            (l, decimate(&finite, MAX_POINTS))
        })
        .collect();
    let (lo, hi) = y_range(
        lines
            .iter()
            .flat_map(|(_, p)| p.iter().map(|p| p.1))
            .chain(c.dots.iter().map(|d| d.1)),
    );
    let (start, end) = (c.range.0, c.range.1.max(c.range.0 + 1));
    let mut svg = String::new();
    let mut overlay = String::new();
    {
        let root = root(&mut svg, HEIGHT);
        root.fill(&WHITE).map_err(&e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&c.title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(60)
            .build_cartesian_2d(start..end, lo..hi)
            .map_err(&e)?;
        chart
            .configure_mesh()
            .x_labels(10)
            .y_labels(6)
            .x_label_formatter(&|t| hhmm(*t))
            .y_desc(c.y_desc.as_str())
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(&e)?;
        for (t, version) in c.markers {
            chart
                .draw_series(DashedLineSeries::new(
                    [(*t, lo), (*t, hi)],
                    4,
                    4,
                    BLACK.mix(0.6).stroke_width(1),
                ))
                .map_err(&e)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("deploy v{version}"),
                    (*t, hi),
                    ("sans-serif", 11).into_font(),
                )))
                .map_err(&e)?;
        }
        for (line, points) in &lines {
            let style = color(line.color).stroke_width(if line.dashed { 1 } else { 2 });
            let drawn = if line.dashed {
                chart.draw_series(DashedLineSeries::new(points.iter().copied(), 5, 3, style))
            } else {
                chart.draw_series(LineSeries::new(points.iter().copied(), style))
            };
            drawn
                .map_err(&e)?
                .label(line.label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        }
        if !c.dots.is_empty() {
            chart
                .draw_series(
                    c.dots
                        .iter()
                        .map(|(t, v, _)| Circle::new((*t, *v), 4, RED.filled())),
                )
                .map_err(&e)?
                .label("gradient anomaly")
                .legend(|(x, y)| Circle::new((x + 9, y), 4, RED.filled()));
        }
        if !lines.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .label_font(("sans-serif", 11))
                .draw()
                .map_err(&e)?;
        }
        let (xr, yr) = chart.plotting_area().get_pixel_range();
        span_rects(
            &mut overlay,
            c.spans,
            end,
            (xr.start, xr.end),
            |_| (yr.start, yr.end),
            |t| chart.backend_coord(&(t, lo)).0,
        );
        root.present().map_err(&e)?;
    }
    Ok(with_overlay(svg, &overlay))
}

/// One heat-map row: a feature's windows.
pub struct HeatRow {
    /// Feature name.
    pub label: String,
    /// (window end ms, value, drifted).
    pub cells: Vec<(i64, f64, bool)>,
}

/// Feature × window heat map of PSI, drifted windows outlined; drift alert
/// spans laid over the whole height.
///
/// # Errors
/// plotters failed.
pub fn heat_map(
    title: &str,
    rows: &[HeatRow],
    spans: &[&AlertSpan],
    range: (i64, i64),
) -> Result<String, ChartError> {
    let e = err(title);
    let n = rows.len().max(1);
    let (start, end) = (range.0, range.1.max(range.0 + 1));
    let mut svg = String::new();
    let mut overlay = String::new();
    {
        let root = root(&mut svg, 70 + 22 * n as u32);
        let labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        let mut chart = rows_frame(&root, title, &labels, 12, (start, end))?;
        for (i, row) in rows.iter().enumerate() {
            let y = (n - 1 - i) as f64;
            let cells: Vec<(i64, (f64, bool))> =
                row.cells.iter().map(|c| (c.0, (c.1, c.2))).collect();
            let cols = columns(&cells, MAX_COLUMNS, |c| c.0 + if c.1 { 1e6 } else { 0.0 });
            chart
                .draw_series(cols.iter().map(|(a, b, (v, _))| {
                    // PSI 0 → white, ≥ 1 → deep red.
                    let f = v.clamp(0.0, 1.0);
                    let fill = RGBColor(
                        255,
                        (255.0 * (1.0 - 0.85 * f)) as u8,
                        (255.0 * (1.0 - f)) as u8,
                    );
                    Rectangle::new([(*a, y + 0.08), (*b, y + 0.92)], fill.filled())
                }))
                .map_err(&e)?;
            chart
                .draw_series(cols.iter().filter(|c| c.2.1).map(|(a, b, _)| {
                    Rectangle::new([(*a, y + 0.08), (*b, y + 0.92)], BLACK.stroke_width(1))
                }))
                .map_err(&e)?;
        }
        let (xr, yr) = chart.plotting_area().get_pixel_range();
        span_rects(
            &mut overlay,
            spans,
            end,
            (xr.start, xr.end),
            |_| (yr.start, yr.end),
            |t| chart.backend_coord(&(t, 0.0)).0,
        );
        root.present().map_err(&e)?;
    }
    Ok(with_overlay(svg, &overlay))
}

/// The alert timeline: one row per alert series, its firing spans as bars.
///
/// # Errors
/// plotters failed.
pub fn alert_timeline(
    title: &str,
    spans: &[&AlertSpan],
    range: (i64, i64),
) -> Result<String, ChartError> {
    let e = err(title);
    let mut series: Vec<String> = Vec::new();
    for s in spans {
        let l = s.series_label();
        if !series.contains(&l) {
            series.push(l);
        }
    }
    let n = series.len().max(1);
    let (start, end) = (range.0, range.1.max(range.0 + 1));
    let mut svg = String::new();
    let mut overlay = String::new();
    {
        let root = root(&mut svg, 70 + 24 * n as u32);
        let labels: Vec<&str> = series.iter().map(String::as_str).collect();
        let chart = rows_frame(&root, title, &labels, 11, (start, end))?;
        let (xr, _) = chart.plotting_area().get_pixel_range();
        let row_of: Vec<usize> = spans
            .iter()
            .map(|s| {
                series
                    .iter()
                    .position(|l| *l == s.series_label())
                    .unwrap_or(0)
            })
            .collect();
        span_rects(
            &mut overlay,
            spans,
            end,
            (xr.start, xr.end),
            |i| {
                let row = row_of[i];
                let top = chart.backend_coord(&(start, (n - row) as f64 - 0.3)).1;
                let bottom = chart.backend_coord(&(start, (n - row - 1) as f64 + 0.1)).1;
                (top, bottom)
            },
            |t| chart.backend_coord(&(t, 0.0)).0,
        );
        root.present().map_err(&e)?;
    }
    Ok(with_overlay(svg, &overlay))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn span(alertname: &str, start_ms: i64, end_ms: Option<i64>) -> AlertSpan {
        AlertSpan {
            alertname: alertname.into(),
            severity: "critical".into(),
            model: "m<&>".into(),
            version: None,
            feature: None,
            start_ms,
            end_ms,
            summary: "a \"quoted\" <summary>".into(),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn spans_land_inside_the_plot_at_their_times_and_are_escaped() {
        let a = span("error_rate_high", 3_600_000, Some(5_400_000));
        let spans = [&a];
        let svg = time_chart(&TimeChart {
            title: "errors".into(),
            y_desc: "rate".into(),
            lines: vec![Line {
                label: "v7".into(),
                points: (0..=120).map(|i| (i * 60_000, (i % 7) as f64)).collect(),
                dashed: false,
                color: 0,
            }],
            markers: &[(3_000_000, "8".into())],
            dots: Vec::new(),
            spans: &spans,
            range: (0, 7_200_000),
        })
        .unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(
            svg.contains("data-model=\"m&lt;&amp;&gt;\""),
            "attribute escaped"
        );
        assert!(svg.contains("&lt;summary&gt;"), "tooltip escaped");
        assert!(svg.contains("deploy v8"));
        let x = |name: &str| -> i32 {
            let at = svg.find("class=\"alert-span\"").unwrap();
            let rest = &svg[at..];
            let k = rest.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
            rest[k..rest[k..].find('"').unwrap() + k].parse().unwrap()
        };
        // The span covers the middle quarter of the time axis.
        let (left, width) = (x("x"), x("width"));
        let plot = WIDTH as f64 - 60.0 - 16.0;
        assert!(
            (width as f64 / plot - 0.25).abs() < 0.03,
            "width {width} of {plot}"
        );
        assert!(
            left > 60 + (plot * 0.45) as i32 && left < 60 + (plot * 0.56) as i32,
            "x {left}"
        );
    }

    #[test]
    fn a_heat_map_and_a_timeline_draw_one_rect_per_span() {
        let a = span("feature_drift", 60_000, None);
        let b = span("null_rate_jump", 120_000, Some(180_000));
        let spans = [&a, &b];
        let rows = [HeatRow {
            label: "price".into(),
            cells: (1..=5)
                .map(|i| (i * 60_000, i as f64 / 5.0, i > 3))
                .collect(),
        }];
        for svg in [
            heat_map("drift", &rows, &spans, (0, 300_000)).unwrap(),
            alert_timeline("alerts", &spans, (0, 300_000)).unwrap(),
        ] {
            assert_eq!(svg.matches("class=\"alert-span\"").count(), 2);
            assert!(
                svg.contains("data-end-ms=\"300000\""),
                "still firing: to the end"
            );
        }
    }
}

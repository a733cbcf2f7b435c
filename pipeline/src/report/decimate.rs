//! Fewer points than a chart has pixel columns: a day of one-minute
//! windows is 1,440 points per line, more than a 900-pixel chart can show,
//! and every point costs bytes in the page. Buckets keep their highest
//! value, so a one-window spike is never averaged away.

/// At most `max` points of `points` (time-ordered): consecutive runs
/// merged into one point each, the run's highest value at its time.
pub fn decimate(points: &[(i64, f64)], max: usize) -> Vec<(i64, f64)> {
    if points.len() <= max || max == 0 {
        return points.to_vec();
    }
    let per = points.len().div_ceil(max);
    points
        .chunks(per)
        .filter_map(|c| c.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1)))
        .collect()
}

/// The cells of a heat-map row merged into at most `max` columns: each
/// column spans `[start, end)` of its windows and keeps the highest value.
pub fn columns<T: Copy>(
    cells: &[(i64, T)],
    max: usize,
    value: impl Fn(&T) -> f64,
) -> Vec<(i64, i64, T)> {
    if cells.is_empty() || max == 0 {
        return Vec::new();
    }
    let per = cells.len().div_ceil(max);
    let step = if cells.len() > 1 {
        (cells[1].0 - cells[0].0).max(1)
    } else {
        60_000
    };
    cells
        .chunks(per)
        .map(|c| {
            let best = c
                .iter()
                .max_by(|a, b| value(&a.1).total_cmp(&value(&b.1)))
                .expect("chunks are never empty");
            (c[0].0 - step, c[c.len() - 1].0, best.1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spike_survives_and_the_count_is_bounded() {
        let mut points: Vec<(i64, f64)> = (0..1440).map(|i| (i * 60_000, 1.0)).collect();
        points[777].1 = 50.0;
        let d = decimate(&points, 450);
        assert!(d.len() <= 450, "{}", d.len());
        assert!(d.len() >= 225, "at least half the budget: {}", d.len());
        assert!(d.contains(&(777 * 60_000, 50.0)));
        assert_eq!(decimate(&points[..10], 450), points[..10]);
    }

    #[test]
    fn columns_cover_their_windows_and_keep_the_worst_cell() {
        let cells: Vec<(i64, f64)> = (1..=10).map(|i| (i * 60_000, i as f64 % 4.0)).collect();
        let c = columns(&cells, 5, |v| *v);
        assert_eq!(c.len(), 5);
        assert_eq!(c[0], (0, 120_000, 2.0));
        assert_eq!(c[1], (120_000, 240_000, 3.0));
        assert_eq!(c[4].1, 600_000);
    }
}

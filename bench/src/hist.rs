//! Latency histograms in microseconds, shipped between processes as `(value, count)` pairs.

use hdrhistogram::Histogram;

/// Highest latency recorded: one hour, in microseconds.
const MAX_US: u64 = 3_600_000_000;

/// A new histogram for latencies in microseconds, three significant figures.
pub fn new_us() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// Records one latency, clamped into the histogram's range.
pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, MAX_US));
}

/// The recorded values as `(value, count)` pairs: a few thousand at most whatever the count.
pub fn to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

/// Adds pairs from [`to_pairs`] into `h`.
pub fn merge_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(v, n) in pairs {
        let _ = h.record_n(v.clamp(1, MAX_US), n);
    }
}

/// Percentile `q` (0..=100) in milliseconds, `None` when empty.
pub fn pct_ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_percentile(q) as f64 / 1000.0)
}

/// Points of the cumulative distribution, `(latency ms, fraction ≤ it)`, at most ~200.
pub fn cdf_ms(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let total = h.len() as f64;
    let mut out = Vec::new();
    let mut acc = 0u64;
    let pairs = to_pairs(h);
    let step = (pairs.len() / 200).max(1);
    for (i, (v, n)) in pairs.iter().enumerate() {
        acc += n;
        if i % step == 0 || i + 1 == pairs.len() {
            out.push((*v as f64 / 1000.0, acc as f64 / total));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_and_cdf_ends_at_one() {
        let mut a = new_us();
        for v in [10, 20, 20, 3000, 90_000] {
            record_us(&mut a, v);
        }
        let mut b = new_us();
        merge_pairs(&mut b, &to_pairs(&a));
        assert_eq!(b.len(), 5);
        assert_eq!(b.max(), a.max());
        let cdf = cdf_ms(&b);
        assert!((cdf.last().unwrap().1 - 1.0).abs() < 1e-9);
        assert!(pct_ms(&b, 50.0).unwrap() < 0.1);
    }
}

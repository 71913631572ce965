//! A fixed-bucket latency histogram of the cell's upstream requests, updated
//! lock-free from the refresh path. It sits below the cell, which records into it;
//! `metrics` only reads its snapshot to render a Prometheus histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the buckets: a token endpoint answers in tens of
/// milliseconds when well, and is cut off by the source's timeout (30 s by default).
pub const BOUNDS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts; the last one is the `+Inf` overflow.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

/// A consistent-enough copy for rendering: cumulative counts, as the format wants.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// `(le, cumulative count)`, ending with `(+Inf, count)`.
    pub cumulative: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BOUNDS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(self.buckets.len());
        for (i, bucket) in self.buckets.iter().enumerate() {
            running += bucket.load(Ordering::Relaxed);
            cumulative.push((BOUNDS.get(i).copied().unwrap_or(f64::INFINITY), running));
        }
        Snapshot {
            cumulative,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            // The buckets' total, so `+Inf` and `_count` always agree.
            count: running,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(10));
        h.observe(Duration::from_millis(300));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        let at = |le: f64| s.cumulative.iter().find(|(b, _)| *b == le).unwrap().1;
        assert_eq!(at(0.005), 1);
        assert_eq!(at(0.01), 2, "a bound is inclusive");
        assert_eq!(at(0.25), 2);
        assert_eq!(at(0.5), 3);
        assert_eq!(at(30.0), 3);
        assert_eq!(at(f64::INFINITY), 4);
        assert_eq!(s.count, 4);
        assert!((s.sum_seconds - 60.313).abs() < 1e-9, "{}", s.sum_seconds);
    }
}

//! A handful of counters and one latency histogram, rendered as Prometheus text. Hand-rolled
//! to keep the dependency set small; every value is an atomic.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Status classes counted per request.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Default)]
pub struct Metrics {
    pub requests: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    pub db_connects: AtomicU64,
    pub db_retries: AtomicU64,
    pub db_unavailable: AtomicU64,
    pub cas_conflicts: AtomicU64,
}

impl Metrics {
    pub fn observe(&self, status: u16, took: Duration) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.requests[class].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut s = String::with_capacity(2048);
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        s.push_str("# HELP citadel_app_requests_total HTTP requests answered, by status class.\n");
        s.push_str("# TYPE citadel_app_requests_total counter\n");
        for (i, c) in CLASSES.iter().enumerate() {
            let _ = writeln!(
                s,
                "citadel_app_requests_total{{class=\"{c}\"}} {}",
                g(&self.requests[i])
            );
        }
        s.push_str("# HELP citadel_app_request_seconds Time to answer an HTTP request.\n");
        s.push_str("# TYPE citadel_app_request_seconds histogram\n");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "citadel_app_request_seconds_bucket{{le=\"{b}\"}} {}",
                g(&self.buckets[i])
            );
        }
        let count = g(&self.latency_count);
        let _ = writeln!(
            s,
            "citadel_app_request_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            s,
            "citadel_app_request_seconds_sum {}",
            g(&self.latency_sum_us) as f64 / 1e6
        );
        let _ = writeln!(s, "citadel_app_request_seconds_count {count}");
        let counters = [
            (
                "citadel_app_db_connects_total",
                "Connections opened to db members.",
                &self.db_connects,
            ),
            (
                "citadel_app_db_retries_total",
                "db operations retried after a retryable failure.",
                &self.db_retries,
            ),
            (
                "citadel_app_db_unavailable_total",
                "db operations that failed after the whole retry budget.",
                &self.db_unavailable,
            ),
            (
                "citadel_app_cas_conflicts_total",
                "WATCH/EXEC transactions aborted by a concurrent write and run again.",
                &self.cas_conflicts,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                g(v)
            );
        }
        s
    }
}

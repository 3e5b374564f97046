//! A small hand-kept metrics registry rendered in the Prometheus text format.
//!
//! Counters are keyed by their full series text (`name{label="v"}`); a read lock is the fast
//! path and the write lock is only taken the first time a series appears.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Latency buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Help texts of the series this crate exports.
const HELP: &[(&str, &str, &str)] = &[
    (
        "gate_http_requests_total",
        "counter",
        "HTTP requests answered, by listener and status",
    ),
    (
        "gate_http_request_duration_seconds",
        "histogram",
        "HTTP request latency at the gate",
    ),
    (
        "gate_bytes_total",
        "counter",
        "bytes relayed (HTTP by content-length; TCP/UDP exact), by listener and direction",
    ),
    (
        "gate_rate_limited_total",
        "counter",
        "requests or connections refused by the per-client rate limit",
    ),
    (
        "gate_conn_limited_total",
        "counter",
        "connections refused by the per-client connection cap",
    ),
    (
        "gate_banned_total",
        "counter",
        "requests or connections refused because the client is banned",
    ),
    (
        "gate_denied_total",
        "counter",
        "connections refused by a firewall rule",
    ),
    (
        "gate_connections_total",
        "counter",
        "connections accepted, by listener",
    ),
    (
        "gate_retries_total",
        "counter",
        "requests retried on another backend",
    ),
    (
        "gate_dns_queries_total",
        "counter",
        "DNS queries answered, by response code",
    ),
    (
        "gate_backend_requests_total",
        "counter",
        "requests or connections sent to a backend",
    ),
    (
        "gate_backend_failures_total",
        "counter",
        "failed requests or connects to a backend",
    ),
    (
        "gate_backend_active",
        "gauge",
        "in-flight requests or open connections per backend",
    ),
    (
        "gate_backend_up",
        "gauge",
        "1 when the backend passes its health checks",
    ),
    (
        "gate_backend_stalled",
        "gauge",
        "1 while requests wait on the backend with no answer for longer than stall_ms",
    ),
];

/// Per-listener HTTP counters, looked up once per connection so that a request costs only
/// atomic adds.
pub struct HttpStats {
    codes: Box<[AtomicU64]>,
    latency: Histogram,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl HttpStats {
    fn new() -> Self {
        Self {
            codes: (0..600).map(|_| AtomicU64::new(0)).collect(),
            latency: Histogram::default(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }

    /// One answered request: its status and the time to its response head.
    pub fn record(&self, code: u16, took: Duration) {
        if let Some(c) = self.codes.get(code as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.latency.observe(took);
    }

    /// Body bytes relayed from a client to a backend.
    pub fn add_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Body bytes relayed from a backend to a client.
    pub fn add_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct Registry {
    counters: RwLock<BTreeMap<String, Arc<AtomicU64>>>,
    histograms: RwLock<BTreeMap<String, Arc<Histogram>>>,
    http: RwLock<BTreeMap<String, Arc<HttpStats>>>,
}

fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut s = String::with_capacity(64);
    s.push_str(name);
    if !labels.is_empty() {
        s.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(k);
            s.push_str("=\"");
            for ch in v.chars() {
                match ch {
                    '\\' => s.push_str("\\\\"),
                    '"' => s.push_str("\\\""),
                    '\n' => s.push_str("\\n"),
                    c => s.push(c),
                }
            }
            s.push('"');
        }
        s.push('}');
    }
    s
}

impl Registry {
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Arc<AtomicU64> {
        let key = series(name, labels);
        if let Ok(m) = self.counters.read()
            && let Some(c) = m.get(&key)
        {
            return c.clone();
        }
        match self.counters.write() {
            Ok(mut m) => m.entry(key).or_default().clone(),
            Err(_) => Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn inc(&self, name: &str, labels: &[(&str, &str)], by: u64) {
        self.counter(name, labels).fetch_add(by, Ordering::Relaxed);
    }

    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Arc<Histogram> {
        let key = series(name, labels);
        if let Ok(m) = self.histograms.read()
            && let Some(h) = m.get(&key)
        {
            return h.clone();
        }
        match self.histograms.write() {
            Ok(mut m) => m.entry(key).or_default().clone(),
            Err(_) => Arc::new(Histogram::default()),
        }
    }

    pub fn http_stats(&self, listener: &str) -> Arc<HttpStats> {
        if let Ok(m) = self.http.read()
            && let Some(s) = m.get(listener)
        {
            return s.clone();
        }
        match self.http.write() {
            Ok(mut m) => m
                .entry(listener.to_string())
                .or_insert_with(|| Arc::new(HttpStats::new()))
                .clone(),
            Err(_) => Arc::new(HttpStats::new()),
        }
    }

    /// Renders every series; `extra` are gauge lines computed at scrape time.
    pub fn render(&self, extra: &[(String, f64)]) -> String {
        let mut out = String::new();
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        }
        if let Ok(m) = self.http.read() {
            for (l, s) in m.iter() {
                for (code, c) in s.codes.iter().enumerate() {
                    let n = c.load(Ordering::Relaxed);
                    if n > 0 {
                        let code = code.to_string();
                        let key = series(
                            "gate_http_requests_total",
                            &[("listener", l), ("code", &code)],
                        );
                        let _ = writeln!(out, "{key} {n}");
                    }
                }
                for (dir, v) in [("in", &s.bytes_in), ("out", &s.bytes_out)] {
                    let key = series("gate_bytes_total", &[("listener", l), ("dir", dir)]);
                    let _ = writeln!(out, "{key} {}", v.load(Ordering::Relaxed));
                }
                let key = series("gate_http_request_duration_seconds", &[("listener", l)]);
                render_histogram(&mut out, &key, &s.latency);
            }
        }
        if let Ok(m) = self.counters.read() {
            for (k, v) in m.iter() {
                let _ = writeln!(out, "{k} {}", v.load(Ordering::Relaxed));
            }
        }
        if let Ok(m) = self.histograms.read() {
            for (k, h) in m.iter() {
                render_histogram(&mut out, k, h);
            }
        }
        for (k, v) in extra {
            let _ = writeln!(out, "{k} {v}");
        }
        out
    }
}

fn render_histogram(out: &mut String, key: &str, h: &Histogram) {
    let (name, labels) = match key.find('{') {
        Some(i) => (&key[..i], &key[i + 1..key.len() - 1]),
        None => (key, ""),
    };
    let sep = if labels.is_empty() { "" } else { "," };
    for (i, b) in BUCKETS.iter().enumerate() {
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
            h.buckets[i].load(Ordering::Relaxed)
        );
    }
    let count = h.count.load(Ordering::Relaxed);
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
    let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

pub fn gauge_series(name: &str, labels: &[(&str, &str)]) -> String {
    series(name, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let r = Registry::default();
        let s = r.http_stats("web");
        s.record(200, Duration::from_millis(3));
        s.record(200, Duration::from_millis(30));
        s.add_out(20);
        r.inc("gate_dns_queries_total", &[("rcode", "a\"b")], 1);
        let text = r.render(&[]);
        assert!(text.contains("gate_http_requests_total{listener=\"web\",code=\"200\"} 2"));
        assert!(text.contains(
            "gate_http_request_duration_seconds_bucket{listener=\"web\",le=\"0.005\"} 1"
        ));
        assert!(text.contains("gate_bytes_total{listener=\"web\",dir=\"out\"} 20"));
        assert!(text.contains("gate_dns_queries_total{rcode=\"a\\\"b\"} 1"));
        assert!(text.contains("gate_bytes_total{listener=\"web\",dir=\"out\"} 20"));
    }
}

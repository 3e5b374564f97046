//! A load checker for failover drills: a mixed read/write load against the document API
//! (directly or through the gate) that records every acknowledged write, prints a timeline of
//! errors per second, and afterwards checks that every acknowledged write is there.
//!
//! `citadel-app load --url http://127.0.0.1:8080 --key TOKEN --seconds 30`, or
//! [`run`] from a test while it kills nodes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Serialize;

/// What load to make.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `http://host:port` of an app node or of the gate.
    pub base: String,
    /// API key token, if the API wants one.
    pub token: Option<String>,
    pub collection: String,
    pub duration: Duration,
    /// Concurrent clients, each with its own keep-alive connection(s).
    pub concurrency: usize,
    /// Share of writes, percent (0–100); the rest are reads of acknowledged writes.
    pub write_percent: u32,
    /// Time one request may take before it counts as failed.
    pub request_timeout: Duration,
    /// How long the final check may keep retrying reads that fail (not 404s) while the
    /// cluster settles.
    pub verify_timeout: Duration,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            base: "http://127.0.0.1:8000".into(),
            token: None,
            collection: "loadcheck".into(),
            duration: Duration::from_secs(10),
            concurrency: 8,
            write_percent: 30,
            request_timeout: Duration::from_secs(10),
            verify_timeout: Duration::from_secs(30),
        }
    }
}

/// One second of the timeline.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Second {
    pub t: u64,
    pub reads_ok: u64,
    pub reads_err: u64,
    pub writes_ok: u64,
    pub writes_err: u64,
}

/// What happened.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub seconds: Vec<Second>,
    pub reads_ok: u64,
    pub reads_err: u64,
    pub writes_ok: u64,
    pub writes_err: u64,
    /// Failed requests by kind: the HTTP status, or `transport`/`timeout`.
    pub errors: BTreeMap<String, u64>,
    /// Writes answered 2xx.
    pub acknowledged: usize,
    /// Acknowledged writes missing (or different) at the end.
    pub lost: Vec<String>,
    /// Acknowledged writes the final check could not read at all (the cluster did not answer).
    pub unverified: Vec<String>,
}

impl LoadReport {
    /// The timeline as text, one line a second, then the totals.
    pub fn timeline(&self) -> String {
        let mut s = String::from("  t   reads ok  err   writes ok  err\n");
        for x in &self.seconds {
            let mark = if x.reads_err + x.writes_err > 0 {
                "  <-- errors"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "{:>3}s  {:>8} {:>4}  {:>9} {:>4}{mark}",
                x.t, x.reads_ok, x.reads_err, x.writes_ok, x.writes_err
            );
        }
        let _ = writeln!(
            s,
            "total: reads {} ok / {} failed; writes {} ok / {} failed; errors {:?}",
            self.reads_ok, self.reads_err, self.writes_ok, self.writes_err, self.errors
        );
        let _ = writeln!(
            s,
            "acknowledged writes: {}; lost: {}; unverified: {}",
            self.acknowledged,
            self.lost.len(),
            self.unverified.len()
        );
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bad base URL {0}")]
    Url(String),
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Answer {
    status: u16,
    body: Bytes,
}

async fn call(
    client: &HttpClient,
    opts: &LoadOptions,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<Answer, String> {
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(format!("{}{path}", opts.base));
    if let Some(t) = &opts.token {
        b = b.header("x-api-key", t.as_str());
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let req = b
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|_| "request".to_string())?;
    let fut = async {
        let resp = client
            .request(req)
            .await
            .map_err(|_| "transport".to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|_| "transport".to_string())?
            .to_bytes();
        Ok(Answer { status, body })
    };
    tokio::time::timeout(opts.request_timeout, fut)
        .await
        .map_err(|_| "timeout".to_string())?
}

fn n_of(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("n")?
        .as_u64()
}

#[derive(Default)]
struct WorkerLog {
    seconds: Vec<Second>,
    errors: BTreeMap<String, u64>,
    acked: Vec<(String, u64)>,
}

impl WorkerLog {
    fn at(&mut self, start: Instant) -> &mut Second {
        let t = start.elapsed().as_secs() as usize;
        while self.seconds.len() <= t {
            let len = self.seconds.len() as u64;
            self.seconds.push(Second {
                t: len,
                ..Second::default()
            });
        }
        &mut self.seconds[t]
    }
}

async fn worker(
    w: usize,
    client: HttpClient,
    opts: LoadOptions,
    start: Instant,
    deadline: Instant,
) -> WorkerLog {
    let mut log = WorkerLog::default();
    let coll = opts.collection.clone();
    let mut n: u64 = 0;
    while Instant::now() < deadline {
        n += 1;
        let write = log.acked.is_empty() || (n * 37 % 100) < u64::from(opts.write_percent);
        if write {
            let id = format!("w{w}-{n}");
            let body = format!("{{\"w\":{w},\"n\":{n},\"pad\":\"citadel load check\"}}");
            let r = call(
                &client,
                &opts,
                "PUT",
                &format!("/v1/{coll}/{id}"),
                Some(body),
            )
            .await;
            match r {
                Ok(a) if a.status == 200 || a.status == 201 => {
                    log.at(start).writes_ok += 1;
                    log.acked.push((id, n));
                }
                Ok(a) => {
                    log.at(start).writes_err += 1;
                    *log.errors.entry(a.status.to_string()).or_default() += 1;
                }
                Err(kind) => {
                    log.at(start).writes_err += 1;
                    *log.errors.entry(kind).or_default() += 1;
                }
            }
        } else {
            let (id, want) = log.acked[(n as usize * 7919) % log.acked.len()].clone();
            match call(&client, &opts, "GET", &format!("/v1/{coll}/{id}"), None).await {
                Ok(a) if a.status == 200 && n_of(&a.body) == Some(want) => {
                    log.at(start).reads_ok += 1
                }
                Ok(a) => {
                    log.at(start).reads_err += 1;
                    *log.errors.entry(a.status.to_string()).or_default() += 1;
                }
                Err(kind) => {
                    log.at(start).reads_err += 1;
                    *log.errors.entry(kind).or_default() += 1;
                }
            }
        }
    }
    log
}

/// Runs the load for `opts.duration`, then checks every acknowledged write.
pub async fn run(opts: LoadOptions) -> Result<LoadReport, LoadError> {
    if !opts.base.starts_with("http://") {
        return Err(LoadError::Url(opts.base.clone()));
    }
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http();
    let start = Instant::now();
    let deadline = start + opts.duration;
    let mut tasks = Vec::new();
    for w in 0..opts.concurrency.max(1) {
        tasks.push(tokio::spawn(worker(
            w,
            client.clone(),
            opts.clone(),
            start,
            deadline,
        )));
    }
    let mut report = LoadReport::default();
    let mut acked = Vec::new();
    for t in tasks {
        let Ok(log) = t.await else { continue };
        for s in log.seconds {
            let t = s.t as usize;
            while report.seconds.len() <= t {
                let len = report.seconds.len() as u64;
                report.seconds.push(Second {
                    t: len,
                    ..Second::default()
                });
            }
            let r = &mut report.seconds[t];
            r.reads_ok += s.reads_ok;
            r.reads_err += s.reads_err;
            r.writes_ok += s.writes_ok;
            r.writes_err += s.writes_err;
        }
        for (k, v) in log.errors {
            *report.errors.entry(k).or_default() += v;
        }
        acked.extend(log.acked);
    }
    for s in &report.seconds {
        report.reads_ok += s.reads_ok;
        report.reads_err += s.reads_err;
        report.writes_ok += s.writes_ok;
        report.writes_err += s.writes_err;
    }
    report.acknowledged = acked.len();
    let verify_deadline = Instant::now() + opts.verify_timeout;
    for (id, want) in acked {
        let path = format!("/v1/{}/{id}", opts.collection);
        loop {
            match call(&client, &opts, "GET", &path, None).await {
                Ok(a) if a.status == 200 && n_of(&a.body) == Some(want) => break,
                Ok(a) if a.status == 200 || a.status == 404 => {
                    report.lost.push(id);
                    break;
                }
                _ if Instant::now() < verify_deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => {
                    report.unverified.push(id);
                    break;
                }
            }
        }
    }
    Ok(report)
}

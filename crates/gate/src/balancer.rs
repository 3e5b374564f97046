//! Services: pools of members, their health and counters, and the balancing policies.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde::Serialize;

use crate::config::{HealthKind, Policy, ServiceConfig};
use crate::upstream::Pool;

/// Errors of bodies the proxy relays (hyper's, or the gate's own body idle timeout).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// One backend of a service. Its state survives reloads that keep its name and address.
pub struct Member {
    pub name: String,
    pub addr: SocketAddr,
    /// `addr` as a URI authority, for requests to this member.
    pub authority: http::uri::Authority,
    up: AtomicBool,
    ever_settled: AtomicBool,
    /// Some active check has finished (either way): the gate has an opinion of this member.
    judged: AtomicBool,
    ok_streak: AtomicU32,
    fail_streak: AtomicU32,
    passive_fails: AtomicU32,
    pub draining: AtomicBool,
    pub active: AtomicU64,
    /// Requests sent to this member that have no response head yet.
    awaiting: AtomicU64,
    /// When (`clock_ms`) this member last sent a response head, passed a check, or began
    /// to be awaited.
    last_head_ms: AtomicU64,
    /// A request to it timed out and it has not answered since.
    silent: AtomicBool,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// Keep-alive connections to this member (kept across reloads with the member).
    pub pool: Pool,
}

#[derive(Serialize)]
pub struct MemberView {
    pub name: String,
    pub address: String,
    pub up: bool,
    pub draining: bool,
    /// Requests wait on it with no answer for longer than the service's `stall_ms`.
    pub stalled: bool,
    pub active: u64,
    pub requests: u64,
    pub failures: u64,
}

impl Member {
    pub fn new(name: String, addr: SocketAddr) -> Self {
        let authority = http::uri::Authority::try_from(addr.to_string().as_str())
            .unwrap_or_else(|_| http::uri::Authority::from_static("invalid"));
        Self {
            name,
            addr,
            authority,
            up: AtomicBool::new(false),
            ever_settled: AtomicBool::new(false),
            judged: AtomicBool::new(false),
            ok_streak: AtomicU32::new(0),
            fail_streak: AtomicU32::new(0),
            passive_fails: AtomicU32::new(0),
            draining: AtomicBool::new(false),
            active: AtomicU64::new(0),
            awaiting: AtomicU64::new(0),
            last_head_ms: AtomicU64::new(0),
            silent: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            pool: Pool::default(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Healthy and not draining: may take new work.
    pub fn eligible(&self) -> bool {
        self.is_up() && !self.draining.load(Ordering::Acquire)
    }

    /// Requests are waiting on this member, or one timed out, and it has sent no response
    /// head (nor passed a check) for longer than `stall_ms` (0: never stalled). A timed-out
    /// request keeps it stalled once nothing waits on it any more: else the next request
    /// would be sent to it and wait out the response timeout again.
    pub fn stalled(&self, stall_ms: u64, now_ms: u64) -> bool {
        stall_ms > 0
            && (self.awaiting.load(Ordering::Acquire) > 0 || self.silent.load(Ordering::Acquire))
            && now_ms.saturating_sub(self.last_head_ms.load(Ordering::Acquire)) > stall_ms
    }

    fn heard_from(&self) {
        self.last_head_ms.store(clock_ms(), Ordering::Release);
        self.silent.store(false, Ordering::Release);
    }

    /// At least one active health check of this member has finished.
    pub fn judged(&self) -> bool {
        self.judged.load(Ordering::Acquire)
    }

    /// Records one active health check result.
    pub fn record_check(&self, ok: bool, rise: u32, fall: u32, service: &str) {
        if ok {
            self.heard_from();
            self.fail_streak.store(0, Ordering::Relaxed);
            let n = self.ok_streak.fetch_add(1, Ordering::Relaxed) + 1;
            let first = !self.ever_settled.load(Ordering::Relaxed);
            if !self.is_up() && (n >= rise || first) {
                self.ever_settled.store(true, Ordering::Relaxed);
                self.passive_fails.store(0, Ordering::Relaxed);
                self.up.store(true, Ordering::Release);
                tracing::info!(service, member = %self.name, addr = %self.addr, "backend up");
            }
        } else {
            self.ok_streak.store(0, Ordering::Relaxed);
            let n = self.fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= fall {
                self.ever_settled.store(true, Ordering::Relaxed);
                if self.up.swap(false, Ordering::AcqRel) {
                    tracing::warn!(service, member = %self.name, addr = %self.addr, "backend down (health check)");
                }
            }
        }
        // After the verdict, so whoever sees `judged` sees the verdict too.
        self.judged.store(true, Ordering::Release);
    }

    /// Records the outcome of real traffic (passive ejection).
    pub fn record_traffic(&self, ok: bool, threshold: u32, service: &str) {
        if ok {
            self.passive_fails.store(0, Ordering::Relaxed);
            return;
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        let n = self.passive_fails.fetch_add(1, Ordering::Relaxed) + 1;
        if threshold > 0 && n >= threshold && self.up.swap(false, Ordering::AcqRel) {
            self.ok_streak.store(0, Ordering::Relaxed);
            tracing::warn!(service, member = %self.name, addr = %self.addr, failures = n, "backend ejected (passive)");
        }
    }

    pub fn view(&self, stall_ms: u64) -> MemberView {
        MemberView {
            name: self.name.clone(),
            address: self.addr.to_string(),
            up: self.is_up(),
            draining: self.draining.load(Ordering::Relaxed),
            stalled: self.stalled(stall_ms, clock_ms()),
            active: self.active.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }
}

/// Counts a request or connection as in flight on a member until dropped.
pub struct ActiveGuard(pub Arc<Member>);

impl ActiveGuard {
    pub fn new(m: Arc<Member>) -> Self {
        m.active.fetch_add(1, Ordering::Relaxed);
        m.requests.fetch_add(1, Ordering::Relaxed);
        Self(m)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Milliseconds on a monotonic clock that starts with the process.
pub fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// Counts a request as waiting for its response head on a member until `answered` or
/// dropped; what `Member::stalled` reads.
pub struct AwaitingHead<'a>(&'a Member);

impl<'a> AwaitingHead<'a> {
    pub fn new(m: &'a Member) -> Self {
        // A member that was idle starts its stall clock now, not at its last answer.
        if m.awaiting.fetch_add(1, Ordering::AcqRel) == 0 {
            m.last_head_ms.store(clock_ms(), Ordering::Release);
        }
        Self(m)
    }

    /// The member sent a response head.
    pub fn answered(self) {
        self.0.heard_from();
    }

    /// No response head came within the response timeout: the member stays stalled until
    /// it answers or passes a check, even with nothing waiting on it.
    pub fn timed_out(self) {
        self.0.silent.store(true, Ordering::Release);
    }
}

impl Drop for AwaitingHead<'_> {
    fn drop(&mut self) {
        self.0.awaiting.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Service {
    pub cfg: ServiceConfig,
    pub members: Vec<Arc<Member>>,
    rr: AtomicUsize,
    dns_rr: AtomicUsize,
}

fn hash_of(key: &impl Hash, name: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    name.hash(&mut h);
    h.finish()
}

impl Service {
    /// Builds the service, reusing member state (and its connection pool) from `old` where the
    /// member's name and address are unchanged.
    pub fn new(cfg: ServiceConfig, old: Option<&Service>) -> Self {
        let members = cfg
            .members
            .iter()
            .map(|m| {
                let addr = SocketAddr::new(m.address, cfg.port);
                old.and_then(|o| {
                    o.members
                        .iter()
                        .find(|x| x.name == m.name && x.addr == addr)
                        .cloned()
                })
                .unwrap_or_else(|| Arc::new(Member::new(m.name.clone(), addr)))
            })
            .collect();
        Self {
            cfg,
            members,
            rr: AtomicUsize::new(0),
            dns_rr: AtomicUsize::new(0),
        }
    }

    /// Picks a member for new work, skipping indexes in `exclude`, and passing over stalled
    /// members while an eligible one is not stalled.
    /// `key` is the consistent-hashing key (client IP or a header value).
    pub fn pick(&self, key: Option<&[u8]>, exclude: &[usize]) -> Option<(usize, Arc<Member>)> {
        let ok = |i: usize| self.members[i].eligible() && !exclude.contains(&i);
        let now = clock_ms();
        // One turn of the rotation per pick, whichever pass finds the member.
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        self.pick_among(key, start, |i| {
            !exclude.contains(&i) && self.answering(&self.members[i], now)
        })
        .or_else(|| self.pick_among(key, start, ok))
    }

    /// In rotation and not stalled: a member new work can expect an answer from.
    fn answering(&self, m: &Member, now_ms: u64) -> bool {
        m.eligible() && !m.stalled(self.cfg.stall_ms, now_ms)
    }

    fn pick_among(
        &self,
        key: Option<&[u8]>,
        start: usize,
        ok: impl Fn(usize) -> bool,
    ) -> Option<(usize, Arc<Member>)> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let idx = match self.cfg.policy {
            Policy::RoundRobin => (0..n).map(|k| (start + k) % n).find(|&i| ok(i)),
            Policy::LeastConn => (0..n)
                .map(|k| (start + k) % n)
                .filter(|&i| ok(i))
                .min_by_key(|&i| self.members[i].active.load(Ordering::Relaxed)),
            Policy::ConsistentHash => {
                // Rendezvous (highest random weight) hashing: a member's loss moves only
                // the keys that were on it.
                let key = key.unwrap_or(&[]);
                (0..n)
                    .filter(|&i| ok(i))
                    .max_by_key(|&i| hash_of(&key, &self.members[i].name))
            }
        }?;
        Some((idx, self.members[idx].clone()))
    }

    /// Records how real traffic to `member` went. Passive ejection never takes out the last
    /// member that is `answering` (as Envoy's max_ejection_percent bounds it): with none
    /// left every request fails fast with 503, where a member that is slow for a moment —
    /// carrying the whole load alone, or waiting on a db failover — still answers most; a
    /// member that is really gone leaves at its active checks' `fall`. A stalled member
    /// does not count: ejecting the one member that still answers, slowly, because a frozen
    /// one is still in rotation would leave none that answers.
    pub fn record_traffic(&self, member: &Member, ok: bool) {
        let others_in_rotation = || {
            let now = clock_ms();
            self.members
                .iter()
                .any(|m| !std::ptr::eq(&**m, member) && self.answering(m, now))
        };
        let threshold = if ok || others_in_rotation() {
            self.cfg.passive_fail
        } else {
            0
        };
        member.record_traffic(ok, threshold, &self.cfg.name);
    }

    /// Members for DNS, rotated per call: the healthy ones, and those not judged yet. At the
    /// gate's start every member is unjudged for one check's time; an empty answer then would
    /// make a client that resolved at that instant (an app resolving the db while the gate
    /// checks that app's /health) fail and cache the failure, where an address that may be
    /// down costs it one connection attempt to the next.
    pub fn answerable_rotated(&self) -> Vec<Arc<Member>> {
        let up: Vec<_> = self
            .members
            .iter()
            .filter(|m| !m.draining.load(Ordering::Acquire) && (m.is_up() || !m.judged()))
            .cloned()
            .collect();
        if up.is_empty() {
            return up;
        }
        let start = self.dns_rr.fetch_add(1, Ordering::Relaxed) % up.len();
        let mut out = Vec::with_capacity(up.len());
        out.extend_from_slice(&up[start..]);
        out.extend_from_slice(&up[..start]);
        out
    }

    /// Every member has been judged by an active check.
    pub fn all_judged(&self) -> bool {
        self.members.iter().all(|m| m.judged())
    }

    /// Starts one health-check task per member. Tasks stop when the service is dropped
    /// (after a reload replaced it).
    pub fn start_health(self: &Arc<Self>) {
        for i in 0..self.members.len() {
            let weak: Weak<Service> = Arc::downgrade(self);
            tokio::spawn(async move { health_loop(weak, i).await });
        }
    }
}

async fn health_loop(svc: Weak<Service>, i: usize) {
    loop {
        let (member, hc, connect_timeout, idle, name) = match svc.upgrade() {
            Some(s) => (
                s.members[i].clone(),
                s.cfg.health.clone(),
                Duration::from_millis(s.cfg.connect_timeout_ms),
                s.cfg.pool_idle_per_member,
                s.cfg.name.clone(),
            ),
            None => return,
        };
        let timeout = Duration::from_millis(hc.timeout_ms);
        let ok = match hc.kind {
            HealthKind::Tcp => matches!(
                tokio::time::timeout(timeout, tokio::net::TcpStream::connect(member.addr)).await,
                Ok(Ok(_))
            ),
            HealthKind::Http => http_check(&member, &hc.path, connect_timeout, idle, timeout).await,
            HealthKind::None => true,
        };
        member.record_check(ok, hc.rise, hc.fall, &name);
        drop(member);
        tokio::time::sleep(Duration::from_millis(hc.interval_ms)).await;
    }
}

async fn http_check(
    member: &Member,
    path: &str,
    connect_timeout: Duration,
    max_idle: usize,
    timeout: Duration,
) -> bool {
    let req = match hyper::Request::get(path)
        .header(hyper::header::HOST, member.authority.as_str())
        .header(hyper::header::USER_AGENT, "citadel-gate-health")
        .body(Empty::<Bytes>::new().map_err(|n| match n {}).boxed())
    {
        Ok(r) => r,
        Err(_) => return false,
    };
    let fut = async {
        let (resp, lease) = member
            .pool
            .send(member.addr, connect_timeout, req)
            .await
            .ok()?;
        let ok = resp.status().is_success() || resp.status().is_redirection();
        // Read the body to its end so the connection can serve traffic afterwards.
        resp.into_body().collect().await.ok()?;
        member.pool.give_back(lease, max_idle);
        Some(ok)
    };
    matches!(tokio::time::timeout(timeout, fut).await, Ok(Some(true)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MemberConfig;

    fn svc(policy: Policy, n: usize) -> Service {
        let cfg = ServiceConfig {
            name: "app".into(),
            policy,
            hash_header: None,
            port: 8000,
            members: (0..n)
                .map(|i| MemberConfig {
                    name: format!("m{i}"),
                    address: std::net::IpAddr::from([127, 0, 0, 1 + i as u8]),
                })
                .collect(),
            role: None,
            jails: Vec::new(),
            health: Default::default(),
            passive_fail: 3,
            connect_timeout_ms: 100,
            response_timeout_ms: 100,
            idle_timeout_ms: 100,
            retries: 1,
            pool_idle_per_member: 1,
            stall_ms: 500,
        };
        Service::new(cfg, None)
    }

    #[tokio::test]
    async fn round_robin_skips_down_and_excluded() {
        let s = svc(Policy::RoundRobin, 3);
        assert!(s.pick(None, &[]).is_none(), "members start down");
        for m in &s.members {
            m.record_check(true, 2, 2, "app");
        }
        s.members[1].record_check(false, 2, 2, "app");
        s.members[1].record_check(false, 2, 2, "app");
        let picks: Vec<usize> = (0..4)
            .filter_map(|_| s.pick(None, &[]).map(|p| p.0))
            .collect();
        assert!(picks.iter().all(|&i| i != 1));
        assert!(picks.contains(&0) && picks.contains(&2));
        assert_eq!(s.pick(None, &[0]).map(|p| p.0), Some(2));
    }

    #[tokio::test]
    async fn consistent_hash_moves_only_lost_keys() {
        let s = svc(Policy::ConsistentHash, 3);
        for m in &s.members {
            m.record_check(true, 1, 1, "app");
        }
        let before: Vec<usize> = (0..100u32)
            .map(|k| {
                s.pick(Some(&k.to_be_bytes()), &[])
                    .map(|p| p.0)
                    .unwrap_or(99)
            })
            .collect();
        s.members[2].record_check(false, 1, 1, "app");
        for (k, b) in before.iter().enumerate() {
            let now = s
                .pick(Some(&(k as u32).to_be_bytes()), &[])
                .map(|p| p.0)
                .unwrap_or(99);
            if *b != 2 {
                assert_eq!(now, *b);
            } else {
                assert_ne!(now, 2);
            }
        }
    }

    #[tokio::test]
    async fn least_conn_prefers_idle() {
        let s = svc(Policy::LeastConn, 2);
        for m in &s.members {
            m.record_check(true, 1, 1, "app");
        }
        let _g = ActiveGuard::new(s.members[0].clone());
        for _ in 0..4 {
            assert_eq!(s.pick(None, &[]).map(|p| p.0), Some(1));
        }
    }

    #[tokio::test]
    async fn passive_ejection_after_threshold() {
        let s = svc(Policy::RoundRobin, 1);
        s.members[0].record_check(true, 2, 2, "app");
        assert!(s.members[0].is_up());
        for _ in 0..3 {
            s.members[0].record_traffic(false, 3, "app");
        }
        assert!(!s.members[0].is_up());
    }

    /// Two members up, `stall_ms` = 1.
    fn two_up_stalling_fast() -> Service {
        let mut s = svc(Policy::RoundRobin, 2);
        s.cfg.stall_ms = 1;
        for m in &s.members {
            m.record_check(true, 1, 1, "app");
        }
        s
    }

    /// A request waiting on `m`, which has not answered for longer than 1 ms.
    fn stall(m: &Member) -> AwaitingHead<'_> {
        let waiting = AwaitingHead::new(m);
        m.last_head_ms.store(0, Ordering::Release);
        while clock_ms() < 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
        waiting
    }

    #[test]
    fn a_stalled_member_is_passed_over_while_another_answers() {
        let mut s = two_up_stalling_fast();
        let stuck = stall(&s.members[0]);
        for _ in 0..4 {
            assert_eq!(s.pick(None, &[]).map(|(i, _)| i), Some(1));
        }
        // With every member stalled the stalled ones still serve.
        let other = stall(&s.members[1]);
        let picked: Vec<_> = (0..4)
            .filter_map(|_| s.pick(None, &[]).map(|(i, _)| i))
            .collect();
        assert!(picked.contains(&0) && picked.contains(&1), "{picked:?}");
        // An answer ends the stall; so does no request waiting.
        other.answered();
        drop(stuck);
        assert!(!s.members[0].stalled(1, clock_ms()));
        assert!(!s.members[1].stalled(1, clock_ms()));
        // A timed-out request keeps it stalled with nothing waiting; a passing check ends it.
        stall(&s.members[0]).timed_out();
        assert!(s.members[0].stalled(1, clock_ms()));
        assert_eq!(s.pick(None, &[]).map(|(i, _)| i), Some(1));
        s.members[0].record_check(true, 1, 1, "app");
        assert!(!s.members[0].stalled(1, clock_ms()));
        s.cfg.stall_ms = 0;
        let _again = AwaitingHead::new(&s.members[0]);
        s.members[0].last_head_ms.store(0, Ordering::Release);
        assert!(!s.members[0].stalled(0, clock_ms()), "0 turns it off");
    }

    #[tokio::test]
    async fn passive_ejection_spares_the_last_member_in_rotation() {
        let s = svc(Policy::RoundRobin, 2);
        for m in &s.members {
            m.record_check(true, 1, 1, "app");
        }
        for _ in 0..3 {
            s.record_traffic(&s.members[0], false);
        }
        assert!(!s.members[0].is_up(), "ejected while app2 serves");
        for _ in 0..10 {
            s.record_traffic(&s.members[1], false);
        }
        assert!(s.members[1].is_up(), "the last member in rotation stays");
        // Once another is back, the failures already counted eject it at the next one.
        s.members[0].record_check(true, 1, 1, "app");
        s.record_traffic(&s.members[1], false);
        assert!(!s.members[1].is_up());
    }

    #[test]
    fn passive_ejection_spares_the_last_member_that_is_not_stalled() {
        let s = two_up_stalling_fast();
        // m0 froze: a request waits on it with no answer.
        let _frozen = stall(&s.members[0]);
        // m1 answers, slowly (its requests time out while its db fails over).
        for _ in 0..10 {
            s.record_traffic(&s.members[1], false);
        }
        assert!(s.members[1].is_up(), "the one member that answers stays");
        // m0's own failures eject it.
        for _ in 0..3 {
            s.record_traffic(&s.members[0], false);
        }
        assert!(!s.members[0].is_up());
    }
}

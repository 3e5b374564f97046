//! The db client: finds the members (static list or DNS through the gate), keeps connections,
//! and retries idempotent operations across a failover within a time budget.
//!
//! Three kinds of connection:
//! - one shared multiplexed connection for linearizable reads and single-command writes;
//! - one shared multiplexed connection that sent `READONLY`, for stale-ok reads (a member
//!   that does not know `READONLY`, such as a plain redis-server, serves it as an ordinary
//!   connection: stale-ok then simply reads linearizably);
//! - a small pool of dedicated connections for WATCH/MULTI/EXEC, which need a connection of
//!   their own for the duration of one transaction.
//!
//! Every (re)connect starts at the next member in rotation, so after a failure the next try
//! goes to another member; with DNS the name is resolved again on every (re)connect.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisConnectionInfo,
    RedisError, ServerErrorKind,
};
use tokio::sync::Mutex;

use crate::config::DbConfig;
use crate::metrics::Metrics;

/// Errors of the db layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No member answered within the retry budget.
    #[error("db unavailable: {0}")]
    Unavailable(String),
    /// The db answered with an error that retrying will not fix.
    #[error("db error: {0}")]
    Redis(#[from] RedisError),
    /// WATCH/EXEC kept losing to concurrent writers.
    #[error("too much contention on {0}")]
    Contention(String),
}

/// How a read may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Linearizable (the default).
    Linearizable,
    /// Any member's local state, possibly stale.
    Stale,
}

/// Splits `host:port` (also `[v6]:port`).
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port))
}

enum Members {
    Static(Vec<(String, u16)>),
    Dns {
        resolver: Box<TokioResolver>,
        name: String,
        port: u16,
    },
}

impl Members {
    async fn resolve(&self) -> Result<Vec<(String, u16)>, String> {
        match self {
            Members::Static(list) => Ok(list.clone()),
            Members::Dns {
                resolver,
                name,
                port,
            } => {
                let answer = resolver
                    .lookup_ip(name.as_str())
                    .await
                    .map_err(|e| format!("resolving {name}: {e}"))?;
                let mut out: Vec<(String, u16)> =
                    answer.iter().map(|ip| (ip.to_string(), *port)).collect();
                out.sort();
                out.dedup();
                if out.is_empty() {
                    return Err(format!("{name} has no addresses"));
                }
                Ok(out)
            }
        }
    }
}

fn build_resolver(server: SocketAddr) -> Result<TokioResolver, String> {
    let mut udp = ConnectionConfig::udp();
    udp.port = server.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = server.port();
    let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
    let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    let opts = builder.options_mut();
    // The gate's answers follow health: never keep them long.
    opts.positive_max_ttl = Some(Duration::from_secs(1));
    opts.negative_max_ttl = Some(Duration::from_secs(1));
    opts.timeout = Duration::from_millis(500);
    opts.attempts = 2;
    opts.ndots = 0;
    builder.build().map_err(|e| e.to_string())
}

/// A member as `host`, `port`.
type Addr = (String, u16);

/// How long a member that went quiet (a connection to it timed out or was reset, or a
/// connect got no answer) is tried only after the others: a box that froze or lost its
/// links answers nothing, and every connect to it costs a whole connect timeout while
/// another member could already serve.
const SUSPECT_FOR: Duration = Duration::from_secs(5);

struct Slot {
    conn: Option<Held>,
}

/// A slot's connection: its generation, the member, until when it is kept when it is a
/// stand-in (a follower kept because the leader it named was a suspect), and what its
/// watchdog reads (the watchdog ends once neither the slot nor a request holds it).
struct Held {
    generation: u64,
    conn: MultiplexedConnection,
    at: Addr,
    stand_in_until: Option<Instant>,
    watch: Arc<Watch>,
}

/// What a shared connection's watchdog reads: how many requests await a reply on it.
#[derive(Default)]
struct Watch {
    awaiting: AtomicUsize,
}

impl Watch {
    /// Runs `request`, counting it as awaiting a reply meanwhile (also when it is dropped
    /// unfinished).
    async fn awaiting<T>(&self, request: impl Future<Output = T>) -> T {
        struct Counted<'a>(&'a AtomicUsize);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.awaiting.fetch_add(1, Ordering::Relaxed);
        let _counted = Counted(&self.awaiting);
        request.await
    }
}

/// Keeps something unacknowledged on a shared connection while replies are awaited on it:
/// TCP_USER_TIMEOUT counts only unacknowledged data, so when the member's box goes after it
/// acknowledged every request (all callers waiting, none sending), nothing would fail the
/// connection before the response timeout. A PING every `every` does: if the host
/// acknowledges nothing, the connection fails, and every request on it with it. A PING's
/// reply is not waited for past `every` (it may queue behind a slow reply).
async fn keep_acknowledging(mut conn: MultiplexedConnection, watch: Weak<Watch>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(watch) = watch.upgrade() else {
            return;
        };
        if watch.awaiting.load(Ordering::Relaxed) > 0 {
            let ping = redis::cmd("PING");
            if let Ok(Err(e)) =
                tokio::time::timeout(every, ping.query_async::<String>(&mut conn)).await
                && e.kind() == ErrorKind::Io
            {
                return;
            }
        }
    }
}

/// A connection that could not be opened: why, and whether the member answered at all (a
/// refusal answers at once; a box that is gone answers nothing, and only that makes it a
/// suspect: a member not listening yet, at start, costs nothing to try again).
struct OpenFailed {
    msg: String,
    answered: bool,
}

/// A connection opened by `connect`: the member, and whether it stands in for a leader that
/// was a suspect.
struct Opened {
    conn: MultiplexedConnection,
    at: Addr,
    stand_in: bool,
}

struct Inner {
    members: Members,
    redis: RedisConnectionInfo,
    tcp: redis::io::tcp::TcpSettings,
    conn_config: AsyncConnectionConfig,
    connect_timeout: Duration,
    /// How often a shared connection awaiting replies is given a PING (see
    /// `keep_acknowledging`).
    ping_every: Duration,
    budget: Duration,
    tx_idle_max: usize,
    tx_permits: tokio::sync::Semaphore,
    rotation: AtomicUsize,
    generation: AtomicU64,
    shared: Mutex<Slot>,
    stale: Mutex<Slot>,
    tx_idle: std::sync::Mutex<Vec<MultiplexedConnection>>,
    /// Members tried last until the instant given (see `SUSPECT_FOR`).
    suspects: std::sync::Mutex<Vec<(Addr, Instant)>>,
    metrics: Arc<Metrics>,
}

/// A handle to the db; cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

/// A dedicated connection for one WATCH/MULTI/EXEC transaction.
pub struct TxConn {
    pub conn: MultiplexedConnection,
    /// False if the connection may still hold a WATCH: it is then closed, not pooled.
    pub reusable: bool,
}

/// Whether a failed attempt may have been carried out by the db.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// This is the first attempt, or earlier attempts surely did nothing.
    Clean,
    /// An earlier attempt failed after its commands may have reached the db.
    Unknown,
}

impl Db {
    /// Builds the client; connects lazily (the first request connects).
    pub fn new(cfg: &DbConfig, metrics: Arc<Metrics>) -> Result<Db, crate::Error> {
        let members = match &cfg.dns {
            Some(dns) => Members::Dns {
                resolver: build_resolver(dns.server).map(Box::new).map_err(|msg| {
                    crate::Error::Config {
                        msg: format!("db.dns: {msg}"),
                    }
                })?,
                name: dns.name.clone(),
                port: dns.port,
            },
            None => {
                let mut list = Vec::new();
                for a in &cfg.addrs {
                    let hp = split_host_port(a).ok_or_else(|| crate::Error::Config {
                        msg: format!("db.addrs: `{a}` is not host:port"),
                    })?;
                    list.push(hp);
                }
                if list.is_empty() {
                    return Err(crate::Error::Config {
                        msg: "db: no members given".into(),
                    });
                }
                Members::Static(list)
            }
        };
        // No CLIENT SETINFO on connect: keep to the db's command subset.
        let mut redis = RedisConnectionInfo::default()
            .set_db(cfg.database)
            .set_skip_set_lib_name();
        if let Some(pw) = &cfg.password {
            redis = redis.set_password(pw);
        }
        // No delayed small writes; and a member whose box is gone (no FIN, no RST) is given
        // up once it leaves what we sent unacknowledged for `unacked_timeout`, instead of a
        // whole response timeout: the request then goes to another member (the request id
        // keeps it exactly-once). A member that is alive but slow still acknowledges: its
        // kernel does, busy or not, within its delayed-ACK time.
        let tcp = redis::io::tcp::TcpSettings::default()
            .set_nodelay(true)
            .set_user_timeout(cfg.unacked_timeout());
        let conn_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout()))
            .set_response_timeout(Some(cfg.response_timeout()));
        // Start each app node at a different member so load spreads.
        let start = std::process::id() as usize;
        Ok(Db {
            inner: Arc::new(Inner {
                members,
                redis,
                tcp,
                conn_config,
                connect_timeout: cfg.connect_timeout(),
                ping_every: cfg.unacked_timeout() / 3,
                budget: cfg.retry_budget(),
                tx_idle_max: cfg.tx_pool_idle,
                tx_permits: tokio::sync::Semaphore::new(cfg.tx_max.max(1)),
                rotation: AtomicUsize::new(start),
                generation: AtomicU64::new(1),
                shared: Mutex::new(Slot { conn: None }),
                stale: Mutex::new(Slot { conn: None }),
                tx_idle: std::sync::Mutex::new(Vec::new()),
                suspects: std::sync::Mutex::new(Vec::new()),
                metrics,
            }),
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Opens one new connection to the next member in rotation, trying each member once,
    /// suspects last. For linearizable work a follower that names its leader is left for
    /// the leader (unless that one is a suspect): reads there are served under its lease and
    /// writes need no forwarding hop.
    async fn connect(&self, readonly: bool) -> Result<Opened, String> {
        let inner = &self.inner;
        let members = inner.members.resolve().await?;
        let n = members.len();
        let first = inner.rotation.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<&Addr> = (0..n).map(|i| &members[(first + i) % n]).collect();
        order.sort_by_key(|a| self.is_suspect(a));
        let mut last_err = String::from("no members");
        for member in order {
            match self.open(&member.0, member.1, readonly).await {
                Ok(mut conn) => {
                    self.clear_suspect(member);
                    let mut at = member.clone();
                    let mut stand_in = false;
                    if !readonly && let Some(leader) = leader_named_by(&mut conn).await {
                        if self.is_suspect(&leader) {
                            stand_in = true;
                        } else {
                            match self.open(&leader.0, leader.1, false).await {
                                Ok(c) => (conn, at) = (c, leader),
                                Err(e) => {
                                    tracing::debug!(leader = %format!("{}:{}", leader.0, leader.1),
                                        error = %e.msg, "the leader named by a follower does not answer; staying");
                                    if !e.answered {
                                        self.suspect(&leader);
                                    }
                                    stand_in = true;
                                }
                            }
                        }
                    }
                    inner.metrics.db_connects.fetch_add(1, Ordering::Relaxed);
                    return Ok(Opened { conn, at, stand_in });
                }
                Err(e) => {
                    if !e.answered {
                        self.suspect(member);
                    }
                    last_err = e.msg;
                }
            }
            inner.rotation.fetch_add(1, Ordering::Relaxed);
        }
        Err(last_err)
    }

    fn suspects(&self) -> std::sync::MutexGuard<'_, Vec<(Addr, Instant)>> {
        self.inner
            .suspects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn suspect(&self, member: &Addr) {
        let until = Instant::now() + SUSPECT_FOR;
        let mut s = self.suspects();
        s.retain(|(a, t)| a != member && *t > Instant::now());
        s.push((member.clone(), until));
    }

    fn clear_suspect(&self, member: &Addr) {
        self.suspects().retain(|(a, _)| a != member);
    }

    fn is_suspect(&self, member: &Addr) -> bool {
        let now = Instant::now();
        self.suspects().iter().any(|(a, t)| a == member && *t > now)
    }

    /// One connection to `host:port` (AUTH and SELECT done; READONLY when `readonly`).
    async fn open(
        &self,
        host: &str,
        port: u16,
        readonly: bool,
    ) -> Result<MultiplexedConnection, OpenFailed> {
        let inner = &self.inner;
        let failed = |e: &dyn std::fmt::Display, answered: bool| OpenFailed {
            msg: format!("{host}:{port}: {e}"),
            answered,
        };
        let info = ConnectionAddr::Tcp(host.to_string(), port)
            .into_connection_info()
            .map_err(|e| failed(&e, true))?
            .set_redis_settings(inner.redis.clone())
            .set_tcp_settings(inner.tcp.clone());
        let client = redis::Client::open(info).map_err(|e| failed(&e, true))?;
        let fut = client.get_multiplexed_async_connection_with_config(&inner.conn_config);
        // The handshake (AUTH, SELECT) also counts against the connect timeout.
        let mut conn = match tokio::time::timeout(inner.connect_timeout * 2, fut).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(failed(&e, answered(&e))),
            Err(_) => return Err(failed(&"connect timed out", false)),
        };
        if readonly {
            let r: Result<(), RedisError> = redis::cmd("READONLY").query_async(&mut conn).await;
            if let Err(e) = r {
                tracing::debug!(member = %format!("{host}:{port}"), error = %e,
                    "READONLY refused; stale reads on this member are linearizable");
            }
        }
        tracing::debug!(member = %format!("{host}:{port}"), readonly, "db connected");
        Ok(conn)
    }

    /// The shared connection's slot for `mode`.
    fn slot(&self, mode: ReadMode) -> &Mutex<Slot> {
        match mode {
            ReadMode::Linearizable => &self.inner.shared,
            ReadMode::Stale => &self.inner.stale,
        }
    }

    /// The slot's connection (opened if there is none): its generation, the connection, and
    /// its watch, for counting a request as awaiting a reply.
    async fn slot_conn(
        &self,
        mode: ReadMode,
    ) -> Result<(u64, MultiplexedConnection, Arc<Watch>), String> {
        let slot = self.slot(mode);
        let mut guard = slot.lock().await;
        if let Some(held) = &guard.conn {
            // A stand-in is given up once its leader is no longer a suspect: the next
            // connect goes to whoever leads then.
            if held.stand_in_until.is_none_or(|t| Instant::now() < t) {
                return Ok((held.generation, held.conn.clone(), held.watch.clone()));
            }
        }
        let opened = self.connect(mode == ReadMode::Stale).await?;
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed);
        let watch = Arc::new(Watch::default());
        tokio::spawn(keep_acknowledging(
            opened.conn.clone(),
            Arc::downgrade(&watch),
            self.inner.ping_every,
        ));
        guard.conn = Some(Held {
            generation,
            conn: opened.conn.clone(),
            at: opened.at,
            stand_in_until: opened.stand_in.then(|| Instant::now() + SUSPECT_FOR),
            watch: watch.clone(),
        });
        Ok((generation, opened.conn, watch))
    }

    /// Forgets the slot's connection if it is still `generation`; `broken`: its member went
    /// quiet or reset it, so it is a suspect.
    async fn drop_slot(&self, mode: ReadMode, generation: u64, broken: bool) {
        let slot = self.slot(mode);
        let mut guard = slot.lock().await;
        if let Some(held) = &guard.conn
            && held.generation == generation
        {
            if broken {
                self.suspect(&held.at);
            }
            guard.conn = None;
        }
    }

    fn backoff(attempt: u32) -> Duration {
        Duration::from_millis((10u64 << attempt.min(5)).min(250))
    }

    /// Runs `op` on a shared connection, reconnecting (to another member) and retrying on a
    /// retryable failure until the budget is spent. `op` must be safe to repeat; it is told
    /// whether an earlier attempt may have been carried out.
    pub async fn run<T, F, Fut>(&self, mode: ReadMode, mut op: F) -> Result<T, DbError>
    where
        F: FnMut(MultiplexedConnection, Outcome) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let deadline = Instant::now() + self.inner.budget;
        let mut attempt = 0u32;
        let mut outcome = Outcome::Clean;
        loop {
            let conn = tokio::time::timeout_at(deadline.into(), self.slot_conn(mode)).await;
            let err = match conn.unwrap_or_else(|_| Err("connecting: retry budget spent".into())) {
                Ok((g, conn, watch)) => {
                    match watch.awaiting(within(deadline, op(conn, outcome))).await {
                        Ok(v) => return Ok(v),
                        Err(e) if is_retryable(&e) => {
                            self.drop_slot(mode, g, !answered(&e)).await;
                            if may_have_run(&e) {
                                outcome = Outcome::Unknown;
                            }
                            e.to_string()
                        }
                        Err(e) => return Err(DbError::Redis(e)),
                    }
                }
                Err(msg) => msg,
            };
            self.retry_wait(&mut attempt, deadline, &err).await?;
        }
    }

    async fn retry_wait(
        &self,
        attempt: &mut u32,
        deadline: Instant,
        err: &str,
    ) -> Result<(), DbError> {
        let wait = Self::backoff(*attempt);
        *attempt += 1;
        if Instant::now() + wait >= deadline {
            self.inner
                .metrics
                .db_unavailable
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %err, attempts = *attempt, "db unavailable within the retry budget");
            return Err(DbError::Unavailable(err.to_string()));
        }
        self.inner
            .metrics
            .db_retries
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(error = %err, attempt = *attempt, "db retry");
        tokio::time::sleep(wait).await;
        Ok(())
    }

    async fn take_tx(&self) -> Result<MultiplexedConnection, String> {
        let idle = self.inner.tx_idle.lock().ok().and_then(|mut v| v.pop());
        match idle {
            Some(c) => Ok(c),
            None => self.connect(false).await.map(|o| o.conn),
        }
    }

    fn give_tx(&self, conn: MultiplexedConnection) {
        if let Ok(mut v) = self.inner.tx_idle.lock()
            && v.len() < self.inner.tx_idle_max
        {
            v.push(conn);
        }
    }

    fn clear_tx(&self) {
        if let Ok(mut v) = self.inner.tx_idle.lock() {
            v.clear();
        }
    }

    /// Like [`Db::run`], on a dedicated connection, for WATCH/MULTI/EXEC. `op` must leave the
    /// connection without a pending WATCH when it returns `Ok` (EXEC, DISCARD or UNWATCH).
    pub async fn run_tx<T, F, Fut>(&self, mut op: F) -> Result<T, DbError>
    where
        F: FnMut(TxConn, Outcome) -> Fut,
        Fut: Future<Output = (TxConn, Result<T, RedisError>)>,
    {
        let deadline = Instant::now() + self.inner.budget;
        let _permit =
            match tokio::time::timeout_at(deadline.into(), self.inner.tx_permits.acquire()).await {
                Ok(Ok(p)) => p,
                _ => return Err(DbError::Unavailable("no transaction slot free".into())),
            };
        let mut attempt = 0u32;
        let mut outcome = Outcome::Clean;
        loop {
            let conn = tokio::time::timeout_at(deadline.into(), self.take_tx()).await;
            let err = match conn.unwrap_or_else(|_| Err("connecting: retry budget spent".into())) {
                Ok(conn) => {
                    let e = match tokio::time::timeout_at(
                        deadline.into(),
                        op(
                            TxConn {
                                conn,
                                reusable: true,
                            },
                            outcome,
                        ),
                    )
                    .await
                    {
                        Ok((tx, Ok(v))) => {
                            if tx.reusable {
                                self.give_tx(tx.conn);
                            }
                            return Ok(v);
                        }
                        Ok((_, Err(e))) => e,
                        // The connection is dropped with the future: its WATCH dies with it.
                        Err(_) => budget_spent(),
                    };
                    if !is_retryable(&e) {
                        return Err(DbError::Redis(e));
                    }
                    // The member may be gone: drop every idle connection too.
                    self.clear_tx();
                    if may_have_run(&e) {
                        outcome = Outcome::Unknown;
                    }
                    e.to_string()
                }
                Err(msg) => msg,
            };
            self.retry_wait(&mut attempt, deadline, &err).await?;
        }
    }

    /// One PING through the shared connection, without retries beyond one reconnect.
    pub async fn ping(&self) -> bool {
        let Ok((g, mut conn, _)) = self.slot_conn(ReadMode::Linearizable).await else {
            return false;
        };
        let r: Result<String, RedisError> = redis::cmd("PING").query_async(&mut conn).await;
        if let Err(e) = &r {
            self.drop_slot(ReadMode::Linearizable, g, !answered(e))
                .await;
        }
        r.is_ok()
    }
}

fn budget_spent() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "retry budget spent waiting for the db",
    ))
}

/// Runs one attempt, giving up (as a timed-out I/O error: outcome unknown) at the deadline.
async fn within<T>(
    deadline: Instant,
    fut: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisError> {
    match tokio::time::timeout_at(deadline.into(), fut).await {
        Ok(r) => r,
        Err(_) => Err(budget_spent()),
    }
}

/// Whether the member answered, if only to refuse: anything but an I/O error other than a
/// refused connection (a timeout, a reset, a connection that went quiet).
fn answered(e: &RedisError) -> bool {
    e.kind() != ErrorKind::Io || e.is_connection_refusal()
}

/// Failures worth reconnecting (to another member) and retrying.
pub fn is_retryable(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Io | ErrorKind::Parse => true,
        ErrorKind::Server(k) => {
            matches!(
                k,
                ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::Moved
            ) || is_retryable_code(e.code())
        }
        _ => is_retryable_code(e.code()),
    }
}

/// The leader a follower names in `INFO replication` (`master_host`, `master_port`, with
/// its link up), as a Redis replica names its master; a master, or an error, names none.
async fn leader_named_by(conn: &mut MultiplexedConnection) -> Option<(String, u16)> {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(conn)
        .await
        .ok()?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    // A replica cut off from its master names one that may not answer: stay.
    if field("role")? != "slave" || field("master_link_status")? != "up" {
        return None;
    }
    Some((
        field("master_host")?.to_string(),
        field("master_port")?.parse().ok()?,
    ))
}

/// Error codes a Raft-backed Redis-protocol server may use while it has no leader.
fn is_retryable_code(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "LOADING" | "NOLEADER" | "NOTLEADER")
    )
}

/// Whether the commands of a failed attempt may have been carried out (reply lost). A refused
/// connection or a server error reply means they were not.
fn may_have_run(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Io => !e.is_connection_refusal(),
        ErrorKind::Parse => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(addrs: &[&str]) -> Db {
        let cfg = DbConfig {
            addrs: addrs.iter().map(|a| a.to_string()).collect(),
            connect_timeout_ms: 300,
            ..DbConfig::default()
        };
        Db::new(&cfg, Arc::new(Metrics::default())).expect("db client")
    }

    /// A member that refuses (nothing listens yet: the db starting after the app, as under
    /// `citadel up`) answered; it is not a suspect, so it is not passed over, nor is a
    /// follower's pointer to it ignored, once it listens. Treating it as one kept the apps
    /// of a fresh cluster on a follower (every read a read-index round there): the e2e
    /// benchmark's db CPU per GET went from 7.8 to 26.8 µs.
    #[tokio::test]
    async fn a_refusing_member_is_not_a_suspect() {
        let closed = "127.40.30.1:6390";
        let d = db(&[closed]);
        let e = match d.open("127.40.30.1", 6390, false).await {
            Err(e) => e,
            Ok(_) => panic!("nothing listens on {closed}"),
        };
        assert!(e.answered, "a refusal answers: {}", e.msg);
        assert!(d.connect(false).await.is_err());
        assert!(!d.is_suspect(&("127.40.30.1".to_string(), 6390)));
        // A member that went quiet is one, for a while, and a connection to it is gone.
        d.suspect(&("127.40.30.1".to_string(), 6390));
        assert!(d.is_suspect(&("127.40.30.1".to_string(), 6390)));
        d.clear_suspect(&("127.40.30.1".to_string(), 6390));
        assert!(!d.is_suspect(&("127.40.30.1".to_string(), 6390)));
    }

    #[test]
    fn only_an_io_failure_that_is_no_refusal_goes_unanswered() {
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let reset = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        let quiet = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        let server = RedisError::from((ErrorKind::Server(ServerErrorKind::TryAgain), "TRYAGAIN"));
        assert!(answered(&refused));
        assert!(answered(&server));
        assert!(!answered(&reset));
        assert!(!answered(&quiet));
    }
}

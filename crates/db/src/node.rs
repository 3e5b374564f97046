//! One db or witness node: Raft, storage, peer server, the witness's rules, and the
//! write/read paths the Redis server uses.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::ClientWriteError;
use openraft::{BasicNode, Config, RaftMetrics, ServerState, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, oneshot};

use crate::config::{DbConfig, Kind};
use crate::data::{Proposal, WriteReq};
use crate::error::DbError;
use crate::net::{
    CallError, LeaderSilence, Network, NodeStatus, PeerHandler, PeerReq, PeerResp, Peers,
    serve_peers,
};
use crate::resp::Reply;
use crate::sm::{SNAP_DATA, SmShared, StateMachine};
use crate::store::{LogStore, Store};
use crate::types::{NodeId, Raft};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Error text for "try again": no data leader right now.
pub const TRYAGAIN: &str = "TRYAGAIN no data leader available, retry";

/// Batches read-index requests: one leadership confirmation serves every read that arrived
/// before it started.
type ReadWaiter = oneshot::Sender<Result<u64, String>>;

struct ReadBatcher {
    /// (a round is running, readers waiting for the next round)
    waiters: std::sync::Mutex<(bool, Vec<ReadWaiter>)>,
    /// The leader's read lease (crates/db/NOTES.md, "Read leases"): while it holds, reads
    /// are served without a round.
    lease: std::sync::Mutex<Option<ReadLease>>,
    /// A round to renew the lease is running or queued (only one at a time).
    renewing: AtomicBool,
    /// Reads this node led under its lease, and read-index rounds it ran (INFO).
    by_lease: AtomicU64,
    rounds: AtomicU64,
}

/// A data leader's proof that no other leader can be elected before `until`: a quorum
/// acknowledged a heartbeat of `term` sent at `until - lease`, and every voter refuses votes
/// for its own lease after hearing from a leader.
#[derive(Clone, Copy, Debug)]
struct ReadLease {
    term: u64,
    until: Instant,
    /// The round's read index: the lease serves reads only once this node has applied it
    /// (everything committed before its term).
    index: u64,
}

/// How long a leader may serve reads after a quorum acknowledged its heartbeat: three
/// quarters of the shortest time any voter refuses votes after hearing from a leader (openraft
/// 0.9's vote lease is each member's `election_timeout_max`; the witness's is the shorter,
/// three heartbeats), the rest a margin for clock-rate drift and scheduling.
pub fn read_lease(t: &crate::config::Tunables) -> Duration {
    Duration::from_millis(shortest_vote_lease_ms(t) * 3 / 4)
}

/// The shortest time any voter refuses votes after it last heard from a leader: openraft
/// 0.9's vote lease is each member's `election_timeout_max`, and the witness's is the shorter.
fn shortest_vote_lease_ms(t: &crate::config::Tunables) -> u64 {
    t.election_max_ms.min(witness_election(t).1)
}

type Waiter = oneshot::Sender<Result<Reply, String>>;

/// Gathers client writes on the leader into batches, one Raft entry each.
struct Proposer {
    queue: std::sync::Mutex<Vec<(WriteReq, Waiter)>>,
    wake: tokio::sync::Notify,
    /// Writes in the entry that was committed last, and how long its round took (µs): what
    /// the next entry waits for (`linger`).
    last_batch: AtomicU64,
    last_round_us: AtomicU64,
    /// One permit per entry that may be in flight (proposed, its outcome not yet known).
    slots: Arc<tokio::sync::Semaphore>,
}

impl Proposer {
    fn queued(&self) -> usize {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Nothing queued and no entry in flight: every write taken so far is in the log with
    /// its outcome known.
    fn idle(&self) -> bool {
        self.queued() == 0 && self.slots.available_permits() == MAX_INFLIGHT_PROPOSALS
    }

    /// Group commit across clients. The clients an entry has just answered send their next
    /// write a moment later; without waiting for them the next entry takes only the writes
    /// that queued during the last round, and two cohorts of clients alternate, each paying
    /// a whole round (fsyncs) per write. So when the last entry carried writes of several
    /// clients, wait until they are back (queue = what was queued + the last entry's writes)
    /// or a fifth of the last round has passed (at most 1 ms), whichever comes first. A lone
    /// client sending one write at a time never waits.
    async fn linger(&self) {
        let last = self.last_batch.swap(0, Ordering::Relaxed) as usize;
        if last < 2 {
            return;
        }
        let want = self.queued() + last;
        let wait =
            Duration::from_micros((self.last_round_us.load(Ordering::Relaxed) / 5).min(1000));
        let deadline = tokio::time::Instant::now() + wait;
        while self.queued() < want {
            if tokio::time::timeout_at(deadline, self.wake.notified())
                .await
                .is_err()
            {
                break;
            }
        }
    }
}

/// Raft entries proposed but not yet applied, at most. openraft 0.9's core waits for each
/// append's fsync before it goes on, so every entry costs one fsync of core time: fewer,
/// larger entries are faster. Measured here (redis-benchmark SET, 50 clients, 2 data + witness):
/// 1 in flight 9.4K/s unpipelined and 36K/s with -P 16; 2: 8.1K/31K; 4: 5.5K/21K; 8: 4.3K/17K.
const MAX_INFLIGHT_PROPOSALS: usize = 1;
/// Client writes in one entry, at most.
const MAX_BATCH: usize = 4096;
/// Argument bytes in one entry, about at most (one larger write still makes its own entry).
const MAX_BATCH_BYTES: usize = 1 << 20;

pub struct Node {
    /// When this node last heard from a leader (ms since `started`).
    last_leader_contact: AtomicU64,
    started: Instant,
    /// Deliberately broken mode for the linearizability test: serve every read locally, as
    /// READONLY does. Set by the environment variable `CITADEL_DB_UNSAFE_LOCAL_READS=1`.
    pub unsafe_local_reads: bool,
    /// How long a read lease lasts (0: no leases, every read takes a round). Longer than safe
    /// only in the deliberately broken test mode `CITADEL_DB_UNSAFE_READ_LEASE_MS`.
    read_lease: Duration,
    proposer: Proposer,
    pub cfg: DbConfig,
    pub raft: Raft,
    pub sm: Arc<SmShared>,
    pub store: Arc<Store>,
    pub peers: Arc<Peers>,
    reads: ReadBatcher,
    rid_base: u64,
    rid_seq: AtomicU64,
    takeover_sent: Mutex<Option<Instant>>,
    /// (term, index) when this node booted as the leader of `term` (its own committed vote):
    /// no read index of that term may fall below the last log index it had at boot. openraft
    /// 0.9 restores such a leader at once and reuses the term's first entry as its no-op, so
    /// its read index, max(that entry, committed), can miss entries it had committed before
    /// the restart and has not committed again yet: a stale read (seen as 112 of 120
    /// acknowledged RPUSHes after a restart of every member).
    boot_read_floor: Option<(u64, u64)>,
    /// Set while a leader that is being stopped hands its leadership over: it takes no new
    /// writes (they wait for the next leader), so its log stops growing and a follower can
    /// catch up with all of it.
    stepping_down: AtomicBool,
    /// CONFIG GET/SET's values (local to this member, as in Redis).
    pub settings: crate::settings::Settings,
}

impl Node {
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// PUBLISH: this member's subscribers plus every other data member's (asked in parallel,
    /// each within the peer RPC timeout; an unreachable member's subscribers miss it, as
    /// a Redis replica that is down would).
    pub async fn publish(&self, channel: &[u8], message: &[u8]) -> u64 {
        let local = crate::pubsub::Hub::global().publish_local(channel, message);
        let req = crate::net::PeerReq::Publish {
            channel: channel.to_vec(),
            message: message.to_vec(),
        };
        let others = self
            .cfg
            .members
            .iter()
            .filter(|m| m.id != self.id() && self.cfg.is_data(m.id))
            .map(|m| self.peers.call(m.id, &req, self.peers.rpc_timeout()));
        let remote: u64 = futures::future::join_all(others)
            .await
            .into_iter()
            .map(|r| match r {
                Ok(crate::net::PeerResp::Published(n)) => n,
                _ => 0,
            })
            .sum();
        local + remote
    }

    /// Time since this node started (INFO's uptime).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn is_witness(&self) -> bool {
        !self.cfg.is_data(self.cfg.id)
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.id())
    }

    fn next_rid(&self) -> u64 {
        let n = self.rid_seq.fetch_add(1, Ordering::Relaxed);
        // Never 0 (0 means "no dedupe").
        (self.rid_base ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1
    }

    /// Resolves when the known leader is no longer `from`.
    async fn leader_changed_from(&self, from: Option<NodeId>) {
        let mut rx = self.raft.metrics();
        loop {
            if rx.borrow().current_leader != from {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits for the leader to change (or a short while).
    async fn wait_leader_change(&self, deadline: Instant) {
        let mut rx = self.raft.metrics();
        let cur = rx.borrow().current_leader;
        let until = (Instant::now() + Duration::from_millis(50)).min(deadline);
        let _ = tokio::time::timeout_at(until.into(), async {
            while rx.changed().await.is_ok() {
                if rx.borrow().current_leader != cur {
                    break;
                }
            }
        })
        .await;
    }

    /// Carries out a write on the leader, forwarding it there when this node is a follower.
    pub async fn write(&self, req: WriteReq) -> Result<Reply, String> {
        self.write_until(req, self.write_deadline()).await
    }

    /// As [`Node::write`], giving up at `deadline`.
    pub async fn write_until(&self, mut req: WriteReq, deadline: Instant) -> Result<Reply, String> {
        if req.rid == 0 {
            req.rid = self.next_rid();
        }
        loop {
            let leader = self.leader();
            match leader {
                Some(l) if l == self.id() => {
                    match self.write_local_until(req.clone(), deadline).await {
                        Ok(r) => return Ok(r),
                        Err(e) if e.starts_with("TRYAGAIN") => {}
                        Err(e) => return Err(e),
                    }
                }
                Some(l) if self.cfg.is_data(l) => {
                    let fwd = PeerReq::Write(req.clone());
                    // Never wait past the client's deadline.
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(50));
                    let call = self
                        .peers
                        .call(l, &fwd, left.min(self.peers.rpc_timeout() * 3));
                    // Give up on a leader that is replaced meanwhile (stopped, cut off).
                    let res = tokio::select! {
                        r = call => Some(r),
                        _ = self.leader_changed_from(Some(l)) => None,
                    };
                    match res {
                        Some(Ok(PeerResp::Write(Ok(r)))) => return Ok(r),
                        Some(Ok(PeerResp::Write(Err(e)))) if e.starts_with("TRYAGAIN") => {}
                        Some(Ok(PeerResp::Write(Err(e)))) => return Err(e),
                        Some(Ok(other)) => {
                            return Err(format!("ERR unexpected peer answer {other:?}"));
                        }
                        // Retrying is safe either way: the request id makes it exactly-once.
                        Some(Err(CallError::Connect(..)))
                        | Some(Err(CallError::Lost(..)))
                        | None => {}
                    }
                }
                // No leader, or the witness leads (it has no tables): hold the write.
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(TRYAGAIN.into());
            }
            self.wait_leader_change(deadline).await;
        }
    }

    /// Proposes a write on this node, which must be the leader. The write joins the next
    /// batch; a batch is proposed as soon as fewer than `MAX_INFLIGHT_PROPOSALS` are in flight.
    pub async fn write_local(&self, req: WriteReq) -> Result<Reply, String> {
        self.write_local_until(req, self.write_deadline()).await
    }

    /// As [`Node::write_local`], waiting at most until `deadline`.
    pub async fn write_local_until(
        &self,
        req: WriteReq,
        deadline: Instant,
    ) -> Result<Reply, String> {
        match self.write_enqueue(req) {
            Some(rx) => self.await_reply_until(rx, deadline).await,
            None => Err(TRYAGAIN.into()),
        }
    }

    /// Hands one batch to Raft. The hand-over itself is ordered (batches enter the log in
    /// the order they were gathered); waiting for the outcome happens in a separate task.
    async fn propose(
        self: &Arc<Self>,
        batch: Vec<(WriteReq, Waiter)>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let now = now_ms();
        let mut reqs = Vec::with_capacity(batch.len());
        let mut waiters = Vec::with_capacity(batch.len());
        for (mut r, w) in batch {
            r.now_ms = now;
            reqs.push(r);
            waiters.push(w);
        }
        let began = Instant::now();
        let rx = match self.raft.client_write_ff(Proposal { reqs }).await {
            Ok(rx) => rx,
            Err(e) => {
                for w in waiters {
                    let _ = w.send(Err(format!("TRYAGAIN write not carried out: {e}")));
                }
                return;
            }
        };
        let node = self.clone();
        tokio::spawn(async move {
            let res = rx.await;
            if res.as_ref().is_ok_and(|r| r.is_ok()) {
                let p = &node.proposer;
                p.last_batch.store(waiters.len() as u64, Ordering::Relaxed);
                p.last_round_us
                    .store(began.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            drop(permit);
            match res {
                Ok(Ok(resp)) => {
                    let mut replies = resp.data.into_iter();
                    for w in waiters {
                        let _ = w.send(
                            replies
                                .next()
                                .ok_or_else(|| "ERR missing reply".to_string()),
                        );
                    }
                }
                Ok(Err(e)) => {
                    let msg = match e {
                        ClientWriteError::ForwardToLeader(_) => TRYAGAIN.to_string(),
                        e => format!("TRYAGAIN write not carried out: {e}"),
                    };
                    for w in waiters {
                        let _ = w.send(Err(msg.clone()));
                    }
                }
                Err(_) => {
                    for w in waiters {
                        let _ = w.send(Err(TRYAGAIN.to_string()));
                    }
                }
            }
        });
    }

    /// Waits for a queued write's reply, at most the write deadline: a leader cut off from
    /// its majority never commits, and its clients must not hang. (Such a write is not
    /// acknowledged; it may still commit later.)
    pub async fn await_reply(
        &self,
        rx: oneshot::Receiver<Result<Reply, String>>,
    ) -> Result<Reply, String> {
        self.await_reply_until(rx, self.write_deadline()).await
    }

    pub fn write_deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.cfg.tunables.write_wait_ms)
    }

    /// As [`Node::await_reply`], with a deadline shared by a batch of writes.
    pub async fn await_reply_until(
        &self,
        rx: oneshot::Receiver<Result<Reply, String>>,
        deadline: Instant,
    ) -> Result<Reply, String> {
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(TRYAGAIN.to_string()),
            Err(_) => Err(
                "TRYAGAIN write not confirmed in time (no quorum?); it may or may not take effect"
                    .into(),
            ),
        }
    }

    /// On the leader: queues a write and returns at once with a receiver for its reply, so
    /// that a connection's pipelined writes share batches. `None` when this node does not lead.
    pub fn write_enqueue(&self, req: WriteReq) -> Option<oneshot::Receiver<Result<Reply, String>>> {
        if self.is_witness()
            || self.leader() != Some(self.id())
            || self.stepping_down.load(Ordering::Acquire)
        {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        if is_script_decision(&req) {
            // A script decision goes past the proposer: the entry in flight there may be the
            // very script that waits for it (see `data::busy`).
            let raft = self.raft.clone();
            let mut req = req;
            req.now_ms = now_ms();
            tokio::spawn(async move {
                let r = match raft.client_write_ff(Proposal { reqs: vec![req] }).await {
                    Ok(rx) => match rx.await {
                        Ok(Ok(resp)) => resp
                            .data
                            .into_iter()
                            .next()
                            .ok_or_else(|| "ERR missing reply".to_string()),
                        _ => Err(TRYAGAIN.to_string()),
                    },
                    Err(e) => Err(format!("TRYAGAIN write not carried out: {e}")),
                };
                let _ = tx.send(r);
            });
            return Some(rx);
        }
        self.proposer
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((req, tx));
        self.proposer.wake.notify_one();
        Some(rx)
    }

    /// Carries out a connection's pipelined writes in order: queued together on the leader,
    /// or sent to it in one batch from a follower. Anything not carried out that way is
    /// retried one by one (exactly-once by request id). Each request must be stamped.
    pub async fn write_many(&self, reqs: Vec<WriteReq>) -> Vec<Result<Reply, String>> {
        let mut out: Vec<Option<Result<Reply, String>>> = vec![None; reqs.len()];
        // One deadline for the whole run, so a cut-off node answers it in write_wait_ms.
        let deadline = self.write_deadline();
        match self.leader() {
            Some(l) if l == self.id() && !self.is_witness() => {
                let pending: Vec<_> = reqs.iter().map(|r| self.write_enqueue(r.clone())).collect();
                for (i, rx) in pending.into_iter().enumerate() {
                    if let Some(rx) = rx {
                        match self.await_reply_until(rx, deadline).await {
                            Ok(r) => out[i] = Some(Ok(r)),
                            Err(e) if e.contains("no quorum") || !e.starts_with("TRYAGAIN") => {
                                out[i] = Some(Err(e))
                            }
                            Err(_) => {}
                        }
                    }
                }
            }
            Some(l) if self.cfg.is_data(l) && reqs.len() > 1 => {
                let fwd = PeerReq::WriteBatch(reqs.clone());
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(50));
                let call = self
                    .peers
                    .call(l, &fwd, left.min(self.peers.rpc_timeout() * 3));
                let res = tokio::select! {
                    r = call => Some(r),
                    _ = self.leader_changed_from(Some(l)) => None,
                };
                if let Some(Ok(PeerResp::WriteBatch(rs))) = res {
                    for (i, r) in rs.into_iter().enumerate().take(out.len()) {
                        match r {
                            Err(e) if e.starts_with("TRYAGAIN") && !e.contains("no quorum") => {}
                            r => out[i] = Some(r),
                        }
                    }
                }
            }
            _ => {}
        }
        let mut done = Vec::with_capacity(reqs.len());
        for (req, r) in reqs.into_iter().zip(out) {
            done.push(match r {
                Some(r) => r,
                None => self.write_until(req, deadline).await,
            });
        }
        done
    }

    /// Gives a write its request id (for exactly-once retries).
    pub fn stamp(&self, req: &mut WriteReq) {
        if req.rid == 0 {
            req.rid = self.next_rid();
        }
    }

    /// The leader's read index (this node's, when it leads).
    async fn read_index_once(&self) -> Result<u64, String> {
        match self.leader() {
            Some(l) if l == self.id() => {
                let wait = self.peers.rpc_timeout() * 2;
                self.reads.rounds.fetch_add(1, Ordering::Relaxed);
                let term = self.raft.metrics().borrow().current_term;
                // Before the call: the round's heartbeats are sent after this instant.
                let sent = Instant::now();
                match tokio::time::timeout(wait, self.raft.get_read_log_id()).await {
                    Ok(Ok((read, _applied))) => {
                        let index =
                            self.floored_read_index(term, read.map(|l| l.index).unwrap_or(0));
                        self.grant_lease(term, sent, index);
                        Ok(index)
                    }
                    Ok(Err(e)) => Err(format!("TRYAGAIN {e}")),
                    Err(_) => Err("TRYAGAIN leadership not confirmed in time".into()),
                }
            }
            Some(l) => match self
                .peers
                .call(l, &PeerReq::ReadIndex, self.peers.rpc_timeout())
                .await
            {
                Ok(PeerResp::ReadIndex(r)) => r,
                Ok(other) => Err(format!("ERR unexpected peer answer {other:?}")),
                Err(e) => Err(format!("TRYAGAIN {e}")),
            },
            None => Err(TRYAGAIN.into()),
        }
    }

    /// The read index of a round in `term`, raised to the boot floor while this node leads
    /// the term it booted as leader of.
    fn floored_read_index(&self, term: u64, index: u64) -> u64 {
        match self.boot_read_floor {
            Some((t, floor)) if t == term && floor > index => {
                tracing::info!(
                    term,
                    index,
                    floor,
                    "read index raised to the log's end at boot"
                );
                floor
            }
            _ => index,
        }
    }

    /// Records a read lease after a round of `term` confirmed leadership with heartbeats sent
    /// after `sent`. Only a data member leads reads; a witness never serves them.
    fn grant_lease(&self, term: u64, sent: Instant, index: u64) {
        if self.read_lease.is_zero() || self.is_witness() {
            return;
        }
        let (now_term, leader) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (m.current_term, m.current_leader)
        };
        if now_term != term || leader != Some(self.id()) {
            return;
        }
        let until = sent + self.read_lease;
        let mut lease = self.reads.lease.lock().unwrap_or_else(|p| p.into_inner());
        if lease.is_none_or(|l| l.term != term || l.until < until) {
            *lease = Some(ReadLease { term, until, index });
        }
    }

    /// A read index without a round, if this node leads under a lease that holds: its own
    /// applied index (every write it acknowledged is applied here first). Past half the
    /// lease, starts one round in the background to renew it, so a steady load of reads
    /// costs a round per half lease instead of one per batch.
    fn lease_read_index(self: &Arc<Self>) -> Option<u64> {
        let lease = (*self.reads.lease.lock().unwrap_or_else(|p| p.into_inner()))?;
        let now = Instant::now();
        if now >= lease.until {
            return None;
        }
        // Fields only: cloning the metrics (membership, replication map) on every read costs.
        let (term, leader, applied) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (
                m.current_term,
                m.current_leader,
                m.last_applied.map(|l| l.index).unwrap_or(0),
            )
        };
        if term != lease.term || leader != Some(self.id()) || applied < lease.index {
            return None;
        }
        if lease.until - now < self.read_lease / 2
            && !self.reads.renewing.swap(true, Ordering::AcqRel)
        {
            let me = self.clone();
            tokio::spawn(async move {
                let _ = me.read_index_batched().await;
                me.reads.renewing.store(false, Ordering::Release);
            });
        }
        self.reads.by_lease.fetch_add(1, Ordering::Relaxed);
        Some(applied)
    }

    /// The index of the last entry applied here.
    fn applied_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0)
    }

    /// (reads led under the lease, read-index rounds run) by this node since it started.
    pub fn read_counts(&self) -> (u64, u64) {
        (
            self.reads.by_lease.load(Ordering::Relaxed),
            self.reads.rounds.load(Ordering::Relaxed),
        )
    }

    /// A read index: from the lease when it holds, else from a round batched with concurrent
    /// readers.
    async fn read_index(self: &Arc<Self>) -> Result<u64, String> {
        match self.lease_read_index() {
            Some(index) => Ok(index),
            None => self.read_index_batched().await,
        }
    }

    /// A read index, batched with concurrent readers.
    async fn read_index_batched(self: &Arc<Self>) -> Result<u64, String> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut g = self.reads.waiters.lock().unwrap_or_else(|p| p.into_inner());
            g.1.push(tx);
            if g.0 {
                false
            } else {
                g.0 = true;
                true
            }
        };
        if start {
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut g = me.reads.waiters.lock().unwrap_or_else(|p| p.into_inner());
                        if g.1.is_empty() {
                            g.0 = false;
                            break;
                        }
                        std::mem::take(&mut g.1)
                    };
                    let r = me.read_index_once().await;
                    for w in batch {
                        let _ = w.send(r.clone());
                    }
                }
            });
        }
        rx.await
            .map_err(|_| "ERR read batcher stopped".to_string())?
    }

    /// Waits until this node may serve a linearizable read: it has applied the leader's
    /// read index. Retries across leader changes until the write deadline.
    pub async fn linearize(self: &Arc<Self>) -> Result<u64, String> {
        let deadline = Instant::now() + Duration::from_millis(self.cfg.tunables.write_wait_ms);
        loop {
            match self.read_index().await {
                // Already applied (always so for a lease read): openraft's wait would clone
                // the whole metrics (membership, replication map) to check it.
                Ok(idx) if self.applied_index() >= idx => return Ok(idx),
                Ok(idx) => {
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(100));
                    return match self
                        .raft
                        .wait(Some(left))
                        .applied_index_at_least(Some(idx), "read index")
                        .await
                    {
                        Ok(_) => Ok(idx),
                        Err(e) => Err(format!("TRYAGAIN not caught up: {e}")),
                    };
                }
                Err(e) if e.starts_with("TRYAGAIN") && Instant::now() < deadline => {
                    self.wait_leader_change(deadline).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// When this node leads and is about to stop (SIGTERM: `jail stop`, a rolling restart, a
    /// move): hands its leadership to a data member that holds its whole log, so the group
    /// does not wait out an election timeout and the voters' lease (~0.7 s) for a leader that
    /// is going anyway. New writes wait meanwhile (and go to the next leader); the follower is
    /// told to call an election at once (`TakeOver`, as the witness does), which this node
    /// grants: its own vote is older than its lease. Gives up after `within`, leaving the
    /// usual failover. Returns whether another member leads now.
    pub async fn hand_over_leadership(self: &Arc<Self>, within: Duration) -> bool {
        if self.is_witness() || self.leader() != Some(self.id()) {
            return false;
        }
        self.stepping_down.store(true, Ordering::Release);
        let deadline = Instant::now() + within;
        let me = self.id();
        let mut rx = self.raft.metrics();
        let mut asked: Option<Instant> = None;
        // Members that did not answer (stopping too: `up` ending, a whole host going down).
        let mut gone: Vec<NodeId> = Vec::new();
        loop {
            let m = rx.borrow().clone();
            if m.current_leader.is_some_and(|l| l != me) {
                tracing::info!(leader = ?m.current_leader, "leadership handed over");
                return true;
            }
            let last = m.last_log_index;
            // Only once the writes taken before `stepping_down` are all in the log: an entry
            // appended after the target was chosen could reach the witness and not the
            // target, and the witness would refuse the target's vote (its log behind); the
            // group would then wait for the witness to lead and hand over (~1.2 s).
            let applied = m
                .last_applied
                .filter(|l| Some(l.index) == last && self.proposer.idle());
            let ready = m.replication.as_ref().and_then(|r| {
                r.iter()
                    .filter(|(id, matched)| {
                        **id != me
                            && self.cfg.is_data(**id)
                            && !gone.contains(id)
                            && matched.map(|l| l.index) == last
                    })
                    .map(|(id, _)| *id)
                    .next()
            });
            if let (Some(target), Some(applied)) = (ready, applied)
                && asked.is_none_or(|t| t.elapsed() > Duration::from_millis(200))
            {
                asked = Some(Instant::now());
                tracing::info!(target, "stopping: handing leadership over");
                let req = PeerReq::TakeOver {
                    last: Some(applied),
                };
                if let Err(e) = self
                    .peers
                    .call(target, &req, self.peers.rpc_timeout())
                    .await
                {
                    tracing::info!(target, error = %e, "no hand-over to a member that does not answer");
                    gone.push(target);
                }
            }
            let candidates = self
                .cfg
                .members
                .iter()
                .filter(|m| m.id != me && self.cfg.is_data(m.id) && !gone.contains(&m.id))
                .count();
            if candidates == 0 || Instant::now() >= deadline {
                tracing::warn!(
                    "stopping without handing leadership over: no data member that holds the whole log answered"
                );
                return false;
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), rx.changed()).await;
        }
    }

    /// On the leader: makes `id` a voter (as a learner first, until it has caught up) or
    /// removes it from the voters.
    pub async fn change_voter(&self, id: NodeId, add: bool) -> Result<String, String> {
        if !self.is_leader() {
            return Err(format!(
                "TRYAGAIN not the leader (leader: {:?})",
                self.leader()
            ));
        }
        let Some(member) = self.cfg.member(id).cloned() else {
            return Err(format!("ERR member {id} is not in the configuration"));
        };
        let voters = |n: &Node| -> std::collections::BTreeSet<NodeId> {
            n.raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .collect()
        };
        let mut set = voters(self);
        if add {
            if set.contains(&id) {
                return Ok(format!("{} is already a voter", member.name));
            }
            self.raft
                .add_learner(
                    id,
                    BasicNode {
                        addr: member.name.clone(),
                    },
                    true,
                )
                .await
                .map_err(|e| format!("ERR adding learner: {e}"))?;
            set.insert(id);
        } else {
            if !set.remove(&id) {
                return Ok(format!("{} is not a voter", member.name));
            }
            if set.is_empty() {
                return Err("ERR cannot remove the last voter".into());
            }
        }
        self.raft
            .change_membership(set.clone(), false)
            .await
            .map_err(|e| format!("ERR changing membership: {e}"))?;
        Ok(format!("voters now: {set:?}"))
    }

    /// How long this member refuses votes after it last heard from a leader (openraft 0.9's
    /// lease: its `election_timeout_max`).
    fn vote_lease_ms(&self) -> u64 {
        election_timeouts(&self.cfg.tunables, self.is_witness()).1
    }

    /// Milliseconds since this node started: the clock `last_leader_contact` is read on.
    fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// On the witness, when the leader has been silent past its lease and a data member
    /// that asked for its vote is behind it: campaign now rather than after its election
    /// timeout. The member voted for itself in a term of its own, so it grants a higher one
    /// at once (an uncommitted vote holds no lease); the first try may be refused for
    /// that very term and teaches the witness it, the second is above it. Once leading, the
    /// witness brings the member up to date and hands over (`witness_loop`).
    fn campaign_for_a_lagging_member(self: Arc<Self>) {
        tokio::spawn(async move {
            for _ in 0..2 {
                // Done once it leads, or once a leader speaks again.
                if self.is_leader() || !self.leader_silence().would_grant() {
                    return;
                }
                tracing::info!(
                    "witness: the leader is silent and the data member behind; campaigning"
                );
                let _ = self.raft.trigger().elect().await;
                tokio::time::sleep(Duration::from_millis(self.cfg.tunables.heartbeat_ms / 2)).await;
            }
        });
    }

    /// What this member tells a data member that asks whether it still hears the leader.
    fn leader_silence(&self) -> LeaderSilence {
        let silent_ms = if self.raft.metrics().borrow().state == ServerState::Leader {
            Some(0)
        } else {
            match self.last_leader_contact.load(Ordering::Relaxed) {
                0 => None,
                last => Some(self.clock_ms().saturating_sub(last)),
            }
        };
        LeaderSilence {
            silent_ms,
            lease_ms: self.vote_lease_ms(),
        }
    }

    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        NodeStatus {
            id: self.id(),
            state: format!("{:?}", m.state),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            disk_bytes: self.store.disk_bytes(&self.cfg.data_dir),
            matched: m
                .replication
                .as_ref()
                .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
                .unwrap_or_default(),
        }
    }
}

impl PeerHandler for Node {
    async fn handle(self: Arc<Self>, req: PeerReq) -> PeerResp {
        match req {
            PeerReq::Append(rpc) => {
                let from_leader = rpc.vote.is_committed();
                let res = self.raft.append_entries(rpc).await;
                if from_leader && res.is_ok() {
                    self.last_leader_contact
                        .store(self.clock_ms(), Ordering::Relaxed);
                }
                PeerResp::Append(res)
            }
            PeerReq::Vote(rpc) => {
                let candidate = rpc.vote.leader_id().voted_for();
                let cand_last = rpc.last_log_id;
                let res = self.raft.vote(rpc).await;
                if self.is_witness()
                    && let Ok(v) = &res
                    && !v.vote_granted
                    && v.last_log_id > cand_last
                    && candidate.is_some_and(|c| self.cfg.is_data(c))
                {
                    // A data member asked for our vote with a log behind ours: it cannot win.
                    // Let the witness stand. It does not campaign at once: its own election
                    // timer fires only if it has not heard from a leader for its (short)
                    // lease plus timeout, so a live leader is never disturbed by this.
                    tracing::info!(
                        ?candidate,
                        "witness: data member is behind; enabling elections"
                    );
                    self.raft.runtime_config().elect(true);
                    if self.leader_silence().would_grant() {
                        self.clone().campaign_for_a_lagging_member();
                    }
                }
                PeerResp::Vote(res)
            }
            PeerReq::Snapshot {
                from,
                vote,
                meta,
                data,
            } => {
                if !self.is_witness()
                    && (!self.cfg.is_data(from) || data.first() != Some(&SNAP_DATA))
                {
                    tracing::error!(from, "refusing a snapshot without tables");
                    return PeerResp::Snapshot(Err(
                        "a data member only installs snapshots with tables".into(),
                    ));
                }
                let snap = openraft::Snapshot {
                    meta,
                    snapshot: Box::new(std::io::Cursor::new(data)),
                };
                PeerResp::Snapshot(
                    self.raft
                        .install_full_snapshot(vote, snap)
                        .await
                        .map_err(|e| e.to_string()),
                )
            }
            PeerReq::Write(w) => PeerResp::Write(if self.leader() == Some(self.id()) {
                self.write_local(w).await
            } else {
                Err(TRYAGAIN.into())
            }),
            PeerReq::WriteBatch(reqs) => {
                PeerResp::WriteBatch(if self.leader() == Some(self.id()) {
                    let pending: Vec<_> = reqs.into_iter().map(|r| self.write_enqueue(r)).collect();
                    let mut out = Vec::with_capacity(pending.len());
                    let deadline = self.write_deadline();
                    for rx in pending {
                        out.push(match rx {
                            Some(rx) => self.await_reply_until(rx, deadline).await,
                            None => Err(TRYAGAIN.into()),
                        });
                    }
                    out
                } else {
                    reqs.iter().map(|_| Err(TRYAGAIN.into())).collect()
                })
            }
            PeerReq::ReadIndex => PeerResp::ReadIndex(if self.leader() == Some(self.id()) {
                self.read_index().await
            } else {
                Err(TRYAGAIN.into())
            }),
            PeerReq::TakeOver { last } => {
                let mine = self.raft.metrics().borrow().last_log_index;
                if self.is_witness() || mine < last.map(|l| l.index) {
                    return PeerResp::TakeOver(false);
                }
                tracing::info!(?last, "taking over leadership from the witness");
                let ok = self.raft.trigger().elect().await.is_ok();
                // If the witness still refused (its leader lease), it has seen our higher
                // term by now and stepped down: one more try wins.
                let n = self.clone();
                tokio::spawn(async move {
                    let t = Duration::from_millis(n.cfg.tunables.election_min_ms / 2);
                    tokio::time::sleep(t).await;
                    let m = n.raft.metrics().borrow().clone();
                    if m.current_leader.is_none_or(|l| !n.cfg.is_data(l))
                        && m.state != ServerState::Leader
                    {
                        let _ = n.raft.trigger().elect().await;
                    }
                });
                PeerResp::TakeOver(ok)
            }
            PeerReq::LeaderSilence => PeerResp::LeaderSilence(self.leader_silence()),
            PeerReq::Status => PeerResp::Status(self.status()),
            PeerReq::ChangeVoter { id, add } => PeerResp::Admin(self.change_voter(id, add).await),
            PeerReq::Publish { channel, message } => {
                PeerResp::Published(crate::pubsub::Hub::global().publish_local(&channel, &message))
            }
        }
    }
}

async fn proposer_loop(node: Arc<Node>) {
    let slots = node.proposer.slots.clone();
    loop {
        node.proposer.wake.notified().await;
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            node.proposer.linger().await;
            let batch: Vec<(WriteReq, Waiter)> = {
                let mut q = node
                    .proposer
                    .queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                // At most MAX_BATCH writes and about MAX_BATCH_BYTES of arguments per entry:
                // a follower must take an AppendEntries within one heartbeat interval.
                let mut n = 0;
                let mut bytes = 0usize;
                for (r, _) in q.iter() {
                    if n >= MAX_BATCH || (n > 0 && bytes >= MAX_BATCH_BYTES) {
                        break;
                    }
                    bytes += r
                        .cmds
                        .iter()
                        .flat_map(|(_, a)| a.iter())
                        .map(|x| x.len() + 8)
                        .sum::<usize>();
                    n += 1;
                }
                q.drain(..n).collect()
            };
            if batch.is_empty() {
                break;
            }
            node.propose(batch, permit).await;
        }
    }
}

/// The witness's loop: stop standing once a data member leads; while leading, hand over to
/// the first data member that has caught up.
async fn witness_loop(node: Arc<Node>) {
    let mut rx = node.raft.metrics();
    let mut leader_since: Option<Instant> = None;
    // A leader refuses votes for one lease (election_timeout_max) after winning; hand over
    // only after that, so that the data member's election is not refused.
    let lease = Duration::from_millis(witness_election(&node.cfg.tunables).1 + 20);
    loop {
        let m = rx.borrow().clone();
        let me = node.id();
        if m.state != ServerState::Leader {
            leader_since = None;
        } else if leader_since.is_none() {
            leader_since = Some(Instant::now());
        }
        if m.state == ServerState::Leader {
            // Stay leader only until a data member can take over; never start elections again
            // on our own (a refused vote from a lagging data member turns them back on).
            node.raft.runtime_config().elect(false);
            let last = m.last_log_index;
            let caught_up: Vec<NodeId> = m
                .replication
                .as_ref()
                .map(|r| {
                    r.iter()
                        .filter(|(id, matched)| {
                            **id != me && node.cfg.is_data(**id) && matched.map(|l| l.index) == last
                        })
                        .map(|(id, _)| *id)
                        .collect()
                })
                .unwrap_or_default();
            let applied_all = m.last_applied.map(|l| l.index) == last;
            let lease_over = leader_since.is_some_and(|t| t.elapsed() >= lease);
            if let Some(target) = caught_up
                .first()
                .copied()
                .filter(|_| applied_all && lease_over)
            {
                let mut sent = node.takeover_sent.lock().await;
                if sent.is_none_or(|t| t.elapsed() > lease * 2) {
                    *sent = Some(Instant::now());
                    drop(sent);
                    let last_id = m.last_applied;
                    let n = node.clone();
                    tokio::spawn(async move {
                        tracing::info!(
                            target,
                            "witness: handing leadership to caught-up data member"
                        );
                        let _ = n
                            .peers
                            .call(
                                target,
                                &PeerReq::TakeOver { last: last_id },
                                n.peers.rpc_timeout(),
                            )
                            .await;
                    });
                }
            }
        } else if m.current_leader.is_some_and(|l| node.cfg.is_data(l)) {
            // A data member leads, and is alive (heard from lately): stand down.
            let last = node.last_leader_contact.load(Ordering::Relaxed);
            if last > 0 && node.clock_ms().saturating_sub(last) < node.cfg.tunables.election_min_ms
            {
                node.raft.runtime_config().elect(false);
            }
        }
        // Re-check on every change, and at least every 20 ms (lease end, repeated hand-over).
        let _ = tokio::time::timeout(Duration::from_millis(20), rx.changed()).await;
    }
}

/// Speeds up failover. openraft 0.9 lets a follower campaign only after a lease
/// (`election_timeout_max`) *plus* a random election timeout since it last heard from the
/// leader (~1.05 s on average with the defaults), and voters refuse votes during that lease.
/// A data member that has not heard from a leader calls the election itself:
/// - as soon as a majority of the voters (itself included) have not heard from the leader
///   for their own lease either, so they would grant the vote: it asks the other voters
///   (`LeaderSilence`) once its silence passes the shortest lease (the witness's, ~0.3 s with
///   the defaults). A leader that still reaches the others is left alone: no vote is asked
///   for that they would refuse, so no term is raised that would unseat it.
/// - at the latest when the data members' lease plus a small random jitter has passed
///   (~0.7 s with the defaults), whatever the others said or if they did not answer.
///
/// Calling an election early never endangers safety, only (rarely) a healthy leader's term.
async fn failover_loop(node: Arc<Node>) {
    let t = &node.cfg.tunables;
    let jitter_span = (t.election_min_ms / 2).max(1);
    let ask_after = shortest_vote_lease_ms(t) + LEASE_MARGIN_MS;
    let ask_every = Duration::from_millis(ASK_EVERY_MS);
    // The silence (by the leader's last word) each kind of election was called for: one
    // early and one last-resort call per silence, so that an early call that failed does
    // not hold back the last-resort one.
    let mut kicked_for = 0u64;
    let mut asked_for = 0u64;
    let mut next_ask = Instant::now();
    let mut last_state = ServerState::Learner;
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let m = node.raft.metrics().borrow().clone();
        if m.state != last_state {
            tracing::info!(state = ?m.state, term = m.current_term, leader = ?m.current_leader, "raft state changed");
            last_state = m.state;
        }
        let last = node.last_leader_contact.load(Ordering::Relaxed);
        if last == 0 || kicked_for == last || m.state == ServerState::Leader {
            continue;
        }
        let jitter = (node.rid_base ^ last.wrapping_mul(0x9E37_79B9_7F4A_7C15)) % jitter_span;
        let silent_ms = node.clock_ms().saturating_sub(last);
        if silent_ms >= t.election_max_ms + 20 + jitter {
            kicked_for = last;
            tracing::info!(silent_ms, "no word from the leader; calling an election");
            let _ = node.raft.trigger().elect().await;
        } else if asked_for != last
            && silent_ms >= ask_after + jitter / 4
            && Instant::now() >= next_ask
        {
            next_ask = Instant::now() + ask_every;
            if voters_lost_the_leader(&node, &m).await {
                asked_for = last;
                tracing::info!(
                    silent_ms,
                    "no word from the leader, nor at a majority of voters; calling an election"
                );
                let _ = node.raft.trigger().elect().await;
            }
        }
    }
}

/// Milliseconds past a voter's lease before it surely grants a vote: its own record of the
/// leader's last word is taken a moment after openraft's.
pub(crate) const LEASE_MARGIN_MS: u64 = 10;
/// How often a data member that lost word from the leader asks the other voters again.
const ASK_EVERY_MS: u64 = 25;

/// Whether a majority of the voters, this member included, have not heard from the leader
/// for their lease (and so would grant this member its vote). Voters that do not answer
/// within a heartbeat count as not agreeing.
async fn voters_lost_the_leader(node: &Arc<Node>, m: &RaftMetrics<NodeId, BasicNode>) -> bool {
    let me = node.id();
    let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
    if !voters.contains(&me) {
        return false;
    }
    let timeout = Duration::from_millis(node.cfg.tunables.heartbeat_ms);
    let asks = voters
        .iter()
        .filter(|v| **v != me && Some(**v) != m.current_leader)
        .map(|v| node.peers.call(*v, &PeerReq::LeaderSilence, timeout));
    let agreeing = futures::future::join_all(asks)
        .await
        .iter()
        .filter(|a| matches!(a, Ok(PeerResp::LeaderSilence(s)) if s.would_grant()))
        .count();
    majority(1 + agreeing, voters.len())
}

/// Whether `agreeing` of `voters` voters are a majority.
fn majority(agreeing: usize, voters: usize) -> bool {
    agreeing * 2 > voters
}

/// Active expiry: once a second the leader looks for expired keys and, if there are any,
/// proposes a sweep entry per database that has some (the entry's clock decides, so every
/// member drops the same keys). Reads already hide expired keys; this frees their memory.
async fn expiry_loop(node: Arc<Node>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A leader that is handing over appends nothing more (see `hand_over_leadership`).
        if !node.is_leader() || node.stepping_down.load(Ordering::Acquire) {
            continue;
        }
        let now = now_ms();
        let dbs: Vec<u32> = node.sm.read(|g| {
            g.tables
                .dbs
                .iter()
                .enumerate()
                .filter(|(_, d)| d.has_expired(now))
                .map(|(i, _)| i as u32)
                .collect()
        });
        if dbs.is_empty() {
            continue;
        }
        let req = WriteReq {
            rid: 0,
            now_ms: 0,
            watches: Vec::new(),
            cmds: dbs
                .iter()
                .map(|d| (*d, vec![crate::data::SWEEP.to_vec()]))
                .collect(),
            multi: true,
        };
        match node.write_local(req).await {
            Ok(r) => tracing::debug!(?r, "expiry sweep"),
            Err(e) => tracing::debug!("expiry sweep not done: {e}"),
        }
    }
}

/// The witness keeps log entries until every data member holds them durably: it purges
/// only up to the lowest snapshot index among the data members (a snapshot is on disk; log
/// entries a data member has applied may not be flushed yet). If any data member does not
/// answer, nothing is purged.
async fn witness_purge_loop(node: Arc<Node>) {
    let every = Duration::from_millis(node.cfg.tunables.witness_purge_ms.max(50));
    loop {
        tokio::time::sleep(every).await;
        let mut upto: Option<u64> = None;
        let mut all = true;
        // The data members of the group as it is now (voters and learners): a configured
        // member that never joined must not hold purging back forever.
        let members: Vec<NodeId> = {
            let m = node.raft.metrics().borrow().membership_config.clone();
            m.membership()
                .nodes()
                .map(|(id, _)| *id)
                .filter(|id| node.cfg.is_data(*id))
                .collect()
        };
        if members.is_empty() {
            continue;
        }
        for id in members {
            match node
                .peers
                .call(id, &PeerReq::Status, node.peers.rpc_timeout())
                .await
            {
                Ok(PeerResp::Status(st)) => {
                    let held = st.snapshot_index.unwrap_or(0);
                    upto = Some(upto.map_or(held, |u| u.min(held)));
                }
                _ => {
                    all = false;
                    break;
                }
            }
        }
        let (Some(upto), true) = (upto, all) else {
            continue;
        };
        let m = node.raft.metrics().borrow().clone();
        let purged = m.purged.map(|l| l.index);
        if upto == 0 || purged >= Some(upto) || m.last_applied.map(|l| l.index) < Some(upto) {
            continue;
        }
        // Purging needs a snapshot that covers the range: build the witness's (empty) one.
        if m.snapshot.map(|l| l.index) < Some(upto) {
            if node.raft.trigger().snapshot().await.is_err() {
                continue;
            }
            let _ = node
                .raft
                .wait(Some(Duration::from_secs(5)))
                .metrics(
                    |m| m.snapshot.map(|l| l.index) >= Some(upto),
                    "witness snapshot",
                )
                .await;
        }
        if node.raft.trigger().purge_log(upto).await.is_ok() {
            tracing::info!(upto, "witness: purging log entries every data member holds");
        }
    }
}

/// The witness's election timeouts: short. openraft 0.9 uses `election_timeout_max` as the
/// time a member refuses votes after it last heard from a leader (or after it won). A short
/// one on the witness lets a data member's first election after losing its leader succeed,
/// and lets a witness-leader hand over soon after it won. The witness only stands for
/// election when no data member can win, so a short timeout does not make it campaign more.
pub fn witness_election(t: &crate::config::Tunables) -> (u64, u64) {
    (t.heartbeat_ms * 2, t.heartbeat_ms * 3)
}

/// A member's election timeouts (min, max), as openraft gets them; the max is also how long
/// it refuses votes after it last heard from a leader.
fn election_timeouts(t: &crate::config::Tunables, witness: bool) -> (u64, u64) {
    if witness {
        witness_election(t)
    } else {
        (t.election_min_ms, t.election_max_ms)
    }
}

/// A started node and its background tasks.
pub struct Running {
    pub node: Arc<Node>,
}

/// Opens storage, starts Raft and the peer listener. The Redis listener is started by
/// [`crate::run`].
pub async fn start(cfg: DbConfig) -> Result<Running, DbError> {
    cfg.validate()?;
    let me = cfg
        .me()
        .cloned()
        .ok_or_else(|| DbError::Config("no such member".into()))?;
    let witness = me.kind == Kind::Witness;
    let store = Store::open(&cfg.data_dir)?;
    let sm = StateMachine::open(store.clone(), witness)?;
    let t = &cfg.tunables;
    let rc = Config {
        cluster_name: "citadel-db".into(),
        heartbeat_interval: t.heartbeat_ms,
        election_timeout_min: election_timeouts(t, witness).0,
        election_timeout_max: election_timeouts(t, witness).1,
        // The witness never builds snapshots on its own, so it never purges entries that a
        // data member may still need; it keeps its whole log.
        snapshot_policy: if witness {
            SnapshotPolicy::Never
        } else {
            SnapshotPolicy::LogsSinceLast(t.snapshot_every)
        },
        max_in_snapshot_log_to_keep: if witness {
            u64::MAX / 2
        } else {
            t.keep_after_snapshot
        },
        purge_batch_size: 256,
        // openraft 0.9 gives an AppendEntries one heartbeat interval to complete; entries are
        // batches of writes, so send few at a time or a lagging follower never catches up.
        max_payload_entries: 16,
        enable_elect: !witness,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    };
    let rc = Arc::new(rc.validate().map_err(|e| DbError::Config(e.to_string()))?);
    let peers = Peers::new(&cfg);
    let listen = if cfg.peer_listen.is_empty() {
        vec![me.peer]
    } else {
        cfg.peer_listen.clone()
    };
    let mut listeners = Vec::new();
    for addr in listen {
        listeners.push(TcpListener::bind(addr).await?);
    }
    let boot_read_floor = boot_read_floor(&store, cfg.id).await?;
    let raft = Raft::new(
        cfg.id,
        rc,
        Network {
            peers: peers.clone(),
        },
        LogStore {
            store: store.clone(),
        },
        sm.clone(),
    )
    .await
    .map_err(|e| DbError::Raft(e.to_string()))?;
    if !witness {
        crate::data::busy::install(Box::new(ScriptLog {
            store: store.clone(),
            raft: raft.clone(),
            id: cfg.id,
        }));
    }
    let rid_base = now_ms().wrapping_mul(0x2545_F491_4F6C_DD1D)
        ^ (cfg.id << 48)
        ^ (std::process::id() as u64) << 20;
    let unsafe_local_reads = std::env::var("CITADEL_DB_UNSAFE_LOCAL_READS").is_ok_and(|v| v == "1");
    if unsafe_local_reads {
        tracing::warn!("CITADEL_DB_UNSAFE_LOCAL_READS=1: reads are NOT linearizable (test mode)");
    }
    let read_lease = match std::env::var("CITADEL_DB_UNSAFE_READ_LEASE_MS") {
        Ok(ms) => {
            let ms: u64 = ms.parse().unwrap_or(0);
            tracing::warn!(
                lease_ms = ms,
                "CITADEL_DB_UNSAFE_READ_LEASE_MS: a read lease of this length is NOT safe (test mode)"
            );
            Duration::from_millis(ms)
        }
        Err(_) => read_lease(&cfg.tunables),
    };
    let node = Arc::new(Node {
        settings: Default::default(),
        last_leader_contact: AtomicU64::new(0),
        started: Instant::now(),
        unsafe_local_reads,
        read_lease,
        proposer: Proposer {
            queue: std::sync::Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            last_batch: AtomicU64::new(0),
            last_round_us: AtomicU64::new(0),
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT_PROPOSALS)),
        },
        cfg: cfg.clone(),
        raft,
        sm: sm.shared.clone(),
        store,
        peers,
        reads: ReadBatcher {
            waiters: std::sync::Mutex::new((false, Vec::new())),
            lease: std::sync::Mutex::new(None),
            renewing: AtomicBool::new(false),
            by_lease: AtomicU64::new(0),
            rounds: AtomicU64::new(0),
        },
        rid_base,
        rid_seq: AtomicU64::new(1),
        takeover_sent: Mutex::new(None),
        boot_read_floor,
        stepping_down: AtomicBool::new(false),
    });
    node.store.on_append(crate::early::start(
        node.raft.clone(),
        node.peers.clone(),
        cfg.id,
    ));
    for listener in listeners {
        tokio::spawn(serve_peers(listener, node.clone()));
    }
    // Every data member initializes with the same membership; only an empty log takes it.
    // initialize() starts an election at once, so the witness leaves it to data members.
    if !witness
        && me.voter
        && !node
            .raft
            .is_initialized()
            .await
            .map_err(|e| DbError::Raft(e.to_string()))?
    {
        let members: BTreeMap<NodeId, BasicNode> = cfg
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| {
                (
                    m.id,
                    BasicNode {
                        // The same on every node: each node dials its own idea of
                        // a peer's address (from its config), not this.
                        addr: m.name.clone(),
                    },
                )
            })
            .collect();
        match node.raft.initialize(members).await {
            Ok(()) => tracing::info!("initialized the group"),
            Err(e) => tracing::info!("initialize: {e}"),
        }
    }
    if witness {
        tokio::spawn(witness_loop(node.clone()));
        tokio::spawn(witness_purge_loop(node.clone()));
    } else {
        tokio::spawn(proposer_loop(node.clone()));
        tokio::spawn(failover_loop(node.clone()));
        tokio::spawn(expiry_loop(node.clone()));
    }
    Ok(Running { node })
}

/// `Node::boot_read_floor` from the durable vote and log, read before openraft starts.
async fn boot_read_floor(store: &Arc<Store>, id: NodeId) -> Result<Option<(u64, u64)>, DbError> {
    use openraft::storage::RaftLogStorage;
    let mut log = LogStore {
        store: store.clone(),
    };
    let vote = log
        .read_vote()
        .await
        .map_err(|e| DbError::Storage(e.to_string()))?;
    let last = log
        .get_log_state()
        .await
        .map_err(|e| DbError::Storage(e.to_string()))?
        .last_log_id;
    Ok(match (vote, last) {
        (Some(v), Some(last)) if v.is_committed() && v.leader_id().voted_for() == Some(id) => {
            Some((v.leader_id().term, last.index))
        }
        _ => None,
    })
}

fn is_script_decision(req: &WriteReq) -> bool {
    req.cmds.first().is_some_and(|(_, argv)| {
        argv.first()
            .is_some_and(|a| a == crate::data::busy::SCRIPT_DECIDE)
    })
}

/// A running script's view of the committed log (`data::busy`): SCRIPT KILL's and the
/// leader's decisions are read from it before the state machine applies them.
struct ScriptLog {
    store: Arc<Store>,
    raft: Raft,
    id: NodeId,
}

impl crate::data::busy::Log for ScriptLog {
    fn committed(&self) -> u64 {
        self.store.committed()
    }

    fn decisions(&self, from: u64, to: u64) -> Vec<(u64, crate::data::busy::Decision)> {
        use crate::data::busy::{Decision, SCRIPT_DECIDE};
        let mut out = Vec::new();
        let Ok(entries) = self.store.read_range(from, to.saturating_add(1)) else {
            return out;
        };
        for e in entries {
            let openraft::EntryPayload::Normal(p) = &e.payload else {
                continue;
            };
            for r in &p.reqs {
                for (_, argv) in &r.cmds {
                    if argv.len() == 4 && argv[0] == SCRIPT_DECIDE {
                        let i = std::str::from_utf8(&argv[1])
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok());
                        let d = if argv[2] == b"kill" {
                            Decision::Kill
                        } else {
                            Decision::Go
                        };
                        if let Some(i) = i {
                            out.push((i, d));
                        }
                    }
                }
            }
        }
        out
    }

    fn propose_go(&self, index: u64) {
        if self.raft.metrics().borrow().current_leader != Some(self.id) {
            return;
        }
        let req = WriteReq {
            rid: 0,
            now_ms: now_ms(),
            watches: Vec::new(),
            cmds: vec![(
                0,
                vec![
                    crate::data::busy::SCRIPT_DECIDE.to_vec(),
                    index.to_string().into_bytes(),
                    b"go".to_vec(),
                    b"-".to_vec(),
                ],
            )],
            multi: false,
        };
        let raft = self.raft.clone();
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                let _ = raft.client_write_ff(Proposal { reqs: vec![req] }).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_voter_grants_only_once_its_lease_has_passed() {
        let said = |silent_ms, lease_ms| LeaderSilence {
            silent_ms,
            lease_ms,
        };
        assert!(!said(Some(0), 300).would_grant(), "a leader grants nothing");
        assert!(!said(Some(300), 300).would_grant());
        assert!(!said(Some(300 + LEASE_MARGIN_MS), 300).would_grant());
        assert!(said(Some(301 + LEASE_MARGIN_MS), 300).would_grant());
        assert!(said(None, 600).would_grant(), "never heard from a leader");
    }

    #[test]
    fn an_early_election_needs_a_majority_of_the_voters() {
        // Two data members and a witness: the asking member and one more.
        assert!(!majority(1, 3));
        assert!(majority(2, 3));
        assert!(!majority(2, 4));
        assert!(majority(3, 5));
    }

    #[test]
    fn data_members_ask_once_the_witness_lease_has_passed() {
        let t = crate::config::Tunables::default();
        assert_eq!(shortest_vote_lease_ms(&t), 300);
        assert!(read_lease(&t) < Duration::from_millis(shortest_vote_lease_ms(&t)));
    }
}

//! Peer RPC over TCP: length-delimited frames carrying JSON messages, multiplexed by id.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Snapshot};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::config::DbConfig;
use crate::data::WriteReq;
use crate::resp::Reply;
use crate::types::{LogId, NodeId, SnapshotMeta, TypeConfig, Vote};

/// Largest peer frame (snapshots travel in one frame).
pub const MAX_FRAME: usize = 512 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerReq {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    /// A whole snapshot. `from` lets the receiver refuse a witness's snapshot.
    Snapshot {
        from: NodeId,
        vote: Vote,
        meta: SnapshotMeta,
        data: Vec<u8>,
    },
    /// A client write forwarded to the leader.
    Write(WriteReq),
    /// A connection's pipelined writes forwarded to the leader together, in order.
    WriteBatch(Vec<WriteReq>),
    /// Read index for a linearizable read on a follower.
    ReadIndex,
    /// From a witness-leader to a caught-up data member: "call an election and take over".
    TakeOver {
        last: Option<LogId>,
    },
    Status,
    /// Admin: add a configured member as a voter (learner first), or remove one.
    ChangeVoter {
        id: NodeId,
        add: bool,
    },
    /// A PUBLISH made on another member, for this member's subscribers.
    Publish {
        channel: Vec<u8>,
        message: Vec<u8>,
    },
    /// From a data member that has not heard from the leader: "have you?"
    LeaderSilence,
    // New variants go last: postcard encodes a variant by its index, and members of two
    // versions talk to each other during a rolling upgrade.
}

/// What a node reports about itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub state: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub disk_bytes: u64,
    /// Leader only: matched index per member.
    pub matched: Vec<(NodeId, Option<u64>)>,
}

/// How long a member has not heard from a leader (`None`: not since it started; 0: it
/// leads), and how long it refuses votes after it hears from one (its vote lease).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaderSilence {
    pub silent_ms: Option<u64>,
    pub lease_ms: u64,
}

impl LeaderSilence {
    /// Whether the member would grant a vote now (as far as the leader's lease goes: openraft
    /// 0.9 refuses votes within the lease of the leader a member last heard from).
    pub fn would_grant(&self) -> bool {
        self.silent_ms
            .is_none_or(|ms| ms > self.lease_ms + crate::node::LEASE_MARGIN_MS)
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResp {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<SnapshotResponse<NodeId>, String>),
    /// A reply, or a retryable refusal (`TRYAGAIN ...`: not the leader).
    Write(Result<Reply, String>),
    WriteBatch(Vec<Result<Reply, String>>),
    ReadIndex(Result<u64, String>),
    TakeOver(bool),
    Status(NodeStatus),
    Admin(Result<String, String>),
    Error(String),
    /// How many of this member's subscribers received a message.
    Published(u64),
    LeaderSilence(LeaderSilence),
    // New variants go last (see `PeerReq`).
}

#[derive(Debug, Serialize, Deserialize)]
struct Frame<T> {
    id: u64,
    body: T,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing was sent: safe to retry anywhere.
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, String),
    /// The request may or may not have been carried out.
    #[error("no answer from {0}: {1}")]
    Lost(SocketAddr, String),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<PeerResp>>>>;

struct Conn {
    tx: mpsc::UnboundedSender<Bytes>,
    pending: Pending,
    dead: Arc<std::sync::atomic::AtomicBool>,
}

/// A multiplexed connection to one peer, re-established on demand.
pub struct PeerClient {
    addr: SocketAddr,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    next: AtomicU64,
}

impl PeerClient {
    fn new(addr: SocketAddr) -> PeerClient {
        PeerClient {
            addr,
            conn: tokio::sync::Mutex::new(None),
            next: AtomicU64::new(1),
        }
    }

    async fn connection(&self, timeout: Duration) -> Result<Arc<Conn>, CallError> {
        let mut g = self.conn.lock().await;
        if let Some(c) = g.as_ref()
            && !c.dead.load(Ordering::Acquire)
        {
            return Ok(c.clone());
        }
        let stream = tokio::time::timeout(timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| CallError::Connect(self.addr, "connect timed out".into()))?
            .map_err(|e| CallError::Connect(self.addr, e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let framed = Framed::new(stream, codec());
        let (mut sink, mut stream) = framed.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conn = Arc::new(Conn {
            tx,
            pending: pending.clone(),
            dead: dead.clone(),
        });
        let dead_w = dead.clone();
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if sink.send(b).await.is_err() {
                    break;
                }
            }
            dead_w.store(true, Ordering::Release);
        });
        tokio::spawn(async move {
            while let Some(Ok(frame)) = stream.next().await {
                match crate::codec::dec::<Frame<PeerResp>>(&frame) {
                    Ok(f) => {
                        let waiter = pending
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&f.id);
                        if let Some(w) = waiter {
                            let _ = w.send(f.body);
                        }
                    }
                    Err(e) => {
                        tracing::warn!("bad peer frame: {e}");
                        break;
                    }
                }
            }
            dead.store(true, Ordering::Release);
            // Dropping the senders wakes every caller with an error.
            pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
        });
        *g = Some(conn.clone());
        Ok(conn)
    }

    pub async fn call(&self, req: &PeerReq, timeout: Duration) -> Result<PeerResp, CallError> {
        let conn = self.connection(timeout).await?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let bytes = crate::codec::enc(&Frame { id, body: req })
            .map_err(|e| CallError::Connect(self.addr, e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        conn.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        if conn.tx.send(Bytes::from(bytes)).is_err() {
            conn.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Err(CallError::Connect(self.addr, "connection closed".into()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(CallError::Lost(self.addr, "connection closed".into())),
            Err(_) => {
                conn.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                Err(CallError::Lost(self.addr, "timed out".into()))
            }
        }
    }
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// Clients for every member, by id.
pub struct Peers {
    clients: HashMap<NodeId, Arc<PeerClient>>,
    pub cfg: DbConfig,
    /// Per voter, the newest entry an early AppendEntries ([`crate::early`]) of this leader's
    /// vote placed on its disk: openraft's own request for those entries need not carry them.
    early_acked: Mutex<HashMap<NodeId, (Vote, LogId)>>,
    /// Entries voters took from early requests, and entries left out of openraft's requests
    /// because of them (INFO `early_entries`, `trimmed_entries`).
    pub early_entries: AtomicU64,
    pub trimmed_entries: AtomicU64,
}

impl Peers {
    pub fn new(cfg: &DbConfig) -> Arc<Peers> {
        let clients = cfg
            .members
            .iter()
            .map(|m| (m.id, Arc::new(PeerClient::new(m.peer))))
            .collect();
        Arc::new(Peers {
            clients,
            cfg: cfg.clone(),
            early_acked: Default::default(),
            early_entries: AtomicU64::new(0),
            trimmed_entries: AtomicU64::new(0),
        })
    }

    /// An early AppendEntries of `vote` up to `last` succeeded on `to`: it holds the leader's
    /// log up to `last`, durably.
    pub fn early_acked(&self, to: NodeId, vote: Vote, last: LogId) {
        let mut m = self.early_acked.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(&to) {
            Some((v, l)) if *v == vote && *l >= last => {}
            _ => {
                m.insert(to, (vote, last));
            }
        }
    }

    /// Drops from openraft's AppendEntries to `to` the leading entries an early request of
    /// the same vote already placed there, moving `prev_log_id` up to the last one dropped.
    /// Returns whether anything was dropped.
    fn trim_early(&self, to: NodeId, rpc: &mut AppendEntriesRequest<TypeConfig>) -> bool {
        let acked = {
            let m = self.early_acked.lock().unwrap_or_else(|p| p.into_inner());
            match m.get(&to) {
                Some((v, l)) if *v == rpc.vote => *l,
                _ => return false,
            }
        };
        let n = rpc
            .entries
            .iter()
            .take_while(|e| e.log_id.index <= acked.index)
            .count();
        if n == 0 {
            return false;
        }
        rpc.prev_log_id = Some(rpc.entries[n - 1].log_id);
        rpc.entries.drain(..n);
        self.trimmed_entries.fetch_add(n as u64, Ordering::Relaxed);
        true
    }

    /// Forgets what early requests placed on `to` (it answered a trimmed request with a
    /// conflict: its disk was replaced, say).
    fn forget_early(&self, to: NodeId) {
        self.early_acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&to);
    }

    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.tunables.rpc_timeout_ms)
    }

    pub async fn call(
        &self,
        to: NodeId,
        req: &PeerReq,
        timeout: Duration,
    ) -> Result<PeerResp, CallError> {
        let Some(c) = self.clients.get(&to) else {
            return Err(CallError::Connect(
                ([0, 0, 0, 0], 0).into(),
                format!("unknown member {to}"),
            ));
        };
        c.call(req, timeout).await
    }
}

/// Something that answers peer requests.
pub trait PeerHandler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, req: PeerReq) -> impl Future<Output = PeerResp> + Send;
}

/// Accepts peer connections and answers each request concurrently.
pub async fn serve_peers<H: PeerHandler>(listener: TcpListener, handler: Arc<H>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("peer accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let (mut sink, mut frames) = Framed::new(stream, codec()).split();
            let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
            let writer = tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    if sink.send(b).await.is_err() {
                        break;
                    }
                }
            });
            while let Some(Ok(frame)) = frames.next().await {
                let f: Frame<PeerReq> = match crate::codec::dec(&frame) {
                    Ok(f) => f,
                    Err(e) => {
                        // A request of a newer version (a variant this one does not know)
                        // still carries its id first: answer it, and keep the connection
                        // for the requests this version knows.
                        let Ok(id) = crate::codec::dec_prefix::<u64>(&frame) else {
                            tracing::warn!("bad peer request: {e}");
                            break;
                        };
                        tracing::debug!(id, "unknown peer request: {e}");
                        let body = PeerResp::Error(format!("unknown request: {e}"));
                        if let Ok(b) = crate::codec::enc(&Frame { id, body }) {
                            let _ = tx.send(Bytes::from(b));
                        }
                        continue;
                    }
                };
                let handler = handler.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let body = handler.handle(f.body).await;
                    if let Ok(b) = crate::codec::enc(&Frame { id: f.id, body }) {
                        let _ = tx.send(Bytes::from(b));
                    }
                });
            }
            drop(tx);
            let _ = writer.await;
        });
    }
}

/// openraft's network: one [`PeerLink`] per target.
pub struct Network {
    pub peers: Arc<Peers>,
}

pub struct PeerLink {
    peers: Arc<Peers>,
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Self::Network {
        PeerLink {
            peers: self.peers.clone(),
            target,
        }
    }
}

fn unreachable(e: &CallError) -> Unreachable {
    Unreachable::new(e)
}

impl PeerLink {
    fn ttl(&self, option: &RPCOption) -> Duration {
        option.hard_ttl().min(self.peers.rpc_timeout())
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let mut rpc = rpc;
        let trimmed = self.peers.trim_early(self.target, &mut rpc);
        let res = self
            .peers
            .call(self.target, &PeerReq::Append(rpc), self.ttl(&option))
            .await;
        if trimmed
            && !matches!(
                res,
                Ok(PeerResp::Append(Ok(AppendEntriesResponse::Success)))
            )
        {
            // openraft would take a conflict as one at the prev_log_id it sent: forget the early
            // acknowledgements, and its next request goes whole.
            self.peers.forget_early(self.target);
        }
        match res {
            Ok(PeerResp::Append(Ok(r))) => Ok(r),
            Ok(PeerResp::Append(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other(format!("{other:?}")),
            ))),
            Err(e @ CallError::Connect(..)) => Err(RPCError::Unreachable(unreachable(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        // Snapshots travel whole, through full_snapshot().
        Err(RPCError::Network(NetworkError::new(
            &std::io::Error::other("chunked snapshots are not used"),
        )))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self
            .peers
            .call(self.target, &PeerReq::Vote(rpc), self.ttl(&option))
            .await
        {
            Ok(PeerResp::Vote(Ok(r))) => Ok(r),
            Ok(PeerResp::Vote(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other(format!("{other:?}")),
            ))),
            Err(e @ CallError::Connect(..)) => Err(RPCError::Unreachable(unreachable(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let cfg = &self.peers.cfg;
        if !cfg.is_data(cfg.id) && cfg.is_data(self.target) {
            // The catastrophic case: a witness's snapshot has no tables. Never send it to a
            // data member; the member must be caught up from the log instead.
            tracing::error!(
                target = self.target,
                "witness refuses to send its empty snapshot to a data member"
            );
            return Err(StreamingError::Unreachable(Unreachable::new(
                &std::io::Error::other("a witness never sends its snapshot to a data member"),
            )));
        }
        let data = snapshot.snapshot.into_inner();
        let req = PeerReq::Snapshot {
            from: cfg.id,
            vote,
            meta: snapshot.meta,
            data,
        };
        let ttl = option.hard_ttl().max(Duration::from_secs(10));
        match self.peers.call(self.target, &req, ttl).await {
            Ok(PeerResp::Snapshot(Ok(r))) => Ok(r),
            Ok(PeerResp::Snapshot(Err(e))) => Err(StreamingError::Network(NetworkError::new(
                &std::io::Error::other(e),
            ))),
            Ok(other) => Err(StreamingError::Network(NetworkError::new(
                &std::io::Error::other(format!("{other:?}")),
            ))),
            Err(e @ CallError::Connect(..)) => Err(StreamingError::Unreachable(unreachable(&e))),
            Err(e) => Err(StreamingError::Network(NetworkError::new(&e))),
        }
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers `Status` with a fixed id; nothing else is asked of it here.
    struct Fixed;

    impl PeerHandler for Fixed {
        async fn handle(self: Arc<Self>, _req: PeerReq) -> PeerResp {
            PeerResp::Status(NodeStatus {
                id: 42,
                ..NodeStatus::default()
            })
        }
    }

    #[tokio::test]
    async fn a_request_of_a_newer_version_is_answered_and_the_connection_kept() {
        let listener = TcpListener::bind("127.60.22.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve_peers(listener, Arc::new(Fixed)));
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut framed = Framed::new(stream, codec());
        // A frame with id 7 and a variant index no version has yet.
        let mut unknown = crate::codec::enc(&7u64).expect("id");
        unknown.extend(crate::codec::enc(&250u32).expect("variant"));
        framed.send(Bytes::from(unknown)).await.expect("send");
        let reply = framed.next().await.expect("a reply").expect("frame");
        let f: Frame<PeerResp> = crate::codec::dec(&reply).expect("decodes");
        assert_eq!(f.id, 7);
        assert!(matches!(f.body, PeerResp::Error(ref e) if e.contains("unknown request")));
        // The same connection still serves a request this version knows.
        let known = crate::codec::enc(&Frame {
            id: 8,
            body: PeerReq::Status,
        })
        .expect("enc");
        framed.send(Bytes::from(known)).await.expect("send");
        let reply = framed.next().await.expect("a reply").expect("frame");
        let f: Frame<PeerResp> = crate::codec::dec(&reply).expect("decodes");
        assert_eq!(f.id, 8);
        assert!(matches!(f.body, PeerResp::Status(ref s) if s.id == 42));
    }
}

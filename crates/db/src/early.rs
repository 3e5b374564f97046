//! Early replication: a leader sends each entry it appends to the other voters while its own
//! fsync of that entry is still in flight, as etcd does ("the leader writes to its disk in
//! parallel with replicating", Raft thesis §10.2.1).
//!
//! openraft 0.9's core awaits the leader's own log flush before it hands an entry to its
//! replication streams, so without this a write waits for two fsyncs in series: the
//! leader's, then the fastest follower's. Here the log store, as it queues an append on the
//! leader, hands the entries to one sender per voter, which sends them as an ordinary
//! AppendEntries of the leader's term with no commit index. The follower appends and fsyncs
//! them at once; when openraft's own AppendEntries for the same entries arrives after the
//! leader's flush, the follower already holds them (same log ids: nothing to write) and
//! acknowledges without an fsync of its own. Once a voter acknowledged an early request,
//! openraft's request for the same entries goes without them (`Peers::trim_early`): a
//! `prev_log_id` at the last entry it holds, and only what follows.
//!
//! Why this is safe: openraft still counts the leader in a quorum only once its own flush
//! completed, and a follower only through openraft's own requests, so an entry commits only
//! on a real majority of disks. What an early request can do to a follower is exactly what
//! any AppendEntries of the current leader does — append entries of the leader's log after a
//! matching `prev_log_id`, and drop a conflicting tail the leader would overwrite anyway —
//! and it carries no commit index, so nothing is applied on its account. An entry that
//! reaches a follower and not the leader's disk (the leader dies mid-fsync) is an
//! uncommitted entry on a follower, which Raft allows: a later leader may commit it (the
//! writer's outcome was unknown, and retries carry request ids). A sender gives up on a
//! request that fails and drops what queued meanwhile; openraft's replication catches up.

use std::collections::HashMap;
use std::sync::Arc;

use openraft::RaftLogId;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use tokio::sync::mpsc;

use crate::net::{PeerReq, PeerResp, Peers};
use crate::types::{Entry, LogId, NodeId, Raft, Vote};

/// Appends waiting for one voter's sender, at most; more are dropped (openraft's own
/// replication carries them).
const QUEUE: usize = 64;
/// Entries in one early AppendEntries, at most (as `max_payload_entries`).
const MAX_ENTRIES: usize = 16;

struct Batch {
    vote: Vote,
    prev: Option<LogId>,
    entries: Arc<[Entry]>,
}

/// What the log store calls on every append: `prev` is the log id before the first entry.
pub type Hook = Box<dyn Fn(Option<LogId>, &[Entry]) + Send + Sync>;

/// Starts the dispatcher and returns the hook for [`crate::store::Store::on_append`].
pub fn start(raft: Raft, peers: Arc<Peers>, me: NodeId) -> Hook {
    let (tx, rx) = mpsc::channel::<(Option<LogId>, Arc<[Entry]>)>(QUEUE);
    tokio::spawn(dispatch(raft, peers, me, rx));
    Box::new(move |prev, entries| {
        // Only entries this node made as leader; a follower's appends came from the leader.
        if entries
            .first()
            .is_some_and(|e| e.get_log_id().leader_id.node_id == me)
        {
            let _ = tx.try_send((prev, entries.into()));
        }
    })
}

async fn dispatch(
    raft: Raft,
    peers: Arc<Peers>,
    me: NodeId,
    mut rx: mpsc::Receiver<(Option<LogId>, Arc<[Entry]>)>,
) {
    let mut senders: HashMap<NodeId, mpsc::Sender<Batch>> = HashMap::new();
    while let Some((prev, entries)) = rx.recv().await {
        let (vote, voters) = {
            let m = raft.metrics();
            let m = m.borrow();
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            (m.vote, voters)
        };
        // Still the committed leader of the term that made these entries (the hook passes
        // only entries this node made).
        let Some(first) = entries.first() else {
            continue;
        };
        if !vote.is_committed() || *vote.leader_id() != first.get_log_id().leader_id {
            continue;
        }
        for to in voters.into_iter().filter(|&v| v != me) {
            let tx = senders.entry(to).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(send_to(peers.clone(), to, rx));
                tx
            });
            let _ = tx.try_send(Batch {
                vote,
                prev,
                entries: entries.clone(),
            });
        }
    }
}

/// One voter's sender: requests in log order, one at a time, consecutive appends merged.
async fn send_to(peers: Arc<Peers>, to: NodeId, mut rx: mpsc::Receiver<Batch>) {
    let mut next: Option<Batch> = None;
    loop {
        let first = match next.take() {
            Some(b) => b,
            None => match rx.recv().await {
                Some(b) => b,
                None => return,
            },
        };
        let vote = first.vote;
        let prev = first.prev;
        let mut entries: Vec<Entry> = first.entries.to_vec();
        while entries.len() < MAX_ENTRIES {
            match rx.try_recv() {
                Ok(b) if b.vote == vote && b.prev == entries.last().map(|e| *e.get_log_id()) => {
                    entries.extend(b.entries.iter().cloned())
                }
                Ok(b) => {
                    next = Some(b);
                    break;
                }
                Err(_) => break,
            }
        }
        let last = entries.last().map(|e| *e.get_log_id());
        let n = entries.len() as u64;
        let req = AppendEntriesRequest {
            vote,
            prev_log_id: prev,
            entries,
            leader_commit: None,
        };
        match peers
            .call(to, &PeerReq::Append(req), peers.rpc_timeout())
            .await
        {
            Ok(PeerResp::Append(Ok(AppendEntriesResponse::Success))) => {
                if let Some(last) = last {
                    peers.early_acked(to, vote, last);
                    peers
                        .early_entries
                        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Ok(_) => {}
            Err(_) => {
                // What queued meanwhile follows a request that may not have arrived.
                next = None;
                while rx.try_recv().is_ok() {}
            }
        }
    }
}

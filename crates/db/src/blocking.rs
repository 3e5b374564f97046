//! Blocking pops (BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BLMPOP, BZPOPMIN/MAX, BZMPOP).
//!
//! A blocked client waits on this member for applied writes; whenever a write has been
//! applied and one of its keys holds something, it proposes the command's one-shot form
//! through the Raft log like any write (forwarded to the leader from a follower). The log
//! decides who gets an element, so a pop is never served twice or lost, whichever member
//! the client is on and however leadership moves meanwhile. A client that disconnects
//! while waiting stops waiting and takes nothing.
//!
//! XREADGROUP … BLOCK waits the same way (it changes the group, so it goes through the log);
//! XREAD … BLOCK changes nothing and only re-reads this member's applied state.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::clients::Client;
use crate::data::{WAITER, WriteReq, block_sources, block_timeout};
use crate::node::{Node, now_ms};
use crate::resp::Reply;

static BLOCKED: AtomicUsize = AtomicUsize::new(0);

/// This member's waiting clients in arrival order: ticket (arrival time, ns; see `arrival`)
/// → (db, command, source keys).
/// A waiter leaves an element to an earlier waiter on the same key (Redis serves the
/// longest-waiting client first).
type Waiters = std::sync::Mutex<std::collections::BTreeMap<u64, (u32, String, Vec<Vec<u8>>)>>;

fn waiters() -> &'static Waiters {
    static W: std::sync::OnceLock<Waiters> = std::sync::OnceLock::new();
    W.get_or_init(Default::default)
}

/// Wakes the waiters when one leaves the line (what it was owed may now be theirs).
fn left() -> &'static tokio::sync::Notify {
    static L: std::sync::OnceLock<tokio::sync::Notify> = std::sync::OnceLock::new();
    L.get_or_init(Default::default)
}

/// The applied index each waiter last looked at the state (or finished an attempt) at.
fn seen() -> &'static std::sync::Mutex<std::collections::BTreeMap<u64, u64>> {
    static S: std::sync::OnceLock<std::sync::Mutex<std::collections::BTreeMap<u64, u64>>> =
        std::sync::OnceLock::new();
    S.get_or_init(Default::default)
}

/// Wakes writers that wait for waiters to look (see [`settle`]).
fn looked() -> &'static tokio::sync::Notify {
    static L: std::sync::OnceLock<tokio::sync::Notify> = std::sync::OnceLock::new();
    L.get_or_init(Default::default)
}

/// Waiters settling what they wrote: other settling waiters do not wait for them (two
/// waiters feeding each other would otherwise each wait for the other until the bound).
fn settling() -> &'static std::sync::Mutex<std::collections::BTreeSet<u64>> {
    static S: std::sync::OnceLock<std::sync::Mutex<std::collections::BTreeSet<u64>>> =
        std::sync::OnceLock::new();
    S.get_or_init(Default::default)
}

fn mark_seen(ticket: u64, index: u64) {
    seen()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(ticket, index);
    looked().notify_waiters();
}

/// Whether any client of this member waits in a blocking command (writers settle only then).
pub fn any_waiters() -> bool {
    !waiters()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_empty()
}

/// The (db, key) pairs commands may write, for [`settle`] (a stream-config prefix skipped).
pub fn written_keys<'a>(
    cmds: impl Iterator<Item = &'a (u32, Vec<Vec<u8>>)>,
) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    for (db, argv) in cmds {
        let argv = if argv.len() > 3 && argv[0] == crate::data::STREAM_CFG {
            &argv[3..]
        } else {
            &argv[..]
        };
        if argv.is_empty() {
            continue;
        }
        let name = String::from_utf8_lossy(&argv[0]).to_ascii_uppercase();
        out.extend(
            crate::data::keys_of(&name, argv)
                .into_iter()
                .map(|k| (*db, k.to_vec())),
        );
    }
    out
}

/// After a write to `keys` (db, key) has been applied: waits (at most 200 ms) until every
/// client of this member blocked on one of them has looked at the state as of now and, if
/// it could take something, has had its attempt applied. Redis serves blocked clients
/// before the writer's next command (an XREADGROUP woken by an XADD has created its
/// consumer when the XADD's reply arrives); this keeps that order for this member's
/// waiters, chains included (a waiter settles the keys it wrote before it answers).
pub async fn settle(node: &Node, keys: &[(u32, Vec<u8>)]) {
    settle_but(node, keys, None).await
}

/// [`settle`], not waiting for the waiter `me` (a waiter settling what it wrote: writers
/// that wait for it keep waiting until it has answered).
async fn settle_but(node: &Node, keys: &[(u32, Vec<u8>)], me: Option<u64>) {
    if let Some(t) = me {
        settling()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(t);
    }
    settle_inner(node, keys, me).await;
    if let Some(t) = me {
        settling()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&t);
    }
}

async fn settle_inner(node: &Node, keys: &[(u32, Vec<u8>)], me: Option<u64>) {
    if keys.is_empty()
        || waiters()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    {
        return;
    }
    let w = node
        .sm
        .read(|g| g.last_applied.map(|l| l.index).unwrap_or(0));
    let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
    loop {
        let notified = looked().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let gone = left().notified();
        tokio::pin!(gone);
        gone.as_mut().enable();
        let pending = {
            let ws = waiters().lock().unwrap_or_else(|p| p.into_inner());
            let sn = seen().lock().unwrap_or_else(|p| p.into_inner());
            let busy = settling().lock().unwrap_or_else(|p| p.into_inner());
            ws.iter().any(|(t, (db, _, wkeys))| {
                Some(*t) != me
                    && (me.is_none() || !busy.contains(t))
                    && sn.get(t).copied().unwrap_or(0) < w
                    && keys.iter().any(|(kdb, k)| kdb == db && wkeys.contains(k))
            })
        };
        if !pending {
            return;
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = &mut gone => {}
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// A place in the line of waiters, left when the command ends however it ends.
struct Ticket(u64);

impl Drop for Ticket {
    fn drop(&mut self) {
        waiters()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
        seen()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
        left().notify_waiters();
    }
}

/// Clients waiting in a blocking command now (INFO's `blocked_clients`).
pub fn blocked_clients() -> usize {
    BLOCKED.load(Ordering::Relaxed)
}

struct Blocked;

impl Blocked {
    fn new() -> Blocked {
        BLOCKED.fetch_add(1, Ordering::Relaxed);
        Blocked
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        BLOCKED.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a blocking command answers when its time runs out.
fn timed_out(name: &str) -> Reply {
    match name {
        "BRPOPLPUSH" | "BLMOVE" => Reply::Nil,
        _ => Reply::NilArray,
    }
}

/// What CLIENT UNBLOCK makes a blocking command answer.
fn unblocked(me: &Client, timeout: Reply) -> Reply {
    if me.unblock_with_error() {
        Reply::err("UNBLOCKED client unblocked via CLIENT UNBLOCK")
    } else {
        timeout
    }
}

fn nothing(r: &Reply) -> bool {
    matches!(r, Reply::Nil | Reply::NilArray)
}

/// Resolves when the peer has closed the connection (data it sends meanwhile waits in the
/// socket buffer, as Redis leaves a blocked client's next commands unread).
async fn closed(s: &TcpStream) {
    let mut b = [0u8; 1];
    loop {
        match s.peek(&mut b).await {
            Ok(0) | Err(_) => return,
            // Pipelined commands behind the blocking one: stop watching, keep waiting.
            Ok(_) => std::future::pending::<()>().await,
        }
    }
}

pub async fn serve(
    node: &Arc<Node>,
    db: u32,
    name: &str,
    argv: Vec<Vec<u8>>,
    stream: &TcpStream,
    me: &Client,
    arrived_ns: u64,
) -> Reply {
    let killed = &me.killed;
    let timeout = match block_timeout(name, &argv) {
        Ok(t) => t,
        Err(e) => return e,
    };
    let deadline = (timeout > 0.0)
        .then(|| tokio::time::Instant::now() + Duration::from_secs_f64(timeout.min(1e9)));
    let keys = block_sources(name, &argv);
    let _count = Blocked::new();
    let _flag = me.block();
    let ticket = {
        // The place in line is the arrival time (unique: a tie goes behind).
        let mut w = waiters().lock().unwrap_or_else(|p| p.into_inner());
        let mut t = arrived_ns;
        while w.contains_key(&t) {
            t += 1;
        }
        w.insert(t, (db, name.to_string(), keys.clone()));
        Ticket(t)
    };
    let mut first = true;
    loop {
        let applied = node.sm.applied.notified();
        tokio::pin!(applied);
        applied.as_mut().enable();
        let someone_left = left().notified();
        tokio::pin!(someone_left);
        someone_left.as_mut().enable();
        // Look at the local state first: propose only when there may be something to take.
        let now = now_ms();
        let (worth, earlier, blocks_now, at_index) = node.sm.read(|g| {
            let at_index = g.last_applied.map(|l| l.index).unwrap_or(0);
            let d = &g.tables.dbs[db as usize];
            let blocks_now = first && d.would_block(name, &argv, now);
            // The first attempt always goes (errors such as WRONGTYPE come back at
            // once), unless an earlier waiter is owed what is there.
            let mine = first || d.block_ready(name, &argv, &keys, now);
            let w = waiters().lock().unwrap_or_else(|p| p.into_inner());
            let mut owed = false;
            let mut earlier = Vec::new();
            for (wname, k) in w
                .range(..ticket.0)
                .filter(|(_, (wdb, _, _))| *wdb == db)
                .flat_map(|(_, (_, wname, wkeys))| wkeys.iter().map(move |k| (wname, k)))
                .filter(|(_, k)| keys.contains(k))
            {
                owed |= d.can_pop(wname, k, now);
                earlier.push((wname.clone(), k.clone()));
            }
            (mine && !owed, earlier, blocks_now, at_index)
        });
        if !worth {
            mark_seen(ticket.0, at_index);
        }
        if worth {
            // The first proposal runs the command as a client's command would (errors
            // such as WRONGTYPE come back at once); later ones are marked woken. Both carry
            // the earlier waiters on the same keys: the log, not this member's view,
            // decides whether one of them is owed what is there (see `Db::write_waiter`).
            let first_try = std::mem::replace(&mut first, false);
            let mut cmd = vec![
                WAITER.to_vec(),
                if first_try && !blocks_now {
                    b"0".to_vec()
                } else {
                    b"1".to_vec()
                },
                earlier.len().to_string().into_bytes(),
            ];
            for (wname, k) in earlier {
                cmd.push(wname.into_bytes());
                cmd.push(k);
            }
            cmd.extend(argv.iter().cloned());
            let req = WriteReq {
                rid: 0,
                now_ms: 0,
                watches: Vec::new(),
                cmds: vec![(db, cmd)],
                multi: false,
            };
            match node.write(req).await {
                Ok(r) if !nothing(&r) => {
                    // What this attempt wrote may serve further waiters (BLMOVE's
                    // destination): they go first, as in Redis.
                    let wrote: Vec<(u32, Vec<u8>)> = crate::data::keys_of(name, &argv)
                        .into_iter()
                        .map(|k| (db, k.to_vec()))
                        .collect();
                    settle_but(node, &wrote, Some(ticket.0)).await;
                    return r;
                }
                // Nothing taken: the next look (at once, the attempt's own entry has been
                // applied) records what this waiter has seen; the attempt itself may have
                // been ordered before a write in the same entry.
                Ok(_) => {}
                Err(e) => return Reply::Error(e),
            }
        }
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut applied => {}
            _ = &mut someone_left => {}
            // A write queued behind a leader change is not re-announced: look again now
            // and then in case a notification was missed.
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = sleep => return timed_out(name),
            _ = me.unblocked.notified() => return unblocked(me, timed_out(name)),
            _ = closed(stream) => return Reply::NilArray,
            _ = killed.notified() => {
                // Leave the permit for the connection loop, which closes the connection.
                killed.notify_one();
                return Reply::err("UNBLOCKED client killed while blocked");
            }
        }
    }
}

/// XREAD … BLOCK: `$` is resolved against the linearized state when the command arrives,
/// then the client waits for this member's applied writes and reads again (XREAD takes
/// nothing, so no proposal is needed; what it returns is committed). A key that turns into
/// another type keeps it waiting, as in Redis.
pub async fn serve_xread(
    node: &Arc<Node>,
    db: u32,
    argv: Vec<Vec<u8>>,
    stream: &TcpStream,
    me: &Client,
    readonly: bool,
) -> Reply {
    let killed = &me.killed;
    let timeout = match block_timeout("XREAD", &argv) {
        Ok(t) => t,
        Err(e) => return e,
    };
    if !readonly
        && !node.unsafe_local_reads
        && let Err(e) = node.linearize().await
    {
        return Reply::Error(e);
    }
    let dbi = db as usize;
    let now = now_ms();
    let argv = match node
        .sm
        .read(|g| g.tables.dbs[dbi].xread_resolve(&argv, now))
    {
        Ok(a) => a,
        Err(e) => return e,
    };
    let r = node.sm.read(|g| g.tables.dbs[dbi].xread(&argv, now, None));
    if !nothing(&r) {
        return r;
    }
    let deadline = (timeout > 0.0)
        .then(|| tokio::time::Instant::now() + Duration::from_secs_f64(timeout.min(1e9)));
    let _count = Blocked::new();
    let _flag = me.block();
    loop {
        let applied = node.sm.applied.notified();
        tokio::pin!(applied);
        applied.as_mut().enable();
        let r = node
            .sm
            .read(|g| g.tables.dbs[dbi].xread(&argv, now_ms(), Some(1000)));
        if !nothing(&r) && !r.is_error() {
            return r;
        }
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut applied => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = sleep => return Reply::NilArray,
            _ = me.unblocked.notified() => return unblocked(me, Reply::NilArray),
            _ = closed(stream) => return Reply::NilArray,
            _ = killed.notified() => {
                killed.notify_one();
                return Reply::err("UNBLOCKED client killed while blocked");
            }
        }
    }
}

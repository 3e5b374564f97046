//! SYNC and PSYNC: a stock Redis replica (or a migration tool that speaks the replication
//! protocol, or Redis's own test suite reading the stream) follows this member. It gets an
//! RDB of this member's applied state (`rdb`), then every write this member applies, in the
//! forms Redis itself propagates: a blocking pop as the pop it made, SPOP as SREM of what
//! it took, XADD * with the ID it made, relative expiries as absolute ones. The snapshot
//! and the start of the feed are taken under the state machine's lock, so nothing falls
//! between them.
//!
//! The leader's expiry sweep goes as DEL of the keys it dropped (as Redis propagates an
//! expiry). What a replica does not get: users, and a partial resync (every SYNC is a full
//! one). Scripts go as
//! the script, which the replica runs (Redis 7 sends their effects instead). A replica that
//! falls more than `BACKLOG` writes behind is disconnected, as Redis does when a replica's
//! output buffer outgrows its limit.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;

use crate::data::{STREAM_CFG, SWEEP, Tables, WAITER, WriteReq};
use crate::node::Node;
use crate::resp::Reply;

/// Writes a replica may be behind before it is cut off.
const BACKLOG: usize = 1 << 16;
/// How often an idle feed carries a PING (Redis's repl-ping-replica-period).
const PING_EVERY: Duration = Duration::from_secs(10);

/// One applied request's commands, each with its database.
type Batch = Arc<Vec<(u32, Vec<Vec<u8>>)>>;

fn sender() -> &'static broadcast::Sender<Batch> {
    static TX: OnceLock<broadcast::Sender<Batch>> = OnceLock::new();
    TX.get_or_init(|| broadcast::channel(BACKLOG).0)
}

/// Whether a replica follows this member (the state machine publishes only then).
pub fn listening() -> bool {
    sender().receiver_count() > 0
}

/// Called by the state machine, lock held, for each request it applied.
pub fn publish(tables: &Tables, req: &WriteReq, reply: &Reply) {
    let replies: Vec<&Reply> = match (req.multi, reply) {
        (true, Reply::Array(rs)) => rs.iter().collect(),
        // A transaction whose WATCH failed changed nothing.
        (true, _) => return,
        (false, r) => vec![r],
    };
    let batch: Vec<(u32, Vec<Vec<u8>>)> = req
        .cmds
        .iter()
        .zip(replies)
        .filter_map(|((db, argv), r)| Some((*db, propagated(tables, argv, r, req.now_ms)?)))
        .collect();
    if batch.is_empty() {
        return;
    }
    let batch = if req.multi && batch.len() > 1 {
        let db = batch[0].0;
        let mut all = vec![(db, vec![b"MULTI".to_vec()])];
        all.extend(batch);
        all.push((db, vec![b"EXEC".to_vec()]));
        all
    } else {
        batch
    };
    let _ = sender().send(Arc::new(batch));
}

/// The command a replica should run for `argv`, which was applied with reply `r`.
fn propagated(tables: &Tables, argv: &[Vec<u8>], r: &Reply, now: u64) -> Option<Vec<Vec<u8>>> {
    let head = argv.first()?;
    if head == SWEEP {
        // The leader's expiry sweep: the keys it dropped, deleted as Redis propagates an
        // expiry (else a replica keeps every expired key's memory).
        let Reply::Array(gone) = r else { return None };
        if gone.is_empty() {
            return None;
        }
        let mut out = vec![b"DEL".to_vec()];
        out.extend(gone.iter().filter_map(|k| match k {
            Reply::Bulk(k) => Some(k.clone()),
            _ => None,
        }));
        return Some(out);
    }
    if head == crate::acl::ACL_WRITE || head == crate::data::busy::SCRIPT_DECIDE {
        return None;
    }
    if head == crate::data::script::SCRIPT_OPTS {
        return propagated(tables, argv.get(2..)?, r, now);
    }
    if head == STREAM_CFG || head == crate::acl::AS_CALLER {
        return propagated(tables, argv.get(3..)?, r, now);
    }
    if head == WAITER {
        let earlier: usize = std::str::from_utf8(argv.get(2)?).ok()?.parse().ok()?;
        return propagated(tables, argv.get(3 + 2 * earlier..)?, r, now);
    }
    let name = String::from_utf8_lossy(head).to_ascii_uppercase();
    // A script may have written before it failed: the replica runs it as well.
    let script = matches!(name.as_str(), "EVAL" | "EVALSHA" | "FCALL");
    if r.is_error() && !script {
        return None;
    }
    let cmd = |parts: &[&[u8]]| Some(parts.iter().map(|p| p.to_vec()).collect());
    let at = |ms: i64| (now as i64).saturating_add(ms).to_string().into_bytes();
    let num = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<i64>().ok();
    match name.as_str() {
        "EVALSHA" => {
            let sha = String::from_utf8_lossy(argv.get(1)?).to_ascii_lowercase();
            let body = tables.scripts.0.get(&sha)?.clone();
            let mut out = vec![b"EVAL".to_vec(), body];
            out.extend_from_slice(&argv[2..]);
            Some(out)
        }
        "BLPOP" | "BRPOP" | "BZPOPMIN" | "BZPOPMAX" => {
            let Reply::Array(kv) = r else { return None };
            let Some(Reply::Bulk(key)) = kv.first() else {
                return None;
            };
            cmd(&[&name.as_bytes()[1..], key])
        }
        "BRPOPLPUSH" => cmd(&[b"RPOPLPUSH", argv.get(1)?, argv.get(2)?]).filter(|_| !none(r)),
        "BLMOVE" => cmd(&[
            b"LMOVE",
            argv.get(1)?,
            argv.get(2)?,
            argv.get(3)?,
            argv.get(4)?,
        ])
        .filter(|_| !none(r)),
        "BLMPOP" | "BZMPOP" | "LMPOP" | "ZMPOP" => {
            let Reply::Array(kv) = r else { return None };
            let (Some(Reply::Bulk(key)), Some(Reply::Array(got))) = (kv.first(), kv.get(1)) else {
                return None;
            };
            let first_key = if name.starts_with('B') { 3 } else { 2 };
            let keys = num(argv.get(first_key - 1)?)? as usize;
            let side = argv.get(first_key + keys)?;
            let plain = name.trim_start_matches('B');
            cmd(&[
                plain.as_bytes(),
                b"1",
                key,
                side,
                b"COUNT",
                got.len().to_string().as_bytes(),
            ])
        }
        "SPOP" => {
            let taken: Vec<&Vec<u8>> = match r {
                Reply::Bulk(m) => vec![m],
                Reply::Array(ms) => ms
                    .iter()
                    .filter_map(|m| match m {
                        Reply::Bulk(m) => Some(m),
                        _ => None,
                    })
                    .collect(),
                _ => return None,
            };
            if taken.is_empty() {
                return None;
            }
            let mut out = vec![b"SREM".to_vec(), argv.get(1)?.clone()];
            out.extend(taken.into_iter().cloned());
            Some(out)
        }
        "XADD" => {
            let Reply::Bulk(id) = r else { return None };
            let mut out = argv.to_vec();
            if let Some(pos) = xadd_id_position(argv) {
                out[pos] = id.clone();
            }
            Some(out)
        }
        "EXPIRE" | "PEXPIRE" => {
            let unit = if name == "EXPIRE" { 1000 } else { 1 };
            let mut out = vec![
                b"PEXPIREAT".to_vec(),
                argv.get(1)?.clone(),
                at(num(argv.get(2)?)?.saturating_mul(unit)),
            ];
            out.extend_from_slice(&argv[3..]);
            Some(out)
        }
        "SETEX" | "PSETEX" => {
            let unit = if name == "SETEX" { 1000 } else { 1 };
            cmd(&[
                b"SET",
                argv.get(1)?,
                argv.get(3)?,
                b"PXAT",
                &at(num(argv.get(2)?)?.saturating_mul(unit)),
            ])
        }
        "SET" | "GETEX" => {
            let mut out = argv.to_vec();
            let mut i = if name == "SET" { 3 } else { 2 };
            while i + 1 < out.len() {
                let unit = match String::from_utf8_lossy(&out[i])
                    .to_ascii_uppercase()
                    .as_str()
                {
                    "EX" => 1000,
                    "PX" => 1,
                    _ => {
                        i += 1;
                        continue;
                    }
                };
                let ms = num(&out[i + 1])?.saturating_mul(unit);
                out[i] = b"PXAT".to_vec();
                out[i + 1] = at(ms);
                i += 2;
            }
            Some(out)
        }
        "XREADGROUP" => {
            let mut out = Vec::with_capacity(argv.len());
            let mut i = 0;
            while i < argv.len() {
                if argv[i].eq_ignore_ascii_case(b"BLOCK") && i + 1 < argv.len() {
                    i += 2;
                    continue;
                }
                out.push(argv[i].clone());
                i += 1;
            }
            Some(out)
        }
        _ => Some(argv.to_vec()),
    }
}

fn none(r: &Reply) -> bool {
    matches!(r, Reply::Nil | Reply::NilArray)
}

/// Where XADD's ID is: after the key, NOMKSTREAM and a trimming clause.
fn xadd_id_position(argv: &[Vec<u8>]) -> Option<usize> {
    let mut i = 2;
    while i < argv.len() {
        let a = String::from_utf8_lossy(&argv[i]).to_ascii_uppercase();
        match a.as_str() {
            "NOMKSTREAM" => i += 1,
            "MAXLEN" | "MINID" => {
                i += 1;
                if matches!(argv.get(i).map(|v| v.as_slice()), Some(b"=") | Some(b"~")) {
                    i += 1;
                }
                i += 1;
            }
            "LIMIT" => i += 2,
            _ => return Some(i),
        }
    }
    None
}

fn encode(argv: &[Vec<u8>], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", argv.len()).as_bytes());
    for a in argv {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Serves SYNC or PSYNC on `s` until the replica goes (or falls too far behind): the RDB,
/// then the feed; `None` then, and the connection is done. `pending` is what the connection
/// had still to write before. An error before anything was sent if this member cannot feed
/// a replica.
pub async fn serve(
    node: &Arc<Node>,
    s: &mut TcpStream,
    psync: bool,
    pending: &[u8],
) -> Option<Reply> {
    if node.is_witness() {
        return Some(Reply::err(
            "ERR this member is a witness: it holds no data to replicate",
        ));
    }
    let now = crate::node::now_ms();
    let (rdb, mut rx) = node.sm.read(|g| {
        // Under the lock: the feed starts exactly where the snapshot ends.
        let rx = sender().subscribe();
        (crate::rdb::write(&g.tables, now), rx)
    });
    let rdb = match rdb {
        Ok(r) => r,
        Err(e) => {
            return Some(Reply::err(format!(
                "{e}: a replica cannot be fed from this member"
            )));
        }
    };
    tracing::info!(peer = ?s.peer_addr().ok(), bytes = rdb.len(), "a Redis replica attached (full sync)");
    let mut out = pending.to_vec();
    if psync {
        let id = replication_id(now);
        out.extend_from_slice(format!("+FULLRESYNC {id} 0\r\n").as_bytes());
    }
    out.extend_from_slice(format!("${}\r\n", rdb.len()).as_bytes());
    out.extend_from_slice(&rdb);
    if s.write_all(&out).await.is_err() {
        return None;
    }
    let mut db = None;
    let mut sink = [0u8; 4096];
    loop {
        out.clear();
        tokio::select! {
            got = rx.recv() => match got {
                Ok(batch) => {
                    for (d, argv) in batch.iter() {
                        if db != Some(*d) {
                            encode(&[b"SELECT".to_vec(), d.to_string().into_bytes()], &mut out);
                            db = Some(*d);
                        }
                        encode(argv, &mut out);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(behind = n, "a Redis replica fell too far behind: disconnected");
                    return None;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            },
            // The replica's REPLCONF ACKs: read and let go; end when it closes.
            n = s.read(&mut sink) => match n {
                Ok(0) | Err(_) => return None,
                Ok(_) => continue,
            },
            _ = tokio::time::sleep(PING_EVERY) => encode(&[b"PING".to_vec()], &mut out),
        }
        if s.write_all(&out).await.is_err() {
            return None;
        }
    }
}

/// A fresh 40-hex replication ID (every SYNC is a full one, so it only has to differ).
fn replication_id(now: u64) -> String {
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(now.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes(),
    );
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(parts: &[&str]) -> Vec<Vec<u8>> {
        parts.iter().map(|p| p.as_bytes().to_vec()).collect()
    }

    fn form(argv: &[&str], r: Reply) -> Option<Vec<Vec<u8>>> {
        propagated(&Tables::default(), &v(argv), &r, 1_000)
    }

    #[test]
    fn blocking_pops_go_as_the_pop_they_made() {
        let kv = Reply::Array(vec![Reply::bulk("b"), Reply::bulk("x")]);
        assert_eq!(form(&["BLPOP", "a", "b", "0"], kv), Some(v(&["LPOP", "b"])));
        let got = Reply::Array(vec![
            Reply::bulk("k"),
            Reply::Array(vec![Reply::bulk("1"), Reply::bulk("2")]),
        ]);
        assert_eq!(
            form(&["BLMPOP", "0", "2", "j", "k", "RIGHT", "COUNT", "5"], got),
            Some(v(&["LMPOP", "1", "k", "RIGHT", "COUNT", "2"]))
        );
        assert_eq!(form(&["BRPOPLPUSH", "a", "b", "0"], Reply::Nil), None);
    }

    #[test]
    fn times_become_absolute_and_randomness_concrete() {
        assert_eq!(
            form(&["EXPIRE", "k", "10", "NX"], Reply::Int(1)),
            Some(v(&["PEXPIREAT", "k", "11000", "NX"]))
        );
        assert_eq!(
            form(&["SET", "k", "v", "EX", "2", "GET"], Reply::Nil),
            Some(v(&["SET", "k", "v", "PXAT", "3000", "GET"]))
        );
        assert_eq!(
            form(
                &["SPOP", "s", "2"],
                Reply::Array(vec![Reply::bulk("a"), Reply::bulk("b")])
            ),
            Some(v(&["SREM", "s", "a", "b"]))
        );
        assert_eq!(
            form(
                &["XADD", "s", "MAXLEN", "~", "10", "*", "f", "v"],
                Reply::bulk("5-0")
            ),
            Some(v(&["XADD", "s", "MAXLEN", "~", "10", "5-0", "f", "v"]))
        );
        assert_eq!(form(&["SET", "k"], Reply::err("ERR wrong number")), None);
    }
}

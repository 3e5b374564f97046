//! Pub/sub: channels and patterns of this member's clients; a PUBLISH on any member reaches
//! subscribers on every member (fanned out over the peer connections, not through the log:
//! messages are fire-and-forget, as in Redis).
//!
//! Each subscribed connection has a bounded queue of pending messages; a subscriber that does
//! not read fills it and is disconnected (Redis's client-output-buffer-limit for pubsub) rather
//! than growing this process without bound.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc;

use crate::data::glob_match;
use crate::resp::Reply;

/// Messages a subscriber may have waiting before it is disconnected.
pub const QUEUE: usize = 65536;
/// Bytes of messages a subscriber may have waiting (Redis's pubsub output buffer hard limit).
pub const QUEUE_BYTES: usize = 32 * 1024 * 1024;

/// A subscriber's inbox and the way to cut it off when it overflows.
#[derive(Clone)]
pub struct Inbox {
    pub tx: mpsc::Sender<Reply>,
    pub kill: Arc<tokio::sync::Notify>,
    /// Bytes queued and not yet written to the socket (the connection subtracts).
    pub queued: Arc<std::sync::atomic::AtomicUsize>,
}

/// Rough size of a message on the wire.
pub fn size(msg: &Reply) -> usize {
    match msg {
        Reply::Push(parts) => parts
            .iter()
            .map(|p| match p {
                Reply::Bulk(b) => b.len() + 16,
                _ => 16,
            })
            .sum(),
        _ => 16,
    }
}

#[derive(Default)]
struct Subs {
    channels: BTreeMap<Vec<u8>, BTreeMap<u64, Inbox>>,
    patterns: BTreeMap<Vec<u8>, BTreeMap<u64, Inbox>>,
}

#[derive(Default)]
pub struct Hub {
    subs: Mutex<Subs>,
}

fn deliver(inbox: &Inbox, msg: Reply) -> bool {
    let n = size(&msg);
    let before = inbox
        .queued
        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    if before + n > QUEUE_BYTES {
        inbox.kill.notify_one();
        return false;
    }
    match inbox.tx.try_send(msg) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            // The subscriber does not read: disconnect it.
            inbox.kill.notify_one();
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

impl Hub {
    pub fn global() -> &'static Hub {
        static H: OnceLock<Hub> = OnceLock::new();
        H.get_or_init(Hub::default)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Subs> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(&self, pattern: bool, name: &[u8], client: u64, inbox: &Inbox) {
        let mut s = self.lock();
        let map = if pattern {
            &mut s.patterns
        } else {
            &mut s.channels
        };
        map.entry(name.to_vec())
            .or_default()
            .insert(client, inbox.clone());
    }

    pub fn unsubscribe(&self, pattern: bool, name: &[u8], client: u64) {
        let mut s = self.lock();
        let map = if pattern {
            &mut s.patterns
        } else {
            &mut s.channels
        };
        if let Some(m) = map.get_mut(name) {
            m.remove(&client);
            if m.is_empty() {
                map.remove(name);
            }
        }
    }

    /// Delivers to this member's subscribers; returns how many received it.
    pub fn publish_local(&self, channel: &[u8], message: &[u8]) -> u64 {
        let s = self.lock();
        let mut n = 0;
        if let Some(subs) = s.channels.get(channel) {
            for inbox in subs.values() {
                let msg = Reply::Push(vec![
                    Reply::bulk("message"),
                    Reply::bulk(channel),
                    Reply::bulk(message),
                ]);
                n += deliver(inbox, msg) as u64;
            }
        }
        for (pat, subs) in &s.patterns {
            if !glob_match(pat, channel) {
                continue;
            }
            for inbox in subs.values() {
                let msg = Reply::Push(vec![
                    Reply::bulk("pmessage"),
                    Reply::bulk(pat),
                    Reply::bulk(channel),
                    Reply::bulk(message),
                ]);
                n += deliver(inbox, msg) as u64;
            }
        }
        n
    }

    /// PUBSUB CHANNELS / NUMSUB / NUMPAT (this member's subscribers).
    pub fn introspect(&self, argv: &[Vec<u8>]) -> Reply {
        let s = self.lock();
        let sub = String::from_utf8_lossy(argv.get(1).map(|a| a.as_slice()).unwrap_or(b""))
            .to_ascii_uppercase();
        match sub.as_str() {
            "CHANNELS" if argv.len() <= 3 => Reply::Array(
                s.channels
                    .keys()
                    .filter(|c| argv.get(2).is_none_or(|p| glob_match(p, c)))
                    .map(Reply::bulk)
                    .collect(),
            ),
            "NUMSUB" => Reply::Array(
                argv[2..]
                    .iter()
                    .flat_map(|c| {
                        let n = s.channels.get(c).map(|m| m.len()).unwrap_or(0);
                        [Reply::bulk(c), Reply::Int(n as i64)]
                    })
                    .collect(),
            ),
            "NUMPAT" if argv.len() == 2 => Reply::Int(s.patterns.len() as i64),
            _ => Reply::err(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try PUBSUB HELP.",
                sub.to_ascii_lowercase()
            )),
        }
    }
}

/// A connection's subscriptions.
#[derive(Default)]
pub struct Subscriptions {
    pub channels: BTreeSet<Vec<u8>>,
    pub patterns: BTreeSet<Vec<u8>>,
}

impl Subscriptions {
    pub fn count(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

    /// (P)SUBSCRIBE / (P)UNSUBSCRIBE: one confirmation per name, as Redis sends them.
    pub fn change(
        &mut self,
        client: u64,
        inbox: &Inbox,
        cmd: &str,
        names: &[Vec<u8>],
    ) -> Vec<Reply> {
        let hub = Hub::global();
        let pattern = cmd.starts_with('P');
        let kind = cmd.to_ascii_lowercase();
        let mut out = Vec::new();
        let subscribing = !cmd.contains("UNSUB");
        let names: Vec<Vec<u8>> = if !subscribing && names.is_empty() {
            let set = if pattern {
                &self.patterns
            } else {
                &self.channels
            };
            set.iter().cloned().collect()
        } else {
            names.to_vec()
        };
        for n in &names {
            let set = if pattern {
                &mut self.patterns
            } else {
                &mut self.channels
            };
            if subscribing {
                set.insert(n.clone());
                hub.subscribe(pattern, n, client, inbox);
            } else {
                set.remove(n);
                hub.unsubscribe(pattern, n, client);
            }
            out.push(Reply::Push(vec![
                Reply::bulk(&kind),
                Reply::bulk(n),
                Reply::Int(self.count() as i64),
            ]));
        }
        if names.is_empty() {
            out.push(Reply::Push(vec![
                Reply::bulk(&kind),
                Reply::Nil,
                Reply::Int(self.count() as i64),
            ]));
        }
        out
    }

    /// Forgets every subscription (connection closed or RESET).
    pub fn clear(&mut self, client: u64) {
        let hub = Hub::global();
        for c in std::mem::take(&mut self.channels) {
            hub.unsubscribe(false, &c, client);
        }
        for p in std::mem::take(&mut self.patterns) {
            hub.unsubscribe(true, &p, client);
        }
    }
}

//! The connected clients, as CLIENT LIST / INFO / KILL and INFO's `connected_clients` see
//! them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::net::TcpStream;

pub struct Client {
    pub id: u64,
    addr: Option<SocketAddr>,
    laddr: Option<SocketAddr>,
    created: Instant,
    state: Mutex<State>,
    /// Notified to close the connection (CLIENT KILL).
    pub killed: Arc<tokio::sync::Notify>,
    /// Waiting in a blocking command (CLIENT LIST's `b` flag; CLIENT UNBLOCK's target).
    blocked: std::sync::atomic::AtomicBool,
    /// Notified by CLIENT UNBLOCK, with `unblock_error` saying how the command ends.
    pub unblocked: tokio::sync::Notify,
    unblock_error: std::sync::atomic::AtomicBool,
}

/// Marks a client blocked while it lives (a blocking command's wait).
pub struct BlockedFlag<'a>(&'a Client);

impl Drop for BlockedFlag<'_> {
    fn drop(&mut self) {
        self.0
            .blocked
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Default)]
struct State {
    name: Option<String>,
    db: u32,
    cmd: String,
}

impl Client {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_name(&self, name: Option<String>) {
        self.lock().name = name;
    }

    pub fn set_cmd(&self, cmd: &[u8], db: u32) {
        let mut s = self.lock();
        s.cmd = String::from_utf8_lossy(cmd).to_ascii_lowercase();
        s.db = db;
    }

    pub fn block(&self) -> BlockedFlag<'_> {
        self.blocked
            .store(true, std::sync::atomic::Ordering::Relaxed);
        BlockedFlag(self)
    }

    /// After `unblocked` fired: whether CLIENT UNBLOCK asked for an error (else a timeout).
    pub fn unblock_with_error(&self) -> bool {
        self.unblock_error
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn line(&self) -> String {
        let flags = if self.blocked.load(std::sync::atomic::Ordering::Relaxed) {
            "b"
        } else {
            "N"
        };
        let s = self.lock();
        format!(
            "id={} addr={} laddr={} fd=0 name={} age={} idle=0 flags={} db={} sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user=default redir=-1 resp=2",
            self.id,
            self.addr.map(|a| a.to_string()).unwrap_or_default(),
            self.laddr.map(|a| a.to_string()).unwrap_or_default(),
            s.name.as_deref().unwrap_or(""),
            self.created.elapsed().as_secs(),
            flags,
            s.db,
            if s.cmd.is_empty() { "NULL" } else { &s.cmd },
        )
    }
}

#[derive(Default)]
pub struct Registry {
    clients: Mutex<BTreeMap<u64, Arc<Client>>>,
}

/// Removes a connection from the registry when its handler ends, however it ends.
pub struct Unregister(pub u64);

impl Drop for Unregister {
    fn drop(&mut self) {
        Registry::global().lock().remove(&self.0);
    }
}

impl Registry {
    pub fn global() -> &'static Registry {
        static R: OnceLock<Registry> = OnceLock::new();
        R.get_or_init(Registry::default)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Client>>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, id: u64, s: &TcpStream) -> Arc<Client> {
        let c = Arc::new(Client {
            id,
            addr: s.peer_addr().ok(),
            laddr: s.local_addr().ok(),
            created: Instant::now(),
            state: Mutex::new(State::default()),
            killed: Arc::new(tokio::sync::Notify::new()),
            blocked: Default::default(),
            unblocked: Default::default(),
            unblock_error: Default::default(),
        });
        self.lock().insert(id, c.clone());
        c
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    pub fn describe(&self, id: u64) -> String {
        self.lock().get(&id).map(|c| c.line()).unwrap_or_default()
    }

    /// CLIENT LIST [TYPE normal] [ID id…].
    pub fn list(&self, args: &[Vec<u8>]) -> Result<String, String> {
        let mut ids: Option<Vec<u64>> = None;
        let mut i = 0;
        while i < args.len() {
            match String::from_utf8_lossy(&args[i])
                .to_ascii_uppercase()
                .as_str()
            {
                "TYPE" if i + 1 < args.len() => i += 2,
                "ID" if i + 1 < args.len() => {
                    let parsed: Option<Vec<u64>> = args[i + 1..]
                        .iter()
                        .map(|a| std::str::from_utf8(a).ok()?.parse().ok())
                        .collect();
                    ids = Some(parsed.ok_or("ERR Invalid client ID")?);
                    i = args.len();
                }
                _ => return Err("ERR syntax error".into()),
            }
        }
        let clients = self.lock();
        Ok(clients
            .values()
            .filter(|c| ids.as_ref().is_none_or(|ids| ids.contains(&c.id)))
            .map(|c| c.line() + "\n")
            .collect())
    }

    /// CLIENT KILL addr (old form: OK or an error) or KILL ID id / ADDR addr … (a count).
    pub fn kill(&self, args: &[Vec<u8>]) -> Result<Option<usize>, String> {
        let text = |b: &Vec<u8>| String::from_utf8_lossy(b).into_owned();
        if args.len() == 1 {
            let addr = text(&args[0]);
            let n = self.kill_where(|c| c.addr.is_some_and(|a| a.to_string() == addr));
            return if n == 0 {
                Err("ERR No such client".into())
            } else {
                Ok(None)
            };
        }
        if args.is_empty() || !args.len().is_multiple_of(2) {
            return Err("ERR syntax error".into());
        }
        let mut id = None;
        let mut addr = None;
        for kv in args.chunks(2) {
            match text(&kv[0]).to_ascii_uppercase().as_str() {
                "ID" => {
                    id = Some(
                        text(&kv[1])
                            .parse::<u64>()
                            .map_err(|_| "ERR client-id should be greater than 0")?,
                    )
                }
                "ADDR" => addr = Some(text(&kv[1])),
                "SKIPME" | "TYPE" | "USER" | "LADDR" | "MAXAGE" => {}
                _ => return Err("ERR syntax error".into()),
            }
        }
        Ok(Some(self.kill_where(|c| {
            id.is_none_or(|i| c.id == i)
                && addr
                    .as_ref()
                    .is_none_or(|a| c.addr.is_some_and(|x| x.to_string() == *a))
        })))
    }

    /// CLIENT UNBLOCK id [TIMEOUT|ERROR]: 1 if the client was blocked and now is not.
    pub fn unblock(&self, args: &[Vec<u8>]) -> Result<bool, String> {
        let id = std::str::from_utf8(&args[0])
            .ok()
            .and_then(|a| a.parse::<u64>().ok())
            .ok_or("ERR value is not an integer or out of range")?;
        let error = match args
            .get(1)
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
        {
            None => false,
            Some(m) if m == "TIMEOUT" => false,
            Some(m) if m == "ERROR" => true,
            Some(_) => return Err("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR".into()),
        };
        let clients = self.lock();
        let Some(c) = clients.get(&id) else {
            return Ok(false);
        };
        if !c.blocked.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return Ok(false);
        }
        c.unblock_error
            .store(error, std::sync::atomic::Ordering::Relaxed);
        c.unblocked.notify_one();
        Ok(true)
    }

    fn kill_where(&self, f: impl Fn(&Client) -> bool) -> usize {
        let clients = self.lock();
        let mut n = 0;
        for c in clients.values().filter(|c| f(c)) {
            c.killed.notify_one();
            n += 1;
        }
        n
    }
}

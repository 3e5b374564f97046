//! The Redis-protocol server of a data member.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::acl::{Directory, Perms};
use crate::clients::{Client, Registry};
use crate::data::{
    Class, NUM_DBS, STREAM_CFG, Watch, WriteReq, arity_err, blocks, check_arity, classify,
};
use crate::node::{Node, now_ms};
use crate::resp::{ParseError, Reply, parse_command, pending_limit};

static CLIENT_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

struct Conn {
    id: u64,
    /// This connection as CLIENT LIST/KILL see it.
    me: Arc<Client>,
    proto: u8,
    db: u32,
    authed: bool,
    /// The user this connection runs as, and the ACL generation it was read at.
    user: Arc<Perms>,
    user_gen: u64,
    /// The configured users (the base; replicated ones are in the state machine).
    dir: Arc<Directory>,
    readonly: bool,
    name: Option<String>,
    multi: Option<Vec<(u32, Vec<Vec<u8>>)>>,
    multi_dirty: bool,
    /// Server commands queued in MULTI (DEBUG, PING, CONFIG …): they touch no data, so they
    /// run when EXEC has written the rest; (place in the reply, command).
    multi_local: Vec<(usize, Vec<Vec<u8>>)>,
    watches: Vec<Watch>,
    subs: crate::pubsub::Subscriptions,
    /// Set once the connection first subscribes: where published messages arrive.
    inbox: Option<crate::pubsub::Inbox>,
}

pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    // The config was validated at start; an invalid one leaves only a disabled default.
    let users = crate::acl::configured(node.cfg.password.as_deref(), &node.cfg.users)
        .unwrap_or_else(|_| vec![crate::acl::User::new("default")]);
    let dir = Arc::new(Directory::new(users));
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let node = node.clone();
                let dir = dir.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle_conn(s, node, dir).await {
                        tracing::debug!("client connection: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle_conn(s: TcpStream, node: Arc<Node>, dir: Arc<Directory>) -> std::io::Result<()> {
    let mut subs_of = (0, crate::pubsub::Subscriptions::default());
    let r = serve_conn(s, node, dir, &mut subs_of).await;
    // However the connection ended, its subscriptions go.
    subs_of.1.clear(subs_of.0);
    r
}

async fn serve_conn(
    mut s: TcpStream,
    node: Arc<Node>,
    dir: Arc<Directory>,
    subs_out: &mut (u64, crate::pubsub::Subscriptions),
) -> std::io::Result<()> {
    let _ = s.set_nodelay(true);
    let id = CLIENT_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let me = Registry::global().register(id, &s);
    let _unregister = crate::clients::Unregister(id);
    // A connection starts as the default user, authenticated if it needs no password.
    let user = default_user(&dir);
    let mut c = Conn {
        id,
        me,
        proto: 2,
        db: 0,
        authed: user.user.enabled && user.user.nopass,
        user,
        user_gen: crate::acl::generation(),
        dir,
        readonly: false,
        name: None,
        multi: None,
        multi_dirty: false,
        multi_local: Vec::new(),
        watches: Vec::new(),
        subs: Default::default(),
        inbox: None,
    };
    let r = conn_loop(&mut s, &node, &mut c).await;
    *subs_out = (c.id, std::mem::take(&mut c.subs));
    r
}

async fn next_message(rx: &mut Option<tokio::sync::mpsc::Receiver<Reply>>) -> Option<Reply> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn conn_loop(s: &mut TcpStream, node: &Arc<Node>, c: &mut Conn) -> std::io::Result<()> {
    let node = node.clone();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(16 * 1024);
    let killed = c.me.killed.clone();
    // When the commands in `buf` arrived; none once a blocking command has waited (the
    // commands behind it count as arriving when they are served, as in Redis).
    let mut arrived: Option<u64>;
    let mut rx: Option<tokio::sync::mpsc::Receiver<Reply>> = None;
    let mut reader = crate::arrival::StampedReader::new(s);
    loop {
        let n = tokio::select! {
            n = reader.read(s, &mut buf) => {
                let (n, at) = n?;
                arrived = Some(at);
                n
            }
            Some(msg) = next_message(&mut rx) => {
                let mut taken = crate::pubsub::size(&msg);
                msg.encode(c.proto, &mut out);
                if let Some(r) = rx.as_mut() {
                    while let Ok(m) = r.try_recv() {
                        taken += crate::pubsub::size(&m);
                        m.encode(c.proto, &mut out);
                    }
                }
                // A subscriber that stops reading blocks this write; its queue then fills
                // and the publisher's kill ends the connection here.
                tokio::select! {
                    r = s.write_all(&out) => r?,
                    _ = killed.notified() => return Ok(()),
                }
                if let Some(i) = &c.inbox {
                    i.queued.fetch_sub(taken, std::sync::atomic::Ordering::Relaxed);
                }
                out.clear();
                continue;
            }
            _ = killed.notified() => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let mut cmds = Vec::new();
        let mut proto_err = None;
        loop {
            match parse_command(&mut buf) {
                Ok(Some(argv)) if argv.is_empty() => continue,
                Ok(Some(argv)) => cmds.push(argv),
                Ok(None) => break,
                Err(ParseError::Protocol(msg)) => {
                    proto_err = Some(msg);
                    break;
                }
            }
        }
        let mut cmds = cmds.into_iter().peekable();
        while let Some(argv) = cmds.next() {
            if c.user_gen != crate::acl::generation() && !refresh_user(c, &node) {
                // Its user was deleted: Redis closes such connections.
                s.write_all(&out).await?;
                return Ok(());
            }
            if crate::data::busy::running().is_some()
                && let Some(e) = busy(c, &node, &argv).await
            {
                e.encode(c.proto, &mut out);
                continue;
            }
            if pipelinable(c, &node, &argv) {
                // A run of plain writes: queue them all, then collect the replies in order.
                let mut run = vec![argv];
                while let Some(next) = cmds.peek() {
                    if !pipelinable(c, &node, next) {
                        break;
                    }
                    if let Some(next) = cmds.next() {
                        run.push(next);
                    }
                }
                let reqs: Vec<WriteReq> = run
                    .into_iter()
                    .map(|argv| {
                        let name = upper(&argv[0]);
                        let argv = script_opts(&node, &name, argv).unwrap_or_else(|e| e.1);
                        let argv = as_caller(c, &name, argv);
                        let mut req = WriteReq {
                            rid: 0,
                            now_ms: 0,
                            watches: Vec::new(),
                            cmds: vec![(c.db, stream_cfg(&node, argv))],
                            multi: false,
                        };
                        node.stamp(&mut req);
                        req
                    })
                    .collect();
                let keys = if crate::blocking::any_waiters() {
                    crate::blocking::written_keys(reqs.iter().flat_map(|r| r.cmds.iter()))
                } else {
                    Vec::new()
                };
                for r in node.write_many(reqs).await {
                    r.unwrap_or_else(Reply::Error).encode(c.proto, &mut out);
                }
                crate::blocking::settle(&node, &keys).await;
                continue;
            }
            let quit = argv[0].eq_ignore_ascii_case(b"QUIT");
            c.me.set_cmd(&argv[0], c.db);
            let name = upper(&argv[0]);
            if c.authed
                && let Some(e) = crate::acl::check(&c.user, &name, &argv)
            {
                if c.multi.is_some() {
                    c.multi_dirty = true;
                }
                e.encode(c.proto, &mut out);
                continue;
            }
            if matches!(
                name.as_str(),
                "SUBSCRIBE" | "PSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE"
            ) && c.authed
                && c.multi.is_none()
            {
                if name.ends_with("SUBSCRIBE") && !name.contains("UNSUB") && argv.len() < 2 {
                    arity_err(&name).encode(c.proto, &mut out);
                    continue;
                }
                let inbox = match &c.inbox {
                    Some(i) => i.clone(),
                    None => {
                        let (tx, r) = tokio::sync::mpsc::channel(crate::pubsub::QUEUE);
                        rx = Some(r);
                        let i = crate::pubsub::Inbox {
                            tx,
                            kill: c.me.killed.clone(),
                            queued: Default::default(),
                        };
                        c.inbox = Some(i.clone());
                        i
                    }
                };
                for r in c.subs.change(c.id, &inbox, &name, &argv[1..]) {
                    r.encode(c.proto, &mut out);
                }
                continue;
            }
            if matches!(name.as_str(), "SYNC" | "PSYNC")
                && c.authed
                && c.multi.is_none()
                && check_arity(&name, argv.len())
            {
                // The connection becomes the replica's feed; `out` goes first.
                match crate::feed::serve(&node, s, name == "PSYNC", &out).await {
                    Some(refused) => {
                        refused.encode(c.proto, &mut out);
                        continue;
                    }
                    None => return Ok(()),
                }
            }
            let r = if blocks(&name, &argv)
                && c.multi.is_none()
                && c.authed
                && !node.is_witness()
                && check_arity(&name, argv.len())
            {
                if name == "XREAD" {
                    crate::blocking::serve_xread(&node, c.db, argv, s, &c.me, c.readonly).await
                } else {
                    let at = arrived.take().unwrap_or_else(crate::arrival::now_ns);
                    crate::blocking::serve(&node, c.db, &name, argv, s, &c.me, at).await
                }
            } else {
                command(c, &node, argv).await
            };
            r.encode(c.proto, &mut out);
            if quit {
                s.write_all(&out).await?;
                return Ok(());
            }
        }
        if let Some(msg) = proto_err {
            Reply::err(format!("ERR Protocol error: {msg}")).encode(c.proto, &mut out);
            s.write_all(&out).await?;
            return Ok(());
        }
        if buf.len() > pending_limit() {
            Reply::err("ERR Protocol error: request too large").encode(c.proto, &mut out);
            s.write_all(&out).await?;
            return Ok(());
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
    }
}

/// A write that may join a pipelined run: plain (not in MULTI), known, well-formed.
fn pipelinable(c: &Conn, node: &Node, argv: &[Vec<u8>]) -> bool {
    // Over maxmemory: writes are checked one by one (`data_cmd`).
    if !c.authed || c.multi.is_some() || node.is_witness() || node.settings.maxmemory() > 0 {
        return false;
    }
    let name = upper(&argv[0]);
    matches!(classify(&name), Some((Class::Write, _)))
        && crate::acl::check(&c.user, &name, argv).is_none()
        && !blocks(&name, argv)
        && !matches!(name.as_str(), "SCRIPT" | "FUNCTION" | "FCALL" | "FCALL_RO")
        && check_arity(&name, argv.len())
}

fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_lowercase()
}

fn unknown(argv: &[Vec<u8>]) -> Reply {
    let args: Vec<String> = argv[1..]
        .iter()
        .take(8)
        .map(|a| format!("'{}'", String::from_utf8_lossy(a)))
        .collect();
    Reply::err(format!(
        "ERR unknown command '{}', with args beginning with: {}",
        String::from_utf8_lossy(&argv[0]),
        args.join(" ")
    ))
}

fn default_user(dir: &Directory) -> Arc<Perms> {
    dir.configured("default")
        .cloned()
        .unwrap_or_else(|| Arc::new(Perms::new(crate::acl::User::new("default"))))
}

/// Re-reads the connection's user after an ACL change; false when it no longer exists.
fn refresh_user(c: &mut Conn, node: &Node) -> bool {
    c.user_gen = crate::acl::generation();
    let name = c.user.user.name.clone();
    match node.sm.read(|g| c.dir.find(&g.tables.users, &name)) {
        Some(p) => {
            c.user = p;
            true
        }
        None => false,
    }
}

const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// The user `user` if `pass` is its password (or it needs none) and it is on. A user
/// unknown here, or a password that does not match, is looked up again after a
/// linearizable read: a SETUSER acknowledged on another member is then seen here.
async fn authenticate(c: &Conn, node: &Arc<Node>, user: &[u8], pass: &[u8]) -> Option<Arc<Perms>> {
    let name = String::from_utf8_lossy(user).into_owned();
    // A user made, changed or deleted through the log (ACL SETUSER/DELUSER) is checked as
    // of now, not as of this member's last apply: once DELUSER has answered, no member lets
    // the user in. The cluster file's users are the same everywhere without it.
    if c.dir.configured(&name).is_none() && !node.is_witness() && node.linearize().await.is_err() {
        return None;
    }
    node.sm
        .read(|g| c.dir.find(&g.tables.users, &name))
        .filter(|p| p.user.check_password(pass))
}

async fn command(c: &mut Conn, node: &Arc<Node>, argv: Vec<Vec<u8>>) -> Reply {
    let name = upper(&argv[0]);
    if !c.authed && !matches!(name.as_str(), "AUTH" | "HELLO" | "QUIT") {
        return Reply::err("NOAUTH Authentication required.");
    }
    if c.proto == 2 && c.subs.count() > 0 {
        match name.as_str() {
            "PING" => {
                return Reply::Push(vec![
                    Reply::bulk("pong"),
                    Reply::bulk(argv.get(1).cloned().unwrap_or_default()),
                ]);
            }
            "QUIT" | "RESET" => {}
            _ => {
                return Reply::err(format!(
                    "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                    name.to_ascii_lowercase()
                ));
            }
        }
    }
    if c.multi.is_some()
        && !matches!(
            name.as_str(),
            "EXEC" | "DISCARD" | "MULTI" | "WATCH" | "QUIT" | "RESET"
        )
    {
        return queue(c, node, name, argv);
    }
    match name.as_str() {
        "PING" => match argv.len() {
            1 => Reply::Simple("PONG".into()),
            2 => Reply::bulk(&argv[1]),
            _ => arity_err("ping"),
        },
        "ECHO" if argv.len() == 2 => Reply::bulk(&argv[1]),
        "QUIT" => Reply::ok(),
        "AUTH" => {
            let (user, pass): (&[u8], &[u8]) = match argv.len() {
                2 => (b"default", &argv[1]),
                3 => (&argv[1], &argv[2]),
                _ => return arity_err("auth"),
            };
            if argv.len() == 2 && default_user(&c.dir).user.nopass {
                return Reply::err(
                    "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
                );
            }
            match authenticate(c, node, user, pass).await {
                Some(p) => {
                    c.authed = true;
                    c.user = p;
                    c.user_gen = crate::acl::generation();
                    Reply::ok()
                }
                None => Reply::err(WRONGPASS),
            }
        }
        "HELLO" => hello(c, node, &argv).await,
        "ACL" => acl_cmd(c, node, &argv).await,
        "CLIENT" => client_cmd(c, &argv),
        "COMMAND" => crate::admin::command(&argv),
        "CONFIG" => crate::admin::config(node, &argv),
        "PUBLISH" if argv.len() == 3 => Reply::Int(node.publish(&argv[1], &argv[2]).await as i64),
        "PUBLISH" => arity_err("publish"),
        "PUBSUB" if argv.len() >= 2 => crate::pubsub::Hub::global().introspect(&argv),
        "TIME" => crate::admin::time(&argv),
        "PFSELFTEST" => crate::data::pf_selftest(),
        "DEBUG" => crate::admin::debug(node, c.db, &argv).await,
        "LASTSAVE" if argv.len() == 1 => Reply::Int((now_ms() / 1000) as i64),
        // Every acknowledged write is already fsynced on a majority: nothing to save.
        "SAVE" | "BGSAVE" | "BGREWRITEAOF" => Reply::ok(),
        "SELECT" => select(c, &argv),
        // A replica's handshake (listening-port, capa …) before PSYNC: nothing to keep.
        "REPLCONF" => Reply::ok(),
        "READONLY" => {
            c.readonly = true;
            Reply::ok()
        }
        "READWRITE" => {
            c.readonly = false;
            Reply::ok()
        }
        "RESET" => {
            c.subs.clear(c.id);
            c.multi = None;
            c.multi_dirty = false;
            c.watches.clear();
            c.db = 0;
            c.readonly = false;
            c.proto = 2;
            c.user = default_user(&c.dir);
            c.authed = c.user.user.enabled && c.user.user.nopass;
            Reply::Simple("RESET".into())
        }
        "INFO" => info(node, &argv),
        "MULTI" => {
            if c.multi.is_some() {
                return Reply::err("ERR MULTI calls can not be nested");
            }
            c.multi = Some(Vec::new());
            c.multi_local.clear();
            c.multi_dirty = false;
            Reply::ok()
        }
        "DISCARD" => {
            if c.multi.take().is_none() {
                return Reply::err("ERR DISCARD without MULTI");
            }
            c.watches.clear();
            Reply::ok()
        }
        "EXEC" => exec(c, node).await,
        "WATCH" => {
            if c.multi.is_some() {
                return Reply::err("ERR WATCH inside MULTI is not allowed");
            }
            if argv.len() < 2 {
                return arity_err("watch");
            }
            watch(c, node, &argv[1..]).await
        }
        "UNWATCH" => {
            c.watches.clear();
            Reply::ok()
        }
        _ => data_cmd(c, node, name, argv).await,
    }
}

fn queue(c: &mut Conn, node: &Node, name: String, argv: Vec<Vec<u8>>) -> Reply {
    let (name, argv) = match resolve_sha(node, &name, argv) {
        Ok(x) => x,
        Err(e) => {
            c.multi_dirty = true;
            return e;
        }
    };
    if name == "SELECT" {
        // Applied at once: later queued commands carry the new database.
        return match select(c, &argv) {
            Reply::Error(e) => Reply::Error(e),
            _ => Reply::Simple("QUEUED".into()),
        };
    }
    if matches!(
        name.as_str(),
        "SAVE" | "SHUTDOWN" | "SUBSCRIBE" | "PSUBSCRIBE" | "MONITOR"
    ) {
        c.multi_dirty = true;
        return Reply::err("ERR Command not allowed inside a transaction");
    }
    let err = match classify(&name) {
        None if matches!(name.as_str(), "SYNC" | "PSYNC") => {
            Some(Reply::err("ERR Command not allowed inside a transaction"))
        }
        None if crate::admin::is_server_command(&name) => {
            if !check_arity(&name, argv.len()) {
                c.multi_dirty = true;
                return arity_err(&name);
            }
            let place = c.multi.as_ref().map_or(0, Vec::len) + c.multi_local.len();
            c.multi_local.push((place, argv));
            return Reply::Simple("QUEUED".into());
        }
        None => Some(unknown(&argv)),
        Some(_) if !check_arity(&name, argv.len()) => Some(arity_err(&name)),
        Some(_) => None,
    };
    let err = err.or_else(|| oom_refusal(node, &name, &argv));
    let argv = match script_opts(node, &name, argv) {
        Ok(a) => a,
        Err((e, _)) => {
            c.multi_dirty = true;
            return e;
        }
    };
    let argv = as_caller(c, &name, argv);
    if let Some(e) = err {
        c.multi_dirty = true;
        return e;
    }
    let argv = stream_cfg(node, argv);
    if let Some(q) = c.multi.as_mut() {
        q.push((c.db, argv));
    }
    Reply::Simple("QUEUED".into())
}

/// XADD and XTRIM carry this member's stream node limits into the log (see
/// `data::STREAM_CFG`): every member then cuts the stream's nodes, which approximate
/// trimming drops whole, at the same places.
fn stream_cfg(node: &Node, argv: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    if !(argv[0].eq_ignore_ascii_case(b"XADD") || argv[0].eq_ignore_ascii_case(b"XTRIM")) {
        return argv;
    }
    let cfg = node.settings.stream_node();
    let mut out = Vec::with_capacity(argv.len() + 3);
    out.push(STREAM_CFG.to_vec());
    out.push(cfg.entries.to_string().into_bytes());
    out.push(cfg.bytes.to_string().into_bytes());
    out.extend(argv);
    out
}

fn select(c: &mut Conn, argv: &[Vec<u8>]) -> Reply {
    if argv.len() != 2 {
        return arity_err("select");
    }
    match std::str::from_utf8(&argv[1])
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
    {
        Some(n) if (n as usize) < NUM_DBS => {
            c.db = n;
            Reply::ok()
        }
        Some(_) => Reply::err("ERR DB index is out of range"),
        None => Reply::err("ERR value is not an integer or out of range"),
    }
}

async fn hello(c: &mut Conn, node: &Arc<Node>, argv: &[Vec<u8>]) -> Reply {
    let mut proto = c.proto;
    let mut i = 1;
    if argv.len() > 1 {
        match std::str::from_utf8(&argv[1])
            .ok()
            .and_then(|s| s.parse::<u8>().ok())
        {
            Some(p @ (2 | 3)) => proto = p,
            Some(_) => return Reply::err("NOPROTO unsupported protocol version"),
            None => return Reply::err("ERR Protocol version is not an integer or out of range"),
        }
        i = 2;
    }
    let mut authed = c.authed;
    let mut user = c.user.clone();
    while i < argv.len() {
        match upper(&argv[i]).as_str() {
            "AUTH" if i + 2 < argv.len() => {
                match authenticate(c, node, &argv[i + 1], &argv[i + 2]).await {
                    Some(p) => {
                        authed = true;
                        user = p;
                    }
                    None => return Reply::err(WRONGPASS),
                }
                i += 3;
            }
            "SETNAME" if i + 1 < argv.len() => {
                c.name = Some(String::from_utf8_lossy(&argv[i + 1]).into_owned());
                i += 2;
            }
            _ => return Reply::err("ERR Syntax error in HELLO option"),
        }
    }
    if !authed {
        return Reply::err(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
        );
    }
    c.authed = authed;
    c.user = user;
    c.user_gen = crate::acl::generation();
    c.proto = proto;
    let role = if node.raft.metrics().borrow().current_leader == Some(node.id()) {
        "master"
    } else {
        "replica"
    };
    Reply::Map(vec![
        (Reply::bulk("server"), Reply::bulk("redis")),
        (Reply::bulk("version"), Reply::bulk("7.2.0")),
        (Reply::bulk("proto"), Reply::Int(proto as i64)),
        (Reply::bulk("id"), Reply::Int(c.id as i64)),
        (Reply::bulk("mode"), Reply::bulk("standalone")),
        (Reply::bulk("role"), Reply::bulk(role)),
        (Reply::bulk("modules"), Reply::Array(Vec::new())),
    ])
}

fn client_cmd(c: &mut Conn, argv: &[Vec<u8>]) -> Reply {
    let reg = Registry::global();
    match argv.get(1).map(|a| upper(a)).as_deref() {
        Some("SETNAME") if argv.len() == 3 => {
            if argv[2].iter().any(|&b| b <= b' ' || b > b'~') {
                return Reply::err(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            let name = String::from_utf8_lossy(&argv[2]).into_owned();
            c.name = (!name.is_empty()).then_some(name);
            c.me.set_name(c.name.clone());
            Reply::ok()
        }
        Some("GETNAME") if argv.len() == 2 => {
            c.name.as_ref().map(Reply::bulk).unwrap_or(Reply::Nil)
        }
        Some("SETINFO") | Some("NO-EVICT") | Some("NO-TOUCH") => Reply::ok(),
        Some("ID") if argv.len() == 2 => Reply::Int(c.id as i64),
        Some("INFO") if argv.len() == 2 => Reply::bulk(reg.describe(c.id) + "\n"),
        Some("LIST") => match reg.list(&argv[2..]) {
            Ok(s) => Reply::bulk(s),
            Err(e) => Reply::err(e),
        },
        Some("UNBLOCK") if (3..=4).contains(&argv.len()) => match reg.unblock(&argv[2..]) {
            Ok(done) => Reply::Int(done as i64),
            Err(e) => Reply::err(e),
        },
        Some("KILL") => match reg.kill(&argv[2..]) {
            Ok(Some(n)) => Reply::Int(n as i64),
            Ok(None) => Reply::ok(),
            Err(e) => Reply::err(e),
        },
        Some(_) => Reply::err(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
            lower(&argv[1])
        )),
        None => arity_err("client"),
    }
}

fn info(node: &Node, argv: &[Vec<u8>]) -> Reply {
    let st = node.status();
    let role = if st.leader == Some(st.id) {
        "master"
    } else {
        "slave"
    };
    let now = now_ms();
    let (keys_in_memory, keyspace) = node.sm.read(|g| {
        let total: usize = g.tables.dbs.iter().map(|d| d.map.len()).sum();
        let per_db: Vec<(usize, usize, usize)> = g
            .tables
            .dbs
            .iter()
            .enumerate()
            .map(|(i, db)| (i, db.live_len(now), db.expires_len(now)))
            .filter(|(_, n, _)| *n > 0)
            .collect();
        (total, per_db)
    });
    let (by_lease, rounds) = node.read_counts();
    let early = node
        .peers
        .early_entries
        .load(std::sync::atomic::Ordering::Relaxed);
    let trimmed = node
        .peers
        .trimmed_entries
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut sections: Vec<(&str, String)> = Vec::new();
    sections.push((
        "server",
        format!(
            "redis_version:7.0.15\r\nredis_mode:standalone\r\ncitadel_db:1\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n",
            std::process::id(),
            node.cfg.me().and_then(|m| m.redis).map(|a| a.port()).unwrap_or(0),
            node.uptime().as_secs()
        ),
    ));
    sections.push((
        "clients",
        format!(
            "connected_clients:{}\r\nblocked_clients:{}\r\n",
            Registry::global().count(),
            crate::blocking::blocked_clients()
        ),
    ));
    // Each script runs in a Lua state of its own, gone when it ends: no Lua memory is kept.
    let cached_scripts = node.sm.read(|g| g.tables.scripts.0.len());
    sections.push((
        "memory",
        format!(
            "used_memory:{}\r\nmaxmemory:{}\r\nused_memory_lua:0\r\nused_memory_scripts:0\r\nnumber_of_cached_scripts:{cached_scripts}\r\n",
            crate::admin::rss_bytes(),
            node.settings.maxmemory()
        ),
    ));
    let errors = crate::resp::error_stats();
    sections.push((
        "stats",
        format!(
            "total_error_replies:{}\r\n",
            errors.iter().map(|(_, n)| n).sum::<u64>()
        ),
    ));
    sections.push((
        "errorstats",
        errors
            .iter()
            .map(|(code, n)| format!("errorstat_{code}:count={n}\r\n"))
            .collect(),
    ));
    sections.push((
        "persistence",
        "loading:0\r\nasync_loading:0\r\nrdb_changes_since_last_save:0\r\nrdb_bgsave_in_progress:0\r\naof_enabled:0\r\naof_rewrite_in_progress:0\r\naof_rewrite_scheduled:0\r\n".into(),
    ));
    // A follower names the leader's Redis address, as a Redis replica names its master:
    // clients that want linearizable work done without a forwarding hop go there.
    let leader_addr = st
        .leader
        .filter(|&l| l != st.id)
        .and_then(|l| node.cfg.members.iter().find(|m| m.id == l))
        .and_then(|m| m.redis);
    let master = match (role, leader_addr) {
        ("slave", Some(a)) => format!(
            "master_host:{}\r\nmaster_port:{}\r\nmaster_link_status:up\r\n",
            a.ip(),
            a.port()
        ),
        ("slave", None) => "master_link_status:down\r\n".to_string(),
        _ => String::new(),
    };
    sections.push((
        "replication",
        format!("role:{role}\r\n{master}connected_slaves:0\r\n"),
    ));
    sections.push((
        "raft",
        format!(
            "raft_id:{}\r\nraft_state:{}\r\nraft_leader:{}\r\nraft_term:{}\r\nraft_last_log_index:{}\r\nraft_applied_index:{}\r\nraft_snapshot_index:{}\r\ndisk_bytes:{}\r\nkeys_in_memory:{keys_in_memory}\r\nreads_by_lease:{by_lease}\r\nread_index_rounds:{rounds}\r\nearly_entries:{early}\r\ntrimmed_entries:{trimmed}\r\n",
            st.id,
            st.state,
            st.leader.map(|l| l.to_string()).unwrap_or_default(),
            st.term,
            st.last_log_index.unwrap_or(0),
            st.applied_index.unwrap_or(0),
            st.snapshot_index.unwrap_or(0),
            st.disk_bytes
        ),
    ));
    sections.push((
        "keyspace",
        keyspace
            .iter()
            .map(|(i, n, e)| format!("db{i}:keys={n},expires={e},avg_ttl=0\r\n"))
            .collect(),
    ));
    let wanted: Vec<String> = argv[1..].iter().map(|a| lower(a)).collect();
    let all = wanted.is_empty()
        || wanted
            .iter()
            .any(|w| w == "all" || w == "everything" || w == "default");
    let mut s = String::new();
    for (name, body) in sections {
        if all || wanted.iter().any(|w| w == name) {
            let mut title = name.to_string();
            title[..1].make_ascii_uppercase();
            s.push_str(&format!("# {title}\r\n{body}\r\n"));
        }
    }
    Reply::Bulk(s.into_bytes())
}

async fn exec(c: &mut Conn, node: &Arc<Node>) -> Reply {
    let Some(cmds) = c.multi.take() else {
        return Reply::err("ERR EXEC without MULTI");
    };
    let local = std::mem::take(&mut c.multi_local);
    let watches = std::mem::take(&mut c.watches);
    if c.multi_dirty {
        c.multi_dirty = false;
        return Reply::err("EXECABORT Transaction discarded because of previous errors.");
    }
    // Memory may have gone over maxmemory since the commands were queued (Redis checks again).
    if let Some(Reply::Error(e)) = cmds.iter().find_map(|(_, argv)| {
        let argv = unprefixed(argv);
        oom_refusal(node, &upper(&argv[0]), argv)
    }) {
        return Reply::err(format!("EXECABORT Transaction discarded because of: {e}"));
    }
    let keys = if crate::blocking::any_waiters() {
        crate::blocking::written_keys(cmds.iter())
    } else {
        Vec::new()
    };
    let req = WriteReq {
        rid: 0,
        now_ms: 0,
        watches,
        cmds,
        multi: true,
    };
    let r = match node.write(req).await {
        Ok(r) => r,
        Err(e) => Reply::Error(e),
    };
    crate::blocking::settle(node, &keys).await;
    let Reply::Array(mut replies) = r else {
        // The WATCH failed (nil) or the write did: nothing else runs.
        return r;
    };
    for (place, argv) in local {
        let one = Box::pin(command(c, node, argv)).await;
        replies.insert(place.min(replies.len()), one);
    }
    Reply::Array(replies)
}

async fn watch(c: &mut Conn, node: &Arc<Node>, keys: &[Vec<u8>]) -> Reply {
    if node.is_witness() {
        return Reply::err("ERR a witness serves no data");
    }
    let at = if c.readonly {
        node.sm
            .read(|g| g.last_applied.map(|l| l.index).unwrap_or(0))
    } else {
        match node.linearize().await {
            Ok(_) => node
                .sm
                .read(|g| g.last_applied.map(|l| l.index).unwrap_or(0)),
            Err(e) => return Reply::Error(e),
        }
    };
    let now = now_ms();
    let db = c.db;
    node.sm.read(|g| {
        for k in keys {
            let ver = g.tables.dbs[db as usize].version(k, now);
            c.watches.push(Watch {
                db,
                key: k.clone(),
                ver,
                at,
            });
        }
    });
    Reply::ok()
}

/// A script from a user who may not do everything goes into the log as `AS_CALLER`, so
/// each of its calls is checked against that user where it runs (at apply time).
fn as_caller(c: &Conn, name: &str, argv: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    if c.user.everything || !matches!(name, "EVAL" | "EVAL_RO" | "FCALL" | "FCALL_RO") {
        return argv;
    }
    let mut out = Vec::with_capacity(argv.len() + 3);
    out.push(crate::acl::AS_CALLER.to_vec());
    out.push(c.user.user.name.clone().into_bytes());
    out.push(crate::acl::caller_rules(&c.user.user).into_bytes());
    out.extend(argv);
    out
}

/// EVALSHA → EVAL with the script's body from this member's cache (the log always carries
/// the script itself, so every member runs the same thing).
fn resolve_sha(
    node: &Node,
    name: &str,
    argv: Vec<Vec<u8>>,
) -> Result<(String, Vec<Vec<u8>>), Reply> {
    if name == "FCALL" || name == "FCALL_RO" {
        if argv.len() < 3 {
            return Err(arity_err(name));
        }
        let code = node.sm.read(|g| g.tables.libraries.code_of(&argv[1]));
        let Some(code) = code else {
            return Err(Reply::err("ERR Function not found"));
        };
        let mut out = Vec::with_capacity(argv.len() + 1);
        let mut it = argv.into_iter();
        out.extend(it.next());
        out.push(code);
        out.extend(it);
        return Ok((name.to_string(), out));
    }
    let eval = match name {
        "EVALSHA" => "EVAL",
        "EVALSHA_RO" => "EVAL_RO",
        _ => return Ok((name.to_string(), argv)),
    };
    if argv.len() < 3 {
        return Err(arity_err(name));
    }
    let sha = String::from_utf8_lossy(&argv[1]).to_ascii_lowercase();
    let body = node.sm.read(|g| g.tables.scripts.0.get(&sha).cloned());
    let Some(body) = body else {
        return Err(Reply::err("NOSCRIPT No matching script. Please use EVAL."));
    };
    let mut argv = argv;
    argv[0] = eval.as_bytes().to_vec();
    argv[1] = body;
    Ok((eval.to_string(), argv))
}

/// SCRIPT EXISTS/KILL/HELP (LOAD and FLUSH go through the log).
fn script_local(node: &Node, argv: &[Vec<u8>]) -> Option<Reply> {
    match argv.get(1).map(|a| upper(a)).as_deref() {
        Some("EXISTS") if argv.len() > 2 => Some(node.sm.read(|g| {
            Reply::Array(
                argv[2..]
                    .iter()
                    .map(|s| {
                        let sha = String::from_utf8_lossy(s).to_ascii_lowercase();
                        Reply::Int(g.tables.scripts.0.contains_key(&sha) as i64)
                    })
                    .collect(),
            )
        })),
        _ => None,
    }
}

/// FUNCTION LIST/KILL/STATS (LOAD, DELETE and FLUSH go through the log).
fn function_local(node: &Node, argv: &[Vec<u8>]) -> Option<Reply> {
    match argv.get(1).map(|a| upper(a)).as_deref() {
        Some("LIST") => Some(node.sm.read(|g| {
            Reply::Array(
                g.tables
                    .libraries
                    .0
                    .iter()
                    .map(|(lib, (_, fns))| {
                        Reply::Map(vec![
                            (Reply::bulk("library_name"), Reply::bulk(lib)),
                            (Reply::bulk("engine"), Reply::bulk("LUA")),
                            (
                                Reply::bulk("functions"),
                                Reply::Array(
                                    fns.iter()
                                        .map(|f| {
                                            Reply::Map(vec![
                                                (Reply::bulk("name"), Reply::bulk(f)),
                                                (Reply::bulk("description"), Reply::Nil),
                                                (Reply::bulk("flags"), Reply::Array(Vec::new())),
                                            ])
                                        })
                                        .collect(),
                                ),
                            ),
                        ])
                    })
                    .collect(),
            )
        })),
        Some("DUMP") | Some("RESTORE") | Some("STATS") => Some(Reply::err(
            "ERR FUNCTION DUMP/RESTORE/STATS are not supported by this server",
        )),
        _ => None,
    }
}

async fn data_cmd(c: &mut Conn, node: &Arc<Node>, name: String, argv: Vec<Vec<u8>>) -> Reply {
    if (name == "SCRIPT" || name == "FUNCTION")
        && argv.len() == 2
        && argv[1].eq_ignore_ascii_case(b"KILL")
    {
        return kill_script(c, node, name == "SCRIPT").await;
    }
    if name == "SCRIPT"
        && let Some(r) = script_local(node, &argv)
    {
        return r;
    }
    if name == "FUNCTION"
        && let Some(r) = function_local(node, &argv)
    {
        return r;
    }
    if (name.starts_with("EVALSHA") || name.starts_with("FCALL"))
        && !c.readonly
        && !node.is_witness()
    {
        // A script loaded on another member is known here once this member has applied it.
        let _ = node.linearize().await;
    }
    let (name, argv) = match resolve_sha(node, &name, argv) {
        Ok(x) => x,
        Err(e) => return e,
    };
    let Some((class, _)) = classify(&name) else {
        return unknown(&argv);
    };
    if !check_arity(&name, argv.len()) {
        return arity_err(&name);
    }
    if node.is_witness() {
        return Reply::err("ERR a witness serves no data");
    }
    if class == Class::Write
        && let Some(e) = oom_refusal(node, &name, &argv)
    {
        return e;
    }
    let argv = match script_opts(node, &name, argv) {
        Ok(a) => a,
        Err((e, _)) => return e,
    };
    let argv = as_caller(c, &name, argv);
    match class {
        Class::Read => {
            if !c.readonly
                && !node.unsafe_local_reads
                && let Err(e) = node.linearize().await
            {
                return Reply::Error(e);
            }
            let now = now_ms();
            let db = c.db as usize;
            if name == "OBJECT" {
                let limits = node.settings.limits();
                return node
                    .sm
                    .read(|g| g.tables.dbs[db].object(&argv, now, &limits));
            }
            node.sm.read(|g| g.tables.dbs[db].read(&argv, now))
        }
        Class::Write => {
            let cmds = vec![(c.db, stream_cfg(node, argv))];
            let keys = if crate::blocking::any_waiters() {
                crate::blocking::written_keys(cmds.iter())
            } else {
                Vec::new()
            };
            let req = WriteReq {
                rid: 0,
                now_ms: 0,
                watches: Vec::new(),
                cmds,
                multi: false,
            };
            let r = match node.write(req).await {
                Ok(r) => r,
                Err(e) => Reply::Error(e),
            };
            // This member's clients blocked on what was written are served first.
            crate::blocking::settle(node, &keys).await;
            r
        }
    }
}

/// ACL: WHOAMI, CAT, USERS, LIST, GETUSER, DRYRUN, LOG, GENPASS answered here (after a
/// linearizable read, so what another member acknowledged is seen); SETUSER and DELUSER go
/// through the log, and are refused for users the configuration declares.
async fn acl_cmd(c: &mut Conn, node: &Arc<Node>, argv: &[Vec<u8>]) -> Reply {
    let Some(sub) = argv.get(1).map(|a| upper(a)) else {
        return arity_err("acl");
    };
    let reads = matches!(
        sub.as_str(),
        "USERS" | "LIST" | "GETUSER" | "DRYRUN" | "SETUSER" | "DELUSER"
    );
    if reads
        && !c.readonly
        && !node.is_witness()
        && !node.unsafe_local_reads
        && let Err(e) = node.linearize().await
    {
        return Reply::Error(e);
    }
    let users = || node.sm.read(|g| c.dir.all(&g.tables.users));
    let bad_arity = || {
        Reply::err(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try ACL HELP.",
            lower(&argv[1])
        ))
    };
    match sub.as_str() {
        "WHOAMI" if argv.len() == 2 => Reply::bulk(&c.user.user.name),
        "CAT" if argv.len() == 2 => Reply::Array(
            crate::acl::CATEGORIES
                .iter()
                .map(|c| Reply::bulk(*c))
                .collect(),
        ),
        "CAT" if argv.len() == 3 => match crate::acl::commands_in(&lower(&argv[2])) {
            Some(v) => Reply::Array(v.into_iter().map(Reply::bulk).collect()),
            None => Reply::err(format!(
                "ERR Unknown category '{}'",
                String::from_utf8_lossy(&argv[2])
            )),
        },
        "USERS" if argv.len() == 2 => {
            Reply::Array(users().into_iter().map(|u| Reply::bulk(u.name)).collect())
        }
        "LIST" if argv.len() == 2 => Reply::Array(
            users()
                .into_iter()
                .map(|u| Reply::bulk(u.describe()))
                .collect(),
        ),
        "GETUSER" if argv.len() == 3 => {
            let name = String::from_utf8_lossy(&argv[2]).into_owned();
            match node.sm.read(|g| c.dir.find(&g.tables.users, &name)) {
                Some(p) => p.user.getuser(),
                None => Reply::Nil,
            }
        }
        "DRYRUN" if argv.len() >= 4 => {
            let name = String::from_utf8_lossy(&argv[2]).into_owned();
            match node.sm.read(|g| c.dir.find(&g.tables.users, &name)) {
                Some(p) => crate::acl::dryrun(&p, &argv[3..]),
                None => Reply::err(format!("ERR User '{name}' not found")),
            }
        }
        "SETUSER" if argv.len() >= 3 => {
            let name = String::from_utf8_lossy(&argv[2]).into_owned();
            if c.dir.configured(&name).is_some() {
                return Reply::err(format!(
                    "ERR User '{name}' is declared in the cluster file ([db] users or password); change it there and apply"
                ));
            }
            // Refuse a bad rule here without a log entry (the state machine checks again).
            let mut scratch = node
                .sm
                .read(|g| g.tables.users.0.get(&name).cloned())
                .unwrap_or_else(|| crate::acl::User::new(&name));
            if !crate::acl::valid_name(&argv[2]) {
                return Reply::err("ERR Usernames can't contain spaces or null characters");
            }
            if let Err(e) = scratch.apply_rules(&argv[3..]) {
                return Reply::err(e);
            }
            acl_write(c, node, argv).await
        }
        "DELUSER" if argv.len() >= 3 => {
            for n in &argv[2..] {
                let name = String::from_utf8_lossy(n);
                if name == "default" {
                    return Reply::err("ERR The 'default' user cannot be removed");
                }
                if c.dir.configured(&name).is_some() {
                    return Reply::err(format!(
                        "ERR User '{name}' is declared in the cluster file ([db] users); remove it there and apply"
                    ));
                }
            }
            acl_write(c, node, argv).await
        }
        "LOG" if argv.len() <= 3 => {
            if argv.len() == 3 && argv[2].eq_ignore_ascii_case(b"RESET") {
                Reply::ok()
            } else {
                Reply::Array(Vec::new())
            }
        }
        "GENPASS" if argv.len() <= 3 => {
            let bits = match argv.get(2) {
                None => 256,
                Some(b) => match std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse::<usize>().ok())
                {
                    Some(n) if (1..=4096).contains(&n) => n,
                    _ => {
                        return Reply::err(
                            "ERR ACL GENPASS argument must be the number of bits for the output password, a positive number up to 4096",
                        );
                    }
                },
            };
            let mut raw = vec![0u8; bits.div_ceil(8)];
            use std::io::Read;
            if std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut raw))
                .is_err()
            {
                return Reply::err("ERR no randomness available");
            }
            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            Reply::bulk(&hex[..bits.div_ceil(4)])
        }
        "SAVE" | "LOAD" if argv.len() == 2 => Reply::err(
            "ERR This server keeps users in the cluster file and the Raft log, not in an ACL file",
        ),
        "HELP" => Reply::Array(
            [
                "ACL <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "CAT [<category>]",
                "DELUSER <username> [<username> ...]",
                "DRYRUN <username> <command> [<arg> ...]",
                "GETUSER <username>",
                "GENPASS [<bits>]",
                "LIST",
                "LOG [<count> | RESET]",
                "SETUSER <username> <attribute> [<attribute> ...]",
                "USERS",
                "WHOAMI",
            ]
            .iter()
            .map(|l| Reply::Simple(l.to_string()))
            .collect(),
        ),
        _ => bad_arity(),
    }
}

/// ACL SETUSER/DELUSER through the log: `[ACL_WRITE, sub, args…]`.
async fn acl_write(c: &Conn, node: &Arc<Node>, argv: &[Vec<u8>]) -> Reply {
    if node.is_witness() {
        return Reply::err("ERR a witness serves no data");
    }
    let mut cmd = vec![crate::acl::ACL_WRITE.to_vec()];
    cmd.extend(argv[1..].iter().cloned());
    let req = WriteReq {
        rid: 0,
        now_ms: 0,
        watches: Vec::new(),
        cmds: vec![(c.db, cmd)],
        multi: false,
    };
    match node.write(req).await {
        Ok(r) => r,
        Err(e) => Reply::Error(e),
    }
}

/// A command arriving while this member's state machine runs a script: it waits as it would
/// in Redis (which reads nothing meanwhile) up to the busy threshold, then gets BUSY (inside
/// MULTI that also dooms the transaction). MULTI, EXEC, DISCARD and the KILLs pass.
async fn busy(c: &mut Conn, node: &Node, argv: &[Vec<u8>]) -> Option<Reply> {
    let name = upper(&argv[0]);
    if matches!(name.as_str(), "MULTI" | "DISCARD") || (name == "EXEC" && c.multi.is_none()) {
        return None;
    }
    let e = crate::data::busy::wait_or_busy(&name, argv, node.settings.busy_threshold()).await?;
    if name == "EXEC" {
        // EXEC itself refused: the transaction is discarded, as Redis's execCommandAbort.
        c.multi = None;
        c.multi_local.clear();
        c.multi_dirty = false;
        c.watches.clear();
        let Reply::Error(e) = e else { return Some(e) };
        return Some(Reply::err(format!(
            "EXECABORT Transaction discarded because of: {e}"
        )));
    }
    if c.multi.is_some() {
        c.multi_dirty = true;
    }
    Some(e)
}

/// SCRIPT KILL / FUNCTION KILL: a `SCRIPT_DECIDE` "kill" marker through the log for the
/// script this member runs; the reply (OK, UNKILLABLE, NOTBUSY) is decided where it is
/// applied, after the script stopped or went on (`data::busy`).
async fn kill_script(c: &Conn, node: &Arc<Node>, eval: bool) -> Reply {
    use crate::data::busy;
    let Some(r) = busy::running().filter(|r| r.eval == eval) else {
        return Reply::err(busy::NOTBUSY);
    };
    if r.wrote {
        return Reply::err(busy::UNKILLABLE);
    }
    if node.is_witness() {
        return Reply::err("ERR a witness serves no data");
    }
    let req = WriteReq {
        rid: 0,
        now_ms: 0,
        watches: Vec::new(),
        cmds: vec![(
            c.db,
            vec![
                busy::SCRIPT_DECIDE.to_vec(),
                r.index.to_string().into_bytes(),
                b"kill".to_vec(),
                if eval {
                    b"eval".to_vec()
                } else {
                    b"function".to_vec()
                },
            ],
        )],
        multi: false,
    };
    match node.write(req).await {
        Ok(r) => r,
        Err(e) => Reply::Error(e),
    }
}

/// This member's used memory (INFO's used_memory: the process's RSS) is over maxmemory.
/// Decided where a write is taken, before the log: a refused write never reaches it, and
/// a script carries the decision (`SCRIPT_OPTS`), so every member runs it alike.
fn over_maxmemory(node: &Node) -> bool {
    let max = node.settings.maxmemory();
    max > 0 && crate::admin::rss_bytes() > max
}

/// Redis's OOM refusal of a command that may grow memory (and of a script whose shebang
/// flags neither allow OOM nor forbid writes) while over maxmemory.
fn oom_refusal(node: &Node, name: &str, argv: &[Vec<u8>]) -> Option<Reply> {
    use crate::data::script;
    if node.settings.maxmemory() == 0 {
        return None;
    }
    let refuse = match name {
        "EVAL" | "EVAL_RO" => argv.get(1).is_some_and(
            |body| matches!(script::shebang(body), Ok(Some(f)) if !f.allow_oom && !f.no_writes),
        ),
        _ => script::deny_oom(name, argv),
    };
    (refuse && over_maxmemory(node)).then(|| Reply::err(script::OOM_ERROR))
}

type Argv = Vec<Vec<u8>>;

/// EVAL and FCALL carry what this member decided for them (`data::script::SCRIPT_OPTS`):
/// over maxmemory (the script's first deny-oom write fails), DEBUG allowed. Err gives the
/// refusal and the command unchanged.
fn script_opts(node: &Node, name: &str, argv: Vec<Vec<u8>>) -> Result<Argv, (Reply, Argv)> {
    if !matches!(name, "EVAL" | "EVAL_RO" | "FCALL" | "FCALL_RO") {
        return Ok(argv);
    }
    if let Some(e) = oom_refusal(node, name, &argv) {
        return Err((e, argv));
    }
    let mut opts = Vec::new();
    if over_maxmemory(node) {
        opts.push("oom");
    }
    if crate::admin::scripts_may_debug() {
        opts.push("debug");
    }
    if opts.is_empty() {
        return Ok(argv);
    }
    let mut out = Vec::with_capacity(argv.len() + 2);
    out.push(crate::data::script::SCRIPT_OPTS.to_vec());
    out.push(opts.join(",").into_bytes());
    out.extend(argv);
    Ok(out)
}

/// A queued command without the prefixes the server puts in front of it.
fn unprefixed(argv: &[Vec<u8>]) -> &[Vec<u8>] {
    match argv.first() {
        Some(a) if a == STREAM_CFG && argv.len() > 3 => &argv[3..],
        Some(a) if a == crate::acl::AS_CALLER && argv.len() > 3 => unprefixed(&argv[3..]),
        Some(a) if a == crate::data::script::SCRIPT_OPTS && argv.len() > 2 => &argv[2..],
        _ => argv,
    }
}

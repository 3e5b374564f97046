//! A db member whose box goes silent (no FIN, no RST) while the only request on the shared
//! connection was already acknowledged by its host and waits for its reply: nothing sent is
//! left unacknowledged, so TCP_USER_TIMEOUT alone would not fail the connection, and the
//! request would wait out the whole response timeout. The client's PING gives the host
//! something to acknowledge; the connection fails and the request goes to the other member.
//!
//! The silent member is a redis-server in a network namespace the test makes (198.18.88.0/30),
//! its link taken down and its process frozen; the other member is on loopback
//! (127.41.0.0/24). Needs root; skipped otherwise.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use citadel_app::db::Outcome;
use citadel_app::metrics::Metrics;
use citadel_app::{Db, DbConfig, ReadMode};
use common::{Proc, Redis, RedisOpts, addr, wait_until, wait_until_async};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .expect("ip (iproute2)");
    assert!(ok.success(), "ip {args:?}");
}

/// A network namespace with a veth to the test's own namespace: 198.18.88.1 here,
/// 198.18.88.2 there. Deleted (and its veth with it) when dropped.
struct Netns {
    name: String,
    /// The veth's end here.
    here: String,
}

impl Netns {
    fn new() -> Netns {
        let pid = std::process::id();
        let name = format!("ctapp-gone-{pid}");
        let (here, there) = (
            format!("ctg{}h", pid % 100_000),
            format!("ctg{}n", pid % 100_000),
        );
        ip(&["netns", "add", &name]);
        let ns = Netns {
            name,
            here: here.clone(),
        };
        ip(&["link", "add", &here, "type", "veth", "peer", "name", &there]);
        ip(&["link", "set", &there, "netns", &ns.name, "name", "eth0"]);
        ip(&["addr", "add", "198.18.88.1/30", "dev", &here]);
        ip(&["link", "set", &here, "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            "198.18.88.2/30",
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns.name, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The veth first: a socket of the killed server, still trying to say goodbye over the
        // downed link, keeps the namespace (and so the veth and its address) alive for minutes
        // after `netns del`.
        for args in [
            vec!["link", "del", self.here.as_str()],
            vec!["netns", "del", self.name.as_str()],
        ] {
            let _ = Command::new("ip").args(&args).status();
        }
    }
}

fn blocked_clients(at: SocketAddr) -> Option<u32> {
    let out = Command::new("redis-cli")
        .args(["-h", &at.ip().to_string(), "-p", &at.port().to_string()])
        .args(["INFO", "clients"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))?
        .trim()
        .parse()
        .ok()
}

/// Whether this namespace's established TCP connections to `to` have nothing sent that
/// waits for an acknowledgement (`ss` shows `unacked:N` while some does).
fn all_acknowledged(to: SocketAddr) -> bool {
    let out = Command::new("ss")
        .args(["-tniH", "state", "established", "dst", &to.to_string()])
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    !text.trim().is_empty() && !text.contains("unacked:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_leaves_a_member_whose_box_goes_silent() {
    if !is_root() {
        println!("SKIPPED: needs root (a network namespace)");
        return;
    }
    let ns = Netns::new();
    let silent: SocketAddr = "198.18.88.2:6379".parse().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut far = Proc {
        child: Command::new("ip")
            .args(["netns", "exec", &ns.name, "redis-server"])
            .args(["--bind", "198.18.88.2", "--port", "6379", "--save", ""])
            .args(["--protected-mode", "no", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)"),
        name: format!("redis {silent}"),
    };
    wait_until(
        "redis-server in the namespace",
        Duration::from_secs(10),
        || common::redis_ping(silent, None),
    );
    let near = addr("127.41.0.1:6391");
    let cfg = DbConfig {
        addrs: vec![silent.to_string(), near.to_string()],
        // Far longer than the PING needs: waiting it out would show.
        response_timeout_ms: 8000,
        retry_budget_ms: 15_000,
        unacked_timeout_ms: 300,
        ..DbConfig::default()
    };
    let db = Db::new(&cfg, Arc::new(Metrics::default())).expect("db client");
    // The near member is not up yet: the first connection goes to the far one.
    let attempts = Arc::new(AtomicU32::new(0));
    let request = {
        let (db, attempts) = (db.clone(), attempts.clone());
        tokio::spawn(async move {
            db.run(ReadMode::Linearizable, |mut c, _: Outcome| {
                attempts.fetch_add(1, Ordering::SeqCst);
                async move {
                    // Waits 2 s on the server for a list nobody fills: acknowledged, unanswered.
                    redis::cmd("BLPOP")
                        .arg("nothing")
                        .arg(2)
                        .query_async::<Option<(String, String)>>(&mut c)
                        .await
                }
            })
            .await
        })
    };
    wait_until_async(
        "the request to block on the far member",
        Duration::from_secs(10),
        || async { blocked_clients(silent) == Some(1) },
    )
    .await;
    // Its host has acknowledged everything the client sent (a delayed ACK can take up to
    // 200 ms): from here only something new sent can time out.
    wait_until(
        "the far host to acknowledge the request",
        Duration::from_secs(10),
        || all_acknowledged(silent),
    );
    let _near = Redis::start(
        near,
        RedisOpts {
            password: None,
            aof_dir: None,
        },
    );
    // The far box goes: its link down, its process frozen.
    ip(&["-n", &ns.name, "link", "set", "eth0", "down"]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(far.pid() as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .expect("SIGSTOP");
    let gone_at = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(20), request)
        .await
        .expect("the request ends")
        .expect("request task");
    let took = gone_at.elapsed();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(far.pid() as i32),
        nix::sys::signal::Signal::SIGCONT,
    );
    far.kill();
    println!("answered {took:?} after the box went silent: {answer:?}");
    assert_eq!(
        answer.expect("answered"),
        None,
        "BLPOP on the near member times out"
    );
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        2,
        "one retry, on the near member"
    );
    // The near member's BLPOP itself takes 2 s; the far one was left within about a PING
    // interval plus the unacknowledged timeout, far from the 8 s response timeout.
    assert!(took < Duration::from_secs(4), "took {took:?}");
}

//! The `netns` backend, driven through the real binary as root: a "host" is a network
//! namespace this test creates, `citadel up` runs inside it, and its jails get their own
//! network, mount, PID and UTS namespaces and cgroups. Addresses: 198.18.90.0/24 (front) and
//! 198.18.91.0/24 (back), inside the host namespace only.

mod harness;

use std::process::Command;
use std::time::Duration;

use harness::ns::*;
use harness::*;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn http_jail(name: &str, addresses: &str, extra: &str) -> String {
    format!(
        r#"
[[jail]]
name = "{name}"
host = "box"
role = "command"
addresses = {{ {addresses} }}
command = "citadel"
args = ["serve", "--bind", "${{CITADEL_ADDR}}:8000", "--dir", "${{CITADEL_DATA}}"]
ports = [8000]
stop_grace = "3s"
health = {{ check = "http", port = 8000, path = "/", interval = "300ms", timeout = "1s" }}
{extra}
"#
    )
}

fn netns_cluster(jails: &str) -> String {
    format!(
        "[cluster]\nname = \"t\"\n[segments]\nfront = \"198.18.90.0/24\"\nback = \"198.18.91.0/24\"\n[[host]]\nname = \"box\"\nbackend = \"netns\"\n{jails}"
    )
}

/// Python's urllib from inside a jail (through `citadel jail exec`): Some(body) on success.
fn fetch_from(up: &Up, jail: &str, url: &str) -> Option<String> {
    let script = format!(
        "import urllib.request;print(urllib.request.urlopen('{url}', timeout=2).read().decode(),end='')"
    );
    let out = up.cli(&["jail", "exec", jail, "--", "python3", "-c", &script]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What of this state dir's jails is left on the machine: cgroup directories.
fn cgroups_left(state: &std::path::Path) -> Vec<String> {
    let scope = citadel_jail::netns::scope_of(state);
    let mut left = Vec::new();
    for root in [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/pids",
    ] {
        let dir = std::path::Path::new(root).join("citadel").join(&scope);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            left.extend(entries.flatten().map(|e| e.path().display().to_string()));
        }
    }
    left
}

/// Everything named for this test's jails that is still on the machine: links (veths, bridges)
/// in the host namespace, named network namespaces, mounts of its state dir, and cgroup
/// directories of its scope in every hierarchy (each v1 controller, the v2 `unified` one, and
/// /sys/fs/cgroup itself on a v2-only machine).
fn leftovers(host: &HostNs, up: &Up, jails: &[&str]) -> Vec<String> {
    let mut left = Vec::new();
    for line in host.links().lines() {
        let name = line.split(": ").nth(1).unwrap_or("");
        if name.starts_with("ctv") || name.starts_with("ctb-") {
            left.push(format!("link {name}"));
        }
    }
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    for ns in String::from_utf8_lossy(&netns.stdout).lines() {
        if jails.iter().any(|j| ns.contains(j)) {
            left.push(format!("netns {ns}"));
        }
    }
    let state = up.state.display().to_string();
    let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    left.extend(
        mounts
            .lines()
            .filter(|m| m.contains(&state))
            .map(|m| format!("mount {m}")),
    );
    let scope = citadel_jail::netns::scope_of(&up.state);
    let mut roots = vec![std::path::PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(entries.flatten().map(|e| e.path()));
    }
    for root in roots {
        let dir = root.join("citadel").join(&scope);
        if dir.exists() {
            left.push(format!("cgroup {}", dir.display()));
        }
    }
    left
}

/// A jail's memory limit as its cgroup holds it, and how many processes the kernel's OOM
/// killer has killed in it (v2: `memory.max`, `memory.events`; v1: `memory.limit_in_bytes`,
/// `memory.oom_control`).
fn memory_cgroup(up: &Up, jail: &str) -> (String, u64) {
    use citadel_jail::netns::Cgroups;
    let rel = format!(
        "citadel/{}/{jail}",
        citadel_jail::netns::scope_of(&up.state)
    );
    let (dir, limit, events) = match Cgroups::detect() {
        Cgroups::V2(root) => (root.join(rel), "memory.max", "memory.events"),
        Cgroups::V1 {
            memory: Some(root), ..
        } => (
            root.join(rel),
            "memory.limit_in_bytes",
            "memory.oom_control",
        ),
        other => panic!("no memory controller on this machine: {other:?}"),
    };
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.join(f).display()))
    };
    let kills = read(events)
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no oom_kill line in {events}"));
    (read(limit).trim().to_string(), kills)
}

/// The host end of a jail's veth on `segment`, as the agent names it.
fn veth_of(up: &Up, jail: &str, segment: &str) -> String {
    citadel_jail::netns::veth_name(&citadel_jail::netns::scope_of(&up.state), jail, segment)
}

/// Waits for the jail to be healthy; if it never is, fails with its status and console log.
fn healthy_or_explain(up: &Up, jail: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if up.jail(jail)["health"] == "healthy" {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = up.cli(&["jail", "logs", jail]);
    panic!(
        "{jail} not healthy after 30s: {}\nlogs: {}\nup: {}",
        up.jail(jail),
        String::from_utf8_lossy(&logs.stdout),
        up.up_log()
    );
}

#[test]
fn netns_jails_are_isolated_limited_and_leave_nothing_behind() {
    if !is_root() {
        println!("SKIPPED: the netns backend needs root");
        return;
    }
    let host = HostNs::new(&format!("ct-nsjail-{}", std::process::id()));
    let jails = [
        http_jail(
            "web-1",
            "front = \"198.18.90.11\"",
            "memory = \"64MiB\"\npids = 32",
        ),
        http_jail("web-2", "front = \"198.18.90.12\"", ""),
        http_jail("back-1", "back = \"198.18.91.11\"", ""),
    ]
    .concat();
    let up = host.up(&netns_cluster(&jails));
    up.wait_healthy(&["web-1", "web-2", "back-1"], Duration::from_secs(60));

    // Its address answers from the host's namespace…
    std::fs::write(up.data("web-1").join("who"), "web-1").expect("write");
    let from_host = host.run(&[
        "curl",
        "-sf",
        "--max-time",
        "3",
        "http://198.18.90.11:8000/who",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&from_host.stdout),
        "web-1",
        "host reaches web-1"
    );
    // …and from another jail on the same segment, but not across a segment it does not share.
    assert_eq!(
        fetch_from(&up, "web-2", "http://198.18.90.11:8000/who").as_deref(),
        Some("web-1"),
        "web-2 reaches web-1 over front"
    );
    assert_eq!(
        fetch_from(&up, "web-2", "http://198.18.91.11:8000/"),
        None,
        "web-2 (front only) must not reach back-1 (back only)"
    );
    // Nor from the machine's own namespace: the segments live inside the host.
    assert!(
        curl("http://198.18.90.11:8000/who").is_none(),
        "root namespace must not reach the jail"
    );

    // UTS and PID namespaces: hostname = jail name, PID 1 is the jail's init.
    assert_eq!(
        up.ok(&[
            "jail",
            "exec",
            "web-1",
            "--",
            "cat",
            "/proc/sys/kernel/hostname"
        ])
        .trim(),
        "web-1"
    );
    let ps = up.ok(&[
        "jail",
        "exec",
        "web-1",
        "--",
        "sh",
        "-c",
        "ls /proc | grep -c '^[0-9]'",
    ]);
    let count: u32 = ps.trim().parse().expect("a count");
    assert!(
        count < 10,
        "the jail sees only its own processes, saw {count}"
    );

    // Private /tmp: what one jail writes there, neither the machine nor another jail sees.
    let marker = format!("citadel-netns-{}", std::process::id());
    up.ok(&[
        "jail",
        "exec",
        "web-1",
        "--",
        "sh",
        "-c",
        &format!("echo x > /tmp/{marker}"),
    ]);
    assert!(
        !std::path::Path::new("/tmp").join(&marker).exists(),
        "host /tmp is untouched"
    );
    let other = up.cli(&[
        "jail",
        "exec",
        "web-2",
        "--",
        "test",
        "-e",
        &format!("/tmp/{marker}"),
    ]);
    assert!(!other.status.success(), "web-2 does not see web-1's /tmp");
    let own = up.cli(&[
        "jail",
        "exec",
        "web-1",
        "--",
        "test",
        "-e",
        &format!("/tmp/{marker}"),
    ]);
    assert!(own.status.success(), "web-1 sees its own /tmp");

    // Limits: forking past pids = 32 fails; allocating past 64 MiB is refused or killed.
    let forks = up.cli(&[
        "jail", "exec", "web-1", "--", "sh", "-c",
        "n=0; for i in $(seq 60); do sleep 20 & n=$((n+1)); done 2>/dev/null; echo $n; kill $(jobs -p) 2>/dev/null",
    ]);
    let stderr = String::from_utf8_lossy(&forks.stderr);
    let started: u32 = String::from_utf8_lossy(&forks.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        started < 60
            || stderr.contains("fork")
            || stderr.contains("Resource temporarily unavailable"),
        "the pids cap must stop a fork loop: started {started}, stderr {stderr}"
    );
    // The memory limit is in the jail's cgroup, and a real allocation past it is OOM-killed
    // there. /usr/bin/python3, not `python3` from PATH: that may be a pyenv shell shim, which
    // forks and can fail for reasons of its own.
    let (limit, kills_before) = memory_cgroup(&up, "web-1");
    assert_eq!(
        limit,
        (64u64 << 20).to_string(),
        "web-1's cgroup memory limit"
    );
    let hog = up.cli(&[
        "jail",
        "exec",
        "web-1",
        "--",
        "/usr/bin/python3",
        "-c",
        "b = bytearray(256 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('allocated')",
    ]);
    assert!(
        !String::from_utf8_lossy(&hog.stdout).contains("allocated"),
        "256 MiB must not fit in a 64 MiB jail"
    );
    let (_, kills_after) = memory_cgroup(&up, "web-1");
    assert!(
        kills_after > kills_before,
        "the kernel's OOM killer ran in web-1's cgroup (oom_kill {kills_before} → {kills_after}); exec: {:?} {}",
        hog.status,
        String::from_utf8_lossy(&hog.stderr)
    );
    healthy_or_explain(&up, "web-1");

    up.ok(&["jail", "restart", "web-2"]);
    healthy_or_explain(&up, "web-2");
    up.ok(&["jail", "stop", "back-1"]);
    wait_for(
        "back-1's cgroup gone after stop",
        Duration::from_secs(20),
        || {
            (!cgroups_left(&up.state)
                .iter()
                .any(|c| c.ends_with("/back-1")))
            .then_some(())
        },
    );
    wait_for(
        "the unused back bridge removed",
        Duration::from_secs(20),
        || (!host.links().contains("ctb-back")).then_some(()),
    );
    up.ok(&["jail", "start", "back-1"]);
    healthy_or_explain(&up, "back-1");
    up.ok(&["jail", "logs", "web-1"]);
    up.ok(&["down"]);
    wait_for("up exits after down", Duration::from_secs(30), || {
        (!alive(up.child.id() as i32)).then_some(())
    });
    nothing_left(&host, &up, &["web-1", "web-2", "back-1"], "down");
}

/// clone/archive/destroy/restore of a netns jail. The restored jail comes back on the address
/// it had, behind a new veth: it answers at once only because a jail's MAC follows its address
/// (with random MACs the host's stale ARP entry silenced it for up to a minute).
#[test]
fn netns_jails_clone_archive_restore() {
    if !is_root() {
        println!("SKIPPED: the netns backend needs root");
        return;
    }
    let host = HostNs::new(&format!("ct-nsclone-{}", std::process::id()));
    let jails = http_jail("web-1", "front = \"198.18.90.11\"", "");
    let up = host.up(&netns_cluster(&jails));
    up.wait_healthy(&["web-1"], Duration::from_secs(60));
    std::fs::write(up.data("web-1").join("who"), "web-1").expect("write");
    // clone → serves the source's data on its own address; archive/destroy/restore.
    up.ok(&[
        "jail",
        "clone",
        "web-1",
        "web-3",
        "--address",
        "front=198.18.90.13",
    ]);
    up.ok(&["jail", "start", "web-3"]);
    healthy_or_explain(&up, "web-3");
    let cloned = host.run(&[
        "curl",
        "-sf",
        "--max-time",
        "3",
        "http://198.18.90.13:8000/who",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&cloned.stdout),
        "web-1",
        "the clone has the data"
    );
    let archive = up.dir.path().join("web-3.tar.gz");
    up.ok(&["jail", "archive", "web-3", archive.to_str().expect("utf-8")]);
    up.ok(&["jail", "destroy", "web-3"]);
    wait_for(
        "web-3's veth and cgroup gone",
        Duration::from_secs(20),
        || {
            let gone = !cgroups_left(&up.state)
                .iter()
                .any(|c| c.ends_with("/web-3"));
            let links = host.links();
            (gone && !links.contains(&veth_of(&up, "web-3", "front"))).then_some(())
        },
    );
    up.ok(&["jail", "restore", archive.to_str().expect("utf-8")]);
    up.ok(&["jail", "start", "web-3"]);
    healthy_or_explain(&up, "web-3");
    let restored = host.run(&[
        "curl",
        "-sf",
        "--max-time",
        "3",
        "http://198.18.90.13:8000/who",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&restored.stdout),
        "web-1",
        "the restored jail has the data"
    );
}

/// The PIDs of `parent`'s children whose command line contains `needle`.
fn children_running(parent: u32, needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

/// Waits up to 30 s for [`leftovers`] to be empty; fails listing what is still there.
fn nothing_left(host: &HostNs, up: &Up, jails: &[&str], after: &str) {
    let mut left = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        left = leftovers(host, up, jails);
        if left.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("30 s after {after}, still there:\n{}", left.join("\n"));
}

/// kill -9 of `up`: the watchdog kills the jails and removes their veths, bridges and
/// cgroups. kill -9 of `up` *and* its watchdog: the jails are orphaned, and the next `up` on
/// the state dir finds and removes them (reconcile) before it starts its own.
#[test]
fn netns_kill_9_of_up_leaves_nothing() {
    if !is_root() {
        println!("SKIPPED: the netns backend needs root");
        return;
    }
    let host = HostNs::new(&format!("ct-nskill-{}", std::process::id()));
    let names = ["web-1", "web-2", "back-1"];
    let jails = [
        http_jail("web-1", "front = \"198.18.90.11\"", ""),
        http_jail("web-2", "front = \"198.18.90.12\"", ""),
        http_jail("back-1", "back = \"198.18.91.11\"", ""),
    ]
    .concat();
    let mut up = host.up(&netns_cluster(&jails));
    up.wait_healthy(&names, Duration::from_secs(60));
    let pids: Vec<i32> = names.iter().filter_map(|j| up.pid(j)).collect();
    assert_eq!(pids.len(), 3, "every jail has a pid");
    kill9(up.child.id() as i32);
    wait_for("no jail process left", Duration::from_secs(30), || {
        pids.iter().all(|&p| !alive(p)).then_some(())
    });
    nothing_left(&host, &up, &names, "kill -9 of up");

    // Again, with the watchdog killed first: nothing cleans up until the next start.
    let _ = up.child.wait();
    let dir = std::mem::replace(&mut up.dir, tempfile::tempdir().expect("tempdir"));
    drop(up);
    let mut up = host.up_in(dir);
    up.wait_healthy(&names, Duration::from_secs(60));
    let orphans: Vec<i32> = names.iter().filter_map(|j| up.pid(j)).collect();
    let watchdog = children_running(up.child.id(), "__reaper");
    assert_eq!(watchdog.len(), 1, "one watchdog under up: {watchdog:?}");
    kill9(watchdog[0]);
    wait_for("the watchdog gone", Duration::from_secs(10), || {
        (!alive(watchdog[0])).then_some(())
    });
    kill9(up.child.id() as i32);
    let _ = up.child.wait();
    assert!(
        orphans.iter().all(|&p| alive(p)),
        "with no watchdog the jails outlive up (what the next start must clean)"
    );
    assert!(
        !leftovers(&host, &up, &names).is_empty(),
        "the orphaned jails hold veths and cgroups"
    );
    let dir = std::mem::replace(&mut up.dir, tempfile::tempdir().expect("tempdir"));
    drop(up);
    let up = host.up_in(dir);
    wait_for("the orphaned jails killed", Duration::from_secs(30), || {
        orphans.iter().all(|&p| !alive(p)).then_some(())
    });
    up.wait_healthy(&names, Duration::from_secs(60));
    assert!(
        up.up_log()
            .contains("removed what an earlier run left behind"),
        "the start says what it reconciled:\n{}",
        up.up_log()
    );
    up.ok(&["down"]);
    wait_for("up exits after down", Duration::from_secs(30), || {
        (!alive(up.child.id() as i32)).then_some(())
    });
    nothing_left(&host, &up, &names, "down");
}

/// `citadel agent run --host H` runs only H's jails of a file that names several hosts (each
/// host a namespace with its own agent and state dir); a host the file does not have is
/// refused; `agent install` writes the repository's unit with this binary and the agent's
/// environment, and installs nothing from an invalid file. Addresses: 198.18.93.0/24.
#[test]
fn agent_runs_only_its_hosts_jails_and_installs_a_unit() {
    if !is_root() {
        println!("SKIPPED: the netns backend needs root");
        return;
    }
    let cluster = r#"
[cluster]
name = "t"
[segments]
front = "198.18.93.0/24"
[[host]]
name = "a"
backend = "netns"
[[host]]
name = "b"
backend = "netns"
"#
    .to_string()
        + &http_jail("web-a", "front = \"198.18.93.11\"", "")
            .replace("host = \"box\"", "host = \"a\"")
        + &http_jail("web-b", "front = \"198.18.93.12\"", "")
            .replace("host = \"box\"", "host = \"b\"");
    let ns_a = HostNs::new(&format!("ct-agent-a-{}", std::process::id()));
    let ns_b = HostNs::new(&format!("ct-agent-b-{}", std::process::id()));
    let mut a = ns_a.agent("a", &cluster);
    let b = ns_b.agent("b", &cluster);
    a.wait_healthy(&["web-a"], Duration::from_secs(60));
    b.wait_healthy(&["web-b"], Duration::from_secs(60));
    let names = |up: &Up| -> Vec<String> {
        up.status()["jails"]
            .as_array()
            .expect("jails")
            .iter()
            .map(|j| j["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(names(&a), ["web-a"], "agent a runs only host a's jail");
    assert_eq!(names(&b), ["web-b"], "agent b runs only host b's jail");
    let served = ns_a.run(&[
        "curl",
        "-sf",
        "--max-time",
        "3",
        "http://198.18.93.11:8000/",
    ]);
    assert!(served.status.success(), "web-a answers on host a");
    let clone = a.cli(&[
        "jail",
        "clone",
        "web-a",
        "web-a2",
        "--address",
        "front=198.18.93.13",
    ]);
    assert!(
        clone.status.success(),
        "a clone of a local jail stays local"
    );
    assert!(names(&a).contains(&"web-a2".to_string()));
    // A jail for another host is refused here rather than run in the wrong place.
    let archive = a.dir.path().join("web-a2.tar.gz");
    a.ok(&[
        "jail",
        "archive",
        "web-a2",
        archive.to_str().expect("utf-8"),
    ]);
    let elsewhere = a.cli(&[
        "jail",
        "restore",
        archive.to_str().expect("utf-8"),
        "--name",
        "web-x",
        "--host",
        "b",
    ]);
    let err = String::from_utf8_lossy(&elsewhere.stderr);
    assert!(
        !elsewhere.status.success() && err.contains("this agent runs host `a`"),
        "a restore onto host b through a's agent is refused: {err}"
    );
    assert!(!names(&a).contains(&"web-x".to_string()));

    // kill -9 of the agent: its watchdog takes its jails down with nothing of them left
    // (namespace, veth, cgroup, mount); started again on its state, it reconciles and runs
    // host a's jail again.
    let local = ["web-a", "web-a2"];
    let pids: Vec<i32> = local.iter().filter_map(|j| a.pid(j)).collect();
    assert!(a.pid("web-a").is_some(), "web-a runs");
    kill9(a.child.id() as i32);
    let _ = a.child.wait();
    wait_for("agent a's jails gone", Duration::from_secs(30), || {
        pids.iter().all(|&p| !alive(p)).then_some(())
    });
    nothing_left(&ns_a, &a, &local, "kill -9 of the agent");
    let state = std::mem::replace(&mut a.dir, tempfile::tempdir().expect("tempdir"));
    drop(a);
    let a = ns_a.run_in(state, &["agent", "run", "--host", "a"]);
    a.wait_healthy(&["web-a"], Duration::from_secs(60));
    assert!(
        ns_a.run(&[
            "curl",
            "-sf",
            "--max-time",
            "3",
            "http://198.18.93.11:8000/"
        ])
        .status
        .success(),
        "web-a answers again after the agent's restart"
    );
    assert!(!names(&b).is_empty(), "agent b was not touched");

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cluster.toml");
    std::fs::write(&file, &cluster).expect("write");
    let nope = Command::new(CITADEL)
        .args(["agent", "run", "--host", "nope", "--file"])
        .arg(&file)
        .arg("--state")
        .arg(dir.path().join("state"))
        .output()
        .expect("run citadel agent");
    let err = String::from_utf8_lossy(&nope.stderr);
    assert!(!nope.status.success(), "an unknown host is refused");
    assert!(
        err.contains("host `nope` is not in") && err.contains("a, b"),
        "names the host and the file's hosts: {err}"
    );

    let units = dir.path().join("units");
    let install = |file: &std::path::Path| {
        Command::new(CITADEL)
            .args(["agent", "install", "--host", "a", "--file"])
            .arg(file)
            .arg("--state")
            .arg(dir.path().join("agent-state"))
            .arg("--unit-dir")
            .arg(&units)
            .arg("--env-file")
            .arg(units.join("agent.env"))
            .arg("--no-start")
            .output()
            .expect("run citadel agent install")
    };
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[cluster]\nname = 1\n").expect("write");
    assert!(
        !install(&bad).status.success(),
        "an invalid file is refused"
    );
    assert!(!units.exists(), "and nothing is installed");
    let out = install(&file);
    assert!(
        out.status.success(),
        "install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = std::fs::read_to_string(units.join("citadel-agent.service")).expect("unit");
    assert!(
        unit.contains(&format!(
            "ExecStart={CITADEL} agent run --host ${{CITADEL_HOST}} --file ${{CITADEL_FILE}} --state ${{CITADEL_STATE}}"
        )),
        "the unit runs this binary:\n{unit}"
    );
    assert!(unit.contains(&format!(
        "EnvironmentFile={}",
        units.join("agent.env").display()
    )));
    let env = std::fs::read_to_string(units.join("agent.env")).expect("env");
    assert!(env.contains("CITADEL_HOST=a\n"), "{env}");
    assert!(env.contains("CITADEL_TLS=\n"), "no TLS asked: {env}");
    assert!(
        unit.contains("--state ${CITADEL_STATE} $CITADEL_TLS"),
        "{unit}"
    );
    assert!(
        env.contains(&format!("CITADEL_FILE={}\n", file.display())),
        "{env}"
    );
}

/// One segment across two boxes: each host's bridge takes the host's own address and enslaves
/// its `eth1` (`[[host]] addresses`, `links`), so a jail on box a reaches a jail on box b, and
/// box b reaches a's jail; when a box's jails are gone its bridge goes and `eth1` is free
/// again. Addresses: 198.18.94.0/24.
#[test]
fn a_segment_spans_boxes_through_their_links() {
    if !is_root() {
        println!("SKIPPED: the netns backend needs root");
        return;
    }
    let pid = std::process::id();
    let tag = |h: &str| format!("{h}{}", pid % 100_000);
    let switch = Switch::new(&format!("ct-sw-{pid}"));
    let ns_a = HostNs::new(&format!("ct-box-a-{pid}"));
    let ns_b = HostNs::new(&format!("ct-box-b-{pid}"));
    switch.plug(&ns_a, &tag("a"), "eth1");
    switch.plug(&ns_b, &tag("b"), "eth1");
    let on =
        |jail: String, host: &str| jail.replace("host = \"box\"", &format!("host = \"{host}\""));
    let cluster = r#"
[cluster]
name = "t"
[segments]
front = "198.18.94.0/24"
[[host]]
name = "a"
backend = "netns"
addresses = { front = "198.18.94.2" }
links = { front = "eth1" }
[[host]]
name = "b"
backend = "netns"
addresses = { front = "198.18.94.3" }
links = { front = "eth1" }
"#
    .to_string()
        + &on(http_jail("web-a", "front = \"198.18.94.11\"", ""), "a")
        + &on(http_jail("web-b", "front = \"198.18.94.12\"", ""), "b");
    let a = ns_a.agent("a", &cluster);
    let b = ns_b.agent("b", &cluster);
    a.wait_healthy(&["web-a"], Duration::from_secs(60));
    b.wait_healthy(&["web-b"], Duration::from_secs(60));
    std::fs::write(a.data("web-a").join("who"), "web-a").expect("write");
    std::fs::write(b.data("web-b").join("who"), "web-b").expect("write");

    let from_jail = a.cli(&[
        "jail",
        "exec",
        "web-a",
        "--",
        "/usr/bin/python3",
        "-c",
        "import urllib.request;print(urllib.request.urlopen('http://198.18.94.12:8000/who', timeout=3).read().decode(),end='')",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&from_jail.stdout),
        "web-b",
        "web-a (box a) reaches web-b (box b): {}",
        String::from_utf8_lossy(&from_jail.stderr)
    );
    let from_box = ns_b.run(&[
        "curl",
        "-sf",
        "--max-time",
        "3",
        "http://198.18.94.11:8000/who",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&from_box.stdout),
        "web-a",
        "box b reaches web-a on box a"
    );
    let bridge_addr = ns_a.run(&["ip", "-o", "-4", "addr", "show", "dev", "ctb-front"]);
    assert!(
        String::from_utf8_lossy(&bridge_addr.stdout).contains("198.18.94.2/24"),
        "box a's bridge has box a's address"
    );

    a.ok(&["down"]);
    wait_for("agent a exits after down", Duration::from_secs(30), || {
        (!alive(a.child.id() as i32)).then_some(())
    });
    nothing_left(&ns_a, &a, &["web-a"], "down of agent a");
    let eth1 = String::from_utf8_lossy(&ns_a.run(&["ip", "-o", "link", "show", "eth1"]).stdout)
        .into_owned();
    assert!(
        eth1.contains("eth1") && !eth1.contains("master"),
        "eth1 is released with the bridge: {eth1}"
    );
}

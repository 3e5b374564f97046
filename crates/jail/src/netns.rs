//! The `netns` backend: a jail in its own network, mount, PID, UTS and IPC namespaces, joined
//! to its host's segments by a veth pair whose host end sits in a per-segment bridge, and held
//! to its limits by a cgroup (v1 or v2).
//!
//! How a jail starts (why this shape: `unshare`/`setns` are only safe in a single-threaded
//! process, and the first child forked after `unshare(CLONE_NEWPID)` is PID 1 of the new
//! namespace, whose exit ends it):
//! 1. the agent spawns `citadel __jail-init CONFIG -- PROGRAM ARGS…`; between fork and exec
//!    (`pre_exec`, single-threaded) the child unshares NET, MNT, UTS, IPC and PID;
//! 2. the agent, from outside, puts the helper into the jail's cgroups, creates each veth pair
//!    with the jail's end moved straight into the helper's network namespace (by PID), attaches
//!    the host end to the segment's bridge, then writes `go` on the helper's stdin;
//! 3. the helper forks PID 1 of the jail ("init"), which makes mounts private, mounts a fresh
//!    /tmp (tmpfs) and /proc, sets the hostname to the jail's name, configures the addresses
//!    and `lo`, and forks the program; it reaps orphans and exits with the program's status.
//!
//! Nothing outlives the jail by construction: when its last process dies the kernel frees the
//! network namespace, which destroys the veth pair; the mount namespace goes with it. What
//! does remain — the cgroup directories and a bridge no jail uses — is removed when the jail
//! exits, by the watchdog when the agent dies, and by [`reconcile`] at the next start.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Bridges the agent makes start with this; only those are ever deleted.
pub const BRIDGE_PREFIX: &str = "ctb-";
/// Host ends of jail veth pairs start with this.
pub const VETH_PREFIX: &str = "ctv";

/// Serialises bridge creation/attachment against the removal of unused bridges.
static BRIDGES: Mutex<()> = Mutex::new(());
/// Serialises making a jail's cgroup against removing its (then empty) scope directory.
static CGROUPS: Mutex<()> = Mutex::new(());

/// One interface of a jail.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JailIface {
    pub segment: String,
    /// Name inside the jail (`eth0`, `eth1`… in address order).
    pub inside: String,
    /// Host end of the veth pair.
    pub host_veth: String,
    pub bridge: String,
    /// The bridge's own address (`ADDR/PREFIX`): how the host reaches the segment.
    pub bridge_addr: Option<String>,
    /// The jail's address, `ADDR/PREFIX`.
    pub addr: String,
    /// The host's interface that joins the bridge to the segment's other boxes.
    #[serde(default)]
    pub uplink: Option<String>,
}

/// What a netns jail needs beyond a process jail.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetnsJail {
    /// `citadel` itself, which has the `__jail-init` helper.
    pub init_program: PathBuf,
    pub hostname: String,
    pub ifaces: Vec<JailIface>,
    /// The jail's cgroup under each hierarchy (relative: `citadel/<scope>/<jail>`).
    pub cgroup: String,
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: u64,
}

/// What the helper reads from its command line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InitConfig {
    pub hostname: String,
    /// The jail's data directory (absolute): its working directory.
    pub data: PathBuf,
    /// The jail's directory (absolute; holds `data` and the role's config), kept visible if
    /// it lies under /tmp.
    #[serde(default)]
    pub root: PathBuf,
    pub ifaces: Vec<(String, String)>,
}

/// Stable short hash (FNV-1a): device and cgroup names must be the same from one run to the
/// next so that a restarted agent recognises its leftovers.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// `ctb-<segment>`, or a hashed form when the segment's name is too long for a Linux
/// interface name (15 bytes).
pub fn bridge_name(segment: &str) -> String {
    let name = format!("{BRIDGE_PREFIX}{segment}");
    if name.len() <= 15 {
        name
    } else {
        format!("{BRIDGE_PREFIX}{:011x}", fnv(segment) & 0xfff_ffff_ffff)
    }
}

pub fn veth_name(scope: &str, jail: &str, segment: &str) -> String {
    format!(
        "{VETH_PREFIX}{:012x}",
        fnv(&format!("{scope}/{jail}/{segment}")) & 0xffff_ffff_ffff
    )
}

/// A fixed MAC address for an IP address on a segment (locally administered, `02:<kind>:…`,
/// the IPv4 address in the last four bytes, as Docker does; a hash for anything else).
///
/// Why fixed: a jail that restarts, is restored or moves gets a new veth; with a random MAC,
/// every neighbour (the host's bridge, the other jails) keeps sending to the old one until its
/// ARP entry expires — up to a minute of silence. A bridge without a MAC of its own takes the
/// lowest of its ports' and changes it as jails come and go, with the same effect on the jails.
pub fn mac_for(addr: &str, kind: MacKind) -> String {
    let ip = addr.split('/').next().unwrap_or(addr);
    let tail: [u8; 4] = match ip.parse::<std::net::Ipv4Addr>() {
        Ok(v4) => v4.octets(),
        Err(_) => (fnv(ip) as u32).to_be_bytes(),
    };
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        kind as u8, tail[0], tail[1], tail[2], tail[3]
    )
}

/// Which kind of device a [`mac_for`] address is for: never the same MAC for a bridge and a
/// jail, even if a jail were given the bridge's own address.
#[derive(Clone, Copy, Debug)]
pub enum MacKind {
    Jail = 0xc7,
    Bridge = 0xc8,
}

/// Which state dir a cgroup belongs to: parallel agents (and tests) never touch each other's.
pub fn scope_of(state_dir: &Path) -> String {
    let dir = state_dir
        .canonicalize()
        .unwrap_or_else(|_| state_dir.to_path_buf());
    format!("{:016x}", fnv(&dir.to_string_lossy()))
}

fn ip_program() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("ip")
}

/// Runs `ip ARGS`; an error names the command and what `ip` said.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new(ip_program())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "cannot run `ip {}`: {e} (is iproute2 installed?)",
                args.join(" ")
            )
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip -o ARGS`, one line per link. (Not /sys/class/net: sysfs shows the namespace of whoever
/// mounted it, not ours, when the agent was moved into a namespace with `setns`.)
fn ip_lines(args: &[&str]) -> Vec<String> {
    Command::new(ip_program())
        .arg("-o")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Interface names in this network namespace (`veth@peer` is given as `veth`).
pub fn links() -> Vec<String> {
    ip_lines(&["link", "show"])
        .iter()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

fn link_exists(name: &str) -> bool {
    links().iter().any(|l| l == name)
}

/// How many jails' veths are on a bridge (an uplink does not keep a bridge alive: deleting the
/// bridge releases it, and the next jail enslaves it again).
fn bridge_ports(name: &str) -> usize {
    ip_lines(&["link", "show", "master", name])
        .iter()
        .filter(|l| {
            l.split(": ")
                .nth(1)
                .is_some_and(|n| n.starts_with(VETH_PREFIX))
        })
        .count()
}

/// Wires a started helper (`pid`) to its segments: bridges (made if missing), veth pairs.
pub fn attach(jail: &NetnsJail, pid: u32) -> Result<(), String> {
    let _guard = BRIDGES.lock().unwrap_or_else(|e| e.into_inner());
    let pid = pid.to_string();
    for i in &jail.ifaces {
        if !link_exists(&i.bridge) {
            let mac = mac_for(
                i.bridge_addr.as_deref().unwrap_or(&i.bridge),
                MacKind::Bridge,
            );
            ip(&[
                "link", "add", "name", &i.bridge, "address", &mac, "type", "bridge",
            ])?;
        }
        if let Some(addr) = &i.bridge_addr {
            // `replace` is idempotent: a bridge kept from an earlier run already has it.
            ip(&["addr", "replace", addr, "dev", &i.bridge])?;
        }
        ip(&["link", "set", &i.bridge, "up"])?;
        if let Some(uplink) = &i.uplink {
            // Idempotent: already its master for the other jails of the segment.
            ip(&["link", "set", uplink, "master", &i.bridge, "up"])?;
        }
        // A veth of an earlier run of this jail whose namespace is not gone yet.
        if link_exists(&i.host_veth) {
            let _ = ip(&["link", "del", &i.host_veth]);
        }
        ip(&[
            "link",
            "add",
            "name",
            &i.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            &i.inside,
            "address",
            &mac_for(&i.addr, MacKind::Jail),
            "netns",
            &pid,
        ])?;
        ip(&["link", "set", &i.host_veth, "master", &i.bridge, "up"])?;
        // The host knows the jail's MAC already (it follows the address): without this, a
        // health probe sent before the jail's init has configured its address leaves an
        // unanswered ARP entry that the kernel retries only after a second. A stale entry
        // is used at once and confirmed by the first reply.
        let jail_ip = i.addr.split('/').next().unwrap_or(&i.addr);
        ip(&[
            "neigh",
            "replace",
            jail_ip,
            "lladdr",
            &mac_for(&i.addr, MacKind::Jail),
            "dev",
            &i.bridge,
            "nud",
            "stale",
        ])?;
    }
    Ok(())
}

/// Deletes the named bridges that no veth uses any more (only ours: `ctb-` names).
pub fn remove_unused_bridges<'a>(names: impl IntoIterator<Item = &'a str>) {
    let _guard = BRIDGES.lock().unwrap_or_else(|e| e.into_inner());
    for name in names {
        if name.starts_with(BRIDGE_PREFIX)
            && link_exists(name)
            && bridge_ports(name) == 0
            && let Err(e) = ip(&["link", "del", name])
        {
            tracing::warn!(bridge = name, error = %e, "cannot remove an unused bridge");
        }
    }
}

/// The cgroup hierarchies of this machine: cgroup v2 alone (`/sys/fs/cgroup` is cgroup2 with
/// controllers), or v1 controllers each mounted on their own (the hybrid layout, where the
/// unified hierarchy has no controllers and is not used).
#[derive(Clone, Debug, PartialEq)]
pub enum Cgroups {
    V2(PathBuf),
    V1 {
        memory: Option<PathBuf>,
        cpu: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
}

impl Cgroups {
    pub fn detect() -> Cgroups {
        let root = Path::new("/sys/fs/cgroup");
        if root.join("cgroup.controllers").exists() {
            return Cgroups::V2(root.to_path_buf());
        }
        let ctl = |name: &str| {
            let p = root.join(name);
            p.join("cgroup.procs").exists().then_some(p)
        };
        Cgroups::V1 {
            memory: ctl("memory"),
            cpu: ctl("cpu"),
            pids: ctl("pids"),
        }
    }

    /// Every directory that holds a jail's cgroup (`rel` = `citadel/<scope>/<jail>`).
    pub fn dirs(&self, rel: &str) -> Vec<PathBuf> {
        match self {
            Cgroups::V2(root) => vec![root.join(rel)],
            Cgroups::V1 { memory, cpu, pids } => [memory, cpu, pids]
                .into_iter()
                .flatten()
                .map(|r| r.join(rel))
                .collect(),
        }
    }

    fn roots(&self) -> Vec<PathBuf> {
        match self {
            Cgroups::V2(root) => vec![root.clone()],
            Cgroups::V1 { memory, cpu, pids } => {
                [memory, cpu, pids].into_iter().flatten().cloned().collect()
            }
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value)
        .map_err(|e| format!("cannot write {value:?} to {}: {e}", path.display()))
}

/// Makes the jail's cgroups with its limits and puts `pid` in them.
pub fn enter_cgroups(cg: &Cgroups, jail: &NetnsJail, pid: u32) -> Result<(), String> {
    let mkdir = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|e| format!("cannot create cgroup {}: {e}", p.display()))
    };
    let pid = pid.to_string();
    let _guard = CGROUPS.lock().unwrap_or_else(|e| e.into_inner());
    match cg {
        Cgroups::V2(root) => {
            // Controllers must be enabled on every level above the jail's group.
            let mut dir = root.clone();
            for part in Path::new(&jail.cgroup)
                .parent()
                .into_iter()
                .flat_map(|p| p.iter())
            {
                let _ = write(&dir.join("cgroup.subtree_control"), "+memory +cpu +pids");
                dir = dir.join(part);
                mkdir(&dir)?;
            }
            let _ = write(&dir.join("cgroup.subtree_control"), "+memory +cpu +pids");
            let g = root.join(&jail.cgroup);
            mkdir(&g)?;
            if let Some(m) = jail.memory {
                write(&g.join("memory.max"), &m.to_string())?;
                let _ = write(&g.join("memory.swap.max"), "0");
            }
            if let Some(c) = jail.cpus {
                write(
                    &g.join("cpu.max"),
                    &format!("{} 100000", (c * 100_000.0) as u64),
                )?;
            }
            write(&g.join("pids.max"), &jail.pids.to_string())?;
            write(&g.join("cgroup.procs"), &pid)?;
        }
        Cgroups::V1 { memory, cpu, pids } => {
            if let Some(root) = memory {
                let g = root.join(&jail.cgroup);
                mkdir(&g)?;
                if let Some(m) = jail.memory {
                    write(&g.join("memory.limit_in_bytes"), &m.to_string())?;
                    // Without swap accounting this file does not exist; the limit still holds
                    // for RAM.
                    if g.join("memory.memsw.limit_in_bytes").exists() {
                        let _ = write(&g.join("memory.memsw.limit_in_bytes"), &m.to_string());
                    }
                }
                write(&g.join("cgroup.procs"), &pid)?;
            }
            if let Some(root) = cpu {
                let g = root.join(&jail.cgroup);
                mkdir(&g)?;
                if let Some(c) = jail.cpus {
                    write(&g.join("cpu.cfs_period_us"), "100000")?;
                    write(
                        &g.join("cpu.cfs_quota_us"),
                        &((c * 100_000.0) as u64).to_string(),
                    )?;
                }
                write(&g.join("cgroup.procs"), &pid)?;
            }
            if let Some(root) = pids {
                let g = root.join(&jail.cgroup);
                mkdir(&g)?;
                write(&g.join("pids.max"), &jail.pids.to_string())?;
                write(&g.join("cgroup.procs"), &pid)?;
            }
        }
    }
    Ok(())
}

fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Removes a cgroup directory, first killing anything still in it; waits up to `wait` for the
/// kernel to let go of exiting processes.
pub fn remove_cgroup(dir: &Path, wait: Duration) {
    if !dir.exists() {
        return;
    }
    let deadline = Instant::now() + wait;
    loop {
        for p in procs(dir) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() >= deadline => {
                tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove a jail's cgroup");
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Removes a jail's cgroup directory (as [`remove_cgroup`]) and then its scope directory
/// (`citadel/<scope>`) if no other jail of the state dir has one there. The top `citadel`
/// directory is shared by every agent on the machine and stays.
pub fn remove_jail_cgroup(dir: &Path, wait: Duration) {
    remove_cgroup(dir, wait);
    let _guard = CGROUPS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(scope) = dir.parent() {
        // Fails (EBUSY/ENOTEMPTY) while another jail's group is in it: that is the point.
        let _ = std::fs::remove_dir(scope);
    }
}

/// Everything a jail leaves on the host once its processes are gone: its cgroups and, when no
/// other jail uses them, its bridges. (The veth pairs die with the network namespace.)
pub fn cleanup(jail: &NetnsJail) {
    let cg = Cgroups::detect();
    for dir in cg.dirs(&jail.cgroup) {
        remove_jail_cgroup(&dir, Duration::from_secs(2));
    }
    for i in &jail.ifaces {
        if link_exists(&i.host_veth) {
            let _ = ip(&["link", "del", &i.host_veth]);
        }
    }
    remove_unused_bridges(jail.ifaces.iter().map(|i| i.bridge.as_str()));
}

/// At start (and in the watchdog): removes what jails of this state dir left behind when
/// everything that could clean up died at once — their cgroups (killing what is still in
/// them) and our bridges with no jail attached.
pub fn reconcile(scope: &str) -> Vec<String> {
    let mut removed = Vec::new();
    for root in Cgroups::detect().roots() {
        let dir = root.join("citadel").join(scope);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_cgroup(&e.path(), Duration::from_secs(3));
                removed.push(e.path().display().to_string());
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
    let bridges: Vec<String> = links()
        .into_iter()
        .filter(|n| n.starts_with(BRIDGE_PREFIX) && bridge_ports(n) == 0)
        .collect();
    remove_unused_bridges(bridges.iter().map(String::as_str));
    removed.extend(bridges);
    removed
}

/// The descriptor on which a jail's init reports that its namespaces are set up (`ok`) or
/// why not: the agent marks the jail running only then, so its first health probe does not
/// go to an interface that is still down (a SYN lost there costs the probe's whole timeout).
pub const READY_FD: i32 = 3;

/// Called between fork and exec of the helper (single-threaded child, async-signal-safe calls
/// only): unshares its namespaces and puts the write end of the readiness pipe at
/// [`READY_FD`], open across exec.
pub fn prepare_helper(ready_w: i32) -> std::io::Result<()> {
    use nix::sched::CloneFlags;
    nix::sched::unshare(
        CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWPID,
    )?;
    // SAFETY: plain descriptor calls on numbers this process owns.
    unsafe {
        if ready_w == READY_FD {
            // dup2 onto itself would keep close-on-exec.
            if nix::libc::fcntl(READY_FD, nix::libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        } else if nix::libc::dup2(ready_w, READY_FD) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits (up to `wait`) for the jail's init to report on the readiness pipe.
pub fn wait_ready(ready_r: &std::os::fd::OwnedFd, wait: Duration) -> Result<(), String> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the jail's init did not finish setting up within {wait:?}"
            ));
        }
        let ms =
            PollTimeout::try_from(left.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(ready_r.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(format!("cannot wait for the jail's init: {e}")),
        }
        let mut buf = [0u8; 512];
        match nix::unistd::read(ready_r, &mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("cannot read the jail's init report: {e}")),
        }
        if got.ends_with(b"\n") {
            break;
        }
    }
    match String::from_utf8_lossy(&got).trim() {
        "ok" => Ok(()),
        "" => Err("the jail's init exited while setting up (see the jail's log)".into()),
        why => Err(why.to_string()),
    }
}

/// The PID (as the host sees it) of a netns jail's init, the process whose namespaces `exec`
/// enters: the only child of the helper.
pub fn init_pid(helper: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{helper}/task/{helper}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `citadel __jail-init CONFIG -- PROGRAM ARGS…`: runs in the namespaces `unshare_namespaces`
/// made; see the module's comment. Never returns.
pub fn run_jail_init(config: &str, program: &str, args: &[String]) -> ! {
    let fail = |what: String| -> ! {
        eprintln!("citadel jail init: {what}");
        std::process::exit(125)
    };
    let cfg: InitConfig =
        serde_json::from_str(config).unwrap_or_else(|e| fail(format!("bad config: {e}")));
    use nix::sys::signal::{SigHandler, Signal, signal};
    // The agent signals the jail's whole process group: the program must get SIGTERM, the
    // helper and init must live until it has exited (init, as PID 1, ignores it anyway).
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: single-threaded; SIG_IGN installs no handler code.
        unsafe {
            let _ = signal(s, SigHandler::SigIgn);
        }
    }
    // Wait for the agent: cgroups joined, veths in place. EOF without `go` means it gave up.
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    if line.trim() != "go" {
        fail("the agent did not finish setting up the jail".into());
    }
    use nix::unistd::{ForkResult, fork};
    use std::os::fd::FromRawFd;
    // SAFETY: the agent put the readiness pipe's write end at READY_FD (prepare_helper);
    // nothing else in this process owns that number.
    let ready = unsafe { std::fs::File::from_raw_fd(READY_FD) };
    // SAFETY: this process is single-threaded (a fresh exec of citadel that started nothing).
    match unsafe { fork() } {
        Err(e) => fail(format!("cannot fork the jail's init: {e}")),
        Ok(ForkResult::Parent { child }) => {
            // Only init reports; the agent sees EOF if init dies without a word.
            drop(ready);
            std::process::exit(wait_for(child))
        }
        Ok(ForkResult::Child) => {}
    }
    // PID 1 of the jail.
    let mut ready = ready;
    if let Err(e) = init_setup(&cfg) {
        let _ = writeln!(ready, "{e}");
        fail(e);
    }
    // Closed here: the program must not inherit it.
    let _ = ready.write_all(b"ok\n");
    drop(ready);
    let devnull =
        std::fs::File::open("/dev/null").unwrap_or_else(|e| fail(format!("/dev/null: {e}")));
    let _ = nix::unistd::dup2_stdin(&devnull);
    let mut cmd = Command::new(program);
    // The working directory (the jail's data) is inherited from the agent's spawn.
    cmd.args(args);
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
                let _ = signal(s, SigHandler::SigDfl);
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| fail(format!("cannot start {program}: {e}")));
    std::process::exit(wait_for(nix::unistd::Pid::from_raw(child.id() as i32)))
}

/// Reaps every child (as PID 1 it inherits orphans) until `main` exits; returns its exit code
/// as a shell would report it.
fn wait_for(main: nix::unistd::Pid) -> i32 {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(p, code)) if p == main => return code,
            Ok(WaitStatus::Signaled(p, sig, _)) if p == main => return 128 + sig as i32,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return 125,
        }
    }
}

fn init_setup(cfg: &InitConfig) -> Result<(), String> {
    use nix::mount::{MsFlags, mount};
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("cannot make mounts private: {e}"))?;
    // The jail's directory (its data, and the config a role reads) may lie under /tmp (a state
    // dir in a temporary directory): hold it by a descriptor, and bind it back at its path on
    // the fresh /tmp.
    let keep = if cfg.root.as_os_str().is_empty() {
        &cfg.data
    } else {
        &cfg.root
    };
    let data = std::fs::File::open(keep)
        .map_err(|e| format!("cannot open the jail's directory {}: {e}", keep.display()))?;
    mount(
        Some("tmpfs"),
        "/tmp",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .map_err(|e| format!("cannot mount a private /tmp: {e}"))?;
    if keep.starts_with("/tmp") {
        use std::os::fd::AsRawFd;
        std::fs::create_dir_all(keep)
            .map_err(|e| format!("cannot create {} on the private /tmp: {e}", keep.display()))?;
        let held = format!("/proc/self/fd/{}", data.as_raw_fd());
        mount(
            Some(held.as_str()),
            keep,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("cannot keep {} visible: {e}", keep.display()))?;
    }
    drop(data);
    std::env::set_current_dir(&cfg.data)
        .map_err(|e| format!("cannot enter {}: {e}", cfg.data.display()))?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("cannot mount /proc: {e}"))?;
    nix::unistd::sethostname(&cfg.hostname)
        .map_err(|e| format!("cannot set the hostname to {}: {e}", cfg.hostname))?;
    ip(&["link", "set", "lo", "up"])?;
    for (dev, addr) in &cfg.ifaces {
        // Announce the address when the link comes up (gratuitous ARP): neighbours that tried
        // to reach it before it existed learn it now rather than at their next retry.
        let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{dev}/arp_notify"), "1");
        ip(&["addr", "add", addr, "dev", dev])?;
        ip(&["link", "set", dev, "up"])?;
    }
    Ok(())
}

/// Tells the helper to go on (after `attach` and `enter_cgroups`).
pub fn release(stdin: &mut impl Write) -> std::io::Result<()> {
    stdin.write_all(b"go\n")?;
    stdin.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_follow_the_address_and_differ_by_kind() {
        assert_eq!(
            mac_for("198.18.90.13/24", MacKind::Jail),
            "02:c7:c6:12:5a:0d"
        );
        assert_eq!(
            mac_for("198.18.90.13", MacKind::Jail),
            mac_for("198.18.90.13/24", MacKind::Jail)
        );
        assert_ne!(
            mac_for("198.18.90.1/24", MacKind::Jail),
            mac_for("198.18.90.1/24", MacKind::Bridge)
        );
        assert_ne!(
            mac_for("fd00::1", MacKind::Jail),
            mac_for("fd00::2", MacKind::Jail)
        );
    }

    #[test]
    fn long_segment_names_still_make_valid_interface_names() {
        assert_eq!(bridge_name("front"), "ctb-front");
        assert!(bridge_name("a-very-long-segment-name").len() <= 15);
        assert!(veth_name("scope", "jail", "front").len() <= 15);
    }
}

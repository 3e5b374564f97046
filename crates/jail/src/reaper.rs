//! A watchdog process that outlives `citadel up`: it is told the process group of every jail,
//! and when its stdin closes — `up` exited, however it died, even by SIGKILL — it kills them all.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub struct Reaper {
    stdin: Mutex<ChildStdin>,
    child: Mutex<Child>,
}

impl Reaper {
    /// Starts the watchdog: `program args…` must call [`run_reaper`].
    pub fn spawn(program: &Path, args: &[&str]) -> std::io::Result<Reaper> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            // Its own process group: a Ctrl-C meant for `up` must not kill the watchdog first.
            .process_group(0)
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("watchdog has no stdin"))?;
        Ok(Reaper {
            stdin: Mutex::new(stdin),
            child: Mutex::new(child),
        })
    }

    fn send(&self, line: String) {
        if let Ok(mut stdin) = self.stdin.lock()
            && let Err(e) = stdin.write_all(line.as_bytes())
        {
            tracing::warn!(error = %e, "the jail watchdog is gone; jails may outlive a crash of citadel up");
        }
    }

    pub fn watch(&self, pgid: u32) {
        self.send(format!("+{pgid}\n"));
    }

    /// What a netns jail leaves on the host if everything dies at once: its cgroup
    /// directories and its bridges (removed when unused).
    pub fn watch_netns(&self, jail: &crate::netns::NetnsJail) {
        let mut lines = String::new();
        for dir in crate::netns::Cgroups::detect().dirs(&jail.cgroup) {
            lines.push_str(&format!("c{}\n", dir.display()));
        }
        for i in &jail.ifaces {
            lines.push_str(&format!("b{}\n", i.bridge));
        }
        self.send(lines);
    }

    pub fn forget(&self, pgid: u32) {
        self.send(format!("-{pgid}\n"));
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().map_or(0, |c| c.id())
    }
}

/// The watchdog's main loop.
pub fn run_reaper() -> ! {
    let mut groups = BTreeSet::new();
    let mut cgroups = BTreeSet::new();
    let mut bridges = BTreeSet::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (sign, num) = line.split_at(line.len().min(1));
        match sign {
            "c" => {
                cgroups.insert(std::path::PathBuf::from(num));
                continue;
            }
            "b" => {
                bridges.insert(num.to_string());
                continue;
            }
            _ => {}
        }
        let Ok(pgid) = num.trim().parse::<i32>() else {
            continue;
        };
        if pgid <= 1 {
            continue;
        }
        match sign {
            "+" => {
                groups.insert(pgid);
            }
            "-" => {
                groups.remove(&pgid);
            }
            _ => {}
        }
    }
    kill_groups(&groups, Duration::from_secs(3));
    // The jails' processes are gone: their network namespaces, and with them the veths, are
    // freed by the kernel; cgroups and bridges are ours to remove.
    for dir in &cgroups {
        crate::netns::remove_jail_cgroup(dir, Duration::from_secs(3));
    }
    crate::netns::remove_unused_bridges(bridges.iter().map(String::as_str));
    std::process::exit(0)
}

/// SIGTERM to every group, then SIGKILL to any still alive after `grace`.
fn kill_groups(groups: &BTreeSet<i32>, grace: Duration) {
    let alive = |g: i32| kill(Pid::from_raw(-g), None).is_ok();
    for &g in groups {
        let _ = kill(Pid::from_raw(-g), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && groups.iter().any(|&g| alive(g)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &g in groups {
        let _ = kill(Pid::from_raw(-g), Signal::SIGKILL);
    }
}

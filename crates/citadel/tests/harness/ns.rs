//! Hosts as network namespaces: a `HostNs` is a box (`ip netns add`, deleted when dropped),
//! a `Switch` a namespace holding a bridge that boxes plug into.

use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

use super::{CITADEL, Up};

/// A network namespace made for the test, deleted when dropped.
pub struct HostNs {
    pub name: String,
}

impl HostNs {
    pub fn new(name: &str) -> HostNs {
        // A namespace of the same name left by an earlier, killed run of this test.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .expect("run ip netns add");
        assert!(ok.success(), "ip netns add {name}");
        let ns = HostNs { name: name.into() };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    pub fn links(&self) -> String {
        String::from_utf8_lossy(&self.run(&["ip", "-o", "link"]).stdout).into_owned()
    }

    /// Starts `citadel up` inside this namespace (setns in the child before exec).
    pub fn up(&self, cluster: &str) -> Up {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cluster.toml"), cluster).expect("write cluster file");
        self.up_in(dir)
    }

    /// Starts `citadel up` again on what an earlier one left in `dir` (file, state dir).
    pub fn up_in(&self, dir: tempfile::TempDir) -> Up {
        self.run_in(dir, &["up"])
    }

    /// Starts `citadel agent run --host HOST` on `cluster` inside this namespace.
    pub fn agent(&self, host: &str, cluster: &str) -> Up {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cluster.toml"), cluster).expect("write cluster file");
        self.run_in(dir, &["agent", "run", "--host", host])
    }

    /// Runs `citadel VERB… --file DIR/cluster.toml --state DIR/state` inside this namespace.
    pub fn run_in(&self, dir: tempfile::TempDir, verb: &[&str]) -> Up {
        let file = dir.path().join("cluster.toml");
        let state = dir.path().join("state");
        // A socket left by a killed `up`: wait for the new one, not the old file.
        let _ = std::fs::remove_file(state.join("control.sock"));
        let mut cmd = Command::new(CITADEL);
        cmd.args(verb)
            .arg("--file")
            .arg(&file)
            .arg("--state")
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("up.out")).expect("out"))
            .stderr(std::fs::File::create(dir.path().join("up.log")).expect("log"));
        self.enter(&mut cmd);
        Up::attach(cmd.spawn().expect("spawn citadel up"), dir, state)
    }
}

impl Drop for HostNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Moves the calling thread into the named namespace's network (its sockets live there).
pub fn enter_thread(name: &str) {
    let ns = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

impl HostNs {
    /// Makes `cmd` run inside this namespace's network (setns in the child before exec).
    pub fn enter(&self, cmd: &mut Command) {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        // SAFETY: setns is one system call on a descriptor opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
    }

    /// Runs a command here that must succeed.
    pub fn must(&self, args: &[&str]) {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{} in {}: {}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A "switch" for a segment spanning boxes: a namespace holding a bridge; `plug` joins a host
/// namespace to it by a veth pair.
pub struct Switch {
    pub ns: HostNs,
}

impl Switch {
    pub fn new(name: &str) -> Switch {
        let ns = HostNs::new(name);
        for args in [
            &["ip", "link", "add", "sw", "type", "bridge"][..],
            &["ip", "link", "set", "sw", "up"][..],
        ] {
            assert!(ns.run(args).status.success(), "{args:?}");
        }
        Switch { ns }
    }

    /// Joins `host` to the switch by a veth pair whose end in `host` is named `ifname`.
    pub fn plug(&self, host: &HostNs, tag: &str, ifname: &str) {
        let (outer, inner) = (format!("ctp{tag}"), format!("ctq{tag}"));
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &outer, "netns", &host.name, "name", ifname]);
        ip(&["link", "set", &inner, "netns", &self.ns.name]);
        assert!(
            host.run(&["ip", "link", "set", ifname, "up"])
                .status
                .success()
        );
        assert!(
            self.ns
                .run(&["ip", "link", "set", &inner, "master", "sw", "up"])
                .status
                .success()
        );
    }
}

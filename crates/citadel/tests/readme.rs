//! The README as a newcomer reads it: in a fresh clone, its first command runs the built-in
//! cluster, and its "Try it" block, pasted into a second shell, works as written. Its second
//! command is the one CI runs (`.ci/run` calls it), so it is checked, not run again from here.
//!
//! The clone is of the committed tree (what a newcomer gets), built into
//! `target/readme-clone` of this workspace so that repeated runs build incrementally.

mod harness;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The `sh` code blocks of a Markdown text, each with the heading it stands under.
fn sh_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut heading = String::new();
    let mut block: Option<String> = None;
    for line in markdown.lines() {
        match &mut block {
            Some(text) if line.trim_start().starts_with("```") => {
                blocks.push((heading.clone(), std::mem::take(text)));
                block = None;
            }
            Some(text) => {
                text.push_str(line);
                text.push('\n');
            }
            None if line.trim() == "```sh" => block = Some(String::new()),
            None if line.starts_with('#') => heading = line.trim_matches('#').trim().to_string(),
            None => {}
        }
    }
    blocks
}

/// A command line without its trailing `# comment`.
fn command_of(line: &str) -> &str {
    line.split(" #").next().unwrap_or(line).trim()
}

/// The process group of `cargo run … up`, ended when the test ends however it ends.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let pgid = nix::unistd::Pid::from_raw(-(self.0.id() as i32));
            let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = self.0.wait();
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn the_readme_commands_work_in_a_fresh_clone() {
    let root = workspace();
    let dir = tempfile::tempdir().expect("tempdir");
    let clone = dir.path().join("citadel");
    let cloned = Command::new("git")
        .args(["clone", "--quiet"])
        .arg(&root)
        .arg(&clone)
        .status()
        .expect("git");
    assert!(cloned.success(), "git clone {}", root.display());
    let target = root.join("target/readme-clone");
    std::fs::create_dir_all(&target).expect("target dir");
    std::os::unix::fs::symlink(&target, clone.join("target")).expect("target symlink");

    let readme = std::fs::read_to_string(clone.join("README.md")).expect("README.md");
    let blocks = sh_blocks(&readme);
    let (_, first) = blocks.first().expect("the README opens with a sh block");
    let commands: Vec<&str> = first.lines().map(command_of).collect();
    assert_eq!(
        commands,
        ["cargo run --release -- up", "scripts/test"],
        "the README opens with exactly two commands: {first}"
    );
    let ci = std::fs::read_to_string(clone.join(".ci/run")).expect(".ci/run");
    assert!(
        ci.lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains("scripts/test")),
        "CI runs the README's test command: {ci}"
    );
    let (_, try_it) = blocks
        .iter()
        .find(|(heading, _)| heading == "Try it")
        .expect("a \"Try it\" section with a sh block");

    // The first command, typed as written, in the clone.
    let _addresses = builtin_addresses();
    let log = dir.path().join("up.log");
    let up_log = std::fs::File::create(&log).expect("log");
    let mut up = Group(
        Command::new("bash")
            .args(["-c", commands[0]])
            .current_dir(&clone)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET_DIR")
            .stdin(Stdio::null())
            .stdout(up_log.try_clone().expect("log"))
            .stderr(up_log)
            .process_group(0)
            .spawn()
            .expect("bash"),
    );
    let citadel = clone.join("target/release/citadel");
    // A release build from scratch takes minutes on a small machine.
    wait_for(
        "the README's first command to run a healthy cluster",
        Duration::from_secs(40 * 60),
        || {
            if let Some(code) = up.0.try_wait().expect("wait") {
                panic!("`{}` exited ({code}):\n{}", commands[0], tail(&log));
            }
            // `up` prints its table, then this line: from here the README says the cluster
            // answers.
            std::fs::read_to_string(&log)
                .ok()?
                .contains("is running (pid")
                .then_some(())
        },
    );
    let out = Command::new(&citadel)
        .args(["status", "--json"])
        .current_dir(&clone)
        .output()
        .expect("citadel status");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let jails = status["jails"].as_array().expect("jails");
    assert!(
        jails.len() == 9 && jails.iter().all(|j| j["health"] == "healthy"),
        "up printed its table before every jail was healthy: {status:#}"
    );
    // No wait here: `up` waits for the gate's verdicts before it prints its table, so every
    // balanced jail is in rotation already.
    let out = Command::new(&citadel)
        .args(["gate", "backends"])
        .current_dir(&clone)
        .output()
        .expect("citadel gate backends");
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let in_rotation = table
        .lines()
        .filter(|l| (l.contains(" app-") || l.contains(" store-")) && l.contains(" up "))
        .count();
    assert_eq!(
        in_rotation,
        4,
        "up printed its table before the gate had both app and both store jails up:\n{table}\n{}",
        tail(&log)
    );

    // The "Try it" block, pasted into a second shell in the same directory.
    let output = dir.path().join("try-it.log");
    let shell_log = std::fs::File::create(&output).expect("log");
    let mut shell = KillOnDrop(
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", try_it])
            .current_dir(&clone)
            .stdin(Stdio::null())
            .stdout(shell_log.try_clone().expect("log"))
            .stderr(shell_log)
            .spawn()
            .expect("bash"),
    );
    let code = wait_for("the Try it block", Duration::from_secs(180), || {
        shell.0.try_wait().expect("wait")
    });
    let said = std::fs::read_to_string(&output).expect("output");
    assert!(code.success(), "the Try it block failed ({code}):\n{said}");
    for expected in [
        "\"name\":\"Ada\"", // the document through the gate, created then listed
        "world",            // written on db-1, read on db-2
        "127.10.0.11",      // the DNS answer: both app jails
        "127.10.0.21",
        "came back from S3 intact", // README.md put into and read back through the gate
        "203.0.113.7/32",           // the ban in the table
        "leader: db-",              // db status names the leader
    ] {
        assert!(said.contains(expected), "no {expected:?} in:\n{said}");
    }

    // Its last line, `citadel down`, ends the first command.
    let code = wait_for("`up` to end after `down`", Duration::from_secs(60), || {
        up.0.try_wait().expect("wait")
    });
    assert!(code.success(), "up ended with {code}:\n{}", tail(&log));
}

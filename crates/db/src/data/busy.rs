//! A long script: BUSY replies while it runs, and SCRIPT KILL / FUNCTION KILL decided through
//! the log so that every member stops it at the same point (or none does).
//!
//! A script runs at apply time on every member. Redis lets SCRIPT KILL stop a script that has
//! not written anything yet; here that must give the same state on every member, and members
//! run the script at different moments, so the kill cannot be a member-local flag. Instead:
//!
//! - SCRIPT KILL proposes a marker `[SCRIPT_DECIDE, index, "kill"]` for the script's entry.
//! - A script that has run past `BUSY_INSTRUCTIONS` (a count, so the same point everywhere)
//!   and wants to make its first write stops at that write until the log holds a decision
//!   for it: the leader proposes `[SCRIPT_DECIDE, index, "go"]`. The first decision in the
//!   committed log wins on every member: "go" → it writes (and can no longer be killed),
//!   "kill" → it stops there with Redis's error.
//! - Until its first write, such a script checks the committed log every hook tick and stops
//!   when a "kill" is there. Stopping at any point before the first write leaves the same
//!   state (nothing written), so members may stop at different instructions.
//!
//! The markers are read straight from the committed log (committed entries after the script's
//! own, which the state machine has not applied yet) through [`Log`], which the node installs.
//! When they are applied later they only answer the SCRIPT KILL that proposed them (`OK`,
//! `UNKILLABLE …`, `NOTBUSY …`) from what the script did on this member — the same on all.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::resp::Reply;

/// The internal marker: `[SCRIPT_DECIDE, script id, "kill" | "go", "eval" | "function"]`.
pub const SCRIPT_DECIDE: &[u8] = b"\0citadel-script-decide";

/// A script's id: its entry's log index and its place among the scripts that entry runs (an
/// entry is a batch of writes and may hold several), so a KILL names exactly one.
pub fn script_id(log_index: u64, nth: u64) -> u64 {
    (log_index << 16) | nth.min(0xffff)
}

/// Instructions after which a script that has not written yet can be killed (and its first
/// write waits for the log's decision). About 10–50 ms of Lua.
pub const BUSY_INSTRUCTIONS: u64 = 1_000_000;

pub const KILLED_EVAL: &str = "ERR Script killed by user with SCRIPT KILL...";
pub const KILLED_FUNCTION: &str = "ERR Script killed by user with FUNCTION KILL...";
pub const UNKILLABLE: &str = "UNKILLABLE Sorry the script already executed write commands against the dataset. You can either wait the script termination or kill the server in a hard way using the SHUTDOWN NOSAVE command.";
pub const NOTBUSY: &str = "NOTBUSY No scripts in execution right now.";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Kill,
    Go,
}

/// The committed log as the state machine may read it ahead of what it applied.
pub trait Log: Send + Sync {
    /// The highest committed index.
    fn committed(&self) -> u64;
    /// The script decisions (`SCRIPT_DECIDE` markers) in entries `from..=to`, in log order:
    /// (script index, decision).
    fn decisions(&self, from: u64, to: u64) -> Vec<(u64, Decision)>;
    /// Proposes a "go" marker for the script at `index` if this member leads (fire and
    /// forget: the proposer's pipeline waits behind the script's own entry).
    fn propose_go(&self, index: u64);
}

static LOG: OnceLock<Box<dyn Log>> = OnceLock::new();

pub fn install(log: Box<dyn Log>) {
    let _ = LOG.set(log);
}

/// What runs on this member's state machine now.
#[derive(Clone, Debug)]
pub struct Running {
    pub index: u64,
    pub since: Instant,
    /// EVAL (SCRIPT KILL) or FCALL (FUNCTION KILL).
    pub eval: bool,
    pub wrote: bool,
    /// Past `BUSY_INSTRUCTIONS`: only then do others get BUSY (and may kill it). A short
    /// script that merely waited for a busy machine's CPU makes them wait, never fail.
    pub long: bool,
}

static RUNNING: Mutex<Option<Running>> = Mutex::new(None);

pub fn running() -> Option<Running> {
    RUNNING.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn set_running(r: Option<Running>) {
    *RUNNING.lock().unwrap_or_else(|p| p.into_inner()) = r;
}

/// How a finished script ended, for the SCRIPT KILL marker applied after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Killed,
    Wrote,
    Clean,
}

static OUTCOMES: Mutex<Vec<(u64, Outcome, bool)>> = Mutex::new(Vec::new());

/// The reply to a `[SCRIPT_DECIDE, index, "kill", kind]` marker as it is applied.
pub fn kill_reply(index: u64, eval: bool) -> Reply {
    let mut o = OUTCOMES.lock().unwrap_or_else(|p| p.into_inner());
    match o.iter().position(|(i, _, _)| *i == index) {
        Some(p) if o[p].2 != eval => Reply::err(NOTBUSY),
        Some(p) if o[p].1 == Outcome::Killed => {
            // The first KILL stopped it; a second one finds nothing running.
            o[p].1 = Outcome::Clean;
            Reply::ok()
        }
        Some(p) if o[p].1 == Outcome::Wrote => Reply::err(UNKILLABLE),
        _ => Reply::err(NOTBUSY),
    }
}

/// One script's run on this member: tracks its first write and reads the log's decisions.
pub struct Run {
    index: u64,
    eval: bool,
    wrote: bool,
    /// Log entries up to here have been looked at.
    seen: u64,
    decision: Option<Decision>,
    last_proposal: Option<Instant>,
    long: bool,
}

impl Run {
    /// `index`: the script's id (its entry's log index and its place among the entry's
    /// scripts, `script_id`); 0: not in the log (a library's registration, a test): never
    /// gated. `log_index`: its entry's index, where reading the log for decisions starts.
    pub fn start(index: u64, log_index: u64, eval: bool) -> Run {
        if index > 0 {
            set_running(Some(Running {
                index,
                since: Instant::now(),
                eval,
                wrote: false,
                long: false,
            }));
        }
        Run {
            index,
            eval,
            wrote: false,
            seen: log_index,
            decision: None,
            last_proposal: None,
            long: false,
        }
    }

    pub fn wrote(&self) -> bool {
        self.wrote
    }

    /// Looks at newly committed entries for this script's first decision.
    fn look(&mut self) {
        if self.decision.is_some() || self.index == 0 {
            return;
        }
        let Some(log) = LOG.get() else {
            return;
        };
        let committed = log.committed();
        if committed <= self.seen {
            return;
        }
        for (i, d) in log.decisions(self.seen + 1, committed) {
            if i == self.index {
                self.decision = Some(d);
                break;
            }
        }
        self.seen = committed;
    }

    /// At a hook tick: true when the script must stop (killed before its first write).
    pub fn killed(&mut self, spent: u64) -> bool {
        if spent < BUSY_INSTRUCTIONS || self.index == 0 {
            return false;
        }
        if !self.long {
            self.long = true;
            if let Some(r) = RUNNING.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                r.long = true;
            }
        }
        if self.wrote {
            return false;
        }
        self.look();
        self.decision == Some(Decision::Kill)
    }

    /// Before a write: Ok to go on, Err when the log says the script was killed first.
    pub fn before_write(&mut self, spent: u64) -> Result<(), String> {
        if self.wrote {
            return Ok(());
        }
        if spent >= BUSY_INSTRUCTIONS && self.index > 0 && LOG.get().is_some() {
            loop {
                self.look();
                match self.decision {
                    Some(Decision::Kill) => return Err(self.killed_error().into()),
                    Some(Decision::Go) => break,
                    None => {}
                }
                // Ask again now and then: the leader may have changed meanwhile.
                if self
                    .last_proposal
                    .is_none_or(|t| t.elapsed() > Duration::from_millis(300))
                {
                    if let Some(log) = LOG.get() {
                        log.propose_go(self.index);
                    }
                    self.last_proposal = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.wrote = true;
        if self.index > 0 {
            let mut r = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(r) = r.as_mut() {
                r.wrote = true;
            }
        }
        Ok(())
    }

    pub fn killed_error(&self) -> &'static str {
        if self.eval {
            KILLED_EVAL
        } else {
            KILLED_FUNCTION
        }
    }

    /// The script ended (`killed`: by a KILL decision).
    pub fn finish(&mut self, killed: bool) {
        if self.index == 0 || self.seen == u64::MAX {
            return;
        }
        self.seen = u64::MAX;
        set_running(None);
        let outcome = if killed {
            Outcome::Killed
        } else if self.wrote {
            Outcome::Wrote
        } else {
            Outcome::Clean
        };
        let mut o = OUTCOMES.lock().unwrap_or_else(|p| p.into_inner());
        o.push((self.index, outcome, self.eval));
        if o.len() > 64 {
            o.remove(0);
        }
    }
}

/// BUSY for a command arriving while this member's state machine runs a long script (past
/// `BUSY_INSTRUCTIONS`) for longer than `threshold` (Redis's busy-reply-threshold, alias
/// lua-time-limit). Commands Redis allows during a busy script pass (KILL, AUTH, …).
pub fn busy_reply(name: &str, argv: &[Vec<u8>], threshold: Duration) -> Option<Reply> {
    let r = running()?;
    if !r.long || r.since.elapsed() < threshold || allowed_while_busy(name, argv) {
        return None;
    }
    let kill = if r.eval {
        "SCRIPT KILL"
    } else {
        "FUNCTION KILL"
    };
    Some(Reply::err(format!(
        "BUSY Redis is busy running a script. You can only call {kill} or SHUTDOWN NOSAVE."
    )))
}

/// A command that found a script running: it waits (Redis reads nothing while a script
/// runs) until that script ends — None — or has been busy past `threshold` — BUSY. The next
/// script is not waited for, so a stream of short scripts cannot hold a command back.
pub async fn wait_or_busy(name: &str, argv: &[Vec<u8>], threshold: Duration) -> Option<Reply> {
    if allowed_while_busy(name, argv) {
        return None;
    }
    let first = running()?;
    loop {
        match running() {
            Some(r) if r.index == first.index && r.since == first.since => {
                if let Some(e) = busy_reply(name, argv, threshold) {
                    return Some(e);
                }
                let left = threshold.saturating_sub(r.since.elapsed());
                tokio::time::sleep(left.clamp(Duration::from_millis(1), Duration::from_millis(5)))
                    .await;
            }
            _ => return None,
        }
    }
}

fn allowed_while_busy(name: &str, argv: &[Vec<u8>]) -> bool {
    let sub = || {
        argv.get(1)
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
            .unwrap_or_default()
    };
    match name {
        "AUTH" | "HELLO" | "QUIT" | "RESET" | "SHUTDOWN" => true,
        "SCRIPT" | "FUNCTION" => matches!(sub().as_str(), "KILL" | "STATS"),
        _ => false,
    }
}

//! Lua scripts (EVAL): Lua 5.1 as Redis has, run inside the state machine.
//!
//! The log carries the script itself (EVALSHA is resolved to its body before proposing), and
//! every member runs it at apply time against the same state with the entry's clock, so the
//! outcome is the same everywhere as long as the script is deterministic — which the
//! sandbox makes sure of: no `os`/`io`, `math.random` reseeded identically for every script
//! (as Redis does), and the limits are counted, not timed: an instruction budget and a
//! memory cap, both hit at the same point on every member. See NOTES.md for why the script
//! rather than its effects.

use std::collections::BTreeMap;

use mlua::{HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Value as LuaValue, VmState};
use sha1::{Digest, Sha1};

use super::{NOT_INT, Rng, parse_i64};
use crate::resp::Reply;

/// Instructions one script may run (counted in steps of `HOOK_EVERY`): a few seconds of Lua.
pub const MAX_INSTRUCTIONS: u64 = 200_000_000;
const HOOK_EVERY: u32 = 10_000;
/// Memory one script's Lua state may allocate.
pub const MAX_MEMORY: usize = 64 * 1024 * 1024;
pub const BUDGET_ERROR: &str =
    "ERR Script killed: it ran past its instruction budget (the same point on every member)";

pub fn sha1_hex(body: &[u8]) -> String {
    let d = Sha1::digest(body);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A run of command arguments.
type Args<'a> = &'a [Vec<u8>];

/// EVAL's `numkeys`: the keys and the arguments.
pub fn split_args(argv: &[Vec<u8>]) -> Result<(Args<'_>, Args<'_>), Reply> {
    let n = parse_i64(&argv[2]).ok_or_else(|| Reply::err(NOT_INT))?;
    if n < 0 {
        return Err(Reply::err("ERR Number of keys can't be negative"));
    }
    let n = n as usize;
    if n > argv.len() - 3 {
        return Err(Reply::err(
            "ERR Number of keys can't be greater than number of args",
        ));
    }
    Ok((&argv[3..3 + n], &argv[3 + n..]))
}

/// Runs `body` with `run` as redis.call's way into the data (one command, one reply).
pub fn run(
    body: &[u8],
    keys: &[Vec<u8>],
    args: &[Vec<u8>],
    call: impl FnMut(&[Vec<u8>]) -> Reply,
) -> Reply {
    run_with(body, keys, args, call, Entry::Script)
}

/// What running a body means: an EVAL script, a function library's registration (FUNCTION
/// LOAD: replies with the registered names), or a call of one of its functions (FCALL).
pub enum Entry<'a> {
    Script,
    Register,
    Function(&'a [u8]),
}

/// A function library's code without its `#!lua name=…` line, and the library's name.
pub fn library(code: &[u8]) -> Result<(String, &[u8]), Reply> {
    let (first, rest) = match code.iter().position(|&b| b == b'\n') {
        Some(i) => (&code[..i], &code[i..]),
        None => (code, &code[code.len()..]),
    };
    let first = String::from_utf8_lossy(first);
    let Some(meta) = first.strip_prefix("#!") else {
        return Err(Reply::err("ERR Missing library metadata"));
    };
    let mut parts = meta.split_whitespace();
    if parts.next() != Some("lua") {
        return Err(Reply::err("ERR Engine not found"));
    }
    let name = parts
        .find_map(|p| p.strip_prefix("name="))
        .ok_or_else(|| Reply::err("ERR Library name was not given"))?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Reply::err(
            "ERR Library names can only contain letters, numbers, or underscores(_) and must be at least one character long",
        ));
    }
    Ok((name.to_string(), rest))
}

pub fn run_with(
    body: &[u8],
    keys: &[Vec<u8>],
    args: &[Vec<u8>],
    call: impl FnMut(&[Vec<u8>]) -> Reply,
    entry: Entry<'_>,
) -> Reply {
    let lua = match Lua::new_with(
        StdLib::TABLE | StdLib::STRING | StdLib::MATH,
        LuaOptions::default(),
    ) {
        Ok(l) => l,
        Err(e) => return Reply::err(format!("ERR cannot start Lua: {e}")),
    };
    let _ = lua.set_memory_limit(MAX_MEMORY);
    let spent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = spent.clone();
    let _ = lua.set_hook(
        HookTriggers::new().every_nth_instruction(HOOK_EVERY),
        move |_, _| {
            let n = counter.fetch_add(HOOK_EVERY as u64, std::sync::atomic::Ordering::Relaxed);
            if n >= MAX_INSTRUCTIONS {
                Err(mlua::Error::RuntimeError(BUDGET_ERROR.into()))
            } else {
                Ok(VmState::Continue)
            }
        },
    );
    let call = std::cell::RefCell::new(call);
    let invoke = |lua: &Lua, argv: MultiValue, raise: bool| -> mlua::Result<LuaValue> {
        let mut cmd = Vec::new();
        for v in argv {
            match v {
                LuaValue::String(s) => cmd.push(s.as_bytes().to_vec()),
                LuaValue::Integer(i) => cmd.push(i.to_string().into_bytes()),
                LuaValue::Number(n) => cmd.push(crate::resp::format_g17(n).into_bytes()),
                _ => {
                    return Err(mlua::Error::RuntimeError(
                        "ERR Lua redis lib command arguments must be strings or integers".into(),
                    ));
                }
            }
        }
        if cmd.is_empty() {
            return Err(mlua::Error::RuntimeError(
                "ERR Please specify at least one argument for this redis lib call".into(),
            ));
        }
        let reply = (call.borrow_mut())(&cmd);
        if let (true, Reply::Error(e)) = (raise, &reply) {
            return Err(mlua::Error::RuntimeError(e.clone()));
        }
        to_lua(lua, reply)
    };
    let rng = std::cell::RefCell::new(Rng::seeded(0));
    let out = lua.scope(|scope| {
        let g = lua.globals();
        for name in [
            "dofile",
            "loadfile",
            "load",
            "loadstring",
            "print",
            "getfenv",
            "setfenv",
            "collectgarbage",
            "module",
            "require",
            "newproxy",
        ] {
            g.raw_set(name, LuaValue::Nil)?;
        }
        let strings = |items: &[Vec<u8>]| -> mlua::Result<mlua::Table> {
            let t = lua.create_table()?;
            for (i, it) in items.iter().enumerate() {
                t.raw_set(i + 1, lua.create_string(it)?)?;
            }
            Ok(t)
        };
        super::lualibs::install(&lua)?;
        g.raw_set("KEYS", strings(keys)?)?;
        g.raw_set("ARGV", strings(args)?)?;
        let redis = lua.create_table()?;
        redis.raw_set(
            "call",
            scope.create_function(|lua, a: MultiValue| invoke(lua, a, true))?,
        )?;
        redis.raw_set(
            "pcall",
            scope.create_function(|lua, a: MultiValue| invoke(lua, a, false))?,
        )?;
        // error_reply / status_reply build the {err=…} / {ok=…} tables a script returns.
        for (name, field) in [("error_reply", "err"), ("status_reply", "ok")] {
            redis.raw_set(
                name,
                lua.create_function(move |lua, msg: mlua::LuaString| {
                    let t = lua.create_table()?;
                    t.raw_set(field, msg)?;
                    Ok(t)
                })?,
            )?;
        }
        redis.raw_set(
            "sha1hex",
            lua.create_function(|_, s: mlua::LuaString| Ok(sha1_hex(&s.as_bytes())))?,
        )?;
        for (name, v) in [
            ("LOG_DEBUG", 0),
            ("LOG_VERBOSE", 1),
            ("LOG_NOTICE", 2),
            ("LOG_WARNING", 3),
            ("REPL_NONE", 0),
            ("REPL_AOF", 1),
            ("REPL_SLAVE", 2),
            ("REPL_REPLICA", 2),
            ("REPL_ALL", 3),
        ] {
            redis.raw_set(name, v)?;
        }
        for name in ["log", "set_repl", "setresp"] {
            redis.raw_set(name, lua.create_function(|_, _: MultiValue| Ok(()))?)?;
        }
        redis.raw_set(
            "replicate_commands",
            lua.create_function(|_, _: MultiValue| Ok(true))?,
        )?;
        // math.random as Redis: the same sequence for every script on every member.
        let math: mlua::Table = g.raw_get("math")?;
        math.raw_set(
            "random",
            scope.create_function(|_, (m, n): (Option<i64>, Option<i64>)| {
                let x = (rng.borrow_mut().next() >> 11) as f64 / (1u64 << 53) as f64;
                Ok(match (m, n) {
                    (None, _) => LuaValue::Number(x),
                    (Some(m), None) => LuaValue::Integer(1 + (x * m.max(1) as f64) as i64),
                    (Some(m), Some(n)) => {
                        LuaValue::Integer(m + (x * ((n - m).max(0) + 1) as f64) as i64)
                    }
                })
            })?,
        )?;
        math.raw_set(
            "randomseed",
            lua.create_function(|_, _: MultiValue| Ok(()))?,
        )?;
        // redis.register_function(name, fn) or ({function_name=…, callback=…, flags=…}).
        let registered = lua.create_table()?;
        let reg = registered.clone();
        redis.raw_set(
            "register_function",
            lua.create_function(move |_, a: MultiValue| {
                let mut a = a.into_iter();
                let (name, f) = match (a.next(), a.next()) {
                    (Some(LuaValue::String(n)), Some(LuaValue::Function(f))) => (n, f),
                    (Some(LuaValue::Table(t)), None) => (
                        t.raw_get::<mlua::LuaString>("function_name")?,
                        t.raw_get("callback")?,
                    ),
                    _ => {
                        return Err(mlua::Error::RuntimeError(
                            "ERR wrong arguments to redis.register_function".into(),
                        ));
                    }
                };
                reg.raw_set(name, f)?;
                Ok(())
            })?,
        )?;
        g.raw_set("redis", redis.clone())?;
        let f = lua.load(body).set_name("@user_script").into_function()?;
        match entry {
            Entry::Script => {
                let v: LuaValue = f.call(())?;
                Ok(from_lua(v))
            }
            Entry::Register => {
                f.call::<()>(())?;
                let mut names = Vec::new();
                for pair in registered.pairs::<mlua::LuaString, LuaValue>() {
                    names.push(Reply::Bulk(pair?.0.as_bytes().to_vec()));
                }
                Ok(Reply::Array(names))
            }
            Entry::Function(name) => {
                f.call::<()>(())?;
                let func: mlua::Function = match registered.raw_get(lua.create_string(name)?)? {
                    LuaValue::Function(func) => func,
                    _ => return Ok(Reply::err("ERR Function not found")),
                };
                let v: LuaValue = func.call((
                    g.raw_get::<LuaValue>("KEYS")?,
                    g.raw_get::<LuaValue>("ARGV")?,
                ))?;
                Ok(from_lua(v))
            }
        }
    });
    match out {
        Ok(r) => r,
        Err(e) => Reply::Error(error_text(&e)),
    }
}

/// The innermost message of a Lua error (a redis.call error comes back as Redis's own).
fn error_text(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { cause, .. } => error_text(cause),
        mlua::Error::RuntimeError(m) if m.starts_with(|c: char| c.is_ascii_uppercase()) => {
            // "ERR …", "WRONGTYPE …": a Redis error, or the budget; a plain Lua runtime
            // error ("user_script:1: …") gets Redis's prefix below.
            if m.split_whitespace()
                .next()
                .is_some_and(|w| w.chars().all(|c| c.is_ascii_uppercase()))
            {
                m.clone()
            } else {
                format!("ERR {m}")
            }
        }
        mlua::Error::MemoryError(_) => "ERR Script used more memory than allowed".into(),
        mlua::Error::SyntaxError { message, .. } => {
            format!("ERR Error compiling script (new function): {message}")
        }
        other => format!("ERR Error running script: {other}"),
    }
}

fn to_lua(lua: &Lua, r: Reply) -> mlua::Result<LuaValue> {
    Ok(match r {
        Reply::Simple(s) => {
            let t = lua.create_table()?;
            t.raw_set("ok", s)?;
            LuaValue::Table(t)
        }
        Reply::Error(e) => {
            let t = lua.create_table()?;
            t.raw_set("err", e)?;
            LuaValue::Table(t)
        }
        Reply::Int(i) => LuaValue::Integer(i),
        Reply::Bulk(b) => LuaValue::String(lua.create_string(b)?),
        Reply::Nil | Reply::NilArray => LuaValue::Boolean(false),
        Reply::Double(d) => LuaValue::String(lua.create_string(crate::resp::format_g17(d))?),
        Reply::Array(items) | Reply::Push(items) => {
            let t = lua.create_table()?;
            for (i, it) in items.into_iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, it)?)?;
            }
            LuaValue::Table(t)
        }
        Reply::Streams(pairs) => {
            let t = lua.create_table()?;
            for (i, (k, v)) in pairs.into_iter().enumerate() {
                let pair = lua.create_table()?;
                pair.raw_set(1, to_lua(lua, k)?)?;
                pair.raw_set(2, to_lua(lua, v)?)?;
                t.raw_set(i + 1, pair)?;
            }
            LuaValue::Table(t)
        }
        Reply::Map(pairs) | Reply::Pairs(pairs) => {
            let t = lua.create_table()?;
            for (i, (k, v)) in pairs.into_iter().enumerate() {
                t.raw_set(2 * i + 1, to_lua(lua, k)?)?;
                t.raw_set(2 * i + 2, to_lua(lua, v)?)?;
            }
            LuaValue::Table(t)
        }
    })
}

/// Redis's conversion of a script's result.
/// How deep a script's returned tables may nest: past it, Redis's "reached lua stack limit"
/// error stands in for the rest (a table that contains itself would nest forever).
const MAX_REPLY_DEPTH: usize = 1000;

fn from_lua(v: LuaValue) -> Reply {
    from_lua_at(v, 0)
}

fn from_lua_at(v: LuaValue, depth: usize) -> Reply {
    match v {
        LuaValue::Nil | LuaValue::Boolean(false) => Reply::Nil,
        LuaValue::Boolean(true) => Reply::Int(1),
        LuaValue::Integer(i) => Reply::Int(i),
        LuaValue::Number(n) => Reply::Int(n as i64),
        LuaValue::String(s) => Reply::Bulk(s.as_bytes().to_vec()),
        LuaValue::Table(_) if depth >= MAX_REPLY_DEPTH => Reply::err("ERR reached lua stack limit"),
        LuaValue::Table(t) => {
            if let Ok(LuaValue::String(e)) = t.raw_get::<LuaValue>("err") {
                return Reply::Error(e.to_string_lossy());
            }
            if let Ok(LuaValue::String(s)) = t.raw_get::<LuaValue>("ok") {
                return Reply::Simple(s.to_string_lossy());
            }
            let mut out = Vec::new();
            for i in 1.. {
                match t.raw_get::<LuaValue>(i) {
                    Ok(LuaValue::Nil) | Err(_) => break,
                    Ok(v) => out.push(from_lua_at(v, depth + 1)),
                }
            }
            Reply::Array(out)
        }
        _ => Reply::Nil,
    }
}

/// Function libraries loaded with FUNCTION LOAD: name → (code, function names). Like the
/// script cache, member-local and filled at apply time; FCALL is resolved to the library's
/// code before it is proposed, so the log never depends on it.
#[derive(Clone, Debug, Default)]
pub struct Libraries(pub BTreeMap<String, (Vec<u8>, Vec<Vec<u8>>)>);

impl Libraries {
    /// The library code that defines function `name`.
    pub fn code_of(&self, name: &[u8]) -> Option<Vec<u8>> {
        self.0
            .values()
            .find(|(_, fns)| fns.iter().any(|f| f == name))
            .map(|(code, _)| code.clone())
    }
}

/// The script cache: every member fills it as it applies EVAL and SCRIPT LOAD (it is not
/// part of snapshots; as in Redis 7, a restart forgets it and EVALSHA answers NOSCRIPT).
#[derive(Clone, Debug, Default)]
pub struct Scripts(pub BTreeMap<String, Vec<u8>>);

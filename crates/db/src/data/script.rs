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
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use mlua::{HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Value as LuaValue, VmState};
use sha1::{Digest, Sha1};

use super::{NOT_INT, Rng, parse_i64};
use crate::resp::Reply;

/// Instructions one script may run (counted in steps of `HOOK_EVERY`): a few seconds of Lua.
pub const MAX_INSTRUCTIONS: u64 = 200_000_000;
const HOOK_EVERY: u32 = 10_000;
/// Memory one script's Lua state may allocate.
pub const MAX_MEMORY: usize = 64 * 1024 * 1024;
/// What the member that took a script decided for it, carried in the log in front of it:
/// `[SCRIPT_OPTS, "oom,debug", EVAL|FCALL…]` — `oom`: used memory was over maxmemory at
/// admission (its first deny-oom write fails, as Redis's pre-command OOM state);
/// `debug`: DEBUG set-disable-deny-scripts was on there (the script may call DEBUG).
pub const SCRIPT_OPTS: &[u8] = b"\0citadel-script-opts";
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
    mut call: impl FnMut(&[Vec<u8>]) -> Reply,
) -> Reply {
    run_with(
        body,
        keys,
        args,
        |cmd, check| {
            if check { Reply::Int(1) } else { call(cmd) }
        },
        Entry::Script,
        &Ctx::default(),
    )
}

/// What running a body means: an EVAL script, a function library's registration (FUNCTION
/// LOAD: replies with the registered names), or a call of one of its functions (FCALL).
pub enum Entry<'a> {
    Script,
    Register,
    Function(&'a [u8]),
}

/// What a script's run needs to know beyond its code and arguments; all of it comes from
/// the log entry, so it is the same on every member.
#[derive(Clone, Debug, Default)]
pub struct Ctx {
    /// The log index of the entry that runs it.
    pub index: u64,
    /// The script's id (`busy::script_id`; 0: none — never gated, never killed).
    pub id: u64,
    /// Seed of `math.random` (Redis 7 seeds it per run; here from the entry).
    pub seed: u64,
    /// The member that took the script found used memory over `maxmemory`: its first
    /// deny-oom write fails (Redis's pre_command_oom_state, decided at admission).
    pub oom: bool,
    /// Writes refused: EVAL_RO, FCALL_RO, the `no-writes` flag.
    pub read_only: bool,
    /// The `allow-oom` flag: writes go on even when `oom`.
    pub allow_oom: bool,
    /// DEBUG may be called (DEBUG set-disable-deny-scripts 1 where it was taken).
    pub allow_debug: bool,
    /// An EVAL (SCRIPT KILL) rather than a function (FUNCTION KILL).
    pub eval: bool,
}

pub const OOM_ERROR: &str = "OOM command not allowed when used memory > 'maxmemory'.";

/// Commands Redis 7.0 flags `denyoom` (they may grow memory): refused while over maxmemory.
pub fn deny_oom(name: &str, argv: &[Vec<u8>]) -> bool {
    let sub = || {
        argv.get(1)
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
            .unwrap_or_default()
    };
    match name {
        "FUNCTION" => matches!(sub().as_str(), "LOAD" | "RESTORE"),
        "XGROUP" => matches!(sub().as_str(), "CREATE" | "CREATECONSUMER"),
        _ => matches!(
            name,
            "RESTORE"
                | "BITFIELD"
                | "BITOP"
                | "SETBIT"
                | "COPY"
                | "SORT"
                | "GEOADD"
                | "GEORADIUS"
                | "GEORADIUSBYMEMBER"
                | "GEOSEARCHSTORE"
                | "HINCRBY"
                | "HINCRBYFLOAT"
                | "HMSET"
                | "HSET"
                | "HSETNX"
                | "PFADD"
                | "PFDEBUG"
                | "PFMERGE"
                | "BLMOVE"
                | "BRPOPLPUSH"
                | "LINSERT"
                | "LMOVE"
                | "LPUSH"
                | "LPUSHX"
                | "LSET"
                | "RPOPLPUSH"
                | "RPUSH"
                | "RPUSHX"
                | "SADD"
                | "SDIFFSTORE"
                | "SINTERSTORE"
                | "SUNIONSTORE"
                | "ZADD"
                | "ZDIFFSTORE"
                | "ZINCRBY"
                | "ZINTERSTORE"
                | "ZRANGESTORE"
                | "ZUNIONSTORE"
                | "XADD"
                | "XSETID"
                | "APPEND"
                | "DECR"
                | "DECRBY"
                | "GETSET"
                | "INCR"
                | "INCRBY"
                | "INCRBYFLOAT"
                | "MSET"
                | "MSETNX"
                | "PSETEX"
                | "SET"
                | "SETEX"
                | "SETNX"
                | "SETRANGE"
        ),
    }
}

/// A library's code without its `#!lua name=…` line, and the library's name.
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

/// An EVAL script's `#!lua flags=…` line: (no-writes, allow-oom), or None for a script
/// without one (Redis's compatibility mode). Errors as Redis 7.0's.
pub fn shebang(body: &[u8]) -> Result<Option<ScriptFlags>, Reply> {
    if !body.starts_with(b"#!") {
        return Ok(None);
    }
    let end = body.iter().position(|&b| b == b'\n').unwrap_or(body.len());
    let line = String::from_utf8_lossy(&body[2..end]).into_owned();
    let mut parts = line.split(' ').filter(|p| !p.is_empty());
    if parts.next() != Some("lua") {
        return Err(Reply::err(format!(
            "ERR Unexpected engine in script shebang: {}",
            line.split(' ').next().unwrap_or("")
        )));
    }
    let mut flags = ScriptFlags::default();
    for p in parts {
        let Some(list) = p.strip_prefix("flags=") else {
            return Err(Reply::err(format!("ERR Unknown lua shebang option: {p}")));
        };
        flags.apply(list)?;
    }
    Ok(Some(flags))
}

/// Redis's script flags (shebang or `register_function{flags=…}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScriptFlags {
    pub no_writes: bool,
    pub allow_oom: bool,
    pub allow_stale: bool,
    pub no_cluster: bool,
    pub allow_cross_slot: bool,
}

impl ScriptFlags {
    fn apply(&mut self, list: &str) -> Result<(), Reply> {
        for f in list.split(',').filter(|f| !f.is_empty()) {
            self.set(f)
                .map_err(|_| Reply::err(format!("ERR Unexpected flag in script shebang: {f}")))?;
        }
        Ok(())
    }

    fn set(&mut self, f: &str) -> Result<(), ()> {
        match f {
            "no-writes" => self.no_writes = true,
            "allow-oom" => self.allow_oom = true,
            "allow-stale" => self.allow_stale = true,
            "no-cluster" => self.no_cluster = true,
            "allow-cross-slot-keys" => self.allow_cross_slot = true,
            _ => return Err(()),
        }
        Ok(())
    }
}

/// The Lua that makes the globals and the libraries read-only as Redis 7 does (its Lua is
/// patched for it; here proxies): a script's globals are a proxy of the real ones, reading a
/// missing global is an error, and writing any global or library field is refused.
/// `setmetatable`/`rawset` refuse the proxies; `loadstring` refuses binary chunks.
const PRELUDE: &str = r#"
local G = _G
local rawget, rawset, setmetatable, error, tostring, type =
      rawget, rawset, setmetatable, error, tostring, type
local loadstring, setfenv = loadstring, setfenv
local ro = setmetatable({}, {__mode = 'k'})
local function deny() error('Attempt to modify a readonly table', 2) end
local meta = {}
setmetatable(meta, {__newindex = deny, __metatable = false})
ro[meta] = true
local function protect(t)
  local p = {}
  setmetatable(p, {__index = t, __newindex = deny, __metatable = meta})
  ro[p] = true
  return p
end
for _, name in ipairs({'redis', 'cjson', 'cmsgpack', 'bit', 'string', 'math', 'table'}) do
  local t = rawget(G, name)
  if t then rawset(G, name, protect(t)) end
end
setmetatable(G, {__index = function(_, k)
  error("Script attempted to access nonexistent global variable '" .. tostring(k) .. "'", 2)
end})
local env = protect(G)
rawset(G, '_G', env)
rawset(G, 'setmetatable', function(t, m)
  if ro[t] then error('Attempt to modify a readonly table', 2) end
  return setmetatable(t, m)
end)
rawset(G, 'rawset', function(t, k, v)
  if ro[t] then error('Attempt to modify a readonly table', 2) end
  return rawset(t, k, v)
end)
rawset(G, 'loadstring', function(s, name)
  if type(s) == 'string' and s:byte(1) == 27 then
    return nil, 'binary chunks are not allowed'
  end
  local f, e = loadstring(s, name)
  if f then setfenv(f, env) end
  return f, e
end)
return env
"#;

pub fn run_with(
    body: &[u8],
    keys: &[Vec<u8>],
    args: &[Vec<u8>],
    call: impl FnMut(&[Vec<u8>], bool) -> Reply,
    entry: Entry<'_>,
    ctx: &Ctx,
) -> Reply {
    let lua = match Lua::new_with(
        StdLib::TABLE | StdLib::STRING | StdLib::MATH,
        LuaOptions::default(),
    ) {
        Ok(l) => l,
        Err(e) => return Reply::err(format!("ERR cannot start Lua: {e}")),
    };
    let _ = lua.set_memory_limit(MAX_MEMORY);
    let registering = matches!(entry, Entry::Register);
    let run = Arc::new(Mutex::new(super::busy::Run::start(
        if registering { 0 } else { ctx.id },
        ctx.index,
        ctx.eval,
    )));
    // Set once the script must end whatever it does (killed, out of budget): every hook tick
    // and every pcall raises it again, so pcall cannot swallow it.
    let fatal: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let spent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let (spent, run, fatal) = (spent.clone(), run.clone(), fatal.clone());
        let _ = lua.set_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, _| {
                let n = spent.fetch_add(HOOK_EVERY as u64, Ordering::Relaxed) + HOOK_EVERY as u64;
                let mut f = lock(&fatal);
                if f.is_none() {
                    if n >= MAX_INSTRUCTIONS {
                        *f = Some(BUDGET_ERROR.into());
                    } else {
                        let mut r = lock(&run);
                        if r.killed(n) {
                            *f = Some(r.killed_error().into());
                        }
                    }
                }
                match f.as_ref() {
                    Some(e) => Err(mlua::Error::RuntimeError(e.clone())),
                    None => Ok(VmState::Continue),
                }
            },
        );
    }
    let call = std::cell::RefCell::new(call);
    let resp = std::cell::Cell::new(2u8);
    let to_args = |argv: MultiValue| -> mlua::Result<Vec<Vec<u8>>> {
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
        Ok(cmd)
    };
    // One redis.call: Redis's checks in its order, then the command.
    let execute = |cmd: &[Vec<u8>]| -> Reply {
        let name = String::from_utf8_lossy(&cmd[0]).to_ascii_uppercase();
        let class = super::classify(&name).map(|(c, _)| c);
        if class.is_some() && !super::check_arity(&name, cmd.len()) {
            return Reply::err("ERR Wrong number of args calling Redis command from script");
        }
        if class == Some(super::Class::Write) {
            if ctx.read_only {
                return Reply::err("ERR Write commands are not allowed from read-only scripts.");
            }
            let mut r = lock(&run);
            if !r.wrote() && ctx.oom && !ctx.allow_oom && deny_oom(&name, cmd) {
                return Reply::err(OOM_ERROR);
            }
            if let Err(e) = r.before_write(spent.load(Ordering::Relaxed)) {
                *lock(&fatal) = Some(e.clone());
                return Reply::Error(e);
            }
        }
        if name == "DEBUG" && !ctx.allow_debug {
            return Reply::err("ERR This Redis command is not allowed from script");
        }
        (call.borrow_mut())(cmd, false)
    };
    let invoke = |lua: &Lua, argv: MultiValue, raise: bool| -> mlua::Result<LuaValue> {
        let cmd = to_args(argv)?;
        let reply = execute(&cmd);
        if let Some(e) = lock(&fatal).clone() {
            return Err(mlua::Error::RuntimeError(e));
        }
        if let (true, Reply::Error(e)) = (raise, &reply) {
            return Err(mlua::Error::RuntimeError(e.clone()));
        }
        to_lua(lua, reply, resp.get())
    };
    let rng = std::cell::RefCell::new(Rng::seeded(ctx.seed));
    let out = lua.scope(|scope| {
        let g = lua.globals();
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
        redis.raw_set(
            "acl_check_cmd",
            scope.create_function(|_, a: MultiValue| {
                let cmd = to_args(a)?;
                match (call.borrow_mut())(&cmd, true) {
                    Reply::Int(n) => Ok(n != 0),
                    Reply::Error(e) => Err(mlua::Error::RuntimeError(e)),
                    _ => Ok(false),
                }
            })?,
        )?;
        // error_reply / status_reply build the {err=…} / {ok=…} tables a script returns.
        for (name, field) in [("error_reply", "err"), ("status_reply", "ok")] {
            redis.raw_set(
                name,
                lua.create_function(move |lua, a: MultiValue| {
                    let msg = match a.into_iter().next() {
                        Some(LuaValue::String(s)) => s,
                        _ => {
                            return Err(mlua::Error::RuntimeError(format!(
                                "ERR wrong number or type of arguments to redis.{name}"
                            )));
                        }
                    };
                    let t = lua.create_table()?;
                    t.raw_set(field, msg)?;
                    Ok(t)
                })?,
            )?;
        }
        redis.raw_set(
            "sha1hex",
            lua.create_function(|_, a: MultiValue| match a.len() {
                1 => match a.into_iter().next() {
                    Some(LuaValue::String(s)) => Ok(sha1_hex(&s.as_bytes())),
                    Some(LuaValue::Integer(i)) => Ok(sha1_hex(i.to_string().as_bytes())),
                    Some(LuaValue::Number(n)) => {
                        Ok(sha1_hex(crate::resp::format_g(n, 14).as_bytes()))
                    }
                    _ => Err(mlua::Error::RuntimeError(
                        "ERR wrong number of arguments".into(),
                    )),
                },
                _ => Err(mlua::Error::RuntimeError(
                    "ERR wrong number of arguments".into(),
                )),
            })?,
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
        redis.raw_set(
            "log",
            lua.create_function(|_, a: MultiValue| {
                let mut a = a.into_iter();
                let level = match a.next() {
                    Some(LuaValue::Integer(l)) if (0..=3).contains(&l) => l,
                    Some(LuaValue::Number(l)) if (0.0..=3.0).contains(&l) => l as i64,
                    Some(LuaValue::Integer(_) | LuaValue::Number(_)) => {
                        return Err(mlua::Error::RuntimeError("ERR Invalid debug level.".into()));
                    }
                    _ => {
                        return Err(mlua::Error::RuntimeError(
                            "ERR redis.log() requires two arguments or more.".into(),
                        ));
                    }
                };
                let words: Vec<String> = a
                    .filter_map(|v| match v {
                        LuaValue::String(s) => Some(s.to_string_lossy()),
                        LuaValue::Integer(i) => Some(i.to_string()),
                        LuaValue::Number(n) => Some(crate::resp::format_g(n, 14)),
                        _ => None,
                    })
                    .collect();
                if words.is_empty() {
                    return Err(mlua::Error::RuntimeError(
                        "ERR redis.log() requires two arguments or more.".into(),
                    ));
                }
                let msg = words.join(" ");
                match level {
                    3 => tracing::warn!(target: "script", "{msg}"),
                    2 => tracing::info!(target: "script", "{msg}"),
                    _ => tracing::debug!(target: "script", "{msg}"),
                }
                Ok(())
            })?,
        )?;
        // Effects are never replicated here (every member runs the script), so set_repl
        // only checks its argument, as Redis 7.0 does.
        redis.raw_set(
            "set_repl",
            lua.create_function(|_, a: MultiValue| match a.into_iter().next() {
                Some(LuaValue::Integer(f)) if (0..=3).contains(&f) => Ok(()),
                Some(LuaValue::Number(f)) if (0.0..=3.0).contains(&f) && f.fract() == 0.0 => {
                    Ok(())
                }
                Some(LuaValue::Integer(_) | LuaValue::Number(_)) => {
                    Err(mlua::Error::RuntimeError(
                        "ERR Invalid replication flags. Use REPL_AOF, REPL_REPLICA, REPL_ALL or REPL_NONE."
                            .into(),
                    ))
                }
                _ => Err(mlua::Error::RuntimeError(
                    "ERR redis.set_repl() requires one argument.".into(),
                )),
            })?,
        )?;
        redis.raw_set(
            "setresp",
            scope.create_function(|_, a: MultiValue| match a.into_iter().next() {
                Some(LuaValue::Integer(v @ (2 | 3))) => {
                    resp.set(v as u8);
                    Ok(())
                }
                Some(LuaValue::Number(v)) if v == 2.0 || v == 3.0 => {
                    resp.set(v as u8);
                    Ok(())
                }
                Some(_) => Err(mlua::Error::RuntimeError(
                    "ERR RESP version must be 2 or 3.".into(),
                )),
                None => Err(mlua::Error::RuntimeError(
                    "ERR redis.setresp() requires one argument.".into(),
                )),
            })?,
        )?;
        redis.raw_set(
            "replicate_commands",
            lua.create_function(|_, _: MultiValue| Ok(true))?,
        )?;
        redis.raw_set("REDIS_VERSION", "7.0.15")?;
        redis.raw_set("REDIS_VERSION_NUM", 0x07000f)?;
        redis.raw_set(
            "breakpoint",
            lua.create_function(|_, _: MultiValue| Ok(false))?,
        )?;
        redis.raw_set("debug", lua.create_function(|_, _: MultiValue| Ok(()))?)?;
        // math.random as Redis 7: seeded per run (here from the entry, so the same on
        // every member); randomseed reseeds it.
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
            scope.create_function(|_, seed: LuaValue| {
                let s = match seed {
                    LuaValue::Integer(i) => i as u64,
                    LuaValue::Number(n) => n as i64 as u64,
                    LuaValue::String(s) => {
                        s.to_str().ok().and_then(|s| s.trim().parse::<f64>().ok()).unwrap_or(0.0)
                            as i64 as u64
                    }
                    _ => 0,
                };
                *rng.borrow_mut() = Rng::seeded(s);
                Ok(())
            })?,
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
        // pcall and xpcall cannot swallow a kill or the budget.
        for name in ["pcall", "xpcall"] {
            let orig: mlua::Function = g.raw_get(name)?;
            let fatal = fatal.clone();
            g.raw_set(
                name,
                lua.create_function(move |_, a: MultiValue| {
                    let r = orig.call::<MultiValue>(a);
                    if let Some(e) = lock(&fatal).clone() {
                        return Err(mlua::Error::RuntimeError(e));
                    }
                    r
                })?,
            )?;
        }
        let env: mlua::Table = lua
            .load(PRELUDE)
            .set_name("=sandbox")
            .call(())?;
        for name in [
            "dofile",
            "loadfile",
            "load",
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
        let f = lua
            .load(body)
            .set_name("@user_script")
            .set_mode(mlua::chunk::ChunkMode::Text)
            .set_environment(env)
            .into_function()?;
        match entry {
            Entry::Script => {
                let v: LuaValue = f.call(())?;
                Ok(from_lua(v, resp.get()))
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
                Ok(from_lua(v, resp.get()))
            }
        }
    });
    let killed = lock(&fatal)
        .as_deref()
        .is_some_and(|e| e.contains("killed by user"));
    lock(&run).finish(killed);
    match out {
        Ok(r) => r,
        Err(e) => Reply::Error(error_text(&e)),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The innermost message of a Lua error (a redis.call error comes back as Redis's own).
fn error_text(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { cause, .. } => error_text(cause),
        mlua::Error::RuntimeError(m) => {
            // "ERR …", "WRONGTYPE …": a Redis error, the budget or a kill; a plain Lua
            // runtime error ("user_script:1: …") gets Redis's prefix. No traceback.
            let m = &m[..m.find("\nstack traceback:").unwrap_or(m.len())].to_string();
            if m.split_whitespace()
                .next()
                .is_some_and(|w| w.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
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

/// Redis's conversion of a command's reply for the script, as RESP2 or (after
/// `redis.setresp(3)`) RESP3 would carry it.
fn to_lua(lua: &Lua, r: Reply, resp: u8) -> mlua::Result<LuaValue> {
    let table1 = |k: &str, v: LuaValue| -> mlua::Result<LuaValue> {
        let t = lua.create_table()?;
        t.raw_set(k, v)?;
        Ok(LuaValue::Table(t))
    };
    let array = |items: Vec<Reply>| -> mlua::Result<LuaValue> {
        let t = lua.create_table()?;
        for (i, it) in items.into_iter().enumerate() {
            t.raw_set(i + 1, to_lua(lua, it, resp)?)?;
        }
        Ok(LuaValue::Table(t))
    };
    Ok(match r {
        Reply::Simple(s) => table1("ok", LuaValue::String(lua.create_string(s)?))?,
        Reply::Error(e) => table1("err", LuaValue::String(lua.create_string(e)?))?,
        Reply::Int(i) => LuaValue::Integer(i),
        Reply::Bulk(b) => LuaValue::String(lua.create_string(b)?),
        Reply::Nil | Reply::NilArray if resp >= 3 => LuaValue::Nil,
        Reply::Nil | Reply::NilArray => LuaValue::Boolean(false),
        Reply::Double(d) if resp >= 3 => table1("double", LuaValue::Number(d))?,
        Reply::Double(d) => LuaValue::String(lua.create_string(crate::resp::format_g17(d))?),
        Reply::Bool(b) if resp >= 3 => LuaValue::Boolean(b),
        Reply::Bool(b) => LuaValue::Integer(b as i64),
        Reply::BigNum(n) if resp >= 3 => {
            table1("big_number", LuaValue::String(lua.create_string(n)?))?
        }
        Reply::BigNum(n) => LuaValue::String(lua.create_string(n)?),
        Reply::Verbatim(fmt, text) if resp >= 3 => {
            let t = lua.create_table()?;
            t.raw_set("format", fmt)?;
            t.raw_set("string", lua.create_string(text)?)?;
            table1("verbatim_string", LuaValue::Table(t))?
        }
        Reply::Verbatim(_, text) => LuaValue::String(lua.create_string(text)?),
        Reply::Set(items) if resp >= 3 => {
            let t = lua.create_table()?;
            for it in items {
                t.raw_set(to_lua(lua, it, resp)?, true)?;
            }
            table1("set", LuaValue::Table(t))?
        }
        Reply::Array(items) | Reply::Push(items) | Reply::Set(items) => array(items)?,
        Reply::Map(pairs) | Reply::Streams(pairs) if resp >= 3 => {
            let t = lua.create_table()?;
            for (k, v) in pairs {
                t.raw_set(to_lua(lua, k, resp)?, to_lua(lua, v, resp)?)?;
            }
            table1("map", LuaValue::Table(t))?
        }
        Reply::Streams(pairs) => array(
            pairs
                .into_iter()
                .map(|(k, v)| Reply::Array(vec![k, v]))
                .collect(),
        )?,
        Reply::Pairs(pairs) if resp >= 3 => array(
            pairs
                .into_iter()
                .map(|(k, v)| Reply::Array(vec![k, v]))
                .collect(),
        )?,
        Reply::Map(pairs) | Reply::Pairs(pairs) => {
            array(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect())?
        }
    })
}

/// Redis's conversion of a script's result.
/// How deep a script's returned tables may nest: past it, Redis's "reached lua stack limit"
/// error stands in for the rest (a table that contains itself would nest forever).
const MAX_REPLY_DEPTH: usize = 1000;

fn from_lua(v: LuaValue, resp: u8) -> Reply {
    from_lua_at(v, 0, resp)
}

fn from_lua_at(v: LuaValue, depth: usize, resp: u8) -> Reply {
    match v {
        LuaValue::Nil => Reply::Nil,
        LuaValue::Boolean(b) if resp >= 3 => Reply::Bool(b),
        LuaValue::Boolean(false) => Reply::Nil,
        LuaValue::Boolean(true) => Reply::Int(1),
        LuaValue::Integer(i) => Reply::Int(i),
        LuaValue::Number(n) => Reply::Int(n as i64),
        LuaValue::String(s) => Reply::Bulk(s.as_bytes().to_vec()),
        LuaValue::Table(_) if depth >= MAX_REPLY_DEPTH => Reply::err("ERR reached lua stack limit"),
        LuaValue::Table(t) => {
            if let Some(r) = typed_table(&t, depth, resp) {
                return r;
            }
            let mut out = Vec::new();
            for i in 1.. {
                match t.raw_get::<LuaValue>(i) {
                    Ok(LuaValue::Nil) | Err(_) => break,
                    Ok(v) => out.push(from_lua_at(v, depth + 1, resp)),
                }
            }
            Reply::Array(out)
        }
        _ => Reply::Nil,
    }
}

/// A table with one of Redis's type fields (err, ok, double, big_number, map, set,
/// verbatim_string). Kept out of `from_lua_at` so that its deep recursion stays cheap.
#[inline(never)]
fn typed_table(t: &mlua::Table, depth: usize, resp: u8) -> Option<Reply> {
    let field = |t: &mlua::Table, k: &str| t.raw_get::<LuaValue>(k).unwrap_or(LuaValue::Nil);
    if let LuaValue::String(e) = field(t, "err") {
        let e = e.to_string_lossy();
        return Some(Reply::Error(if e.is_empty() { "ERR".into() } else { e }));
    }
    if let LuaValue::String(s) = field(t, "ok") {
        return Some(Reply::Simple(s.to_string_lossy()));
    }
    match field(t, "double") {
        LuaValue::Number(d) => return Some(Reply::Double(d)),
        LuaValue::Integer(i) => return Some(Reply::Double(i as f64)),
        _ => {}
    }
    if let LuaValue::String(n) = field(t, "big_number") {
        let n = n.to_string_lossy().replace(['\r', '\n'], " ");
        return Some(Reply::BigNum(n));
    }
    if let LuaValue::Table(m) = field(t, "map") {
        let mut pairs = Vec::new();
        for (k, v) in m.pairs::<LuaValue, LuaValue>().flatten() {
            pairs.push((
                from_lua_at(k, depth + 1, resp),
                from_lua_at(v, depth + 1, resp),
            ));
        }
        return Some(Reply::Map(pairs));
    }
    if let LuaValue::Table(m) = field(t, "set") {
        let items = m
            .pairs::<LuaValue, LuaValue>()
            .flatten()
            .map(|(k, _)| from_lua_at(k, depth + 1, resp))
            .collect();
        return Some(Reply::Set(items));
    }
    if let LuaValue::Table(v) = field(t, "verbatim_string") {
        let fmt = match field(&v, "format") {
            LuaValue::String(f) => f.to_string_lossy(),
            _ => "txt".into(),
        };
        if let LuaValue::String(s) = field(&v, "string") {
            return Some(Reply::Verbatim(fmt, s.as_bytes().to_vec()));
        }
    }
    None
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

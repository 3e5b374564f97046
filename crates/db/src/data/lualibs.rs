//! The libraries Redis's Lua has besides Lua's own: `cjson` (lua-cjson 2.1), `cmsgpack`
//! (lua-cmsgpack) and `bit` (LuaBitOp), with their encodings and error messages, so scripts
//! written for Redis run unchanged. JSON goes through serde_json; MessagePack is written and
//! read with rmp's marker-level functions, choosing the markers lua-cmsgpack chooses (the
//! bytes are part of what a script sees). Everything here is deterministic: a table's keys
//! come out in Lua's own `next` order, which every member's identical Lua reproduces.

use std::cell::Cell;
use std::rc::Rc;

use mlua::{Lua, LuaString, MultiValue, Table, Value};

pub fn install(lua: &Lua) -> mlua::Result<()> {
    let g = lua.globals();
    g.raw_set("cjson", cjson(lua)?)?;
    g.raw_set("cmsgpack", cmsgpack(lua)?)?;
    g.raw_set("bit", bit(lua)?)?;
    Ok(())
}

fn rt(msg: impl Into<String>) -> mlua::Error {
    mlua::Error::RuntimeError(msg.into())
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Integer(i) => Some(*i as f64),
        Value::Number(n) => Some(*n),
        _ => None,
    }
}

// ---- cjson ----------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct JsonConfig {
    encode_max_depth: usize,
    decode_max_depth: usize,
    encode_invalid_numbers: bool,
    decode_invalid_numbers: bool,
    sparse_convert: bool,
    sparse_ratio: usize,
    sparse_safe: usize,
}

fn cjson(lua: &Lua) -> mlua::Result<Table> {
    let cfg = Rc::new(Cell::new(JsonConfig {
        encode_max_depth: 1000,
        decode_max_depth: 1000,
        encode_invalid_numbers: false,
        decode_invalid_numbers: true,
        sparse_convert: false,
        sparse_ratio: 2,
        sparse_safe: 10,
    }));
    let t = lua.create_table()?;
    // cjson.null: a light userdata holding NULL, as lua-cjson's.
    let null = Value::LightUserData(mlua::LightUserData(std::ptr::null_mut()));
    t.raw_set("null", null.clone())?;
    let c = cfg.clone();
    t.raw_set(
        "encode",
        lua.create_function(move |_, v: Value| {
            let mut out = String::new();
            encode_json(&v, &c.get(), 0, &mut out)?;
            Ok(out)
        })?,
    )?;
    let c = cfg.clone();
    t.raw_set(
        "decode",
        lua.create_function(move |lua, s: LuaString| {
            let bytes = s.as_bytes();
            let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                rt(format!(
                    "Expected value but found invalid token at character {}",
                    e.column().max(1)
                ))
            })?;
            decode_json(lua, &v, &c.get(), 1, &null)
        })?,
    )?;
    // The settings: each returns the current value(s), and sets them when given.
    let c = cfg.clone();
    t.raw_set(
        "encode_max_depth",
        lua.create_function(move |_, n: Option<f64>| {
            let mut v = c.get();
            if let Some(n) = n {
                v.encode_max_depth = depth_arg(n)?;
                c.set(v);
            }
            Ok(v.encode_max_depth)
        })?,
    )?;
    let c = cfg.clone();
    t.raw_set(
        "decode_max_depth",
        lua.create_function(move |_, n: Option<f64>| {
            let mut v = c.get();
            if let Some(n) = n {
                v.decode_max_depth = depth_arg(n)?;
                c.set(v);
            }
            Ok(v.decode_max_depth)
        })?,
    )?;
    for (name, set) in [
        (
            "encode_invalid_numbers",
            (|c: &mut JsonConfig, on| c.encode_invalid_numbers = on) as fn(&mut JsonConfig, bool),
        ),
        ("decode_invalid_numbers", |c, on| {
            c.decode_invalid_numbers = on
        }),
    ] {
        let c = cfg.clone();
        t.raw_set(
            name,
            lua.create_function(move |_, on: Option<Value>| {
                let mut v = c.get();
                if let Some(on) = on {
                    set(&mut v, truthy_option(&on)?);
                    c.set(v);
                }
                let now = if name.starts_with("encode") {
                    v.encode_invalid_numbers
                } else {
                    v.decode_invalid_numbers
                };
                Ok(now)
            })?,
        )?;
    }
    let c = cfg.clone();
    t.raw_set(
        "encode_sparse_array",
        lua.create_function(
            move |_, (convert, ratio, safe): (Option<Value>, Option<f64>, Option<f64>)| {
                let mut v = c.get();
                if let Some(convert) = convert {
                    v.sparse_convert = truthy_option(&convert)?;
                }
                if let Some(r) = ratio {
                    v.sparse_ratio = r.max(0.0) as usize;
                }
                if let Some(s) = safe {
                    v.sparse_safe = s.max(0.0) as usize;
                }
                c.set(v);
                Ok((v.sparse_convert, v.sparse_ratio, v.sparse_safe))
            },
        )?,
    )?;
    // Buffer reuse and number precision: accepted, with lua-cjson's defaults.
    t.raw_set(
        "encode_keep_buffer",
        lua.create_function(|_, on: Option<Value>| {
            Ok(on.map(|v| truthy_option(&v)).transpose()?.unwrap_or(true))
        })?,
    )?;
    t.raw_set(
        "encode_number_precision",
        lua.create_function(|_, n: Option<f64>| Ok(n.unwrap_or(14.0)))?,
    )?;
    t.raw_set("_NAME", "cjson")?;
    t.raw_set("_VERSION", "2.1.0")?;
    Ok(t)
}

fn depth_arg(n: f64) -> mlua::Result<usize> {
    if n < 1.0 {
        return Err(rt(
            "bad argument #1 to '?' (expected integer between 1 and 2147483647)",
        ));
    }
    Ok(n as usize)
}

fn truthy_option(v: &Value) -> mlua::Result<bool> {
    match v {
        Value::Boolean(b) => Ok(*b),
        Value::String(s) if s.as_bytes().as_ref() == b"on" => Ok(true),
        Value::String(s) if s.as_bytes().as_ref() == b"off" => Ok(false),
        _ => Err(rt("bad argument #1 to '?' (invalid option)")),
    }
}

fn json_number(n: f64, cfg: &JsonConfig, out: &mut String) -> mlua::Result<()> {
    if !n.is_finite() {
        if !cfg.encode_invalid_numbers {
            return Err(rt("Cannot serialise number: must not be NaN or Infinity"));
        }
        out.push_str(if n.is_nan() {
            "nan"
        } else if n > 0.0 {
            "inf"
        } else {
            "-inf"
        });
        return Ok(());
    }
    out.push_str(&crate::resp::format_g(n, 14));
    Ok(())
}

fn json_string(s: &[u8], out: &mut String) {
    out.push('"');
    for ch in String::from_utf8_lossy(s).chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// lua-cjson's array test: every key a positive integer; the largest one, unless the array
/// is too sparse (then an error, or an object when sparse conversion is on).
fn json_array_len(t: &Table, cfg: &JsonConfig) -> mlua::Result<Option<usize>> {
    let (mut max, mut items) = (0usize, 0usize);
    for pair in t.clone().pairs::<Value, Value>() {
        let (k, _) = pair?;
        match number(&k) {
            Some(n) if n >= 1.0 && n.fract() == 0.0 => {
                max = max.max(n as usize);
                items += 1;
            }
            _ => return Ok(None),
        }
    }
    if cfg.sparse_ratio > 0 && max > items * cfg.sparse_ratio && max > cfg.sparse_safe {
        if !cfg.sparse_convert {
            return Err(rt("Cannot serialise table: excessively sparse array"));
        }
        return Ok(None);
    }
    Ok(Some(max))
}

fn encode_json(v: &Value, cfg: &JsonConfig, depth: usize, out: &mut String) -> mlua::Result<()> {
    match v {
        Value::Nil => out.push_str("null"),
        Value::LightUserData(p) if p.0.is_null() => out.push_str("null"),
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Integer(_) | Value::Number(_) => json_number(number(v).unwrap_or(0.0), cfg, out)?,
        Value::String(s) => json_string(&s.as_bytes(), out),
        Value::Table(t) => {
            let depth = depth + 1;
            if depth > cfg.encode_max_depth {
                return Err(rt(format!("Cannot serialise, excessive nesting ({depth})")));
            }
            match json_array_len(t, cfg)? {
                Some(len) if len > 0 => {
                    out.push('[');
                    for i in 1..=len {
                        if i > 1 {
                            out.push(',');
                        }
                        encode_json(&t.raw_get::<Value>(i)?, cfg, depth, out)?;
                    }
                    out.push(']');
                }
                _ => {
                    out.push('{');
                    let mut first = true;
                    for pair in t.clone().pairs::<Value, Value>() {
                        let (k, val) = pair?;
                        if !first {
                            out.push(',');
                        }
                        first = false;
                        match &k {
                            Value::String(s) => json_string(&s.as_bytes(), out),
                            Value::Integer(_) | Value::Number(_) => {
                                out.push('"');
                                json_number(number(&k).unwrap_or(0.0), cfg, out)?;
                                out.push('"');
                            }
                            _ => {
                                return Err(rt(
                                    "Cannot serialise table: table key must be a number or string",
                                ));
                            }
                        }
                        out.push(':');
                        encode_json(&val, cfg, depth, out)?;
                    }
                    out.push('}');
                }
            }
        }
        other => {
            return Err(rt(format!(
                "Cannot serialise {}: type not supported",
                other.type_name()
            )));
        }
    }
    Ok(())
}

fn decode_json(
    lua: &Lua,
    v: &serde_json::Value,
    cfg: &JsonConfig,
    depth: usize,
    null: &Value,
) -> mlua::Result<Value> {
    use serde_json::Value as J;
    let nested = |depth: usize| -> mlua::Result<()> {
        if depth > cfg.decode_max_depth {
            return Err(rt(format!(
                "Found too many nested data structures ({depth})"
            )));
        }
        Ok(())
    };
    Ok(match v {
        J::Null => null.clone(),
        J::Bool(b) => Value::Boolean(*b),
        J::Number(n) => Value::Number(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Value::String(lua.create_string(s)?),
        J::Array(items) => {
            nested(depth)?;
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, it) in items.iter().enumerate() {
                t.raw_set(i + 1, decode_json(lua, it, cfg, depth + 1, null)?)?;
            }
            Value::Table(t)
        }
        J::Object(map) => {
            nested(depth)?;
            let t = lua.create_table_with_capacity(0, map.len())?;
            for (k, it) in map {
                t.raw_set(k.as_str(), decode_json(lua, it, cfg, depth + 1, null)?)?;
            }
            Value::Table(t)
        }
    })
}

// ---- cmsgpack -------------------------------------------------------------------------------

/// lua-cmsgpack encodes tables to this depth; deeper ones become nil.
const MSGPACK_MAX_NESTING: usize = 16;

fn cmsgpack(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set(
        "pack",
        lua.create_function(|lua, args: MultiValue| {
            if args.is_empty() {
                return Err(rt("MessagePack pack needs input."));
            }
            let mut out = Vec::new();
            for v in args.iter() {
                pack(v, 0, &mut out)?;
            }
            lua.create_string(&out)
        })?,
    )?;
    t.raw_set(
        "unpack",
        lua.create_function(|lua, s: LuaString| {
            let bytes = s.as_bytes();
            let (_, values) = unpack_many(lua, &bytes, 0, 0)?;
            Ok(MultiValue::from_iter(values))
        })?,
    )?;
    t.raw_set(
        "unpack_one",
        lua.create_function(|lua, (s, offset): (LuaString, Option<f64>)| {
            unpack_returning_offset(lua, &s.as_bytes(), 1, offset.unwrap_or(0.0))
        })?,
    )?;
    t.raw_set(
        "unpack_limit",
        lua.create_function(|lua, (s, limit, offset): (LuaString, f64, Option<f64>)| {
            unpack_returning_offset(
                lua,
                &s.as_bytes(),
                limit.max(0.0) as usize,
                offset.unwrap_or(0.0),
            )
        })?,
    )?;
    t.raw_set("_NAME", "cmsgpack")?;
    t.raw_set("_VERSION", "lua-cmsgpack 0.4.0")?;
    Ok(t)
}

fn unpack_returning_offset(
    lua: &Lua,
    bytes: &[u8],
    limit: usize,
    offset: f64,
) -> mlua::Result<MultiValue> {
    if offset < 0.0 || offset as usize > bytes.len() {
        return Err(rt(format!(
            "Start offset {offset} greater than input length {}.",
            bytes.len()
        )));
    }
    let (next, values) = unpack_many(lua, bytes, offset as usize, limit)?;
    let next = if next >= bytes.len() { -1 } else { next as i64 };
    let mut out = vec![Value::Number(next as f64)];
    out.extend(values);
    Ok(MultiValue::from_iter(out))
}

/// Decodes objects from `offset`, at most `limit` of them (0: all); returns where it stopped.
fn unpack_many(
    lua: &Lua,
    bytes: &[u8],
    offset: usize,
    limit: usize,
) -> mlua::Result<(usize, Vec<Value>)> {
    let mut cur = std::io::Cursor::new(bytes);
    cur.set_position(offset as u64);
    let mut values = Vec::new();
    while (cur.position() as usize) < bytes.len() && (limit == 0 || values.len() < limit) {
        values.push(unpack_one(lua, &mut cur)?);
    }
    Ok((cur.position() as usize, values))
}

/// An rmp write error as a Lua error (writing to a Vec fails only on allocation).
fn io<T, E: std::fmt::Display>(r: Result<T, E>) -> mlua::Result<()> {
    r.map(|_| ()).map_err(|e| rt(e.to_string()))
}

fn pack(v: &Value, level: usize, out: &mut Vec<u8>) -> mlua::Result<()> {
    use rmp::encode as e;
    match v {
        Value::Boolean(b) => io(e::write_bool(out, *b)),
        Value::Integer(_) | Value::Number(_) => {
            let n = number(v).unwrap_or(0.0);
            if n.fract() == 0.0 && n >= i64::MIN as f64 && n < i64::MAX as f64 {
                pack_int(n as i64, out)
            } else if (n as f32) as f64 == n {
                io(e::write_f32(out, n as f32))
            } else {
                io(e::write_f64(out, n))
            }
        }
        Value::String(s) => {
            let b = s.as_bytes();
            io(e::write_str_len(out, b.len() as u32))?;
            out.extend_from_slice(&b);
            Ok(())
        }
        Value::Table(t) if level < MSGPACK_MAX_NESTING => {
            if let Some(len) = msgpack_array_len(t)? {
                io(e::write_array_len(out, len as u32))?;
                for i in 1..=len {
                    pack(&t.raw_get::<Value>(i)?, level + 1, out)?;
                }
            } else {
                let n = t.clone().pairs::<Value, Value>().count();
                io(e::write_map_len(out, n as u32))?;
                for pair in t.clone().pairs::<Value, Value>() {
                    let (k, val) = pair?;
                    pack(&k, level + 1, out)?;
                    pack(&val, level + 1, out)?;
                }
            }
            Ok(())
        }
        // nil, functions, userdata, and tables past the nesting limit.
        _ => io(e::write_nil(out)),
    }
}

/// The smallest integer marker, as lua-cmsgpack picks it (unsigned ones for n ≥ 0).
fn pack_int(n: i64, out: &mut Vec<u8>) -> mlua::Result<()> {
    use rmp::encode as e;
    let r = if n >= 0 {
        let u = n as u64;
        if u <= 127 {
            e::write_pfix(out, u as u8).map_err(|e| e.to_string())
        } else if u <= 0xff {
            e::write_u8(out, u as u8).map_err(|e| e.to_string())
        } else if u <= 0xffff {
            e::write_u16(out, u as u16).map_err(|e| e.to_string())
        } else if u <= 0xffff_ffff {
            e::write_u32(out, u as u32).map_err(|e| e.to_string())
        } else {
            e::write_u64(out, u).map_err(|e| e.to_string())
        }
    } else if n >= -32 {
        e::write_nfix(out, n as i8).map_err(|e| e.to_string())
    } else if n >= -128 {
        e::write_i8(out, n as i8).map_err(|e| e.to_string())
    } else if n >= -32768 {
        e::write_i16(out, n as i16).map_err(|e| e.to_string())
    } else if n >= -2_147_483_648 {
        e::write_i32(out, n as i32).map_err(|e| e.to_string())
    } else {
        e::write_i64(out, n).map_err(|e| e.to_string())
    };
    r.map_err(rt)
}

/// lua-cmsgpack's array test: keys exactly 1..n, no holes.
fn msgpack_array_len(t: &Table) -> mlua::Result<Option<usize>> {
    let (mut max, mut count) = (0usize, 0usize);
    for pair in t.clone().pairs::<Value, Value>() {
        let (k, _) = pair?;
        match number(&k) {
            Some(n) if n >= 1.0 && n.fract() == 0.0 => {
                max = max.max(n as usize);
                count += 1;
            }
            _ => return Ok(None),
        }
    }
    Ok((max == count).then_some(count))
}

fn unpack_one(lua: &Lua, cur: &mut std::io::Cursor<&[u8]>) -> mlua::Result<Value> {
    use rmp::Marker as M;
    use rmp::decode as d;
    let bad = || rt("Missing bytes in input.");
    let marker = d::read_marker(cur).map_err(|_| bad())?;
    let bytes = |n: usize, cur: &mut std::io::Cursor<&[u8]>| -> mlua::Result<Vec<u8>> {
        let start = cur.position() as usize;
        let data = *cur.get_ref();
        if start + n > data.len() {
            return Err(bad());
        }
        cur.set_position((start + n) as u64);
        Ok(data[start..start + n].to_vec())
    };
    Ok(match marker {
        M::Null => Value::Nil,
        M::True => Value::Boolean(true),
        M::False => Value::Boolean(false),
        M::FixPos(n) => Value::Number(n as f64),
        M::FixNeg(n) => Value::Number(n as f64),
        M::U8 => Value::Number(be_u(&bytes(1, cur)?) as f64),
        M::U16 => Value::Number(be_u(&bytes(2, cur)?) as f64),
        M::U32 => Value::Number(be_u(&bytes(4, cur)?) as f64),
        M::U64 => Value::Number(be_u(&bytes(8, cur)?) as f64),
        M::I8 => Value::Number(bytes(1, cur)?[0] as i8 as f64),
        M::I16 => Value::Number(be_u(&bytes(2, cur)?) as u16 as i16 as f64),
        M::I32 => Value::Number(be_u(&bytes(4, cur)?) as u32 as i32 as f64),
        M::I64 => Value::Number(be_u(&bytes(8, cur)?) as i64 as f64),
        M::F32 => Value::Number(f32::from_bits(be_u(&bytes(4, cur)?) as u32) as f64),
        M::F64 => Value::Number(f64::from_bits(be_u(&bytes(8, cur)?))),
        M::FixStr(n) => Value::String(lua.create_string(bytes(n as usize, cur)?)?),
        M::Str8 | M::Bin8 => {
            let n = be_u(&bytes(1, cur)?) as usize;
            Value::String(lua.create_string(bytes(n, cur)?)?)
        }
        M::Str16 | M::Bin16 => {
            let n = be_u(&bytes(2, cur)?) as usize;
            Value::String(lua.create_string(bytes(n, cur)?)?)
        }
        M::Str32 | M::Bin32 => {
            let n = be_u(&bytes(4, cur)?) as usize;
            Value::String(lua.create_string(bytes(n, cur)?)?)
        }
        M::FixArray(_) | M::Array16 | M::Array32 => {
            let n = match marker {
                M::FixArray(n) => n as usize,
                M::Array16 => be_u(&bytes(2, cur)?) as usize,
                _ => be_u(&bytes(4, cur)?) as usize,
            };
            let t = lua.create_table()?;
            for i in 1..=n {
                t.raw_set(i, unpack_one(lua, cur)?)?;
            }
            Value::Table(t)
        }
        M::FixMap(_) | M::Map16 | M::Map32 => {
            let n = match marker {
                M::FixMap(n) => n as usize,
                M::Map16 => be_u(&bytes(2, cur)?) as usize,
                _ => be_u(&bytes(4, cur)?) as usize,
            };
            let t = lua.create_table()?;
            for _ in 0..n {
                let k = unpack_one(lua, cur)?;
                let v = unpack_one(lua, cur)?;
                if k != Value::Nil {
                    t.raw_set(k, v)?;
                }
            }
            Value::Table(t)
        }
        _ => return Err(rt("Bad data format in input.")),
    })
}

/// A big-endian unsigned integer of up to 8 bytes.
fn be_u(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |acc, &x| (acc << 8) | x as u64)
}

// ---- bit (LuaBitOp) -------------------------------------------------------------------------

/// LuaBitOp's normalisation: the number rounded to an integer, taken modulo 2^32, as a
/// signed 32-bit value.
fn tobit(n: f64) -> i32 {
    if !n.is_finite() {
        return 0;
    }
    n.round_ties_even().rem_euclid(4_294_967_296.0) as u64 as u32 as i32
}

fn bit(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let arg = |v: &Value, i: usize, name: &str| -> mlua::Result<i32> {
        number(v).map(tobit).ok_or_else(|| {
            rt(format!(
                "bad argument #{i} to '{name}' (number expected, got {})",
                v.type_name()
            ))
        })
    };
    t.raw_set(
        "tobit",
        lua.create_function(move |_, v: Value| Ok(arg(&v, 1, "tobit")? as f64))?,
    )?;
    t.raw_set(
        "bnot",
        lua.create_function(move |_, v: Value| Ok(!arg(&v, 1, "bnot")? as f64))?,
    )?;
    t.raw_set(
        "bswap",
        lua.create_function(move |_, v: Value| Ok(arg(&v, 1, "bswap")?.swap_bytes() as f64))?,
    )?;
    for (name, op) in [
        ("band", (|a: i32, b: i32| a & b) as fn(i32, i32) -> i32),
        ("bor", |a, b| a | b),
        ("bxor", |a, b| a ^ b),
    ] {
        t.raw_set(
            name,
            lua.create_function(move |_, args: MultiValue| {
                let mut it = args.iter().enumerate();
                let (_, first) = it.next().ok_or_else(|| {
                    rt(format!(
                        "bad argument #1 to '{name}' (number expected, got no value)"
                    ))
                })?;
                let mut acc = arg(first, 1, name)?;
                for (i, v) in it {
                    acc = op(acc, arg(v, i + 1, name)?);
                }
                Ok(acc as f64)
            })?,
        )?;
    }
    for (name, op) in [
        (
            "lshift",
            (|x: i32, n: u32| x.wrapping_shl(n)) as fn(i32, u32) -> i32,
        ),
        ("rshift", |x, n| ((x as u32) >> n) as i32),
        ("arshift", |x, n| x >> n),
        ("rol", |x, n| (x as u32).rotate_left(n) as i32),
        ("ror", |x, n| (x as u32).rotate_right(n) as i32),
    ] {
        t.raw_set(
            name,
            lua.create_function(move |_, (x, n): (Value, Value)| {
                let x = arg(&x, 1, name)?;
                let n = (arg(&n, 2, name)? & 31) as u32;
                Ok(op(x, n) as f64)
            })?,
        )?;
    }
    t.raw_set(
        "tohex",
        lua.create_function(move |_, (x, n): (Value, Option<Value>)| {
            let x = arg(&x, 1, "tohex")? as u32;
            let n = match n {
                Some(v) => arg(&v, 2, "tohex")?,
                None => 8,
            };
            let (upper, digits) = (n < 0, n.unsigned_abs().min(8) as usize);
            let full = if upper {
                format!("{x:08X}")
            } else {
                format!("{x:08x}")
            };
            Ok(full[8 - digits..].to_string())
        })?,
    )?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(src: &str) -> String {
        let lua = Lua::new();
        install(&lua).unwrap();
        let v: Value = lua.load(src).eval().unwrap();
        match v {
            Value::String(s) => s.to_str().unwrap().to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn cjson_encodes_and_decodes_as_lua_cjson() {
        assert_eq!(
            eval("return cjson.encode({1, 2, 'a/b'})"),
            "[1,2,\"a\\/b\"]"
        );
        assert_eq!(eval("return cjson.encode({x = 0.1})"), "{\"x\":0.1}");
        assert_eq!(eval("return cjson.encode({})"), "{}");
        assert_eq!(
            eval("return table.concat(cjson.decode('[0.0, -5e3, -1, 0.3e-3, 1023.2, 0e10]'), ' ')"),
            "0 -5000 -1 0.0003 1023.2 0"
        );
        assert!(
            eval("local ok, e = pcall(cjson.encode, {[1] = 1, [100] = 2}) return tostring(e)")
                .contains("Cannot serialise table: excessively sparse array")
        );
        assert_eq!(
            eval("return tostring(cjson.decode('null') == cjson.null)"),
            "true"
        );
    }

    #[test]
    fn cmsgpack_bytes_are_lua_cmsgpack_s() {
        let hex = "local h = '' for i = 1, #e do h = h .. string.format('%02x', string.byte(e, i)) end return h";
        assert_eq!(
            eval(&format!("local e = cmsgpack.pack(0.1) {hex}")),
            "cb3fb999999999999a"
        );
        assert_eq!(
            eval(&format!("local e = cmsgpack.pack(-1099511627776) {hex}")),
            "d3ffffff0000000000"
        );
        assert_eq!(
            eval(&format!("local e = cmsgpack.pack({{1, 2}}, 'ab') {hex}")),
            "920102a26162"
        );
        assert_eq!(
            eval(
                "local a, b = cmsgpack.unpack(cmsgpack.pack({x = {1, 2, 3}}, 7)) return a.x[3] + b"
            ),
            "Integer(10)"
        );
    }

    #[test]
    fn bit_is_luabitop() {
        assert_eq!(
            eval("return bit.tohex(bit.bor(1, 2, 4, 8, 16, 32, 64, 128))"),
            "000000ff"
        );
        assert_eq!(eval("return bit.tohex(bit.tobit(0xffffffff) , -4)"), "FFFF");
        assert_eq!(eval("return tostring(bit.rshift(-1, 28))"), "15");
        assert_eq!(eval("return tostring(bit.arshift(-256, 4))"), "-16");
        assert_eq!(eval("return tostring(bit.bnot(0))"), "-1");
    }

    #[test]
    fn redis_call_with_7999_unpacked_arguments() {
        let r = crate::data::script::run(
            b"local a = {} for i=1,7999 do a[i] = 1 end return redis.call('lpush', 'l', unpack(a))",
            &[],
            &[],
            |argv| crate::resp::Reply::Int(argv.len() as i64 - 2),
        );
        assert_eq!(format!("{r:?}"), "Int(7999)");
    }

    #[test]
    fn a_table_that_contains_itself_is_cut_at_the_stack_limit() {
        let r = crate::data::script::run(
            b"local a = {}; local b = {a}; a[1] = b; return a",
            &[],
            &[],
            |_| crate::resp::Reply::Nil,
        );
        let mut depth = 0;
        let mut cur = &r;
        while let crate::resp::Reply::Array(items) = cur {
            depth += 1;
            cur = &items[0];
        }
        assert_eq!(depth, 1000);
        assert!(
            matches!(cur, crate::resp::Reply::Error(e) if e.contains("reached lua stack limit"))
        );
    }
}

//! HyperLogLog in Redis's own string format (so PFCOUNT on a value from Redis, DUMPs and
//! byte-level tests agree): "HYLL", encoding, 3 spare bytes, an 8-byte cached cardinality
//! (top bit of the last byte set = stale), then 16384 six-bit registers (dense) or Redis's
//! run-length opcodes (sparse). Like Redis, a new HLL is sparse (a few bytes instead of
//! 12 KiB) until its encoding would pass `SPARSE_MAX` bytes or a register 32, and dense from
//! then on.

use super::{At, Db, Value, WRONGTYPE, upper};
use crate::resp::Reply;

const P: u32 = 14;
const M: usize = 1 << P;
const Q: u32 = 64 - P;
const HDR: usize = 16;
const DENSE_LEN: usize = HDR + (M * 6).div_ceil(8);
/// Redis's default `hll-sparse-max-bytes`. A constant, not the setting: every member must
/// choose the same encoding for the same entry.
const SPARSE_MAX: usize = 3000;
/// The largest register a sparse VAL opcode holds.
const SPARSE_VAL_MAX: u8 = 32;
const NOT_HLL: &str = "WRONGTYPE Key is not a valid HyperLogLog string value.";
const CORRUPT: &str = "INVALIDOBJ Corrupted HLL object detected";

/// Redis's MurmurHash64A with seed 0xadc83b19.
fn murmur64a(key: &[u8]) -> u64 {
    const MUL: u64 = 0xc6a4a7935bd1e995;
    const R: u32 = 47;
    let mut h: u64 = 0xadc83b19u64 ^ (key.len() as u64).wrapping_mul(MUL);
    let chunks = key.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        k = k.wrapping_mul(MUL);
        k ^= k >> R;
        k = k.wrapping_mul(MUL);
        h ^= k;
        h = h.wrapping_mul(MUL);
    }
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate() {
            h ^= (*b as u64) << (8 * i);
        }
        h = h.wrapping_mul(MUL);
    }
    h ^= h >> R;
    h = h.wrapping_mul(MUL);
    h ^= h >> R;
    h
}

/// (register, run length of zeros + 1) for an element, as Redis's hllPatLen.
fn pattern(e: &[u8]) -> (usize, u8) {
    let hash = murmur64a(e);
    let index = (hash & (M as u64 - 1)) as usize;
    let rest = (hash >> P) | (1u64 << Q);
    (index, rest.trailing_zeros() as u8 + 1)
}

/// The registers of a valid HLL string; Err(NOT_HLL) or Err(CORRUPT).
fn registers(s: &[u8]) -> Result<Vec<u8>, &'static str> {
    if s.len() < HDR || &s[..4] != b"HYLL" || s[4] > 1 {
        return Err(NOT_HLL);
    }
    let mut regs = vec![0u8; M];
    if s[4] == 0 {
        if s.len() != DENSE_LEN {
            return Err(NOT_HLL);
        }
        let r = &s[HDR..];
        for (i, reg) in regs.iter_mut().enumerate() {
            let bit = i * 6;
            let (byte, fb) = (bit / 8, bit % 8);
            let b0 = r[byte] as u16;
            let b1 = r.get(byte + 1).copied().unwrap_or(0) as u16;
            *reg = (((b0 >> fb) | (b1 << (8 - fb))) & 63) as u8;
        }
        return Ok(regs);
    }
    let (mut idx, mut p) = (0usize, HDR);
    while p < s.len() {
        let op = s[p];
        if op & 0xc0 == 0 {
            idx += (op & 0x3f) as usize + 1;
            p += 1;
        } else if op & 0xc0 == 0x40 {
            let Some(&next) = s.get(p + 1) else {
                return Err(CORRUPT);
            };
            idx += ((((op & 0x3f) as usize) << 8) | next as usize) + 1;
            p += 2;
        } else {
            let val = ((op >> 2) & 0x1f) + 1;
            let run = (op & 3) as usize + 1;
            if idx + run > M {
                return Err(CORRUPT);
            }
            regs[idx..idx + run].fill(val);
            idx += run;
            p += 1;
        }
        if idx > M {
            return Err(CORRUPT);
        }
    }
    if idx != M {
        return Err(CORRUPT);
    }
    Ok(regs)
}

/// A dense HLL string with `regs` and a stale cache.
fn dense(regs: &[u8]) -> Vec<u8> {
    let mut s = vec![0u8; DENSE_LEN];
    s[..4].copy_from_slice(b"HYLL");
    s[15] = 0x80;
    let r = &mut s[HDR..];
    for (i, &v) in regs.iter().enumerate() {
        let bit = i * 6;
        let (byte, fb) = (bit / 8, bit % 8);
        let v = v as u16 & 63;
        let w = (r[byte] as u16 | (r.get(byte + 1).copied().unwrap_or(0) as u16) << 8)
            & !(63u16 << fb)
            | v << fb;
        r[byte] = w as u8;
        if byte + 1 < r.len() {
            r[byte + 1] = (w >> 8) as u8;
        }
    }
    s
}

/// A sparse HLL string with `regs` and a stale cache, if it is no longer than `SPARSE_MAX`
/// and every register fits a VAL opcode: ZERO (runs up to 64), XZERO (up to 16384) and VAL
/// (a value up to 32, runs up to 4) opcodes, as Redis writes them.
fn sparse(regs: &[u8]) -> Option<Vec<u8>> {
    let mut s = Vec::with_capacity(64);
    s.extend_from_slice(b"HYLL\x01\0\0\0\0\0\0\0\0\0\0\x80");
    let mut i = 0;
    while i < regs.len() {
        let v = regs[i];
        let run = regs[i..].iter().take_while(|&&r| r == v).count();
        if v == 0 {
            let mut left = run;
            while left > 0 {
                let n = left.min(16384);
                if n <= 64 {
                    s.push((n - 1) as u8);
                } else {
                    s.push(0x40 | ((n - 1) >> 8) as u8);
                    s.push(((n - 1) & 0xff) as u8);
                }
                left -= n;
            }
        } else {
            if v > SPARSE_VAL_MAX {
                return None;
            }
            let mut left = run;
            while left > 0 {
                let n = left.min(4);
                s.push(0x80 | ((v - 1) << 2) | (n - 1) as u8);
                left -= n;
            }
        }
        if s.len() > SPARSE_MAX {
            return None;
        }
        i += run;
    }
    Some(s)
}

/// The string for `regs`: sparse while `sparse_ok` (the value was sparse, or is new) and it
/// fits, else dense.
fn encode(regs: &[u8], sparse_ok: bool) -> Vec<u8> {
    sparse_ok
        .then(|| sparse(regs))
        .flatten()
        .unwrap_or_else(|| dense(regs))
}

fn is_sparse(s: &[u8]) -> bool {
    s[4] == 1
}

/// PFSELFTEST: both encodings give back the registers they were given, and the estimate
/// stays within Redis's error bound (5 standard errors, 1.04/√m each) as elements are added.
pub fn selftest() -> Reply {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..100 {
        let cap = if round % 2 == 0 {
            64
        } else {
            SPARSE_VAL_MAX as u64 + 1
        };
        let mut regs = vec![0u8; M];
        for _ in 0..(round * 37 % 500) {
            let i = (next() % M as u64) as usize;
            regs[i] = (next() % cap) as u8;
        }
        if registers(&dense(&regs)).as_deref() != Ok(&regs[..]) {
            return Reply::err("ERR TESTFAILED dense registers do not read back");
        }
        if let Some(sp) = sparse(&regs)
            && registers(&sp).as_deref() != Ok(&regs[..])
        {
            return Reply::err("ERR TESTFAILED sparse registers do not read back");
        }
    }
    let bound = 5.0 * 1.04 / (M as f64).sqrt();
    let mut regs = vec![0u8; M];
    let mut checkpoint = 10u64;
    for n in 1..=200_000u64 {
        let (i, r) = pattern(&next().to_le_bytes());
        regs[i] = regs[i].max(r);
        if n == checkpoint {
            let est = count(&regs) as f64;
            let err = (est - n as f64).abs() / n as f64;
            if err > bound {
                return Reply::err(format!(
                    "ERR TESTFAILED cardinality {n} estimated as {est} (error {err:.4} > {bound:.4})"
                ));
            }
            checkpoint *= 10;
        }
    }
    Reply::ok()
}

fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let (mut y, mut z) = (1.0, x);
    loop {
        x *= x;
        let prev = z;
        z += x * y;
        y += y;
        if prev == z {
            return z;
        }
    }
}

fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let (mut y, mut z) = (1.0, 1.0 - x);
    loop {
        x = x.sqrt();
        let prev = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if prev == z {
            return z / 3.0;
        }
    }
}

/// Redis 7's estimator (Ertl's improved raw estimate over the register histogram).
fn count(regs: &[u8]) -> u64 {
    let mut histo = [0u32; 64];
    for &r in regs {
        histo[r as usize & 63] += 1;
    }
    let m = M as f64;
    let mut z = m * tau((m - histo[Q as usize + 1] as f64) / m);
    for j in (1..=Q as usize).rev() {
        z += histo[j] as f64;
        z *= 0.5;
    }
    z += m * sigma(histo[0] as f64 / m);
    (0.721_347_520_444_481_7 * m * m / z).round() as u64
}

/// An HLL value: its string and its registers.
type Loaded = (Vec<u8>, Vec<u8>);

/// The HLL at `k`: None when absent; WRONGTYPE / not-an-HLL / corrupt as Redis says.
fn load(db: &Db, k: &[u8], now: u64) -> Result<Option<Loaded>, Reply> {
    match db.get_live(k, now).map(|i| &i.value) {
        None => Ok(None),
        Some(Value::Str(s)) => match registers(s) {
            Ok(r) => Ok(Some((s.clone(), r))),
            Err(e) => Err(Reply::err(e)),
        },
        Some(_) => Err(Reply::err(WRONGTYPE)),
    }
}

pub(super) fn write(db: &mut Db, name: &str, argv: &[Vec<u8>], at: At) -> Option<Reply> {
    Some(super::flat(run(db, name, argv, at)))
}

fn store(db: &mut Db, k: &[u8], s: Vec<u8>, index: u64, now: u64) {
    let exp = db.get_live(k, now).and_then(|i| i.expire_at);
    db.put(k, Value::Str(s), exp, index);
}

fn run(db: &mut Db, name: &str, argv: &[Vec<u8>], at: At) -> Result<Reply, Reply> {
    let now = at.now;
    Ok(match name {
        "PFADD" => {
            let cur = load(db, &argv[1], now)?;
            let created = cur.is_none();
            let sparse_ok = cur.as_ref().is_none_or(|(s, _)| is_sparse(s));
            let mut regs = cur.map(|(_, r)| r).unwrap_or_else(|| vec![0u8; M]);
            let mut changed = false;
            for e in &argv[2..] {
                let (i, n) = pattern(e);
                if regs[i] < n {
                    regs[i] = n;
                    changed = true;
                }
            }
            if created || changed {
                store(db, &argv[1], encode(&regs, sparse_ok), at.index, now);
            }
            Reply::Int((created || changed) as i64)
        }
        "PFCOUNT" => {
            if argv.len() == 2 {
                let Some((mut s, regs)) = load(db, &argv[1], now)? else {
                    return Ok(Reply::Int(0));
                };
                if s[15] & 0x80 == 0 {
                    return Ok(Reply::Int(
                        u64::from_le_bytes(s[8..16].try_into().unwrap_or([0; 8])) as i64,
                    ));
                }
                let n = count(&regs);
                // PFCOUNT caches its result in the value, as Redis does.
                s[8..16].copy_from_slice(&n.to_le_bytes());
                store(db, &argv[1], s, at.index, now);
                Reply::Int(n as i64)
            } else {
                let mut regs = vec![0u8; M];
                for k in &argv[1..] {
                    if let Some((_, r)) = load(db, k, now)? {
                        for (a, b) in regs.iter_mut().zip(r) {
                            *a = (*a).max(b);
                        }
                    }
                }
                Reply::Int(count(&regs) as i64)
            }
        }
        "PFMERGE" => {
            // Sparse only if every input is (as Redis: a dense input makes the result dense).
            let mut regs = vec![0u8; M];
            let mut sparse_ok = true;
            for k in &argv[1..] {
                if let Some((s, r)) = load(db, k, now)? {
                    sparse_ok &= is_sparse(&s);
                    for (a, b) in regs.iter_mut().zip(r) {
                        *a = (*a).max(b);
                    }
                }
            }
            store(db, &argv[1], encode(&regs, sparse_ok), at.index, now);
            Reply::ok()
        }
        "PFDEBUG" => {
            if argv.len() != 3 {
                return Err(super::arity_err(name));
            }
            let Some((s, regs)) = load(db, &argv[2], now)? else {
                return Err(Reply::err("ERR The specified key does not exist"));
            };
            match upper(&argv[1]).as_str() {
                "GETREG" => Reply::Array(regs.iter().map(|r| Reply::Int(*r as i64)).collect()),
                "ENCODING" => Reply::Simple(if is_sparse(&s) { "sparse" } else { "dense" }.into()),
                "TODENSE" => {
                    let was_sparse = is_sparse(&s);
                    if was_sparse {
                        store(db, &argv[2], dense(&regs), at.index, now);
                    }
                    Reply::Int(was_sparse as i64)
                }
                _ => {
                    return Err(Reply::err(format!(
                        "ERR Unknown PFDEBUG subcommand '{}'",
                        String::from_utf8_lossy(&argv[1])
                    )));
                }
            }
        }
        _ => return Err(super::unknown_cmd(name)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_within_redis_error_bounds() {
        let mut regs = vec![0u8; M];
        assert_eq!(count(&regs), 0);
        for i in 0..10_000u32 {
            let (r, n) = pattern(format!("ele:{i}").as_bytes());
            regs[r] = regs[r].max(n);
        }
        let est = count(&regs) as f64;
        assert!((est - 10_000.0).abs() / 10_000.0 < 0.02, "{est}");
        // Dense encoding round-trips.
        assert_eq!(registers(&dense(&regs)).unwrap(), regs);
        // Redis's empty sparse HLL: one XZERO opcode covering every register.
        let mut sparse = b"HYLL\x01\0\0\0\0\0\0\0\0\0\0\x80".to_vec();
        sparse.extend([0x7f, 0xff]);
        assert_eq!(registers(&sparse).unwrap(), vec![0u8; M]);
        sparse.push(0x80);
        assert_eq!(registers(&sparse), Err(CORRUPT));
    }

    #[test]
    fn same_registers_as_redis() {
        // PFADD k hello world foo bar 12345; PFDEBUG GETREG k on redis-server 7.0.15.
        let mut got: Vec<(usize, u8)> = ["hello", "world", "foo", "bar", "12345"]
            .iter()
            .map(|e| pattern(e.as_bytes()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![(2742, 3), (7348, 5), (9216, 1), (10007, 1), (14704, 1)]
        );
    }
}

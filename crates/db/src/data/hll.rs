//! HyperLogLog in Redis's own string format (so PFCOUNT on a value from Redis, DUMPs and
//! byte-level tests agree): "HYLL", encoding, 3 spare bytes, an 8-byte cached cardinality
//! (top bit of the last byte set = stale), then 16384 six-bit registers (dense) or Redis's
//! run-length opcodes (sparse). This server reads both and writes dense.

use super::{At, Db, Value, WRONGTYPE, upper};
use crate::resp::Reply;

const P: u32 = 14;
const M: usize = 1 << P;
const Q: u32 = 64 - P;
const HDR: usize = 16;
const DENSE_LEN: usize = HDR + (M * 6).div_ceil(8);
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
                store(db, &argv[1], dense(&regs), at.index, now);
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
            let mut regs = vec![0u8; M];
            for k in &argv[1..] {
                if let Some((_, r)) = load(db, k, now)? {
                    for (a, b) in regs.iter_mut().zip(r) {
                        *a = (*a).max(b);
                    }
                }
            }
            store(db, &argv[1], dense(&regs), at.index, now);
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
                "ENCODING" => Reply::Simple(if s[4] == 0 { "dense" } else { "sparse" }.into()),
                "TODENSE" => {
                    let was_sparse = s[4] == 1;
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

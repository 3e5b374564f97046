//! Redis's RDB format (version 9), written from this member's tables: the snapshot that
//! SYNC and PSYNC send a stock Redis replica before the feed of writes (see `feed`).
//!
//! Only the plain encodings that every Redis since 2.x loads: strings (HyperLogLogs and
//! bitmaps are strings), lists as a length and elements, sets, hashes, sorted sets with
//! binary scores. Streams have no plain encoding (Redis writes them as listpacks in a radix
//! tree), so a database holding one cannot be sent: the caller gets an error naming the key.

use crate::data::{Tables, Value};

const RDB_VERSION: &[u8] = b"REDIS0009";
const OP_AUX: u8 = 0xFA;
const OP_RESIZEDB: u8 = 0xFB;
const OP_EXPIRETIME_MS: u8 = 0xFC;
const OP_SELECTDB: u8 = 0xFE;
const OP_EOF: u8 = 0xFF;
const TYPE_STRING: u8 = 0;
const TYPE_LIST: u8 = 1;
const TYPE_SET: u8 = 2;
const TYPE_HASH: u8 = 4;
const TYPE_ZSET_2: u8 = 5;

/// Redis's CRC-64 (Jones polynomial, reflected), stored little-endian after the EOF opcode.
const CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_REDIS);

/// The live keys of every database as of `now`, or which key cannot be written.
pub fn write(tables: &Tables, now: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(RDB_VERSION);
    aux(&mut out, b"redis-ver", b"7.0.15");
    aux(
        &mut out,
        b"citadel-ver",
        env!("CARGO_PKG_VERSION").as_bytes(),
    );
    for (dbi, db) in tables.dbs.iter().enumerate() {
        let live: Vec<_> = db
            .map
            .iter()
            .filter(|(_, item)| item.expire_at.is_none_or(|t| t > now))
            .collect();
        if live.is_empty() {
            continue;
        }
        out.push(OP_SELECTDB);
        len(&mut out, dbi as u64);
        out.push(OP_RESIZEDB);
        len(&mut out, live.len() as u64);
        len(
            &mut out,
            live.iter().filter(|(_, i)| i.expire_at.is_some()).count() as u64,
        );
        for (key, item) in live {
            if let Some(t) = item.expire_at {
                out.push(OP_EXPIRETIME_MS);
                out.extend_from_slice(&t.to_le_bytes());
            }
            value(&mut out, &key.1, &item.value).map_err(|kind| {
                format!(
                    "ERR the {kind} at '{}' in db {dbi} has no RDB encoding this server writes",
                    String::from_utf8_lossy(&key.1)
                )
            })?;
        }
    }
    out.push(OP_EOF);
    let sum = CRC64.checksum(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    Ok(out)
}

fn value(out: &mut Vec<u8>, key: &[u8], v: &Value) -> Result<(), &'static str> {
    let kind = match v {
        Value::Str(_) => TYPE_STRING,
        Value::List(_) => TYPE_LIST,
        Value::Set(_) => TYPE_SET,
        Value::Hash(_) => TYPE_HASH,
        Value::ZSet(_) => TYPE_ZSET_2,
        Value::Stream(_) => return Err("stream"),
    };
    out.push(kind);
    string(out, key);
    match v {
        Value::Str(s) => string(out, s),
        Value::List(l) => {
            len(out, l.len() as u64);
            l.iter().for_each(|e| string(out, e));
        }
        Value::Set(s) => {
            len(out, s.len() as u64);
            s.iter().for_each(|e| string(out, e));
        }
        Value::Hash(h) => {
            len(out, h.len() as u64);
            for (f, v) in h {
                string(out, f);
                string(out, v);
            }
        }
        Value::ZSet(z) => {
            len(out, z.len() as u64);
            for (m, score) in z.iter() {
                string(out, m);
                out.extend_from_slice(&score.to_le_bytes());
            }
        }
        Value::Stream(_) => unreachable!("refused above"),
    }
    Ok(())
}

fn aux(out: &mut Vec<u8>, k: &[u8], v: &[u8]) {
    out.push(OP_AUX);
    string(out, k);
    string(out, v);
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    len(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// RDB's length encoding: 6 bits, 14 bits, or a 32- or 64-bit big-endian number.
fn len(out: &mut Vec<u8>, n: u64) {
    if n < 1 << 6 {
        out.push(n as u8);
    } else if n < 1 << 14 {
        out.push(0x40 | (n >> 8) as u8);
        out.push(n as u8);
    } else if n <= u32::MAX as u64 {
        out.push(0x80);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(0x81);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_redis_crc64() {
        // Redis's own crc64 self-test value (src/crc64.c).
        assert_eq!(CRC64.checksum(b"123456789"), 0xe9c6d914c4b8d9ca);
    }

    #[test]
    fn lengths_use_the_shortest_form() {
        let enc = |n| {
            let mut v = Vec::new();
            len(&mut v, n);
            v
        };
        assert_eq!(enc(63), [63]);
        assert_eq!(enc(64), [0x40, 64]);
        assert_eq!(enc(16383), [0x7f, 0xff]);
        assert_eq!(enc(16384), [0x80, 0, 0, 0x40, 0]);
        assert_eq!(enc(1 << 32), [0x81, 0, 0, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn an_empty_dataset_is_header_and_eof() {
        let out = write(&Tables::default(), 0).unwrap();
        assert!(out.starts_with(b"REDIS0009"));
        assert_eq!(out[out.len() - 9], OP_EOF);
    }
}

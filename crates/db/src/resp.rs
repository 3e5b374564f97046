//! RESP2/RESP3 wire format: a strict, bounded request parser and a reply encoder.

use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};

/// Largest bulk string a client may send (Redis allows 512 MiB; we keep it smaller).
pub const MAX_BULK: usize = 64 * 1024 * 1024;
/// Most arguments one command may carry.
pub const MAX_ARGS: usize = 1024 * 1024;
/// Longest inline command or length line.
pub const MAX_INLINE: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The client broke the protocol; the connection is answered with this and closed.
    Protocol(String),
}

/// Parses one command (array of bulk strings, or an inline command) from the front of `buf`.
/// Returns `Ok(None)` when more bytes are needed; consumes the command's bytes on success.
/// Nested arrays and non-bulk elements are refused: a request is one flat array.
pub fn parse_command(buf: &mut BytesMut) -> Result<Option<Vec<Vec<u8>>>, ParseError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return parse_inline(buf);
    }
    let mut pos = 0usize;
    let n = match read_len_line(buf, &mut pos, b'*')? {
        None => return Ok(None),
        Some(n) => n,
    };
    if n < 0 {
        // A null array: nothing to run.
        buf.advance(pos);
        return Ok(Some(Vec::new()));
    }
    let n = n as usize;
    if n > MAX_ARGS {
        return Err(ParseError::Protocol("invalid multibulk length".into()));
    }
    // Grow the vector only as elements arrive, so a huge declared count costs nothing.
    let mut args: Vec<Vec<u8>> = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        if pos >= buf.len() {
            return Ok(None);
        }
        if buf[pos] != b'$' {
            return Err(ParseError::Protocol(format!(
                "expected '$', got '{}'",
                (buf[pos] as char).escape_default()
            )));
        }
        let len = match read_len_line(buf, &mut pos, b'$')? {
            None => return Ok(None),
            Some(l) => l,
        };
        if len < 0 || len as usize > MAX_BULK {
            return Err(ParseError::Protocol("invalid bulk length".into()));
        }
        let len = len as usize;
        if buf.len() < pos + len + 2 {
            return Ok(None);
        }
        if &buf[pos + len..pos + len + 2] != b"\r\n" {
            return Err(ParseError::Protocol(
                "bulk string not terminated by CRLF".into(),
            ));
        }
        args.push(buf[pos..pos + len].to_vec());
        pos += len + 2;
    }
    buf.advance(pos);
    Ok(Some(args))
}

/// Bytes the parser may still want before the next command is complete; used to cap buffers.
pub fn pending_limit() -> usize {
    MAX_BULK + MAX_INLINE * 4
}

fn read_len_line(buf: &BytesMut, pos: &mut usize, prefix: u8) -> Result<Option<i64>, ParseError> {
    debug_assert_eq!(buf[*pos], prefix);
    let start = *pos + 1;
    let end = match find_crlf(&buf[start..]) {
        None => {
            if buf.len() - start > 32 {
                return Err(ParseError::Protocol("length line too long".into()));
            }
            return Ok(None);
        }
        Some(e) => start + e,
    };
    let s = std::str::from_utf8(&buf[start..end])
        .map_err(|_| ParseError::Protocol("invalid length".into()))?;
    let n: i64 = s
        .parse()
        .map_err(|_| ParseError::Protocol(format!("invalid length '{}'", s.escape_default())))?;
    if n < -1 {
        return Err(ParseError::Protocol("invalid length".into()));
    }
    *pos = end + 2;
    Ok(Some(n))
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

fn parse_inline(buf: &mut BytesMut) -> Result<Option<Vec<Vec<u8>>>, ParseError> {
    let nl = match buf.iter().position(|&c| c == b'\n') {
        None => {
            if buf.len() > MAX_INLINE {
                return Err(ParseError::Protocol("too big inline request".into()));
            }
            return Ok(None);
        }
        Some(p) => p,
    };
    if nl > MAX_INLINE {
        return Err(ParseError::Protocol("too big inline request".into()));
    }
    let line = buf.split_to(nl + 1);
    let mut line = &line[..nl];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    let args = split_inline(line)?;
    Ok(Some(args))
}

/// Splits an inline command, honouring double and single quotes as redis-cli does.
fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ParseError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            break;
        }
        let mut cur = Vec::new();
        if line[i] == b'"' || line[i] == b'\'' {
            let q = line[i];
            i += 1;
            loop {
                if i >= line.len() {
                    return Err(ParseError::Protocol("unbalanced quotes in request".into()));
                }
                let c = line[i];
                if c == q {
                    i += 1;
                    break;
                }
                if c == b'\\' && q == b'"' && i + 1 < line.len() {
                    i += 1;
                    cur.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        other => other,
                    });
                } else {
                    cur.push(c);
                }
                i += 1;
            }
            if i < line.len() && !line[i].is_ascii_whitespace() {
                return Err(ParseError::Protocol("unbalanced quotes in request".into()));
            }
        } else {
            while i < line.len() && !line[i].is_ascii_whitespace() {
                cur.push(line[i]);
                i += 1;
            }
        }
        out.push(cur);
    }
    Ok(out)
}

/// A reply, independent of protocol version until encoded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
    NilArray,
    /// A map in RESP3, a flat array in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// A double in RESP3, a bulk string in RESP2 (formatted as Redis 7.0's `%.17g`).
    Double(f64),
    /// (member, score)-style pairs: a flat array in RESP2, an array of two-element arrays in
    /// RESP3 (ZRANGE … WITHSCORES, HRANDFIELD … WITHVALUES).
    Pairs(Vec<(Reply, Reply)>),
    /// Out-of-band data (pub/sub messages): a push in RESP3, an array in RESP2.
    Push(Vec<Reply>),
    /// key → value pairs that RESP2 sends as an array of two-element arrays and RESP3 as a
    /// map (XREAD and XREADGROUP).
    Streams(Vec<(Reply, Reply)>),
    /// RESP3's boolean (`#t`/`#f`); `:1`/`:0` in RESP2.
    Bool(bool),
    /// RESP3's big number (`(…`); a bulk string in RESP2.
    BigNum(String),
    /// RESP3's verbatim string (`=len\r\nfmt:…`): its format and text; a bulk string in RESP2.
    Verbatim(String, Vec<u8>),
    /// RESP3's set (`~n`); an array in RESP2.
    Set(Vec<Reply>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }
    pub fn err(s: impl Into<String>) -> Reply {
        Reply::Error(s.into())
    }
    pub fn bulk(s: impl AsRef<[u8]>) -> Reply {
        Reply::Bulk(s.as_ref().to_vec())
    }
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Appends the encoding of `self` for protocol version `proto` (2 or 3).
    pub fn encode(&self, proto: u8, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(s) => {
                out.push(b'+');
                push_line(out, s.as_bytes());
            }
            Reply::Error(s) => {
                count_error(s);
                out.push(b'-');
                push_line(out, s.as_bytes());
            }
            Reply::Int(i) => {
                out.push(b':');
                out.extend_from_slice(i.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Bulk(b) => {
                out.push(b'$');
                out.extend_from_slice(b.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Nil => {
                if proto >= 3 {
                    out.extend_from_slice(b"_\r\n")
                } else {
                    out.extend_from_slice(b"$-1\r\n")
                }
            }
            Reply::NilArray => {
                if proto >= 3 {
                    out.extend_from_slice(b"_\r\n")
                } else {
                    out.extend_from_slice(b"*-1\r\n")
                }
            }
            Reply::Array(items) | Reply::Push(items) => {
                out.push(if proto >= 3 && matches!(self, Reply::Push(_)) {
                    b'>'
                } else {
                    b'*'
                });
                out.extend_from_slice(items.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                for i in items {
                    i.encode(proto, out);
                }
            }
            Reply::Map(pairs) => {
                if proto >= 3 {
                    out.push(b'%');
                    out.extend_from_slice(pairs.len().to_string().as_bytes());
                } else {
                    out.push(b'*');
                    out.extend_from_slice((pairs.len() * 2).to_string().as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            Reply::Pairs(pairs) => {
                out.push(b'*');
                if proto >= 3 {
                    out.extend_from_slice(pairs.len().to_string().as_bytes());
                    out.extend_from_slice(b"\r\n");
                    for (k, v) in pairs {
                        out.extend_from_slice(b"*2\r\n");
                        k.encode(proto, out);
                        v.encode(proto, out);
                    }
                } else {
                    out.extend_from_slice((pairs.len() * 2).to_string().as_bytes());
                    out.extend_from_slice(b"\r\n");
                    for (k, v) in pairs {
                        k.encode(proto, out);
                        v.encode(proto, out);
                    }
                }
            }
            Reply::Streams(pairs) => {
                out.push(if proto >= 3 { b'%' } else { b'*' });
                out.extend_from_slice(pairs.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                for (k, v) in pairs {
                    if proto < 3 {
                        out.extend_from_slice(b"*2\r\n");
                    }
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            Reply::Bool(b) => {
                if proto >= 3 {
                    out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" });
                } else {
                    Reply::Int(*b as i64).encode(proto, out);
                }
            }
            Reply::BigNum(n) => {
                if proto >= 3 {
                    out.push(b'(');
                    push_line(out, n.as_bytes());
                } else {
                    Reply::bulk(n).encode(proto, out);
                }
            }
            Reply::Verbatim(fmt, text) => {
                if proto >= 3 {
                    out.push(b'=');
                    out.extend_from_slice((text.len() + 4).to_string().as_bytes());
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(fmt.as_bytes());
                    out.push(b':');
                    out.extend_from_slice(text);
                    out.extend_from_slice(b"\r\n");
                } else {
                    Reply::bulk(text).encode(proto, out);
                }
            }
            Reply::Set(items) => {
                out.push(if proto >= 3 { b'~' } else { b'*' });
                out.extend_from_slice(items.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                for i in items {
                    i.encode(proto, out);
                }
            }
            Reply::Double(d) => {
                let s = format_g17(*d);
                if proto >= 3 {
                    out.push(b',');
                    push_line(out, s.as_bytes());
                } else {
                    Reply::Bulk(s.into_bytes()).encode(proto, out);
                }
            }
        }
    }
}

/// Error replies sent to clients by their code (INFO errorstats; CONFIG RESETSTAT clears).
static ERROR_STATS: std::sync::Mutex<std::collections::BTreeMap<String, u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn count_error(msg: &str) {
    let code = msg.split(' ').next().unwrap_or("ERR");
    let code = if code.is_empty() { "ERR" } else { code };
    let mut m = ERROR_STATS.lock().unwrap_or_else(|p| p.into_inner());
    // Bounded like Redis's (128 codes), so odd error texts cannot grow it.
    if m.len() < 128 || m.contains_key(code) {
        *m.entry(code.to_string()).or_default() += 1;
    }
}

/// (code, count) of the error replies sent since start or CONFIG RESETSTAT.
pub fn error_stats() -> Vec<(String, u64)> {
    let m = ERROR_STATS.lock().unwrap_or_else(|p| p.into_inner());
    m.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

pub fn reset_error_stats() {
    ERROR_STATS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
}

/// Formats a float as Redis does for INCRBYFLOAT: shortest form, no exponent for common values.
pub fn format_double(d: f64) -> String {
    if d.is_infinite() {
        return if d > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if d == d.trunc() && d.abs() < 1e17 {
        return format!("{}", d as i64);
    }
    format!("{d}")
}

/// C's `%.17g`, which Redis 7.0 uses for scores: 17 significant digits, trailing zeros
/// dropped, exponent form below 1e-4 and from 1e17.
pub fn format_g17(d: f64) -> String {
    format_g(d, 17)
}

/// C's `%.{precision}g`.
pub fn format_g(d: f64, precision: usize) -> String {
    if d.is_infinite() {
        return if d > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if d.is_nan() {
        return "nan".into();
    }
    if d == 0.0 {
        return if d.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    let p = precision.max(1);
    let sci = format!("{d:.prec$e}", prec = p - 1);
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if exp < -4 || exp >= p as i32 {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mant), exp.abs())
    } else {
        let decimals = (p as i32 - 1 - exp).max(0) as usize;
        trim(&format!("{d:.decimals$}"))
    }
}

fn push_line(out: &mut Vec<u8>, s: &[u8]) {
    // Simple strings and errors cannot carry CR or LF.
    for &c in s {
        out.push(if c == b'\r' || c == b'\n' { b' ' } else { c });
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ParseError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(c) = parse_command(&mut buf)? {
            out.push(c);
        }
        Ok(out)
    }

    #[test]
    fn parses_arrays_and_inline() {
        let got = parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\nset a \"b c\"\r\n").unwrap();
        assert_eq!(got[0], vec![b"GET".to_vec(), b"k".to_vec()]);
        assert_eq!(got[1], vec![b"PING".to_vec()]);
        assert_eq!(
            got[2],
            vec![b"set".to_vec(), b"a".to_vec(), b"b c".to_vec()]
        );
    }

    #[test]
    fn incomplete_waits() {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r"[..]);
        assert_eq!(parse_command(&mut buf), Ok(None));
        assert_eq!(buf.len(), 16);
    }

    #[test]
    fn refuses_bad_input() {
        assert!(parse_all(b"*1\r\n*1\r\n$1\r\na\r\n").is_err(), "nesting");
        assert!(parse_all(b"*1\r\n$99999999999\r\n").is_err(), "huge bulk");
        assert!(parse_all(b"*99999999999\r\n").is_err(), "huge array");
        assert!(parse_all(b"*1\r\n$1\r\nabc\r\n").is_err(), "bad terminator");
        assert!(parse_all(b"*x\r\n").is_err(), "bad number");
        assert!(parse_all(b"*-5\r\n").is_err(), "negative");
        // A huge declared count with few elements is just incomplete, with no big allocation.
        let mut buf = BytesMut::from(&b"*1000000\r\n$1\r\na\r\n"[..]);
        assert_eq!(parse_command(&mut buf), Ok(None));
    }

    #[test]
    fn encodes_both_protocols() {
        let mut v = Vec::new();
        Reply::Map(vec![(Reply::bulk("a"), Reply::Int(1))]).encode(2, &mut v);
        assert_eq!(v, b"*2\r\n$1\r\na\r\n:1\r\n");
        v.clear();
        Reply::Map(vec![(Reply::bulk("a"), Reply::Nil)]).encode(3, &mut v);
        assert_eq!(v, b"%1\r\n$1\r\na\r\n_\r\n");
    }

    #[test]
    fn g17_matches_c() {
        assert_eq!(format_g17(1.5), "1.5");
        assert_eq!(format_g17(1.1), "1.1000000000000001");
        assert_eq!(format_g17(10.0), "10");
        assert_eq!(format_g17(1e20), "1e+20");
        assert_eq!(format_g17(0.0001), "0.0001");
        assert_eq!(format_g17(0.00001), "1.0000000000000001e-05");
        assert_eq!(format_g17(-3.0), "-3");
        assert_eq!(format_g17(123456789.0), "123456789");
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_garbage(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut buf = BytesMut::from(&data[..]);
            for _ in 0..600 {
                match parse_command(&mut buf) {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }

        #[test]
        fn roundtrips_commands(args in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 1..8), split in 0usize..400) {
            let mut wire = Vec::new();
            wire.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in &args {
                wire.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                wire.extend_from_slice(a);
                wire.extend_from_slice(b"\r\n");
            }
            let split = split.min(wire.len());
            let mut buf = BytesMut::from(&wire[..split]);
            let first = parse_command(&mut buf).unwrap();
            if split < wire.len() {
                proptest::prop_assert!(first.is_none());
                buf.extend_from_slice(&wire[split..]);
                let got = parse_command(&mut buf).unwrap();
                proptest::prop_assert_eq!(got, Some(args));
            } else {
                proptest::prop_assert_eq!(first, Some(args));
            }
        }
    }
}

//! Fuzzes the RESP request parser: it must never panic, never take more than it was given,
//! and whatever it parses must re-encode to bytes that parse the same.
#![no_main]

use bytes::BytesMut;
use citadel_db::resp::parse_command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    for _ in 0..10_000 {
        let before = buf.len();
        match parse_command(&mut buf) {
            Ok(Some(args)) => {
                assert!(buf.len() < before, "a parsed command must consume bytes");
                if !args.is_empty() {
                    let mut wire = Vec::new();
                    wire.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
                    for a in &args {
                        wire.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                        wire.extend_from_slice(a);
                        wire.extend_from_slice(b"\r\n");
                    }
                    let mut again = BytesMut::from(&wire[..]);
                    assert_eq!(parse_command(&mut again), Ok(Some(args)));
                    assert!(again.is_empty());
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
});

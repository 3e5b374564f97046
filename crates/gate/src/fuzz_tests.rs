//! In-process fuzzing of the two front paths with proptest: arbitrary bytes (and mutated
//! valid messages) into the HTTP server over an in-memory stream, and into the DNS handler.
//! Each case must end (answer or close) within a bound, without a panic.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Gate, GateConfig, RunOptions};

const CONFIG: &str = r#"
admin = "127.85.0.1:9100"
[http]
header_read_timeout_ms = 200
max_header_bytes = 8192
[[listeners]]
name = "web"
bind = "127.85.0.1:8080"
service = "app"
[[services]]
name = "app"
port = 8000
connect_timeout_ms = 100
response_timeout_ms = 200
members = [{ name = "a", address = "127.85.0.11" }, { name = "b", address = "127.85.0.12" }]
[dns]
listen = ["127.85.0.1:5353"]
zone = "fuzz.test"
records = [{ name = "a", address = "127.85.0.11" }]
services = [{ name = "app", service = "app" }]
"#;

fn gate(dir: &std::path::Path) -> Arc<Gate> {
    let cfg = GateConfig::from_toml(CONFIG).expect("config");
    let g = Gate::new(
        &cfg,
        &RunOptions {
            state_dir: dir.to_path_buf(),
            config_path: None,
        },
    )
    .expect("gate");
    // One member up (nothing listens there: requests get 502), one down.
    if let Some(s) = g.runtime.load().services.get("app") {
        s.members[0].record_check(true, 1, 1, "app");
    }
    g
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Feeds `input` to the HTTP front path; returns what came back.
async fn http_case(g: Arc<Gate>, input: Vec<u8>) -> Vec<u8> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let peer: SocketAddr = "127.85.0.50:4000".parse().expect("addr");
    let proto = if input.starts_with(b"PRI * HTTP/2.0") {
        crate::http::Proto::Http2
    } else {
        crate::http::Proto::Http1
    };
    let task = tokio::spawn(crate::http::serve(
        g,
        server,
        peer,
        Arc::from("web"),
        "http",
        proto,
    ));
    let _ = client.write_all(&input).await;
    let _ = client.shutdown().await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), client.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the connection ended within the bound");
    let done = tokio::time::timeout(Duration::from_secs(3), task).await;
    assert!(
        matches!(done, Ok(Ok(()))),
        "the connection task ended without a panic"
    );
    out
}

fn http_inputs() -> impl Strategy<Value = Vec<u8>> {
    let methods = prop::sample::select(vec![
        "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PRI", "G\0T",
    ]);
    let valid = (
        methods,
        "[ -~]{0,40}",
        prop::collection::vec(("[a-zA-Z-]{1,20}", "[ -~]{0,60}"), 0..8),
        any::<bool>(),
    )
        .prop_map(|(m, path, headers, chunked)| {
            let mut s = format!("{m} /{path} HTTP/1.1\r\nhost: x\r\n");
            for (k, v) in headers {
                s.push_str(&format!("{k}: {v}\r\n"));
            }
            if chunked {
                s.push_str("transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
            } else {
                s.push_str("\r\n");
            }
            s.into_bytes()
        });
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        valid.clone(),
        // A valid request with a few bytes flipped.
        (
            valid,
            prop::collection::vec((any::<usize>(), any::<u8>()), 1..6)
        )
            .prop_map(|(mut v, flips)| {
                for (i, b) in flips {
                    if !v.is_empty() {
                        let n = v.len();
                        v[i % n] = b;
                    }
                }
                v
            }),
        // The h2 preface followed by garbage.
        prop::collection::vec(any::<u8>(), 0..512).prop_map(|tail| {
            let mut v = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            v.extend(tail);
            v
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn http_front_path_never_panics_or_hangs(input in http_inputs()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = rt();
        let out = rt.block_on(http_case(gate(dir.path()), input));
        // Whatever came back is HTTP or nothing.
        prop_assert!(out.is_empty() || out.starts_with(b"HTTP/1.1 ") || out.starts_with(&[0, 0]));
    }
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Vec<u8>>>>);

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut buf = Vec::new();
        let mut enc = BinEncoder::new(&mut buf);
        let info = response.destructive_emit(&mut enc)?;
        if let Ok(mut v) = self.0.lock() {
            v.push(buf);
        }
        Ok(info)
    }
}

fn dns_query(name: &str, qtype: u16) -> Vec<u8> {
    let mut v = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        v.push(label.len() as u8);
        v.extend_from_slice(label.as_bytes());
    }
    v.push(0);
    v.extend_from_slice(&qtype.to_be_bytes());
    v.extend_from_slice(&[0, 1]);
    v
}

fn dns_inputs() -> impl Strategy<Value = Vec<u8>> {
    let names = prop::sample::select(vec![
        "a.fuzz.test",
        "app.fuzz.test",
        "_app._tcp.fuzz.test",
        "fuzz.test",
        "x.fuzz.test",
        "example.com",
    ]);
    let qtypes = prop::sample::select(vec![1u16, 28, 33, 6, 255, 2, 16, 0, 65535]);
    let valid = (names, qtypes).prop_map(|(n, t)| dns_query(n, t));
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        valid.clone(),
        (
            valid,
            prop::collection::vec((any::<usize>(), any::<u8>()), 1..6)
        )
            .prop_map(|(mut v, flips)| {
                for (i, b) in flips {
                    let n = v.len();
                    v[i % n] = b;
                }
                v
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn dns_handler_never_panics(input in dns_inputs()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = gate(dir.path());
        let rt = rt();
        let src: SocketAddr = "127.85.0.50:5000".parse().expect("addr");
        // Requests hickory cannot parse never reach the handler (it answers FORMERR itself).
        if let Ok(req) = Request::from_bytes(input, src, Protocol::Udp) {
            let handler = crate::dns::Handler::new(g);
            let cap = Capture::default();
            let fut = handler.handle_request::<Capture, TokioTime>(&req, cap.clone());
            let res = rt.block_on(async { tokio::time::timeout(Duration::from_secs(3), fut).await });
            prop_assert!(res.is_ok(), "answered within the bound");
            let answers = cap.0.lock().map(|v| v.len()).unwrap_or(0);
            prop_assert_eq!(answers, 1, "exactly one answer per request");
        }
    }
}

#[test]
fn dns_handler_answers_known_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = gate(dir.path());
    let rt = rt();
    let src: SocketAddr = "127.85.0.50:5000".parse().expect("addr");
    for (name, rcode) in [
        ("a.fuzz.test", 0u8),
        ("app.fuzz.test", 0),
        ("nope.fuzz.test", 3),
        ("example.com", 5),
    ] {
        let req = Request::from_bytes(dns_query(name, 1), src, Protocol::Udp).expect("valid query");
        let cap = Capture::default();
        let handler = crate::dns::Handler::new(g.clone());
        rt.block_on(handler.handle_request::<Capture, TokioTime>(&req, cap.clone()));
        let v = cap.0.lock().expect("lock");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0][3] & 0x0f, rcode, "{name}");
    }
}

#[test]
fn http_front_path_reaches_the_proxy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let out = rt.block_on(http_case(
        gate(dir.path()),
        b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
    ));
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
}

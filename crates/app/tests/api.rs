//! The REST document API through a real citadel-app process and a real redis-server.

mod common;

use std::time::Duration;

use common::{App, Http, Redis, RedisOpts, addr};
use serde_json::{Value, json};

struct Setup {
    _dir: tempfile::TempDir,
    _redis: Redis,
    app: App,
    token: String,
    key_id: String,
    http: Http,
}

/// redis-server at `<net>.1:6379` (with a password), the app at `<net>.2:8000`.
fn setup(net: &str, extra: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = Redis::start(
        addr(&format!("{net}.1:6379")),
        RedisOpts {
            password: Some("s3cret"),
            aof_dir: None,
        },
    );
    let app = App::start(
        dir.path(),
        addr(&format!("{net}.2:8000")),
        addr(&format!("{net}.2:9100")),
        &format!("addrs = [\"{net}.1:6379\"]\npassword = \"s3cret\"\nretry_budget_ms = 3000"),
        extra,
    );
    let (key_id, token) = app.create_key("tests");
    Setup {
        _dir: dir,
        _redis: redis,
        app,
        token,
        key_id,
        http: Http::new(),
    }
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.app.base)
    }
    async fn call(
        &self,
        method: &str,
        path: &str,
        hdrs: &[(&str, &str)],
        body: Option<&str>,
    ) -> common::Resp {
        let mut h: Vec<(&str, &str)> = vec![("x-api-key", self.token.as_str())];
        h.extend_from_slice(hdrs);
        self.http.must(method, &self.url(path), &h, body).await
    }
}

fn err_code(r: &common::Resp) -> String {
    r.json()["error"]["code"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_etag_and_merge_patch() {
    let s = setup("127.40.1", "");

    // POST: server-made id, Location, ETag.
    let r = s
        .call("POST", "/v1/notes", &[], Some(r#"{"title":"a","n":1}"#))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().expect("id").to_string();
    let tag1 = r.header("etag").expect("etag");
    assert_eq!(
        r.header("location").as_deref(),
        Some(format!("/v1/notes/{id}").as_str())
    );
    assert_eq!(r.json()["doc"], json!({"title": "a", "n": 1}));

    // POST with an Idempotency-Key: a repeat finds the first document; another body is 409.
    let ik = [("idempotency-key", "order-42")];
    let first = s.call("POST", "/v1/notes", &ik, Some(r#"{"x":1}"#)).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let again = s
        .call("POST", "/v1/notes", &ik, Some(r#"{ "x" : 1 }"#))
        .await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.json()["id"], first.json()["id"]);
    assert_eq!(again.header("etag"), first.header("etag"));
    assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"));
    let other = s.call("POST", "/v1/notes", &ik, Some(r#"{"x":2}"#)).await;
    assert_eq!(
        (other.status, err_code(&other).as_str()),
        (409, "idempotency_key_reused")
    );
    let bad = s
        .call(
            "POST",
            "/v1/notes",
            &[("idempotency-key", "a b")],
            Some("{}"),
        )
        .await;
    assert_eq!(
        (bad.status, err_code(&bad).as_str()),
        (400, "invalid_header")
    );

    // GET returns the document and the same ETag; If-None-Match gives 304.
    let r = s.call("GET", &format!("/v1/notes/{id}"), &[], None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"title": "a", "n": 1}));
    assert_eq!(r.header("etag").as_deref(), Some(tag1.as_str()));
    let r = s
        .call(
            "GET",
            &format!("/v1/notes/{id}"),
            &[("if-none-match", &tag1)],
            None,
        )
        .await;
    assert_eq!(r.status, 304);
    let r = s
        .call(
            "GET",
            &format!("/v1/notes/{id}"),
            &[("if-none-match", "\"other\"")],
            None,
        )
        .await;
    assert_eq!(r.status, 200);

    // PUT with a stale If-Match: 412; with the current one: 200 and a new ETag.
    let r = s
        .call(
            "PUT",
            &format!("/v1/notes/{id}"),
            &[("if-match", "\"0000\"")],
            Some(r#"{"title":"b"}"#),
        )
        .await;
    assert_eq!(r.status, 412, "{}", r.body);
    assert_eq!(err_code(&r), "precondition_failed");
    let r = s
        .call(
            "PUT",
            &format!("/v1/notes/{id}"),
            &[("if-match", &tag1)],
            Some(r#"{"title":"b","tags":{"x":1,"y":2}}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let tag2 = r.header("etag").expect("etag");
    assert_ne!(tag1, tag2);
    // The old tag no longer matches.
    let r = s
        .call(
            "DELETE",
            &format!("/v1/notes/{id}"),
            &[("if-match", &tag1)],
            None,
        )
        .await;
    assert_eq!(r.status, 412);

    // PATCH (RFC 7386): null removes, objects merge.
    let r = s
        .call(
            "PATCH",
            &format!("/v1/notes/{id}"),
            &[
                ("if-match", &tag2),
                ("content-type", "application/merge-patch+json"),
            ],
            Some(r#"{"tags":{"x":null,"z":3},"done":true}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["doc"],
        json!({"title": "b", "tags": {"y": 2, "z": 3}, "done": true})
    );
    let tag3 = r.header("etag").expect("etag");
    let r = s
        .call(
            "PATCH",
            &format!("/v1/notes/{id}"),
            &[("if-match", &tag2)],
            Some(r#"{"a":1}"#),
        )
        .await;
    assert_eq!(r.status, 412);

    // PUT creates with a client id (201), If-None-Match: * refuses to overwrite.
    let r = s
        .call(
            "PUT",
            "/v1/notes/my-note_1",
            &[("if-none-match", "*")],
            Some(r#"{"k":"v"}"#),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = s
        .call(
            "PUT",
            "/v1/notes/my-note_1",
            &[("if-none-match", "*")],
            Some(r#"{"k":"w"}"#),
        )
        .await;
    assert_eq!(r.status, 412);
    let r = s
        .call("PUT", "/v1/notes/my-note_1", &[], Some(r#"{"k":"w"}"#))
        .await;
    assert_eq!(r.status, 200);

    // DELETE with the current tag, then 404 everywhere.
    let r = s
        .call(
            "DELETE",
            &format!("/v1/notes/{id}"),
            &[("if-match", &tag3)],
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    for (m, b) in [("GET", None), ("DELETE", None), ("PATCH", Some("{}"))] {
        let r = s.call(m, &format!("/v1/notes/{id}"), &[], b).await;
        assert_eq!(r.status, 404, "{m}: {}", r.body);
        assert_eq!(err_code(&r), "not_found");
    }
    // A malformed If-Match matches nothing (412); a malformed If-None-Match passes.
    let r = s
        .call(
            "PUT",
            "/v1/notes/my-note_1",
            &[("if-match", "no-quotes")],
            Some("{}"),
        )
        .await;
    assert_eq!(r.status, 412);
    let r = s
        .call(
            "GET",
            "/v1/notes/my-note_1",
            &[("if-none-match", "no-quotes")],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    // PATCH on a missing document with If-Match: 412.
    let r = s
        .call(
            "PATCH",
            &format!("/v1/notes/{id}"),
            &[("if-match", &tag3)],
            Some("{}"),
        )
        .await;
    assert_eq!(r.status, 412);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_401_403_and_cli_verbs() {
    let s = setup("127.40.2", "[auth]\ncache_ms = 0");
    let url = s.url("/v1/c/x");
    let r = s.http.must("GET", &url, &[], None).await;
    assert_eq!(r.status, 401);
    assert_eq!(err_code(&r), "unauthorized");
    let r = s
        .http
        .must("GET", &url, &[("x-api-key", "cit_0123_4567")], None)
        .await;
    assert_eq!(r.status, 401);
    let r = s
        .http
        .must("GET", &url, &[("x-api-key", "garbage")], None)
        .await;
    assert_eq!(r.status, 401);
    // A valid key (either header): 404 for the missing document, not 401.
    let r = s
        .http
        .must("GET", &url, &[("x-api-key", &s.token)], None)
        .await;
    assert_eq!(r.status, 404);
    let bearer = format!("Bearer {}", s.token);
    let r = s
        .http
        .must("GET", &url, &[("authorization", &bearer)], None)
        .await;
    assert_eq!(r.status, 404);
    // The right id with a wrong secret is unknown.
    let forged = format!("cit_{}_{}", s.key_id, "ab".repeat(24));
    let r = s
        .http
        .must("GET", &url, &[("x-api-key", &forged)], None)
        .await;
    assert_eq!(r.status, 401);

    let (id2, tok2) = s.app.create_key("second app");
    let (ok, out, err) = s.app.cli(&["key", "list", "--json"]);
    assert!(ok, "{err}");
    let list: Value = serde_json::from_str(&out).expect("json list");
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert!(
        names.contains(&"tests") && names.contains(&"second app"),
        "{out}"
    );
    assert!(!out.contains(&tok2), "list must not show secrets");

    let (ok, _, err) = s.app.cli(&["key", "revoke", &id2]);
    assert!(ok, "{err}");
    let r = s
        .http
        .must("GET", &url, &[("x-api-key", &tok2)], None)
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(err_code(&r), "key_revoked");
    let r = s
        .http
        .must("GET", &url, &[("x-api-key", &s.token)], None)
        .await;
    assert_eq!(r.status, 404, "other keys still work");
    let (ok, out, _) = s.app.cli(&["key", "list"]);
    assert!(
        ok && out
            .lines()
            .any(|l| l.starts_with(&id2) && l.contains("revoked")),
        "{out}"
    );
    let (ok, _, err) = s.app.cli(&["key", "revoke", "ffffffffffff"]);
    assert!(!ok && err.contains("no key"), "{err}");

    // /health and /openapi.json need no key.
    let r = s.http.must("GET", &s.url("/health"), &[], None).await;
    assert_eq!(r.status, 200);
    let r = s.http.must("GET", &s.url("/openapi.json"), &[], None).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["paths"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_400_with_json_errors() {
    let s = setup(
        "127.40.3",
        "[limits]\nmax_document_bytes = 1024\nmax_depth = 4\nmax_id_len = 16\nmax_page = 50\ndefault_page = 20",
    );
    let cases: Vec<(&str, String, Option<String>, &str)> = vec![
        (
            "PUT",
            "/v1/c/ok".into(),
            Some(format!("{{\"a\":\"{}\"}}", "x".repeat(2000))),
            "document_too_large",
        ),
        (
            "POST",
            "/v1/c".into(),
            Some(r#"{"a":{"b":{"c":{"d":{"e":1}}}}}"#.into()),
            "nesting_too_deep",
        ),
        (
            "POST",
            "/v1/c".into(),
            Some(format!("{}1{}", "[".repeat(300), "]".repeat(300))),
            "nesting_too_deep",
        ),
        (
            "PUT",
            "/v1/c/ok".into(),
            Some("[1,2]".into()),
            "not_an_object",
        ),
        (
            "PUT",
            "/v1/c/ok".into(),
            Some("{nope".into()),
            "invalid_json",
        ),
        (
            "PUT",
            "/v1/c/ok".into(),
            Some(String::new()),
            "invalid_json",
        ),
        (
            "PUT",
            "/v1/c/way-too-long-identifier".into(),
            Some("{}".into()),
            "invalid_id",
        ),
        (
            "PUT",
            "/v1/c/bad.id".into(),
            Some("{}".into()),
            "invalid_id",
        ),
        ("GET", "/v1/c/b%20d".into(), None, "invalid_id"),
        ("GET", "/v1/bad:coll/x".into(), None, "invalid_collection"),
        ("GET", "/v1/c?limit=0".into(), None, "invalid_limit"),
        ("GET", "/v1/c?limit=51".into(), None, "invalid_limit"),
        ("GET", "/v1/c?cursor=abc".into(), None, "invalid_cursor"),
        (
            "GET",
            "/v1/c?cursor=99999999999999999999".into(),
            None,
            "invalid_cursor",
        ),
        ("GET", "/v1/c/x".into(), None, "invalid_header"),
    ];
    for (m, path, body, code) in &cases {
        let hdrs: &[(&str, &str)] = if *code == "invalid_header" {
            &[("x-citadel-read", "sometimes")]
        } else {
            &[]
        };
        let r = s.call(m, path, hdrs, body.as_deref()).await;
        assert_eq!(r.status, 400, "{m} {path}: {}", r.body);
        assert_eq!(err_code(&r), *code, "{m} {path}: {}", r.body);
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // A patch that makes the document too deep or too large is refused and changes nothing.
    let r = s.call("PUT", "/v1/c/p", &[], Some(r#"{"a":1}"#)).await;
    assert_eq!(r.status, 201);
    let r = s
        .call(
            "PATCH",
            "/v1/c/p",
            &[],
            Some(r#"{"b":{"c":{"d":{"e":{"f":1}}}}}"#),
        )
        .await;
    assert_eq!(
        (r.status, err_code(&r).as_str()),
        (400, "nesting_too_deep"),
        "{}",
        r.body
    );
    let big = format!("{{\"b\":\"{}\"}}", "y".repeat(1015));
    let r = s.call("PATCH", "/v1/c/p", &[], Some(&big)).await;
    assert_eq!(
        (r.status, err_code(&r).as_str()),
        (400, "document_too_large"),
        "{}",
        r.body
    );
    let r = s.call("GET", "/v1/c/p", &[], None).await;
    assert_eq!(r.json(), json!({"a": 1}));
    // Unknown routes and methods answer JSON too.
    let r = s.call("GET", "/nope", &[], None).await;
    assert_eq!((r.status, err_code(&r).as_str()), (404, "not_found"));
    let r = s.call("POST", "/v1/c/x", &[], Some("{}")).await;
    assert_eq!(r.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_with_cursor_and_filters() {
    let s = setup("127.40.4", "");
    let n = 57;
    for i in 0..n {
        let body =
            json!({"i": i, "parity": if i % 2 == 0 { "even" } else { "odd" }, "small": i < 10});
        let r = s
            .call(
                "PUT",
                &format!("/v1/items/i{i}"),
                &[],
                Some(&body.to_string()),
            )
            .await;
        assert_eq!(r.status, 201);
    }
    // Another collection must not show up.
    s.call("PUT", "/v1/other/i1", &[], Some("{}")).await;

    let collect = |query: String| {
        let s = &s;
        async move {
            let mut seen = std::collections::BTreeMap::new();
            let mut cursor: Option<String> = None;
            for _page in 0..200 {
                let q = match &cursor {
                    Some(c) => format!("{query}&cursor={c}"),
                    None => query.clone(),
                };
                let r = s.call("GET", &format!("/v1/items?{q}"), &[], None).await;
                assert_eq!(r.status, 200, "{}", r.body);
                let v = r.json();
                for it in v["items"].as_array().expect("items") {
                    assert!(it["etag"].as_str().is_some_and(|t| t.starts_with('"')));
                    seen.insert(
                        it["id"].as_str().expect("id").to_string(),
                        it["doc"].clone(),
                    );
                }
                match v["cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => return seen,
                }
            }
            panic!("pagination did not end");
        }
    };
    let all = collect("limit=10".into()).await;
    assert_eq!(all.len(), n);
    let even = collect("limit=7&parity=even".into()).await;
    assert_eq!(even.len(), n.div_ceil(2));
    assert!(even.iter().all(|(_, d)| d["parity"] == "even"));
    let both = collect("limit=5&parity=odd&small=true".into()).await;
    assert_eq!(both.len(), 5);
    let num = collect("i=42".into()).await;
    assert_eq!(num.len(), 1);
    assert!(num.contains_key("i42"));
    let none = collect("parity=none".into()).await;
    assert!(none.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_health_metrics_and_openapi() {
    let s = setup("127.40.5", "");
    let r = s.call("PUT", "/v1/c/d", &[], Some(r#"{"v":1}"#)).await;
    assert_eq!(r.status, 201);
    // redis-server refuses READONLY (no cluster mode): stale-ok reads fall back to ordinary ones.
    for _ in 0..3 {
        let r = s
            .call("GET", "/v1/c/d", &[("x-citadel-read", "stale")], None)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json(), json!({"v": 1}));
        let r = s
            .call("GET", "/v1/c?v=1", &[("x-citadel-read", "stale")], None)
            .await;
        assert_eq!(r.json()["items"].as_array().map(Vec::len), Some(1));
    }
    let r = s.http.must("GET", &s.url("/health"), &[], None).await;
    assert_eq!((r.status, r.json()["db"].as_str()), (200, Some("ok")));
    let m = s
        .http
        .must("GET", "http://127.40.5.2:9100/metrics", &[], None)
        .await;
    assert_eq!(m.status, 200);
    assert!(
        m.body.contains("citadel_app_requests_total{class=\"2xx\"}"),
        "{}",
        m.body
    );
    assert!(m.body.contains("citadel_app_request_seconds_bucket"));
    let o = s.http.must("GET", &s.url("/openapi.json"), &[], None).await;
    let doc = o.json();
    assert_eq!(
        doc["openapi"].as_str().map(|v| v.starts_with("3.")),
        Some(true)
    );
    for p in ["/v1/{collection}", "/v1/{collection}/{id}", "/health"] {
        assert!(doc["paths"][p].is_object(), "openapi lacks {p}");
    }
}

/// Concurrent read-modify-write increments with If-Match: every increment that was answered
/// 2xx is in the final count, none twice (compare-and-set on WATCH/MULTI/EXEC).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_if_match_updates_lose_nothing() {
    let s = setup("127.40.8", "");
    let r = s.call("PUT", "/v1/ctr/c", &[], Some(r#"{"n":0}"#)).await;
    assert_eq!(r.status, 201);
    let s = std::sync::Arc::new(s);
    let mut tasks = Vec::new();
    for _w in 0..6 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for _ in 0..40 {
                let r = s.call("GET", "/v1/ctr/c", &[], None).await;
                let tag = r.header("etag").expect("etag");
                let n = r.json()["n"].as_u64().expect("n");
                let body = json!({"n": n + 1}).to_string();
                let r = s
                    .call("PUT", "/v1/ctr/c", &[("if-match", &tag)], Some(&body))
                    .await;
                match r.status {
                    200 => ok += 1,
                    412 => {}
                    other => panic!("unexpected {other}: {}", r.body),
                }
            }
            ok
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("bounded")
            .expect("task");
    }
    let r = s.call("GET", "/v1/ctr/c", &[], None).await;
    assert_eq!(r.json()["n"].as_u64(), Some(total));
    assert!(total > 0);
}

/// SIGTERM (what the jail supervisor sends) stops the app promptly with exit status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_app_cleanly() {
    let mut s = setup("127.40.11", "");
    let r = s.call("PUT", "/v1/c/x", &[], Some("{}")).await;
    assert_eq!(r.status, 201);
    let pid = s.app.proc.pid().to_string();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(st.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = s.app.proc.child.try_wait().expect("try_wait") {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "app did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
}

/// Stale-ok reads use their own connection, opened to the next member in rotation: with two
/// members, linearizable and stale reads are served by different members. (Two independent
/// redis-servers here, each holding its own version of one document, show which one answered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_go_to_another_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = || RedisOpts {
        password: None,
        aof_dir: None,
    };
    let a = Redis::start(addr("127.40.13.1:6379"), opts());
    let b = Redis::start(addr("127.40.13.3:6379"), opts());
    for (r, who) in [(&a, "a"), (&b, "b")] {
        let out = std::process::Command::new("redis-cli")
            .args([
                "-h",
                &r.addr.ip().to_string(),
                "HSET",
                "doc:c:x",
                "v",
                "0000000000000000",
            ])
            .args(["b", &format!("{{\"on\":\"{who}\"}}")])
            .output()
            .expect("redis-cli");
        assert!(out.status.success());
    }
    let app = App::start(
        dir.path(),
        addr("127.40.13.2:8000"),
        addr("127.40.13.2:9100"),
        "addrs = [\"127.40.13.1:6379\", \"127.40.13.3:6379\"]",
        "[auth]\nrequired = false",
    );
    let http = Http::new();
    let url = format!("{}/v1/c/x", app.base);
    let lin = http.must("GET", &url, &[], None).await.json();
    let stale = http
        .must("GET", &url, &[("x-citadel-read", "stale")], None)
        .await
        .json();
    assert_ne!(lin, stale, "both reads were served by the same member");
    for _ in 0..5 {
        assert_eq!(http.must("GET", &url, &[], None).await.json(), lin);
        let s = http
            .must("GET", &url, &[("x-citadel-read", "stale")], None)
            .await
            .json();
        assert_eq!(s, stale);
    }
}

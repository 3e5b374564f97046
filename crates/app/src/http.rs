//! The REST document API (axum).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::config::{AppConfig, Limits};
use crate::db::{Db, DbError, ReadMode};
use crate::keys::{KeyCache, KeyStatus};
use crate::metrics::Metrics;
use crate::store::{self, Preconditions, Tags, Write};

/// The OpenAPI document served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Header that opts a read into stale-ok, any-member reads.
pub const READ_HEADER: &str = "x-citadel-read";

pub struct AppState {
    pub db: Db,
    pub config: AppConfig,
    pub keys: KeyCache,
    pub metrics: Arc<Metrics>,
}

/// An error answer: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> ApiError {
        match e {
            DbError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "db_unavailable",
                "the database is not reachable right now; retry",
            ),
            DbError::Contention(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "contention",
                "too many concurrent writes to this document; retry",
            ),
            other => {
                tracing::error!(error = %other, "db error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

type ApiResult = Result<Response, ApiError>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route("/v1/{collection}", get(list_docs).post(create_doc))
        .route(
            "/v1/{collection}/{id}",
            get(get_doc)
                .put(put_doc)
                .patch(patch_doc)
                .delete(delete_doc),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The admin router: `/metrics` (Prometheus text) and `/health` (liveness).
pub fn admin_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(st): State<Arc<AppState>>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    st.metrics.render(),
                )
            }),
        )
        .route("/health", get(|| async { "ok\n" }))
        .with_state(state)
}

async fn observe(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let t = Instant::now();
    let r = next.run(req).await;
    st.metrics.observe(r.status().as_u16(), t.elapsed());
    r
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    // One retry: the first PING may find a connection to a member that just went away.
    let ok = tokio::time::timeout(Duration::from_secs(2), async {
        st.db.ping().await || st.db.ping().await
    })
    .await
    .unwrap_or(false);
    if ok {
        axum::Json(json!({"status": "ok", "db": "ok"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "unavailable", "db": "unreachable"})),
        )
            .into_response()
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

// ---------------------------------------------------------------- helpers

fn read_mode(h: &HeaderMap) -> Result<ReadMode, ApiError> {
    let Some(v) = h.get(READ_HEADER) else {
        return Ok(ReadMode::Linearizable);
    };
    match v.to_str().map(str::trim) {
        Ok("stale") => Ok(ReadMode::Stale),
        Ok("linearizable") => Ok(ReadMode::Linearizable),
        _ => Err(ApiError::bad(
            "invalid_header",
            "X-Citadel-Read must be `stale` or `linearizable`",
        )),
    }
}

fn token(h: &HeaderMap) -> Option<&str> {
    if let Some(v) = h.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// Checks the API key; returns its id (empty when keys are not required).
async fn authorize(st: &AppState, h: &HeaderMap) -> Result<String, ApiError> {
    if !st.config.auth.required {
        return Ok(String::new());
    }
    let Some(tok) = token(h) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an API key is required (header X-Api-Key or Authorization: Bearer)",
        ));
    };
    match st.keys.check(&st.db, tok).await? {
        KeyStatus::Valid { id } => Ok(id),
        KeyStatus::Revoked { .. } => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "key_revoked",
            "this API key has been revoked",
        )),
        KeyStatus::Unknown => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown API key",
        )),
    }
}

fn check_name(what: &'static str, s: &str, limits: &Limits) -> Result<(), ApiError> {
    let code = if what == "id" {
        "invalid_id"
    } else {
        "invalid_collection"
    };
    if s.is_empty() || s.len() > limits.max_id_len {
        return Err(ApiError::bad(
            code,
            format!("{what} must be 1 to {} characters long", limits.max_id_len),
        ));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ApiError::bad(
            code,
            format!("{what} may only contain letters, digits, '_' and '-'"),
        ));
    }
    Ok(())
}

fn path_err(e: PathRejection) -> ApiError {
    ApiError::bad("invalid_path", e.body_text())
}

/// Nesting depth: a scalar is 0, `{}` or `[]` is 1.
pub fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

async fn read_body(body: Body, limits: &Limits) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limits.max_document_bytes)
        .await
        .map_err(|_| {
            ApiError::bad(
                "document_too_large",
                format!(
                    "request body is larger than {} bytes",
                    limits.max_document_bytes
                ),
            )
        })
}

fn parse_json(bytes: &[u8], limits: &Limits) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        if e.to_string().contains("recursion limit") {
            ApiError::bad(
                "nesting_too_deep",
                format!("nesting deeper than {} levels", limits.max_depth),
            )
        } else {
            ApiError::bad("invalid_json", format!("body is not valid JSON: {e}"))
        }
    })?;
    if depth(&v) > limits.max_depth {
        return Err(ApiError::bad(
            "nesting_too_deep",
            format!("nesting deeper than {} levels", limits.max_depth),
        ));
    }
    Ok(v)
}

/// Checks a whole document against the limits; the error is (code, message).
fn check_doc(v: &Value, serialized: &str, limits: &Limits) -> Result<(), (&'static str, String)> {
    if !v.is_object() {
        return Err(("not_an_object", "a document must be a JSON object".into()));
    }
    if depth(v) > limits.max_depth {
        return Err((
            "nesting_too_deep",
            format!("nesting deeper than {} levels", limits.max_depth),
        ));
    }
    if serialized.len() > limits.max_document_bytes {
        return Err((
            "document_too_large",
            format!(
                "document is larger than {} bytes",
                limits.max_document_bytes
            ),
        ));
    }
    Ok(())
}

async fn read_doc_body(body: Body, limits: &Limits) -> Result<(Value, String), ApiError> {
    let bytes = read_body(body, limits).await?;
    let v = parse_json(&bytes, limits)?;
    let s = serde_json::to_string(&v).unwrap_or_default();
    check_doc(&v, &s, limits).map_err(|(c, m)| ApiError::bad(c, m))?;
    Ok((v, s))
}

/// Reads `If-Match` / `If-None-Match`. A value that is not `*` nor a list of entity tags
/// matches nothing (so a malformed `If-Match` fails with 412, a malformed `If-None-Match`
/// passes).
fn preconditions(h: &HeaderMap) -> Preconditions {
    let one = |name: header::HeaderName| -> Option<Tags> {
        let mut joined = String::new();
        let mut any = false;
        for v in h.get_all(&name) {
            any = true;
            if let Ok(s) = v.to_str() {
                if !joined.is_empty() {
                    joined.push(',');
                }
                joined.push_str(s);
            }
        }
        any.then(|| Tags::parse(&joined).unwrap_or(Tags::List(Vec::new())))
    };
    Preconditions {
        if_match: one(header::IF_MATCH),
        if_none_match: one(header::IF_NONE_MATCH),
    }
}

fn etag(version: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

fn raw_json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `{"id", "etag", "doc"}` — the answer of every write.
fn envelope(id: &str, version: &str, body: &str) -> String {
    let id = serde_json::to_string(id).unwrap_or_default();
    let tag = serde_json::to_string(&format!("\"{version}\"")).unwrap_or_default();
    format!("{{\"id\":{id},\"etag\":{tag},\"doc\":{body}}}")
}

fn written(status: StatusCode, coll: &str, id: &str, version: &str, body: &str) -> Response {
    let mut r = raw_json(status, envelope(id, version, body));
    r.headers_mut().insert(header::ETAG, etag(version));
    if status == StatusCode::CREATED
        && let Ok(loc) = HeaderValue::from_str(&format!("/v1/{coll}/{id}"))
    {
        r.headers_mut().insert(header::LOCATION, loc);
    }
    r
}

fn precondition_failed() -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
        "the document's current ETag does not satisfy If-Match / If-None-Match",
    )
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such document")
}

fn write_answer(r: Write, coll: &str, id: &str) -> ApiResult {
    match r {
        Write::Done {
            created,
            version,
            body,
        } => {
            let st = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(written(st, coll, id, &version, &body))
        }
        Write::NotFound => Err(not_found()),
        Write::PreconditionFailed => Err(precondition_failed()),
        Write::Invalid { code, msg } => Err(ApiError::bad(code, msg)),
    }
}

// ---------------------------------------------------------------- handlers

/// The common start of every `/v1/{collection}/{id}` handler: the key, then the names.
async fn doc_target(
    st: &AppState,
    h: &HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, String), ApiError> {
    authorize(st, h).await?;
    let Path((coll, id)) = path.map_err(path_err)?;
    check_name("collection", &coll, &st.config.limits)?;
    check_name("id", &id, &st.config.limits)?;
    Ok((coll, id))
}

async fn get_doc(
    State(st): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    h: HeaderMap,
) -> ApiResult {
    let (coll, id) = doc_target(&st, &h, path).await?;
    let pre = preconditions(&h);
    let doc = store::get(&st.db, read_mode(&h)?, &coll, &id).await?;
    if !pre.if_match_ok(doc.as_ref().map(|d| d.version.as_str())) {
        return Err(precondition_failed());
    }
    let Some(doc) = doc else {
        return Err(not_found());
    };
    if !pre.if_none_match_ok(Some(&doc.version)) {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut().insert(header::ETAG, etag(&doc.version));
        return Ok(r);
    }
    let mut r = raw_json(StatusCode::OK, doc.body);
    r.headers_mut().insert(header::ETAG, etag(&doc.version));
    Ok(r)
}

async fn put_doc(
    State(st): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    h: HeaderMap,
    body: Body,
) -> ApiResult {
    let (coll, id) = doc_target(&st, &h, path).await?;
    let limits = &st.config.limits;
    let pre = preconditions(&h);
    let (_, s) = read_doc_body(body, limits).await?;
    let r = store::put(&st.db, &coll, &id, s, &pre).await?;
    write_answer(r, &coll, &id)
}

async fn create_doc(
    State(st): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    h: HeaderMap,
    body: Body,
) -> ApiResult {
    let key_id = authorize(&st, &h).await?;
    let Path(coll) = path.map_err(path_err)?;
    let limits = &st.config.limits;
    check_name("collection", &coll, limits)?;
    let idem = idempotency_key(&h)?;
    let (_, s) = read_doc_body(body, limits).await?;
    let Some(idem) = idem else {
        let id = store::new_id();
        // A fresh id: no precondition needed; a retried HSET is harmless.
        return match store::put(&st.db, &coll, &id, s, &Preconditions::default()).await? {
            Write::Done { version, body, .. } => {
                Ok(written(StatusCode::CREATED, &coll, &id, &version, &body))
            }
            other => write_answer(other, &coll, &id),
        };
    };
    // With an Idempotency-Key the id is derived from (API key, collection, idempotency key):
    // a repeated POST finds the document its first attempt made.
    let id = store::derived_id(&[&key_id, &coll, &idem]);
    let create_only = Preconditions {
        if_match: None,
        if_none_match: Some(Tags::Any),
    };
    match store::put(&st.db, &coll, &id, s.clone(), &create_only).await? {
        Write::Done { version, body, .. } => {
            Ok(written(StatusCode::CREATED, &coll, &id, &version, &body))
        }
        Write::PreconditionFailed => {
            let current = store::get(&st.db, ReadMode::Linearizable, &coll, &id).await?;
            match current {
                Some(doc) if doc.body == s => {
                    let mut r = written(StatusCode::CREATED, &coll, &id, &doc.version, &doc.body);
                    r.headers_mut()
                        .insert("idempotent-replayed", HeaderValue::from_static("true"));
                    Ok(r)
                }
                Some(_) => Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency_key_reused",
                    "this Idempotency-Key already made a document with another body",
                )),
                // Deleted in between: the first POST's document existed and is gone.
                None => Err(not_found()),
            }
        }
        other => write_answer(other, &coll, &id),
    }
}

/// `Idempotency-Key`: `[A-Za-z0-9_-]{1,64}`.
fn idempotency_key(h: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = h.get("idempotency-key") else {
        return Ok(None);
    };
    let ok = v.to_str().ok().filter(|s| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    match ok {
        Some(s) => Ok(Some(s.to_string())),
        None => Err(ApiError::bad(
            "invalid_header",
            "Idempotency-Key must be 1 to 64 of [A-Za-z0-9_-]",
        )),
    }
}

async fn patch_doc(
    State(st): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    h: HeaderMap,
    body: Body,
) -> ApiResult {
    let (coll, id) = doc_target(&st, &h, path).await?;
    let limits = &st.config.limits;
    let pre = preconditions(&h);
    let bytes = read_body(body, limits).await?;
    let patch = parse_json(&bytes, limits)?;
    if !patch.is_object() {
        // RFC 7386 lets a non-object patch replace the whole target, which would no longer
        // be a document.
        return Err(ApiError::bad(
            "not_an_object",
            "a merge patch of a document must be a JSON object",
        ));
    }
    let check = |v: &Value, s: &str| check_doc(v, s, limits);
    let r = store::patch(&st.db, &coll, &id, &patch, &pre, &check).await?;
    write_answer(r, &coll, &id)
}

async fn delete_doc(
    State(st): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    h: HeaderMap,
) -> ApiResult {
    let (coll, id) = doc_target(&st, &h, path).await?;
    let pre = preconditions(&h);
    match store::delete(&st.db, &coll, &id, &pre).await? {
        Write::Done { .. } => Ok(StatusCode::NO_CONTENT.into_response()),
        other => write_answer(other, &coll, &id),
    }
}

async fn list_docs(
    State(st): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    h: HeaderMap,
) -> ApiResult {
    authorize(&st, &h).await?;
    let Path(coll) = path.map_err(path_err)?;
    let limits = &st.config.limits;
    check_name("collection", &coll, limits)?;
    let Query(params) = query.map_err(|e| ApiError::bad("invalid_query", e.body_text()))?;
    let mut limit = limits.default_page;
    let mut cursor = 0u64;
    let mut filters = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=limits.max_page).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad(
                            "invalid_limit",
                            format!("limit must be an integer from 1 to {}", limits.max_page),
                        )
                    })?;
            }
            "cursor" => {
                cursor = v.parse::<u64>().ok().filter(|c| *c != 0).ok_or_else(|| {
                    ApiError::bad(
                        "invalid_cursor",
                        "cursor must be a value returned by an earlier page",
                    )
                })?;
            }
            _ => filters.push((k, v)),
        }
    }
    let page = store::list(&st.db, read_mode(&h)?, &coll, cursor, limit, &filters).await?;
    let items: Vec<Value> = page
        .items
        .into_iter()
        .map(|(id, doc, value)| json!({"id": id, "etag": format!("\"{}\"", doc.version), "doc": value}))
        .collect();
    let body = json!({"items": items, "cursor": page.next.map(|c| c.to_string())});
    Ok(axum::Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_containers() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!({})), 1);
        assert_eq!(depth(&json!({"a": [1, {"b": []}]})), 4);
    }

    #[test]
    fn tags_parse() {
        assert_eq!(Tags::parse("*"), Some(Tags::Any));
        let Some(Tags::List(l)) = Tags::parse(r#""a", W/"b""#) else {
            panic!("no list")
        };
        assert_eq!(l.len(), 2);
        assert!(l[1].weak);
        assert_eq!(Tags::parse("abc"), None);
        assert_eq!(Tags::parse(r#""a" x"#), None);
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut d = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        store::merge_patch(&mut d, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(d, json!({"a": "z", "c": {"d": "e"}}));
        let mut d = json!({"a": [1]});
        store::merge_patch(&mut d, &json!({"a": {"b": 1}}));
        assert_eq!(d, json!({"a": {"b": 1}}));
    }

    #[test]
    fn filters_compare_text() {
        let d = json!({"s": "open", "n": 5, "t": true});
        let f = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert!(store::matches(&d, &f("s", "open")));
        assert!(store::matches(&d, &f("n", "5")));
        assert!(store::matches(&d, &f("t", "true")));
        assert!(!store::matches(&d, &f("s", "closed")));
        assert!(!store::matches(&d, &f("missing", "x")));
    }
}

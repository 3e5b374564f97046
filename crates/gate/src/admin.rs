//! The admin API (axum) on the gate's admin address.
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | `ok` once every member has been judged by a health check; 503 `starting` before |
//! | `GET /backends` | services, members, health, drain state and counters (JSON) |
//! | `POST /drain/{service}/{member}` | stop new work to a member; in-flight work finishes |
//! | `POST /undrain/{service}/{member}` | undo a drain |
//! | `GET /bans` | live bans (JSON) |
//! | `POST /bans` | `{"net": "IP or CIDR", "ttl_secs": N?, "reason": "..."?}` |
//! | `DELETE /bans?net=CIDR` | remove a ban |
//! | `POST /reload` | re-read the config file and swap it in |
//! | `GET /metrics` | Prometheus text |
//!
//! With `admin_token` set, every route but `/health` and `/metrics` wants
//! `Authorization: Bearer <token>` (401 otherwise).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::Gate;
use crate::balancer::MemberView;
use crate::config::Policy;

type St = State<Arc<Gate>>;

/// Serves the admin API on an already bound listener (see [`crate::listeners::bind_tcp`]).
/// Aborting the returned task stops accepting; requests in flight finish.
pub fn start(gate: Arc<Gate>, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    let guarded = Router::new()
        .route("/backends", get(backends))
        .route("/drain/{service}/{member}", post(drain))
        .route("/undrain/{service}/{member}", post(undrain))
        .route("/bans", get(list_bans).post(add_ban).delete(del_ban))
        .route("/reload", post(reload))
        .route_layer(axum::middleware::from_fn_with_state(
            gate.clone(),
            require_token,
        ));
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(guarded)
        .with_state(gate);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin server stopped");
        }
    })
}

async fn health(State(gate): State<Arc<Gate>>) -> Response {
    if gate.ready() {
        "ok\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: judging the members' health\n",
        )
            .into_response()
    }
}

/// Checks `Authorization: Bearer <admin_token>` when the config sets a token (read per
/// request, so a reload can set or change it).
async fn require_token(
    State(g): St,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let rt = g.runtime.load();
    if let Some(token) = rt.cfg.admin_token.as_deref() {
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            return err(StatusCode::UNAUTHORIZED, "admin token required");
        }
    }
    drop(rt);
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Serialize)]
struct ServiceView {
    name: String,
    policy: Policy,
    port: u16,
    members: Vec<MemberView>,
}

async fn backends(State(g): St) -> Json<Vec<ServiceView>> {
    let rt = g.runtime.load();
    let mut v: Vec<ServiceView> = rt
        .services
        .values()
        .map(|s| ServiceView {
            name: s.cfg.name.clone(),
            policy: s.cfg.policy,
            port: s.cfg.port,
            members: s.members.iter().map(|m| m.view(s.cfg.stall_ms)).collect(),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Json(v)
}

fn err(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, format!("{}\n", msg.into())).into_response()
}

fn set_drain(g: &Gate, service: &str, member: &str, on: bool) -> Response {
    let rt = g.runtime.load();
    let Some(s) = rt.services.get(service) else {
        return err(StatusCode::NOT_FOUND, format!("no service {service}"));
    };
    let Some(m) = s.members.iter().find(|m| m.name == member) else {
        return err(
            StatusCode::NOT_FOUND,
            format!("no member {member} in {service}"),
        );
    };
    m.draining.store(on, Ordering::Release);
    tracing::info!(service, member, draining = on, "drain changed");
    Json(m.view(s.cfg.stall_ms)).into_response()
}

async fn drain(State(g): St, Path((service, member)): Path<(String, String)>) -> Response {
    set_drain(&g, &service, &member, true)
}

async fn undrain(State(g): St, Path((service, member)): Path<(String, String)>) -> Response {
    set_drain(&g, &service, &member, false)
}

async fn list_bans(State(g): St) -> Response {
    Json(g.firewall.bans()).into_response()
}

/// Accepts a bare IP as a host-length network.
fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

#[derive(Deserialize)]
struct BanReq {
    net: String,
    #[serde(default)]
    ttl_secs: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
}

async fn add_ban(
    State(g): St,
    body: Result<Json<BanReq>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(b)) = body else {
        return err(
            StatusCode::BAD_REQUEST,
            "expected JSON {\"net\": ..., \"ttl_secs\": ...}",
        );
    };
    let Some(net) = parse_net(&b.net) else {
        return err(
            StatusCode::BAD_REQUEST,
            format!("not an IP or CIDR: {}", b.net),
        );
    };
    match g.firewall.ban(net, b.ttl_secs, b.reason) {
        Ok(ban) => (StatusCode::CREATED, Json(ban)).into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
struct NetQuery {
    net: String,
}

async fn del_ban(
    State(g): St,
    q: Result<Query<NetQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return err(StatusCode::BAD_REQUEST, "expected ?net=CIDR");
    };
    let Some(net) = parse_net(&q.net) else {
        return err(
            StatusCode::BAD_REQUEST,
            format!("not an IP or CIDR: {}", q.net),
        );
    };
    match g.firewall.unban(net) {
        Ok(true) => err(StatusCode::OK, "removed"),
        Ok(false) => err(StatusCode::NOT_FOUND, "no such ban"),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn reload(State(g): St) -> Response {
    match g.reload().await {
        Ok(()) => err(StatusCode::OK, "reloaded"),
        Err(e) => err(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    }
}

async fn metrics(State(g): St) -> Response {
    let rt = g.runtime.load();
    let mut extra = Vec::new();
    for s in rt.services.values() {
        for m in &s.members {
            let l = [
                ("service", s.cfg.name.as_str()),
                ("member", m.name.as_str()),
            ];
            let v = m.view(s.cfg.stall_ms);
            extra.push((
                crate::metrics::gauge_series("gate_backend_up", &l),
                if v.up { 1.0 } else { 0.0 },
            ));
            extra.push((
                crate::metrics::gauge_series("gate_backend_stalled", &l),
                if v.stalled { 1.0 } else { 0.0 },
            ));
            extra.push((
                crate::metrics::gauge_series("gate_backend_active", &l),
                v.active as f64,
            ));
            extra.push((
                crate::metrics::gauge_series("gate_backend_requests_total", &l),
                v.requests as f64,
            ));
            extra.push((
                crate::metrics::gauge_series("gate_backend_failures_total", &l),
                v.failures as f64,
            ));
        }
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        g.metrics.render(&extra),
    )
        .into_response()
}

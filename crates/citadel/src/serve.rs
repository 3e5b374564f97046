//! `citadel serve`: a small static HTTP server for a directory — what the built-in cluster's
//! command jails run until the real roles take their places. GET and HEAD only; no path may
//! leave the directory.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

#[derive(Args)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long)]
    bind: SocketAddr,
    /// Directory to serve.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<i32> {
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("cannot listen on {}", args.bind))?;
    let dir = Arc::new(
        args.dir
            .canonicalize()
            .with_context(|| format!("cannot serve {}", args.dir.display()))?,
    );
    eprintln!("serving {} on http://{}", dir.display(), args.bind);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let dir = dir.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, dir.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn answer(
    req: Request<Incoming>,
    dir: Arc<PathBuf>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n"));
    }
    let Some(path) = inside(&dir, req.uri().path()) else {
        return Ok(reply(StatusCode::BAD_REQUEST, "bad path\n"));
    };
    let response = match tokio::fs::metadata(&path).await {
        Ok(m) if m.is_dir() => {
            let mut names = Vec::new();
            if let Ok(mut entries) = tokio::fs::read_dir(&path).await {
                while let Ok(Some(e)) = entries.next_entry().await {
                    names.push(e.file_name().to_string_lossy().into_owned());
                }
            }
            names.sort();
            let jail = std::env::var("CITADEL_JAIL").unwrap_or_default();
            let mut body = format!("jail {jail}: {}\n", req.uri().path());
            for n in names {
                body.push_str(&n);
                body.push('\n');
            }
            reply(StatusCode::OK, body)
        }
        Ok(_) => match tokio::fs::read(&path).await {
            Ok(bytes) => reply(StatusCode::OK, bytes),
            Err(_) => reply(StatusCode::FORBIDDEN, "cannot read\n"),
        },
        Err(_) => reply(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(response)
}

/// The file a URL path names under `dir`, or `None` if the path tries to climb out.
fn inside(dir: &Path, url_path: &str) -> Option<PathBuf> {
    let rel = Path::new(url_path.trim_start_matches('/'));
    let mut out = dir.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

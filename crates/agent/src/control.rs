//! The control socket: `<state>/control.sock`, one JSON request per line, one JSON response
//! per line. Only the owner of the state directory can reach it (the socket is mode 0600).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

use crate::protocol::{Request, Response};
use crate::runtime::Runtime;

/// A request line longer than this is refused: no request needs more.
const MAX_REQUEST: usize = 64 << 10;

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// Serves the control socket until the process ends. `shutdown` is notified when a client
/// asks the agent to stop.
pub async fn serve(runtime: Arc<Runtime>, shutdown: Arc<Notify>) -> std::io::Result<()> {
    let path = socket_path(runtime.state_dir());
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    loop {
        let (stream, _) = listener.accept().await?;
        let runtime = runtime.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, runtime, shutdown).await {
                tracing::debug!(error = %e, "control connection ended");
            }
        });
    }
}

async fn handle(
    stream: UnixStream,
    runtime: Arc<Runtime>,
    shutdown: Arc<Notify>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).take(MAX_REQUEST as u64 + 1);
    let mut line = String::new();
    lines.read_line(&mut line).await?;
    let response = if line.len() > MAX_REQUEST {
        Response::Error("request too long".into())
    } else {
        match serde_json::from_str::<Request>(&line) {
            Ok(request) => answer(request, &runtime, &shutdown).await,
            Err(e) => Response::Error(format!("bad request: {e}")),
        }
    };
    let mut out =
        serde_json::to_vec(&response).unwrap_or_else(|_| b"{\"error\":\"unencodable\"}".to_vec());
    out.push(b'\n');
    write.write_all(&out).await
}

async fn answer(request: Request, rt: &Runtime, shutdown: &Notify) -> Response {
    fn ok<T: serde::Serialize>(v: T) -> Response {
        match serde_json::to_value(v) {
            Ok(v) => Response::Ok(v),
            Err(e) => Response::Error(e.to_string()),
        }
    }
    let result = match request {
        Request::Status => return ok(rt.status().await),
        Request::Start { jail } => rt.start(&jail).await.map(ok),
        Request::Stop { jail } => rt.stop(&jail).await.map(ok),
        Request::Restart { jail } => rt.restart(&jail).await.map(ok),
        Request::Identity { jail } => rt.identity(&jail).await.map(ok),
        Request::Clone {
            source,
            name,
            addresses,
        } => rt.clone_jail(&source, &name, &addresses).await.map(ok),
        Request::Archive { jail, file } => rt.archive(&jail, &file).await.map(ok),
        Request::Restore { file, name, host } => rt
            .restore(&file, name.as_deref(), host.as_deref())
            .await
            .map(ok),
        Request::Destroy { jail } => rt.destroy(&jail).await.map(ok),
        Request::Reload => rt.reload().await.map(ok),
        Request::Shutdown => {
            shutdown.notify_one();
            return ok(());
        }
    };
    result.unwrap_or_else(|e| Response::Error(e.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no `citadel up` is running with state directory {0} (cannot reach {1}); start one with `citadel up`, or pass the --state it uses"
    )]
    NotRunning(String, String),
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Refused(String),
    #[error("unexpected answer from citadel up: {0}")]
    Protocol(String),
}

/// Sends one request to the agent of `state_dir` and decodes its answer.
pub async fn call<T: serde::de::DeserializeOwned>(
    state_dir: &Path,
    request: &Request,
) -> Result<T, ClientError> {
    let path = socket_path(state_dir);
    let stream = UnixStream::connect(&path).await.map_err(|_| {
        ClientError::NotRunning(state_dir.display().to_string(), path.display().to_string())
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    match serde_json::from_str::<Response>(&answer) {
        Ok(Response::Ok(v)) => {
            serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
        }
        Ok(Response::Error(e)) => Err(ClientError::Refused(e)),
        Err(e) => Err(ClientError::Protocol(format!("{e}: {answer:?}"))),
    }
}

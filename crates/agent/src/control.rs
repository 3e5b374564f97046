//! The control socket: `<state>/control.sock`, one JSON request per line, one JSON response
//! per line. Only the owner of the state directory can reach it (the socket is mode 0600).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Notify;

use crate::protocol::{Request, Response};
use crate::runtime::Runtime;

/// A request line longer than this is refused: no request needs more (a cluster file to
/// apply is the largest).
const MAX_REQUEST: usize = 1 << 20;

/// Who is asking: the host itself (Unix socket), the operator, or another host's agent
/// (which may only gossip).
#[derive(Clone, Debug)]
enum Caller {
    Local,
    Operator,
    Host(String),
}

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
            if let Err(e) = handle(stream, runtime, shutdown, Caller::Local).await {
                tracing::debug!(error = %e, "control connection ended");
            }
        });
    }
}

/// Serves the control protocol over mutually authenticated TLS on `listener` (the agent's
/// address for the operator's machine): a client must present a certificate of this
/// cluster's CA (checked in the handshake by `config`), and only an operator's may operate.
pub async fn serve_tls(
    runtime: Arc<Runtime>,
    shutdown: Arc<Notify>,
    listener: TcpListener,
    config: Arc<tokio_rustls::rustls::ServerConfig>,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (tcp, peer) = listener.accept().await?;
        let (runtime, shutdown, acceptor) = (runtime.clone(), shutdown.clone(), acceptor.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "refused a control connection");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer, "control connection: no TLS handshake within 10 s");
                    return;
                }
            };
            let who = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| citadel_pki::identity_of(c));
            let result = match who {
                Some(citadel_pki::Identity::Operator(_)) => {
                    handle(tls, runtime, shutdown, Caller::Operator).await
                }
                Some(citadel_pki::Identity::Host(h)) => {
                    handle(tls, runtime, shutdown, Caller::Host(h)).await
                }
                None => {
                    tracing::warn!(%peer, "refused: a certificate with no Citadel identity");
                    refuse(
                        tls,
                        "a certificate with no Citadel identity may not operate this agent".into(),
                    )
                    .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "control connection ended");
            }
        });
    }
}

async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(stream: S, why: String) -> std::io::Result<()> {
    let (read, mut write) = tokio::io::split(stream);
    let mut line = String::new();
    let _ = BufReader::new(read.take(MAX_REQUEST as u64))
        .read_line(&mut line)
        .await;
    let mut out = serde_json::to_vec(&Response::Error(why)).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    runtime: Arc<Runtime>,
    shutdown: Arc<Notify>,
    caller: Caller,
) -> std::io::Result<()> {
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read).take(MAX_REQUEST as u64 + 1);
    let mut line = String::new();
    lines.read_line(&mut line).await?;
    let response = if line.len() > MAX_REQUEST {
        Response::Error("request too long".into())
    } else {
        match serde_json::from_str::<Request>(&line) {
            Ok(request) => match (&caller, request) {
                (Caller::Host(h), request) if !request.allowed_to_hosts() => {
                    tracing::warn!(host = %h, "refused: a host may only gossip");
                    Response::Error(format!(
                        "host `{h}` may not operate this agent (an operator certificate is needed)"
                    ))
                }
                // The archive follows the request line on the same connection.
                (
                    caller,
                    Request::Receive {
                        jail,
                        bytes,
                        sha256,
                    },
                ) => {
                    lines.set_limit(u64::MAX);
                    let from = match caller {
                        Caller::Host(h) => Some(h.as_str()),
                        _ => None,
                    };
                    match runtime
                        .receive(&jail, from, bytes, &sha256, &mut lines)
                        .await
                    {
                        Ok(()) => Response::Ok(serde_json::Value::Null),
                        Err(e) => Response::Error(e.to_string()),
                    }
                }
                // These stream what follows their answer line, on the same connection.
                (
                    _,
                    Request::Logs {
                        jail,
                        lines: n,
                        follow,
                    },
                ) => {
                    return stream_logs(&runtime, &jail, n, follow, &mut lines, write).await;
                }
                (
                    _,
                    Request::RestoreIn {
                        name,
                        host,
                        bytes,
                        sha256,
                    },
                ) => {
                    lines.set_limit(u64::MAX);
                    match runtime
                        .restore_upload(
                            &mut lines,
                            bytes,
                            &sha256,
                            name.as_deref(),
                            host.as_deref(),
                        )
                        .await
                    {
                        Ok(created) => match serde_json::to_value(created) {
                            Ok(v) => Response::Ok(v),
                            Err(e) => Response::Error(e.to_string()),
                        },
                        Err(e) => Response::Error(e.to_string()),
                    }
                }
                (_, Request::ArchiveOut { jail }) => {
                    return stream_archive(&runtime, &jail, write).await;
                }
                (
                    _,
                    Request::Exec {
                        jail,
                        command,
                        stdin,
                    },
                ) => {
                    lines.set_limit(u64::MAX);
                    return stream_exec(&runtime, &jail, &command, stdin, &mut lines, write).await;
                }
                (_, request) => answer(request, &runtime, &shutdown).await,
            },
            Err(e) => Response::Error(format!("bad request: {e}")),
        }
    };
    write_response(&mut write, &response).await?;
    write.shutdown().await
}

async fn write_response<W: AsyncWrite + Unpin>(
    write: &mut W,
    response: &Response,
) -> std::io::Result<()> {
    let mut out =
        serde_json::to_vec(response).unwrap_or_else(|_| b"{\"error\":\"unencodable\"}".to_vec());
    out.push(b'\n');
    write.write_all(&out).await
}

/// A piece of a streamed answer (`Logs`, `Exec`) after its answer line: a tag byte, a 4-byte
/// big-endian length, the bytes. `End` carries the exit code (4 bytes, big-endian).
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    Out(Vec<u8>),
    Err(Vec<u8>),
    End(i32),
}

const TAG_END: u8 = 0;
const TAG_OUT: u8 = 1;
const TAG_ERR: u8 = 2;

async fn write_chunk<W: AsyncWrite + Unpin>(
    write: &mut W,
    tag: u8,
    bytes: &[u8],
) -> std::io::Result<()> {
    for piece in bytes.chunks(FRAME) {
        write.write_u8(tag).await?;
        write.write_u32(piece.len() as u32).await?;
        write.write_all(piece).await?;
    }
    write.flush().await
}

async fn write_end<W: AsyncWrite + Unpin>(write: &mut W, code: i32) -> std::io::Result<()> {
    write_chunk(write, TAG_END, &code.to_be_bytes()).await?;
    write.shutdown().await
}

async fn read_chunk<R: AsyncRead + Unpin>(read: &mut R) -> std::io::Result<Chunk> {
    let tag = read.read_u8().await?;
    let n = read.read_u32().await? as usize;
    if n > FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a chunk of {n} bytes (at most {FRAME})"),
        ));
    }
    let mut buf = vec![0u8; n];
    read.read_exact(&mut buf).await?;
    Ok(match tag {
        TAG_OUT => Chunk::Out(buf),
        TAG_ERR => Chunk::Err(buf),
        TAG_END => Chunk::End(i32::from_be_bytes(buf.try_into().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "an end chunk without a code",
            )
        })?)),
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a chunk of unknown kind {other}"),
            ));
        }
    })
}

/// Resolves when the caller hangs up (or sends anything more, which no caller does).
async fn hung_up<R: AsyncRead + Unpin>(read: &mut R) {
    let mut probe = [0u8; 1];
    let _ = read.read(&mut probe).await;
}

/// `follow_log` writes here; the connection sends it on.
struct ToChannel(tokio::sync::mpsc::UnboundedSender<Vec<u8>>);

impl std::io::Write for ToChannel {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .send(buf.to_vec())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `Logs`: the last `n` lines, then with `follow` what the jail writes until the caller
/// hangs up (or the jail is destroyed).
async fn stream_logs<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    runtime: &Runtime,
    jail: &str,
    n: usize,
    follow: bool,
    read: &mut R,
    mut write: W,
) -> std::io::Result<()> {
    let log = match runtime.console_log(jail).await {
        Ok(log) => log,
        Err(e) => {
            write_response(&mut write, &Response::Error(e.to_string())).await?;
            return write.shutdown().await;
        }
    };
    let tail = match citadel_jail::tail_log(&log, n) {
        Ok(tail) => tail,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            let why = format!("jail `{jail}`: cannot read {}: {e}", log.display());
            write_response(&mut write, &Response::Error(why)).await?;
            return write.shutdown().await;
        }
    };
    write_response(&mut write, &Response::Ok(serde_json::Value::Null)).await?;
    write_chunk(&mut write, TAG_OUT, &tail).await?;
    if follow {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let follower = citadel_jail::follow_log(&log, ToChannel(tx));
        tokio::pin!(follower);
        let mut following = true;
        loop {
            tokio::select! {
                _ = &mut follower, if following => following = false,
                bytes = rx.recv() => match bytes {
                    Some(bytes) => write_chunk(&mut write, TAG_OUT, &bytes).await?,
                    // The log is gone (its jail was destroyed) and all of it is sent.
                    None => break,
                },
                _ = hung_up(read) => return Ok(()),
            }
        }
    }
    write_end(&mut write, 0).await
}

/// `ArchiveOut`: the jail archived into a file of the state directory, sent, deleted.
async fn stream_archive<W: AsyncWrite + Unpin>(
    runtime: &Runtime,
    jail: &str,
    mut write: W,
) -> std::io::Result<()> {
    let dir = runtime.state_dir().join("outgoing");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let file = dir.join(format!("{jail}-{nanos}.tar.gz"));
    let made = match std::fs::create_dir_all(&dir) {
        Ok(()) => runtime
            .archive(jail, &file)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("cannot create {}: {e}", dir.display())),
    };
    if let Err(why) = made {
        let _ = std::fs::remove_file(&file);
        write_response(&mut write, &Response::Error(why)).await?;
        return write.shutdown().await;
    }
    let sent = async {
        write_response(&mut write, &Response::Ok(serde_json::Value::Null)).await?;
        let mut source = tokio::fs::File::open(&file).await?;
        let mut buf = vec![0u8; FRAME];
        loop {
            let n = source.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            write_chunk(&mut write, TAG_OUT, &buf[..n]).await?;
        }
        write_end(&mut write, 0).await
    }
    .await;
    let _ = std::fs::remove_file(&file);
    sent
}

/// `Exec`: runs the command as the jail, streams its stdout and stderr, then its exit code.
/// The command is killed if the caller hangs up.
async fn stream_exec<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    runtime: &Runtime,
    jail: &str,
    command: &[String],
    stdin: bool,
    read: &mut R,
    mut write: W,
) -> std::io::Result<()> {
    let spawned = async {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| "no command given".to_string())?;
        let id = runtime.identity(jail).await.map_err(|e| e.to_string())?;
        let cmd =
            crate::exec::command(&id, program, args).map_err(|e| format!("jail `{jail}`: {e}"))?;
        tokio::process::Command::from(cmd)
            .stdin(if stdin {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("jail `{jail}`: cannot run {program}: {e}"))
    }
    .await;
    let mut child = match spawned {
        Ok(child) => child,
        Err(why) => {
            write_response(&mut write, &Response::Error(why)).await?;
            return write.shutdown().await;
        }
    };
    write_response(&mut write, &Response::Ok(serde_json::Value::Null)).await?;
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(std::io::Error::other("the command's pipes are missing"));
    };
    // What the caller sends: the command's stdin (chunks, then an end), then nothing until it
    // hangs up. Read by one future for the whole loop, so no chunk is cut in two.
    let mut input = child.stdin.take();
    let (tx, mut from_caller) = tokio::sync::mpsc::channel::<std::io::Result<Chunk>>(4);
    let reader = async move {
        loop {
            let chunk = read_chunk(read).await;
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                break;
            }
        }
        std::future::pending::<()>().await
    };
    tokio::pin!(reader);
    let (mut out_open, mut err_open) = (true, true);
    let (mut out_buf, mut err_buf) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    while out_open || err_open {
        tokio::select! {
            _ = &mut reader => {}
            Some(chunk) = from_caller.recv() => match chunk {
                Ok(Chunk::Out(bytes)) => {
                    // A command that does not read its stdin: what it is sent is dropped.
                    if let Some(pipe) = input.as_mut()
                        && pipe.write_all(&bytes).await.is_err()
                    {
                        input = None;
                    }
                }
                Ok(Chunk::End(_)) => input = None,
                Ok(Chunk::Err(_)) => {}
                // The caller hung up: dropping the child kills it.
                Err(_) => return Ok(()),
            },
            n = out.read(&mut out_buf), if out_open => match n? {
                0 => out_open = false,
                n => write_chunk(&mut write, TAG_OUT, &out_buf[..n]).await?,
            },
            n = err.read(&mut err_buf), if err_open => match n? {
                0 => err_open = false,
                n => write_chunk(&mut write, TAG_ERR, &err_buf[..n]).await?,
            },
        }
    }
    drop(input);
    let status = child.wait().await?;
    write_end(&mut write, crate::exec::exit_code(status)).await
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
        Request::Plan { file } => rt.plan(&file).await.map(ok),
        Request::Apply {
            file,
            generation,
            hold,
        } => rt.apply(file, generation, &hold).await.map(ok),
        Request::Roll { jail, timeout_ms } => rt
            .roll(&jail, std::time::Duration::from_millis(timeout_ms))
            .await
            .map(|took| ok(took.as_millis() as u64)),
        Request::Drain { jail, on } => {
            rt.drain(&jail, on).await;
            return ok(());
        }
        Request::InRotation { jail } => rt.in_rotation(&jail).await.map(ok),
        Request::Gossip { generation, sha256 } => return ok(rt.gossip(generation, sha256)),
        Request::MoveOut { jail, to } => rt.move_out(&jail, &to).await.map(ok),
        Request::MoveIn { jail, timeout_ms } => rt
            .move_in(&jail, std::time::Duration::from_millis(timeout_ms))
            .await
            .map(|took| ok(took.as_millis() as u64)),
        Request::Discard { jail } => rt.discard(&jail).await.map(ok),
        Request::Role { verb } => rt.role(&verb).await.map(Response::Ok),
        Request::Receive { .. }
        | Request::Logs { .. }
        | Request::Exec { .. }
        | Request::ArchiveOut { .. }
        | Request::RestoreIn { .. } => {
            return Response::Error("a streamed request must be served as a stream".into());
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
    /// The host, its agent's address, why, and what to check.
    #[error("host `{0}` ({1}) unreachable: {2} — {3}")]
    Unreachable(String, std::net::SocketAddr, String, &'static str),
    #[error("control connection: {0}")]
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
    exchange(stream, request).await
}

/// Sends one request to the agent of host `host` at `addr` over mutually authenticated TLS.
pub async fn call_tls<T: serde::de::DeserializeOwned>(
    addr: std::net::SocketAddr,
    host: &str,
    config: Arc<tokio_rustls::rustls::ClientConfig>,
    request: &Request,
) -> Result<T, ClientError> {
    let tls = connect_tls(addr, host, config).await?;
    exchange(tls, request).await
}

async fn connect_tls(
    addr: std::net::SocketAddr,
    host: &str,
    config: Arc<tokio_rustls::rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
    let name = citadel_pki::server_name(host).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let unreachable = |why: String, fix| ClientError::Unreachable(host.to_string(), addr, why, fix);
    const DOWN: &str = "is the box up, and this its agent's address (`agent =` in the file)?";
    const NOT_RUNNING: &str = "is `citadel agent` running there?";
    let tcp = tokio::time::timeout(std::time::Duration::from_secs(3), TcpStream::connect(addr))
        .await
        .map_err(|_| unreachable("no answer within 3 s".into(), DOWN))?
        .map_err(|e| {
            let fix = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => NOT_RUNNING,
                _ => DOWN,
            };
            unreachable(e.to_string(), fix)
        })?;
    // A frozen box's kernel still accepts TCP; its agent never answers the handshake.
    tokio::time::timeout(
        std::time::Duration::from_secs(3),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| {
        unreachable(
            "no TLS handshake within 3 s".into(),
            "is the box frozen or overloaded, or its agent stuck?",
        )
    })?
    .map_err(|e| {
        unreachable(
            format!("TLS: {e}"),
            "does it run with its bundle from this cluster's `citadel host add`?",
        )
    })
}

/// The largest frame of a streamed file: big enough that the frame headers cost nothing,
/// small enough that neither side holds much of the file in memory.
pub const FRAME: usize = 1 << 20;

/// Sends `request` (a `Receive`) to `host`'s agent, then `file` as length-delimited frames
/// on the same connection, and decodes the answer (sent once the file is stored there).
pub async fn send_file<T: serde::de::DeserializeOwned>(
    addr: std::net::SocketAddr,
    host: &str,
    config: Arc<tokio_rustls::rustls::ClientConfig>,
    request: &Request,
    file: &Path,
) -> Result<T, ClientError> {
    let tls = connect_tls(addr, host, config).await?;
    send_file_over(tls, request, file).await
}

async fn send_file_over<S: AsyncRead + AsyncWrite + Unpin, T: serde::de::DeserializeOwned>(
    stream: S,
    request: &Request,
    file: &Path,
) -> Result<T, ClientError> {
    let (read, mut write) = tokio::io::split(stream);
    let mut line = serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    let sent = async {
        write.write_all(&line).await?;
        let mut source = tokio::fs::File::open(file).await?;
        let mut buf = vec![0u8; FRAME];
        loop {
            let n = source.read(&mut buf).await?;
            write.write_u32(n as u32).await?;
            if n == 0 {
                break;
            }
            write.write_all(&buf[..n]).await?;
        }
        write.flush().await
    }
    .await;
    match (sent, read_answer(read).await) {
        (_, Err(ClientError::Refused(why))) => Err(ClientError::Refused(why)),
        // The agent's own words (a refusal) say more than the broken connection.
        (Err(e), _) => Err(e.into()),
        (Ok(()), answer) => answer,
    }
}

/// A file's length and sha256, as a `Receive` or `RestoreIn` announces them.
pub fn file_digest(file: &Path) -> std::io::Result<(u64, String)> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(file)?;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; FRAME];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        total += n as u64;
    }
    Ok((
        total,
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect(),
    ))
}

/// Reads the frames `send_file` writes into `out`, at most `limit` bytes in all.
pub async fn read_frames<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    from: &mut R,
    out: &mut W,
    limit: u64,
) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut buf = vec![0u8; FRAME];
    loop {
        let n = from.read_u32().await? as usize;
        if n == 0 {
            return Ok(total);
        }
        if n > FRAME || total + n as u64 > limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a frame of {n} bytes beyond what was announced ({limit} bytes in all)"),
            ));
        }
        from.read_exact(&mut buf[..n]).await?;
        out.write_all(&buf[..n]).await?;
        total += n as u64;
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin, T: serde::de::DeserializeOwned>(
    stream: S,
    request: &Request,
) -> Result<T, ClientError> {
    let (read, mut write) = tokio::io::split(stream);
    let mut line = serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    write.write_all(&line).await?;
    read_answer(read).await
}

async fn read_answer<R: AsyncRead + Unpin, T: serde::de::DeserializeOwned>(
    read: R,
) -> Result<T, ClientError> {
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    if answer.is_empty() {
        return Err(ClientError::Refused(
            "the agent closed the connection without an answer (does it accept this certificate?)"
                .into(),
        ));
    }
    match serde_json::from_str::<Response>(&answer) {
        Ok(Response::Ok(v)) => {
            serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
        }
        Ok(Response::Error(e)) => Err(ClientError::Refused(e)),
        Err(e) => Err(ClientError::Protocol(format!("{e}: {answer:?}"))),
    }
}

/// Where an operator's request goes: this machine's `citadel up` or agent (the control socket
/// of a state directory), or a host's agent over mutual TLS. One protocol either way.
#[derive(Clone)]
pub enum Endpoint {
    Local(PathBuf),
    Remote {
        host: String,
        addr: std::net::SocketAddr,
        config: Arc<tokio_rustls::rustls::ClientConfig>,
    },
}

impl Endpoint {
    /// One request, one answer.
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: &Request,
    ) -> Result<T, ClientError> {
        match self {
            Endpoint::Local(state) => call(state, request).await,
            Endpoint::Remote { host, addr, config } => {
                call_tls(*addr, host, config.clone(), request).await
            }
        }
    }

    /// A request followed by `file` as frames (`RestoreIn`), then its answer.
    pub async fn send_file<T: serde::de::DeserializeOwned>(
        &self,
        request: &Request,
        file: &Path,
    ) -> Result<T, ClientError> {
        match self {
            Endpoint::Local(state) => {
                let path = socket_path(state);
                let stream = UnixStream::connect(&path).await.map_err(|_| {
                    ClientError::NotRunning(state.display().to_string(), path.display().to_string())
                })?;
                send_file_over(stream, request, file).await
            }
            Endpoint::Remote { host, addr, config } => {
                let tls = connect_tls(*addr, host, config.clone()).await?;
                send_file_over(tls, request, file).await
            }
        }
    }

    /// A streamed request (`Logs`, `Exec`): each chunk goes to `sink` as it comes; returns the
    /// exit code that ends the stream. `input` (an `Exec` with `stdin`) is sent meanwhile as
    /// the command's stdin.
    pub async fn stream(
        &self,
        request: &Request,
        input: Option<Box<dyn AsyncRead + Send + Unpin>>,
        sink: impl FnMut(Chunk) -> std::io::Result<()>,
    ) -> Result<i32, ClientError> {
        match self {
            Endpoint::Local(state) => {
                let path = socket_path(state);
                let stream = UnixStream::connect(&path).await.map_err(|_| {
                    ClientError::NotRunning(state.display().to_string(), path.display().to_string())
                })?;
                stream_over(stream, request, input, sink).await
            }
            Endpoint::Remote { host, addr, config } => {
                let tls = connect_tls(*addr, host, config.clone()).await?;
                stream_over(tls, request, input, sink).await
            }
        }
    }
}

async fn stream_over<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    request: &Request,
    input: Option<Box<dyn AsyncRead + Send + Unpin>>,
    mut sink: impl FnMut(Chunk) -> std::io::Result<()>,
) -> Result<i32, ClientError> {
    let (read, mut write) = tokio::io::split(stream);
    let mut line = serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    write.write_all(&line).await?;
    // The command's stdin goes up while its output comes down; the connection stays open
    // after the input ends (an end chunk says so). Ended with the stream.
    let _pump = input.map(|mut input| {
        AbortOnDrop(tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if write_chunk(&mut write, TAG_OUT, &buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = write_chunk(&mut write, TAG_END, &0i32.to_be_bytes()).await;
            // Keep the write half (and so the connection) open until the stream ends.
            std::future::pending::<()>().await;
        }))
    });
    let mut read = BufReader::new(read);
    let mut answer = String::new();
    read.read_line(&mut answer).await?;
    if answer.is_empty() {
        return Err(ClientError::Refused(
            "the agent closed the connection without an answer".into(),
        ));
    }
    match serde_json::from_str::<Response>(&answer) {
        Ok(Response::Ok(_)) => {}
        Ok(Response::Error(e)) => return Err(ClientError::Refused(e)),
        Err(e) => return Err(ClientError::Protocol(format!("{e}: {answer:?}"))),
    }
    loop {
        match read_chunk(&mut read).await {
            Ok(Chunk::End(code)) => return Ok(code),
            Ok(chunk) => sink(chunk)?,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(ClientError::Protocol(
                    "the agent hung up before the end of the stream (did it stop?)".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

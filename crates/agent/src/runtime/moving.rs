//! `citadel jail move`, an agent's part: the source stops the jail, archives it and streams
//! the archive to the target's agent (`move_out` → `receive`), which restores it with its
//! name, addresses and data and starts it (`move_in`); once the operator has applied the file
//! with the jail's new host, the source's copy is deleted (`discard`). The operator's CLI
//! drives the steps, drains the jail at the gates around them, and rolls back on a failure.

use sha2::Digest;
use tokio::io::{AsyncRead, AsyncWriteExt};

use super::*;

/// Left in a jail's directory on the source while it moves away: a restarted agent, or an
/// apply meanwhile, must not start it again next to its copy on the target (two copies of one
/// db member). `jail start` (the rollback) removes it.
const MOVING: &str = "moving";

impl Runtime {
    fn moving_marker(&self, name: &str) -> PathBuf {
        JailPaths::new(&self.state_dir, name).root.join(MOVING)
    }

    /// Where this jail is moving to, if it is leaving this host.
    pub(super) fn moving_to(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.moving_marker(name)).ok()
    }

    pub(super) fn clear_moving(&self, name: &str) {
        let _ = std::fs::remove_file(self.moving_marker(name));
    }

    fn incoming(&self, name: &str) -> PathBuf {
        self.state_dir
            .join("incoming")
            .join(format!("{name}.tar.gz"))
    }

    /// The operator's agent-to-agent client (this host's certificate): set when the agent
    /// listens over TLS.
    pub fn set_peers(&self, client: Arc<tokio_rustls::rustls::ClientConfig>) {
        *self.peers.lock().unwrap_or_else(|e| e.into_inner()) = Some(client);
    }

    /// Source side: stops `name` (drained at the gates by the operator), archives it and sends
    /// the archive to host `to`'s agent. Returns the archive's size. The jail stays stopped and
    /// marked as moving: `start` puts it back (rollback), `discard` deletes it (done).
    pub async fn move_out(&self, name: &str, to: &str) -> Result<u64, RuntimeError> {
        let here = self.local_host.clone().ok_or_else(|| {
            RuntimeError::Invalid("jail move needs agents (`citadel agent run`)".into())
        })?;
        let cluster = self.cluster().await;
        if !cluster.jail(name).is_some_and(|j| self.is_local(j)) {
            return Err(RuntimeError::Invalid(format!(
                "jail `{name}` is not on host `{here}`"
            )));
        }
        if to == here {
            return Err(RuntimeError::Invalid(format!(
                "jail `{name}` is on host `{to}` already"
            )));
        }
        let target = cluster.host(to).ok_or_else(|| {
            RuntimeError::Invalid(format!("host `{to}` is not in the cluster file"))
        })?;
        let addr = cluster
            .agent_addr(target)
            .ok_or_else(|| RuntimeError::Invalid(format!("host `{to}` has no agent address")))?;
        let client = self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                RuntimeError::Invalid(format!(
                    "host `{here}`'s agent has no certificate to reach `{to}` (run it with --listen and --bundle)"
                ))
            })?;
        let sup = self.require(name).await?;
        let paths = JailPaths::new(&self.state_dir, name);
        paths
            .create()
            .map_err(io(format!("creating {}", paths.root.display())))?;
        std::fs::write(self.moving_marker(name), to)
            .map_err(io(format!("marking `{name}` as moving")))?;
        // Stopped, not frozen: the copy on the target starts from exactly what this one last
        // wrote, and this one never writes again.
        sup.stop().await;
        let dir = self.state_dir.join("outgoing");
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let file = dir.join(format!("{name}.tar.gz"));
        let bytes = self.archive(name, &file).await?;
        let sha256 = sha256_file(&file).map_err(io(format!("reading {}", file.display())))?;
        let request = crate::protocol::Request::Receive {
            jail: name.to_string(),
            bytes,
            sha256,
        };
        let sent =
            crate::control::send_file::<serde_json::Value>(addr, to, client, &request, &file).await;
        let _ = std::fs::remove_file(&file);
        sent.map_err(|e| {
            RuntimeError::Start(format!(
                "sending the archive of `{name}` ({bytes} bytes) to host `{to}`: {e}"
            ))
        })?;
        Ok(bytes)
    }

    /// Target side: stores the archive of `name` that follows on the connection, checked
    /// against `bytes` and `sha256`. `from`: the sending host (None: an operator), which must be
    /// the host the jail is on.
    pub async fn receive<R: AsyncRead + Unpin>(
        &self,
        name: &str,
        from: Option<&str>,
        bytes: u64,
        sha256: &str,
        body: &mut R,
    ) -> Result<(), RuntimeError> {
        let on = self.cluster().await.jail(name).map(|j| j.host.clone());
        let refused = match from {
            Some(from) if on.as_deref() != Some(from) => Err(RuntimeError::Invalid(format!(
                "host `{from}` may not send jail `{name}`: it is not on that host"
            ))),
            // Refused before anything is unpacked: a rollback then only restarts the source.
            _ => self.no_leftover(name),
        };
        if let Err(e) = refused {
            // Read the rest, so the sender, still writing, gets this answer rather than a
            // broken connection.
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                crate::control::read_frames(body, &mut tokio::io::sink(), bytes),
            )
            .await;
            return Err(e);
        }
        let file = self.incoming(name);
        store_frames(
            body,
            bytes,
            sha256,
            &file,
            &format!("the archive of `{name}`"),
        )
        .await
    }

    /// `jail restore` from another machine: the archive follows as frames (`bytes`,
    /// `sha256` in all); stored, checked, restored here as `restore` does, then deleted.
    pub async fn restore_upload<R: AsyncRead + Unpin>(
        &self,
        body: &mut R,
        bytes: u64,
        sha256: &str,
        name: Option<&str>,
        host: Option<&str>,
    ) -> Result<Created, RuntimeError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let file = self
            .state_dir
            .join("incoming")
            .join(format!("restore-{nanos}.tar.gz"));
        store_frames(body, bytes, sha256, &file, "the archive to restore").await?;
        let restored = self.restore(&file, name, host).await;
        let _ = std::fs::remove_file(&file);
        restored
    }

    /// Target side: restores the received `name` on this host — its name, addresses and data
    /// as archived, so a db member keeps its id, log and address — starts it and waits until
    /// it is healthy. Returns how long the start took.
    pub async fn move_in(&self, name: &str, timeout: Duration) -> Result<Duration, RuntimeError> {
        let here = self.local_host.clone().ok_or_else(|| {
            RuntimeError::Invalid("jail move needs agents (`citadel agent run`)".into())
        })?;
        let file = self.incoming(name);
        let contents = read_archive(&file, None).map_err(io(format!(
            "reading the received archive {}",
            file.display()
        )))?;
        let mut jail: Jail = serde_json::from_slice(&contents.definition).map_err(|e| {
            RuntimeError::Invalid(format!(
                "{}: the jail definition inside is not valid: {e}",
                file.display()
            ))
        })?;
        if jail.name != name {
            return Err(RuntimeError::Invalid(format!(
                "{} holds jail `{}`, not `{name}`",
                file.display(),
                jail.name
            )));
        }
        jail.host = here.clone();
        let paths = JailPaths::new(&self.state_dir, name);
        let supervisor = {
            let mut cluster = self.cluster.lock().await;
            let mut jails = self.jails.lock().await;
            if jails.contains_key(name) {
                return Err(RuntimeError::Exists(name.to_string()));
            }
            self.no_leftover(name)?;
            // In its place: what roles derive (member lists) keeps the file's order, so the
            // apply that follows finds nothing to restart.
            let mut candidate = cluster.clone();
            match candidate.jails.iter_mut().find(|j| j.name == name) {
                Some(j) => *j = jail.clone(),
                None => candidate.jails.push(jail.clone()),
            }
            citadel_spec::recheck(
                &candidate,
                &self.caps,
                &format!("jail `{name}` on `{here}`"),
            )
            .map_err(|r| RuntimeError::Invalid(r.to_string().trim_end().to_string()))?;
            read_archive(&file, Some(&paths.data()))
                .map_err(io(format!("unpacking {}", file.display())))?;
            // A jail of the file, one generation ahead of it: the apply that follows finds it
            // here, launched as the file says, and changes nothing.
            let entry = match self.launcher.entry(&candidate, &jail, true) {
                Ok(e) => e,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&paths.root);
                    return Err(e);
                }
            };
            let supervisor = entry.supervisor.clone();
            jails.insert(name.to_string(), entry);
            *cluster = candidate;
            supervisor
        };
        let _ = std::fs::remove_file(&file);
        let began = Instant::now();
        let at = |e: String| RuntimeError::Start(format!("jail `{name}` on host `{here}`: {e}"));
        supervisor.start().await.map_err(at)?;
        wait_up(&supervisor, began + timeout, timeout)
            .await
            .map_err(at)?;
        Ok(began.elapsed())
    }

    /// A directory of `name` here that no jail of this agent owns is someone's data: a move
    /// never unpacks over it.
    fn no_leftover(&self, name: &str) -> Result<(), RuntimeError> {
        let root = JailPaths::new(&self.state_dir, name).root;
        if root.exists() {
            return Err(RuntimeError::Invalid(format!(
                "host `{}` already holds data of a jail `{name}` in {} (left by an earlier run?); delete it and move again",
                self.local_host.as_deref().unwrap_or_default(),
                root.display()
            )));
        }
        Ok(())
    }

    /// Deletes this host's copy of `name` (stopping it first): the source's once the move is
    /// applied, the target's when a move is rolled back. Refused where the applied file puts
    /// the jail: that copy is the one that serves.
    pub async fn discard(&self, name: &str) -> Result<(), RuntimeError> {
        let here = self.local_host.clone().ok_or_else(|| {
            RuntimeError::Invalid("jail move needs agents (`citadel agent run`)".into())
        })?;
        let in_file = match self.applied() {
            Some(a) => self.parse(&a.text, &a.origin())?.jail(name).cloned(),
            None => None,
        };
        if in_file.as_ref().is_some_and(|j| j.host == here) {
            return Err(RuntimeError::Invalid(format!(
                "jail `{name}` is on host `{here}` in the applied file: not deleting it"
            )));
        }
        let entry = self.jails.lock().await.remove(name);
        if let Some(entry) = entry {
            entry.supervisor.stop().await;
        }
        {
            // What the file says of it again (a rolled-back target), or nothing.
            let mut cluster = self.cluster.lock().await;
            match (cluster.jails.iter().position(|j| j.name == name), in_file) {
                (Some(i), Some(j)) => cluster.jails[i] = j,
                (Some(i), None) => {
                    cluster.jails.remove(i);
                }
                (None, Some(j)) => cluster.jails.push(j),
                (None, None) => {}
            }
        }
        let _ = std::fs::remove_file(self.incoming(name));
        let paths = JailPaths::new(&self.state_dir, name);
        if paths.root.exists() {
            std::fs::remove_dir_all(&paths.root)
                .map_err(io(format!("deleting {}", paths.root.display())))?;
        }
        Ok(())
    }
}

/// Writes through to a file while hashing what passes.
/// Reads an archive sent as frames into `file` (through `file.partial`, fsynced), refused
/// unless it is `bytes` long with this `sha256`.
async fn store_frames<R: AsyncRead + Unpin>(
    body: &mut R,
    bytes: u64,
    sha256: &str,
    file: &Path,
    what: &str,
) -> Result<(), RuntimeError> {
    let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let partial = file.with_extension("partial");
    let mut out = tokio::fs::File::create(&partial)
        .await
        .map_err(io(format!("creating {}", partial.display())))?;
    let mut hashing = Hashing {
        out: &mut out,
        hash: sha2::Sha256::new(),
    };
    let got = crate::control::read_frames(body, &mut hashing, bytes)
        .await
        .map_err(io(format!("receiving {what}")))?;
    let digest: String = hashing
        .hash
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    out.flush()
        .await
        .map_err(io(format!("writing {}", partial.display())))?;
    out.sync_all()
        .await
        .map_err(io(format!("writing {}", partial.display())))?;
    if got != bytes || digest != sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(RuntimeError::Invalid(format!(
            "{what} arrived damaged ({got} of {bytes} bytes, sha256 {digest} instead of {sha256})"
        )));
    }
    std::fs::rename(&partial, file).map_err(io(format!("storing {}", file.display())))
}

struct Hashing<'a> {
    out: &'a mut tokio::fs::File,
    hash: sha2::Sha256,
}

impl tokio::io::AsyncWrite for Hashing<'_> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut *this.out).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = polled {
            this.hash.update(&buf[..n]);
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.out).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.out).poll_shutdown(cx)
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

//! Converging to a cluster file: the diff per jail (`plan`), its execution (`converge`), the
//! operator's `apply` and one-at-a-time `roll`, and the agents' exchange of the applied file
//! (`gossip`, `adopt`), by which a host that was down during an apply catches up.

use super::*;
use crate::applied::Applied;
use crate::plan::{self, Action, Change, Gossip, HostPlan};

impl Runtime {
    /// The file this agent last applied (None for `citadel up`).
    pub fn applied(&self) -> Option<Applied> {
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_applied(&self, applied: Applied) {
        *self.applied.lock().unwrap_or_else(|e| e.into_inner()) = Some(applied);
    }

    pub async fn cluster(&self) -> Cluster {
        self.cluster.lock().await.clone()
    }

    pub(super) fn parse(&self, text: &str, origin: &str) -> Result<Cluster, RuntimeError> {
        citadel_spec::parse(text, origin, &self.caps)
            .map(|(cluster, _)| cluster)
            .map_err(|r| RuntimeError::Invalid(r.to_string().trim_end().to_string()))
    }

    /// Adds to `next` the jails clone and restore made here that it does not name: a file
    /// never removes them.
    fn keep_runtime_made(current: &Cluster, jails: &BTreeMap<String, Entry>, next: &mut Cluster) {
        for j in &current.jails {
            let runtime_made = jails.get(&j.name).is_some_and(|e| !e.from_file);
            if runtime_made && next.jail(&j.name).is_none() {
                next.jails.push(j.clone());
            }
        }
    }

    /// What making this host run `next` changes, jail by jail. `start_stopped`: a jail of
    /// the file that is not running is started (an apply converges; a reload leaves what the
    /// operator stopped).
    fn changes(
        &self,
        current: &Cluster,
        next: &Cluster,
        jails: &BTreeMap<String, Entry>,
        start_stopped: bool,
    ) -> Vec<Change> {
        let change = |jail: &str, action, what| Change {
            jail: jail.to_string(),
            action,
            what,
        };
        let mut out = Vec::new();
        for name in jails.keys() {
            match next.jail(name) {
                None => out.push(change(
                    name,
                    Action::Stop,
                    vec!["not in the file (its data stays)".into()],
                )),
                Some(j) if !self.is_local(j) => out.push(change(
                    name,
                    Action::Move,
                    vec![format!("to host {}", j.host)],
                )),
                _ => {}
            }
        }
        for jail in next.jails.iter().filter(|j| self.is_local(j)) {
            let Some(entry) = jails.get(&jail.name) else {
                let from = current
                    .jail(&jail.name)
                    .filter(|j| j.host != jail.host)
                    .map(|j| format!("from host {}", j.host));
                out.push(change(
                    &jail.name,
                    Action::Create,
                    from.into_iter().collect(),
                ));
                continue;
            };
            let new = self.launcher.launched(next, jail);
            let fields = plan::fields_differ(&entry.launched.jail, &new.jail);
            if !fields.is_empty() {
                out.push(change(&jail.name, Action::Restart, fields));
            } else if entry.launched.derived != new.derived {
                let what = plan::lines_differ(
                    entry.launched.derived.as_deref().unwrap_or_default(),
                    new.derived.as_deref().unwrap_or_default(),
                );
                let action = match self.launcher.roles.reload_signal(jail.role) {
                    Some(_) => Action::Reload,
                    None => Action::Restart,
                };
                out.push(change(&jail.name, action, what));
            } else if start_stopped
                && entry.from_file
                && self.moving_to(&jail.name).is_none()
                && matches!(
                    entry.supervisor.status().state,
                    JailState::Stopped | JailState::Exited | JailState::Failed
                )
            {
                out.push(change(&jail.name, Action::Start, Vec::new()));
            }
        }
        out
    }

    /// Makes the jails of this host match `next`: what `changes` lists, except the restarts
    /// of `hold` (the operator's rollout does those, one at a time).
    pub(super) async fn converge(
        &self,
        mut next: Cluster,
        hold: &[String],
        start_stopped: bool,
    ) -> Result<(Vec<Change>, ReloadReport), RuntimeError> {
        let mut cluster = self.cluster.lock().await;
        let mut jails = self.jails.lock().await;
        let file_names: Vec<String> = next.jails.iter().map(|j| j.name.clone()).collect();
        Self::keep_runtime_made(&cluster, &jails, &mut next);
        citadel_spec::recheck(&next, &self.caps, "the new cluster file")
            .map_err(|r| RuntimeError::Invalid(r.to_string().trim_end().to_string()))?;
        let changes = self.changes(&cluster, &next, &jails, start_stopped);
        let mut report = ReloadReport::default();
        for c in &changes {
            let name = &c.jail;
            match c.action {
                Action::Stop | Action::Move => {
                    if let Some(entry) = jails.remove(name) {
                        entry.supervisor.stop().await;
                    }
                    report.removed.push(name.clone());
                }
                Action::Restart if hold.contains(name) => report.held.push(name.clone()),
                Action::Create | Action::Restart => {
                    let Some(jail) = next.jail(name) else {
                        continue;
                    };
                    match jails.remove(name) {
                        Some(old) => {
                            old.supervisor.stop().await;
                            report.restarted.push(name.clone());
                        }
                        None => report.added.push(name.clone()),
                    }
                    let entry = self
                        .launcher
                        .entry(&next, jail, file_names.contains(name))?;
                    if let Err(e) = entry.supervisor.start().await {
                        tracing::warn!(jail = %name, error = %e, "jail did not start");
                    }
                    jails.insert(name.clone(), entry);
                }
                Action::Reload => {
                    let (Some(jail), Some(entry)) = (next.jail(name), jails.get_mut(name)) else {
                        continue;
                    };
                    // Rewrite the role's config from the new cluster, then tell it.
                    self.launcher.launch(&next, jail)?;
                    entry.launched = self.launcher.launched(&next, jail);
                    if let Some(signal) = self.launcher.roles.reload_signal(jail.role)
                        && entry.supervisor.status().pid.is_some()
                    {
                        let _ = entry.supervisor.signal(signal).await;
                        report.reloaded.push(name.clone());
                    }
                }
                Action::Start => {
                    if let Some(entry) = jails.get(name) {
                        if let Err(e) = entry.supervisor.start().await {
                            tracing::warn!(jail = %name, error = %e, "jail did not start");
                        }
                        report.started.push(name.clone());
                    }
                }
            }
        }
        *cluster = next;
        Ok((changes, report))
    }

    /// What applying `file` would change on this host.
    pub async fn plan(&self, file: &str) -> Result<HostPlan, RuntimeError> {
        let mut next = self.parse(file, "the file to plan")?;
        let cluster = self.cluster.lock().await;
        let jails = self.jails.lock().await;
        Self::keep_runtime_made(&cluster, &jails, &mut next);
        let changes = self.changes(&cluster, &next, &jails, true);
        let applied = self.applied();
        Ok(HostPlan {
            host: self.local_host.clone().unwrap_or_default(),
            generation: applied.as_ref().map_or(0, |a| a.generation),
            sha256: applied.map(|a| a.sha256).unwrap_or_default(),
            changes,
        })
    }

    /// Stores `file` as generation `generation` (before anything changes: an agent that
    /// restarts midway comes back to it) and converges to it, holding the restarts of `hold`.
    pub async fn apply(
        &self,
        file: String,
        generation: u64,
        hold: &[String],
    ) -> Result<plan::Applied, RuntimeError> {
        let _one = self.applying.lock().await;
        let host = self.local_host.clone().unwrap_or_default();
        if let Some(mine) = self.applied()
            && generation < mine.generation
        {
            return Err(RuntimeError::Invalid(format!(
                "host `{host}` is at generation {} already, newer than {generation}; run `citadel plan` again",
                mine.generation
            )));
        }
        let next = self.parse(&file, &format!("generation {generation}"))?;
        let applied = Applied::new(generation, file);
        applied
            .store(&self.state_dir)
            .map_err(io("storing the applied file"))?;
        self.set_applied(applied);
        let (done, report) = self.converge(next, hold, true).await?;
        Ok(plan::Applied {
            host,
            generation,
            done,
            held: report.held,
        })
    }

    /// Restarts `name` with its launch from the current file and waits until it is healthy
    /// (the operator's rollout, one jail at a time). Returns how long it took.
    pub async fn roll(&self, name: &str, timeout: Duration) -> Result<Duration, RuntimeError> {
        let cluster = self.cluster().await;
        let jail = cluster
            .jail(name)
            .filter(|j| self.is_local(j))
            .ok_or_else(|| RuntimeError::NoSuchJail(name.to_string()))?;
        let mut entry = self.launcher.entry(&cluster, jail, true)?;
        let supervisor = entry.supervisor.clone();
        let old = {
            let mut jails = self.jails.lock().await;
            entry.from_file = jails.get(name).is_none_or(|e| e.from_file);
            jails.insert(name.to_string(), entry)
        };
        if let Some(old) = old {
            old.supervisor.stop().await;
        }
        let began = Instant::now();
        let at =
            |e: String| RuntimeError::Start(format!("jail `{name}` on host `{}`: {e}", jail.host));
        supervisor.start().await.map_err(at)?;
        wait_up(&supervisor, began + timeout, timeout)
            .await
            .map_err(at)?;
        Ok(began.elapsed())
    }

    /// Whether this host's gates that balance `name` have it in rotation.
    pub async fn in_rotation(&self, name: &str) -> Result<Option<bool>, RuntimeError> {
        let cluster = self.cluster().await;
        let jail = cluster
            .jail(name)
            .ok_or_else(|| RuntimeError::NoSuchJail(name.to_string()))?;
        Ok(self.launcher.roles.in_rotation(&cluster, jail).await)
    }

    /// A peer's version of the file: answers with ours, and our file if the peer is behind.
    pub fn gossip(&self, generation: u64, sha256: String) -> Gossip {
        let Some(mine) = self.applied() else {
            return Gossip {
                generation: 0,
                sha256: String::new(),
                file: None,
            };
        };
        let theirs = Applied {
            generation,
            sha256,
            text: String::new(),
        };
        Gossip {
            file: mine.supersedes(&theirs).then(|| mine.text.clone()),
            generation: mine.generation,
            sha256: mine.sha256,
        }
    }

    /// Adopts a peer's file if it is newer than ours: checked (an invalid file is never
    /// stored), stored, and converged to. Returns whether it was adopted.
    pub async fn adopt(&self, from: &str, answer: Gossip) -> Result<bool, RuntimeError> {
        let Some(text) = answer.file else {
            return Ok(false);
        };
        let theirs = Applied::new(answer.generation, text);
        if theirs.sha256 != answer.sha256 {
            return Err(RuntimeError::Invalid(format!(
                "host `{from}` sent generation {} with a sha256 that does not match it",
                answer.generation
            )));
        }
        let _one = self.applying.lock().await;
        if self.applied().is_some_and(|mine| !theirs.supersedes(&mine)) {
            return Ok(false);
        }
        let next = self.parse(
            &theirs.text,
            &format!("generation {} from host `{from}`", theirs.generation),
        )?;
        theirs
            .store(&self.state_dir)
            .map_err(io("storing the applied file"))?;
        self.set_applied(theirs);
        self.converge(next, &[], true).await?;
        Ok(true)
    }
}

//! The agents' exchange: every few seconds each agent asks the others for their
//! `(generation, sha256)` and adopts a newer file — how a host that was down during an apply
//! (or restarted from an older file) converges with no operator.

use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls::ClientConfig;

use crate::control::call_tls;
use crate::plan::Gossip;
use crate::protocol::Request;
use crate::runtime::Runtime;

/// How long one exchange with a peer may take: a frozen box accepts TCP (its kernel runs) but
/// never answers.
const EXCHANGE: Duration = Duration::from_secs(3);

/// How long a newer file must have been on offer before an agent takes it from a peer: an
/// `apply` reaches every live host within milliseconds, with the restarts it rolls itself one
/// at a time held; a host that took the file from a peer first would restart them all at once.
const SETTLE: Duration = Duration::from_secs(5);

/// Runs until the process ends. `client` is this host's certificate as a client.
pub async fn gossip(runtime: Arc<Runtime>, client: Arc<ClientConfig>, every: Duration) {
    let Some(me) = runtime.local_host().map(str::to_string) else {
        return;
    };
    // The newer version peers offered, and since when.
    let mut offered: Option<((u64, String), std::time::Instant)> = None;
    loop {
        tokio::time::sleep(every).await;
        let cluster = runtime.cluster().await;
        let Some(mine) = runtime.applied() else {
            continue;
        };
        let mut asks = tokio::task::JoinSet::new();
        for host in cluster.hosts.iter().filter(|h| h.name != me) {
            let Some(addr) = cluster.agent_addr(host) else {
                continue;
            };
            let (name, client) = (host.name.clone(), client.clone());
            let ask = Request::Gossip {
                generation: mine.generation,
                sha256: mine.sha256.clone(),
            };
            asks.spawn(async move {
                let answer =
                    tokio::time::timeout(EXCHANGE, call_tls::<Gossip>(addr, &name, client, &ask))
                        .await;
                (name, answer)
            });
        }
        while let Some(Ok((peer, answer))) = asks.join_next().await {
            match answer {
                Ok(Ok(answer)) if answer.file.is_some() => {
                    let version = (answer.generation, answer.sha256.clone());
                    match &offered {
                        // A newer one is on offer already: wait for that one.
                        Some((v, _)) if *v > version => continue,
                        Some((v, since)) if *v == version => {
                            if since.elapsed() < SETTLE {
                                continue;
                            }
                        }
                        _ => {
                            offered = Some((version, std::time::Instant::now()));
                            continue;
                        }
                    }
                    match runtime.adopt(&peer, answer).await {
                        Ok(true) => {
                            let generation = runtime.applied().map_or(0, |a| a.generation);
                            tracing::warn!(%peer, generation, "caught up: applied a newer file from a peer");
                            eprintln!(
                                "caught up: applied generation {generation} from host {peer}"
                            );
                        }
                        Ok(false) => {}
                        Err(e) => tracing::warn!(%peer, error = %e, "refused a peer's file"),
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "gossip"),
                Err(_) => tracing::debug!(%peer, "gossip: no answer within 3 s"),
            }
        }
    }
}

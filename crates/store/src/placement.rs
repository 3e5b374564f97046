//! Which servers hold a block: weighted rendezvous hashing (HRW, as Garage's and Ceph's
//! straw2 placement). Each server draws `u = hash(block, server name)` in (0, 1) and scores
//! `-ln(u) / weight` — an exponential race whose winner is each server with probability
//! proportional to its weight; the block's copies go to the `COPIES` lowest scores.
//! Deterministic from the block's name and the servers' names and weights only, so every
//! server computes the same placement with no coordination, and adding or removing one
//! server moves only the blocks it gains or held.
//!
//! Shares: the first copy follows the weights exactly; the second is drawn among the rest,
//! so a heavy server holds a bit less than its proportional share and light ones a bit
//! more (weights 1:2:3 → 21 %, 37 %, 42 % of the copies instead of 17/33/50; a server
//! can never hold more than every block once). With two servers both hold everything.

use sha2::{Digest, Sha256};

/// Copies of every block (on distinct servers, when there are that many).
pub const COPIES: usize = 2;

/// A server as placement sees it: a name and a capacity weight (> 0).
pub trait Weighted {
    fn name(&self) -> &str;
    fn weight(&self) -> f64;
}

/// The server's draw for a block, uniform in (0, 1).
fn draw(block: &str, server: &str) -> f64 {
    let mut h = Sha256::new();
    h.update(block.as_bytes());
    h.update(b"\n");
    h.update(server.as_bytes());
    let d = h.finalize();
    let x = u64::from_be_bytes(d[..8].try_into().unwrap_or([0; 8])) >> 11;
    (x as f64 + 0.5) / (1u64 << 53) as f64
}

/// Every server's index, best-placed first: the first `COPIES` hold the block, the rest are
/// where its copies go when those fail (fallbacks, in order).
pub fn ranked<S: Weighted>(block: &str, servers: &[S]) -> Vec<usize> {
    let mut scored: Vec<(f64, usize)> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| (-draw(block, s.name()).ln() / s.weight(), i))
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, i)| i).collect()
}

/// The servers that hold the block: the first `min(COPIES, servers)` of `ranked`.
pub fn placed<S: Weighted>(block: &str, servers: &[S]) -> Vec<usize> {
    let mut r = ranked(block, servers);
    r.truncate(COPIES.min(servers.len()));
    r
}

impl Weighted for crate::config::ServerEntry {
    fn name(&self) -> &str {
        &self.name
    }
    fn weight(&self) -> f64 {
        self.weight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::hash_of;
    use crate::config::ServerEntry;

    fn servers(weights: &[f64]) -> Vec<ServerEntry> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| ServerEntry {
                name: format!("store-{}", i + 1),
                addr: format!("127.0.0.{}:3901", i + 1).parse().unwrap(),
                weight,
            })
            .collect()
    }

    /// Each server's share of the copies of `n` blocks.
    fn shares(weights: &[f64], n: usize) -> Vec<f64> {
        let all = servers(weights);
        let mut held = vec![0usize; all.len()];
        for i in 0..n {
            let p = placed(&hash_of(&i.to_le_bytes()), &all);
            assert_eq!(p.len(), COPIES.min(all.len()));
            assert!(p.len() < 2 || p[0] != p[1], "two copies on one server");
            for s in p {
                held[s] += 1;
            }
        }
        let total: usize = held.iter().sum();
        held.iter().map(|&h| h as f64 / total as f64).collect()
    }

    #[test]
    fn two_servers_hold_everything_and_one_holds_all() {
        let s = shares(&[1.0, 5.0], 1000);
        assert_eq!(s, vec![0.5, 0.5]);
        assert_eq!(shares(&[3.0], 100), vec![1.0]);
    }

    #[test]
    fn shares_follow_the_weights() {
        // Expected shares of the copies (first copy ∝ weight, second among the rest).
        let s = shares(&[1.0, 1.0, 1.0], 30_000);
        for x in &s {
            assert!((x - 1.0 / 3.0).abs() < 0.01, "{s:?}");
        }
        let s = shares(&[1.0, 2.0, 3.0], 30_000);
        for (x, want) in s.iter().zip([0.208, 0.367, 0.425]) {
            assert!((x - want).abs() < 0.01, "{s:?}");
        }
        let s = shares(&[1.0, 1.0, 1.0, 1.0, 4.0], 30_000);
        assert!(s[4] > 0.38 && s[4] < 0.5, "{s:?}");
    }

    #[test]
    fn placement_is_deterministic_and_moves_little_when_a_server_joins() {
        let three = servers(&[1.0, 1.0, 1.0]);
        let four = servers(&[1.0, 1.0, 1.0, 1.0]);
        let mut moved = 0;
        for i in 0..3000usize {
            let b = hash_of(&i.to_le_bytes());
            assert_eq!(placed(&b, &three), placed(&b, &three));
            let before: Vec<usize> = placed(&b, &three);
            let after: Vec<usize> = placed(&b, &four);
            // A copy moves only to the new server.
            moved += after.iter().filter(|s| !before.contains(s)).count();
            assert!(after.iter().all(|s| before.contains(s) || *s == 3));
        }
        // The new server takes about its share (2/4 of blocks have a copy there).
        assert!((1300..1700).contains(&moved), "{moved}");
    }
}

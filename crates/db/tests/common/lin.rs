//! A linearizability checker for histories of one key — a register, a list used as a queue
//! or a sorted set — with unique written values (the Wing–Gong / Porcupine search with
//! memoization). The model's state is the key's contents as a sequence.

use std::collections::HashSet;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Wrote this value (unique across the history).
    Write(u64),
    /// Read this value (None: absent).
    Read(Option<u64>),
    /// RPUSH of a unique value.
    Push(u64),
    /// LPOP: what it returned (`Some(None)`: the list was empty), or `None` when the outcome
    /// is unknown (then it took the head, if any, or never happened).
    Pop(Option<Option<u64>>),
    /// A Lua script that pops the head and pushes it back at the tail, atomically,
    /// returning it (same convention as `Pop`).
    Rotate(Option<Option<u64>>),
    /// ZADD of a unique member whose score is the member itself.
    ZAdd(u64),
    /// ZPOPMIN (same convention as `Pop`).
    ZPopMin(Option<Option<u64>>),
}

/// The key's contents after `kind`, or None when `kind` cannot happen in `state`.
fn step(state: &[u64], kind: &Kind) -> Option<Vec<u64>> {
    let head = state.first().copied();
    let takes = |seen: &Option<Option<u64>>| seen.is_none_or(|s| s == head);
    match kind {
        Kind::Write(v) => Some(vec![*v]),
        Kind::Read(v) => (state == v.as_slice()).then(|| state.to_vec()),
        Kind::Push(v) => Some(state.iter().copied().chain([*v]).collect()),
        Kind::ZAdd(v) => {
            let mut s = state.to_vec();
            if let Err(at) = s.binary_search(v) {
                s.insert(at, *v);
            }
            Some(s)
        }
        Kind::Pop(seen) | Kind::ZPopMin(seen) => {
            takes(seen).then(|| state.get(1..).unwrap_or(&[]).to_vec())
        }
        Kind::Rotate(seen) => takes(seen).then(|| {
            let mut s = state.get(1..).unwrap_or(&[]).to_vec();
            s.extend(head);
            s
        }),
    }
}

#[derive(Clone, Debug)]
pub struct Op {
    /// Invocation and response times (ns since some origin). A write whose outcome is
    /// unknown (error, timeout) has `ret = None`: it may take effect at any time after its
    /// call, or never.
    pub call: u64,
    pub ret: Option<u64>,
    pub kind: Kind,
}

#[derive(Clone, Copy)]
struct Ev {
    op: usize,
    is_call: bool,
    prev: Option<usize>,
    next: Option<usize>,
    /// For a call event: the index of its return event.
    partner: usize,
}

/// Returns true when some linearization of `ops` is a legal history of the key.
pub fn check(ops: &[Op]) -> bool {
    if ops.is_empty() {
        return true;
    }
    let end = ops
        .iter()
        .flat_map(|o| [o.call, o.ret.unwrap_or(0)])
        .max()
        .unwrap_or(0)
        + 1;
    // Events sorted by time; at equal times calls come before returns (concurrent).
    let mut times: Vec<(u64, bool, usize)> = Vec::new();
    for (i, o) in ops.iter().enumerate() {
        times.push((o.call, true, i));
        times.push((o.ret.unwrap_or(end), false, i));
    }
    times.sort_by_key(|(t, is_call, i)| (*t, !*is_call, *i));
    let mut evs: Vec<Ev> = times
        .iter()
        .map(|(_, is_call, op)| Ev {
            op: *op,
            is_call: *is_call,
            prev: None,
            next: None,
            partner: 0,
        })
        .collect();
    let n = evs.len();
    let mut ret_of = vec![0usize; ops.len()];
    for (i, e) in evs.iter().enumerate() {
        if !e.is_call {
            ret_of[e.op] = i;
        }
    }
    for i in 0..n {
        evs[i].prev = if i == 0 { None } else { Some(i - 1) };
        evs[i].next = if i + 1 == n { None } else { Some(i + 1) };
        if evs[i].is_call {
            evs[i].partner = ret_of[evs[i].op];
        }
    }
    let mut head = Some(0usize);
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: Vec<u64> = Vec::new();
    let mut cache: HashSet<(Vec<u64>, Vec<u64>)> = HashSet::new();
    let mut stack: Vec<(usize, Vec<u64>)> = Vec::new();
    let mut entry = head;

    fn unlink(evs: &mut [Ev], head: &mut Option<usize>, i: usize) {
        let (p, nx) = (evs[i].prev, evs[i].next);
        match p {
            Some(p) => evs[p].next = nx,
            None => *head = nx,
        }
        if let Some(nx) = nx {
            evs[nx].prev = p;
        }
    }
    fn relink(evs: &mut [Ev], head: &mut Option<usize>, i: usize) {
        let (p, nx) = (evs[i].prev, evs[i].next);
        match p {
            Some(p) => evs[p].next = Some(i),
            None => *head = Some(i),
        }
        if let Some(nx) = nx {
            evs[nx].prev = Some(i);
        }
    }

    let mut steps: u64 = 0;
    while head.is_some() {
        steps += 1;
        if steps > 50_000_000 {
            panic!("linearizability search too large");
        }
        let Some(e) = entry else {
            // Only reachable if every remaining event is a call we could not place.
            return false;
        };
        if evs[e].is_call {
            let op = &ops[evs[e].op];
            if let Some(ns) = step(&state, &op.kind) {
                let mut bits = linearized.clone();
                bits[evs[e].op / 64] |= 1 << (evs[e].op % 64);
                if cache.insert((bits.clone(), ns.clone())) {
                    stack.push((e, std::mem::take(&mut state)));
                    linearized = bits;
                    state = ns;
                    let r = evs[e].partner;
                    unlink(&mut evs, &mut head, e);
                    unlink(&mut evs, &mut head, r);
                    entry = head;
                    continue;
                }
            }
            entry = evs[e].next;
        } else {
            // A return before its op could be placed: backtrack.
            let Some((ce, st)) = stack.pop() else {
                return false;
            };
            let r = evs[ce].partner;
            relink(&mut evs, &mut head, r);
            relink(&mut evs, &mut head, ce);
            linearized[evs[ce].op / 64] &= !(1 << (evs[ce].op % 64));
            state = st;
            entry = evs[ce].next;
        }
    }
    true
}

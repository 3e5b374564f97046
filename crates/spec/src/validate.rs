//! Checks that need the whole cluster: names that refer to each other, addresses, quorum.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use crate::diag::Diagnostic;
use crate::model::*;
use crate::read::{check_label, closest};

/// Checks one role section of a cluster file, given the whole source (so that errors carry
/// positions in it) and the cluster read so far.
pub type SectionCheck = fn(source: &str, cluster: &Cluster) -> Vec<Diagnostic>;

/// What the running build can do, which decides some checks.
#[derive(Clone, Debug, Default)]
pub struct Capabilities {
    /// Top-level sections this build understands, with their checks.
    pub sections: Vec<(&'static str, SectionCheck)>,
    /// Roles whose program is built into this `citadel`; others need an explicit `command`.
    pub builtin_roles: Vec<Role>,
    /// Jail backends this build can run.
    pub backends: Vec<Backend>,
}

impl Capabilities {
    /// Everything the spec knows of, for checking a file without running it.
    pub fn all() -> Self {
        Capabilities {
            sections: vec![
                ("gate", |_, _| Vec::new()),
                ("db", |_, _| Vec::new()),
                ("app", |_, _| Vec::new()),
                ("store", |_, _| Vec::new()),
            ],
            builtin_roles: vec![Role::App, Role::Db, Role::Witness, Role::Gate, Role::Store],
            backends: vec![Backend::Process, Backend::Netns],
        }
    }
}

pub(crate) fn validate(c: &Cluster, caps: &Capabilities, diags: &mut Vec<Diagnostic>) {
    if !c.name.is_empty() {
        check_label(&c.name, "cluster name", None, diags);
    }
    if c.zone.is_empty() || c.zone.len() > 200 || c.zone.split('.').any(|l| !is_label(l)) {
        diags.push(
            Diagnostic::error(None, format!("zone \"{}\" is not a DNS name", c.zone))
                .hint("use dot-separated labels such as \"citadel.internal\""),
        );
    }
    check_segments(c, diags);
    check_hosts(c, caps, diags);
    let mut owners: HashMap<Ipv4Addr, &str> = HashMap::new();
    let mut names: HashMap<&str, &Jail> = HashMap::new();
    for jail in &c.jails {
        if jail.name.is_empty() {
            continue;
        }
        if let Some(first) = names.insert(&jail.name, jail) {
            diags.push(
                Diagnostic::error(
                    jail.spans.get("name"),
                    format!("two jails are named `{}`", jail.name),
                )
                .hint(match first.spans.get("name") {
                    Some(_) => "the first one is above; jail names must be unique".to_string(),
                    None => "jail names must be unique".to_string(),
                }),
            );
        }
        check_jail(c, caps, jail, &mut owners, diags);
    }
    check_quorum(c, diags);
}

fn is_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

fn check_segments(c: &Cluster, diags: &mut Vec<Diagnostic>) {
    for (i, a) in c.segments.iter().enumerate() {
        for b in &c.segments[..i] {
            if a.net.contains(&b.net) || b.net.contains(&a.net) {
                diags.push(
                    Diagnostic::error(
                        a.spans.get("net"),
                        format!(
                            "segment `{}` ({}) overlaps segment `{}` ({})",
                            a.name, a.net, b.name, b.net
                        ),
                    )
                    .hint("give each segment its own address range"),
                );
            }
        }
    }
}

fn check_hosts(c: &Cluster, caps: &Capabilities, diags: &mut Vec<Diagnostic>) {
    if c.hosts.is_empty() {
        diags.push(
            Diagnostic::error(None, "the cluster declares no hosts")
                .hint("add a [[host]] table with name = \"...\""),
        );
    }
    let mut seen = BTreeMap::new();
    for h in &c.hosts {
        if h.name.is_empty() {
            continue;
        }
        if seen.insert(h.name.as_str(), ()).is_some() {
            diags.push(Diagnostic::error(
                h.spans.get("name"),
                format!("two hosts are named `{}`", h.name),
            ));
        }
        if !caps.backends.contains(&h.backend) {
            diags.push(
                Diagnostic::error(
                    h.spans.get("backend"),
                    format!(
                        "host `{}`: the {} backend is not available in this build",
                        h.name, h.backend
                    ),
                )
                .hint("use backend = \"process\""),
            );
        }
        check_host_segments(c, h, diags);
    }
}

/// A host's own addresses and links: netns only, on declared segments, inside them, and not
/// an address a jail or another host has.
fn check_host_segments(c: &Cluster, h: &Host, diags: &mut Vec<Diagnostic>) {
    let fields = h
        .addresses
        .keys()
        .map(|s| ("addresses", s))
        .chain(h.links.keys().map(|s| ("links", s)));
    for (key, segment) in fields {
        let span = h.spans.get(&format!("{key}.{segment}"));
        if h.backend != Backend::Netns {
            diags.push(
                Diagnostic::error(
                    span.clone(),
                    format!(
                        "host `{}`: `{key}` is for the netns backend, and this host uses {}",
                        h.name, h.backend
                    ),
                )
                .hint("add backend = \"netns\", or remove it"),
            );
            continue;
        }
        if c.segment(segment).is_none() {
            let known: Vec<&str> = c.segments.iter().map(|s| s.name.as_str()).collect();
            diags.push(Diagnostic::error(
                span,
                format!(
                    "host `{}`: no segment named `{segment}` (segments: {})",
                    h.name,
                    known.join(", ")
                ),
            ));
        }
    }
    for (segment, link) in &h.links {
        let bad = link.is_empty()
            || link.len() > 15
            || link
                .chars()
                .any(|ch| ch.is_whitespace() || ch == '/' || ch == ':');
        if bad {
            diags.push(Diagnostic::error(
                h.spans.get(&format!("links.{segment}")),
                format!(
                    "host `{}`: \"{link}\" is not a network interface name (1–15 characters, no spaces, `/` or `:`)",
                    h.name
                ),
            ));
        }
    }
    for (segment, addr) in &h.addresses {
        let span = h.spans.get(&format!("addresses.{segment}"));
        let Some(seg) = c.segment(segment) else {
            continue;
        };
        if !seg.net.contains(addr) || *addr == seg.net.network() || *addr == seg.net.broadcast() {
            diags.push(Diagnostic::error(
                span.clone(),
                format!(
                    "host `{}`: {addr} is not a host address of segment `{segment}` ({})",
                    h.name, seg.net
                ),
            ));
        }
        for j in &c.jails {
            if j.addresses.iter().any(|a| a.addr == *addr) {
                diags.push(Diagnostic::error(
                    span.clone(),
                    format!(
                        "host `{}`: {addr} is also jail `{}`'s address",
                        h.name, j.name
                    ),
                ));
            }
        }
        for other in &c.hosts {
            if other.name < h.name && other.addresses.values().any(|a| a == addr) {
                diags.push(Diagnostic::error(
                    span.clone(),
                    format!("hosts `{}` and `{}` both have {addr}", other.name, h.name),
                ));
            }
        }
    }
}

fn check_jail<'c>(
    c: &'c Cluster,
    caps: &Capabilities,
    jail: &'c Jail,
    owners: &mut HashMap<Ipv4Addr, &'c str>,
    diags: &mut Vec<Diagnostic>,
) {
    let name = &jail.name;
    let host = c.host(&jail.host);
    if host.is_none() && !jail.host.is_empty() {
        let known: Vec<&str> = c.hosts.iter().map(|h| h.name.as_str()).collect();
        let d = Diagnostic::error(
            jail.spans.get("host"),
            format!(
                "jail `{name}` is on host `{}`, which is not declared",
                jail.host
            ),
        );
        diags.push(match closest(&jail.host, &known) {
            Some(best) => d.hint(format!("did you mean `{best}`?")),
            None => d.hint(format!("declared hosts: {}", known.join(", "))),
        });
    }
    if jail.addresses.is_empty() {
        diags.push(
            Diagnostic::error(
                jail.spans.get("name"),
                format!("jail `{name}` has no address"),
            )
            .hint("give it one per segment it joins, e.g. addresses = { front = \"127.10.0.11\" }"),
        );
    }
    if jail.weight.is_some() && jail.role != Role::Store {
        diags.push(
            Diagnostic::error(
                jail.spans.get("weight"),
                format!("jail `{name}`: `weight` applies to store jails only"),
            )
            .hint("a store jail's weight is its share of the stored blocks; remove it here"),
        );
    }
    let backend = host.map_or(Backend::Process, |h| h.backend);
    for a in &jail.addresses {
        let span = jail.spans.get(&format!("addresses.{}", a.segment));
        let Some(segment) = c.segment(&a.segment) else {
            let known: Vec<&str> = c.segments.iter().map(|s| s.name.as_str()).collect();
            diags.push(
                Diagnostic::error(
                    span,
                    format!(
                        "jail `{name}` has an address on segment `{}`, which is not declared",
                        a.segment
                    ),
                )
                .hint(format!("declared segments: {}", known.join(", "))),
            );
            continue;
        };
        if !segment.net.contains(&a.addr) {
            diags.push(
                Diagnostic::error(
                    span.clone(),
                    format!(
                        "jail `{name}`: {} is outside segment `{}` ({})",
                        a.addr, segment.name, segment.net
                    ),
                )
                .hint(c.free_address(&segment.name).map_or_else(
                    || format!("segment `{}` is full", segment.name),
                    |free| format!("pick an address in {}, e.g. {free}", segment.net),
                )),
            );
        } else if segment.net.prefix_len() < 31
            && (a.addr == segment.net.network() || a.addr == segment.net.broadcast())
        {
            diags.push(Diagnostic::error(
                span.clone(),
                format!(
                    "jail `{name}`: {} is the network or broadcast address of {}",
                    a.addr, segment.net
                ),
            ));
        }
        if backend == Backend::Process && !a.addr.is_loopback() {
            diags.push(
                Diagnostic::error(span.clone(), format!("jail `{name}`: {} is not a loopback address, and host `{}` uses the process backend", a.addr, jail.host))
                    .hint("process jails bind loopback addresses: give segment `".to_string() + &a.segment + "` a range inside 127.0.0.0/8, e.g. \"127.10.0.0/24\""),
            );
        }
        if backend == Backend::Netns {
            if a.addr.is_loopback() {
                diags.push(
                    Diagnostic::error(span.clone(), format!("jail `{name}`: {} is a loopback address, and host `{}` uses the netns backend", a.addr, jail.host))
                        .hint("a netns jail has its own network: give segment `".to_string() + &a.segment + "` a routable range, e.g. \"192.168.1.0/24\""),
                );
            } else if segment.net.contains(&a.addr) && Some(a.addr) == segment.bridge_address() {
                diags.push(
                    Diagnostic::error(span.clone(), format!("jail `{name}`: {} is the address of host `{}`'s bridge on segment `{}`", a.addr, jail.host, segment.name))
                        .hint("netns hosts take the first address of each segment; pick another one"),
                );
            }
        }
        if let Some(other) = owners.insert(a.addr, name)
            && other != name
        {
            diags.push(
                Diagnostic::error(
                    span,
                    format!("jails `{other}` and `{name}` both use address {}", a.addr),
                )
                .hint(
                    c.free_address(&a.segment).map_or_else(String::new, |free| {
                        format!("a free address on `{}`: {free}", a.segment)
                    }),
                ),
            );
        }
    }
    match (&jail.command, jail.role) {
        (None, Role::Command) => diags.push(
            Diagnostic::error(
                jail.spans.get("name"),
                format!("jail `{name}` has role \"command\" but no `command`"),
            )
            .hint(
                "say what to run, e.g. command = \"python3\" and args = [\"-m\", \"http.server\"]",
            ),
        ),
        (None, role) if !caps.builtin_roles.contains(&role) => diags.push(
            Diagnostic::error(
                jail.spans.get("role"),
                format!("jail `{name}`: the {role} role is not built into this citadel yet"),
            )
            .hint("give the jail a `command` to run, or use role = \"command\""),
        ),
        _ => {}
    }
    for key in jail.env.keys() {
        if key.starts_with("CITADEL_") {
            diags.push(
                Diagnostic::error(
                    jail.spans.get("name"),
                    format!("jail `{name}`: env `{key}` is set by citadel itself"),
                )
                .hint("CITADEL_* variables tell a jail who it is; choose another name"),
            );
        }
    }
    if let Some(h) = &jail.health {
        if let Some(seg) = &h.segment
            && jail.address(seg).is_none()
        {
            diags.push(Diagnostic::error(
                    jail.spans.get("health.segment"),
                    format!("jail `{name}`: the health check probes segment `{seg}`, which the jail does not join"),
                ));
        }
        if h.timeout > h.interval {
            diags.push(Diagnostic::warning(
                jail.spans.get("health"),
                format!(
                    "jail `{name}`: health timeout {:?} is longer than its interval {:?}",
                    h.timeout, h.interval
                ),
            ));
        }
    }
}

/// Raft needs a majority of voters. With an even number the majority is more than half, so the
/// group tolerates no more failures than one voter fewer would; with two it tolerates none.
fn check_quorum(c: &Cluster, diags: &mut Vec<Diagnostic>) {
    let data: Vec<&Jail> = c.jails.iter().filter(|j| j.role == Role::Db).collect();
    let witnesses: Vec<&Jail> = c.jails.iter().filter(|j| j.role == Role::Witness).collect();
    let voters = data.len() + witnesses.len();
    if voters == 0 {
        return;
    }
    let at = data
        .first()
        .or(witnesses.first())
        .and_then(|j| j.spans.get("role"));
    if data.is_empty() {
        diags.push(Diagnostic::error(
            at,
            "a witness votes for db jails, but the cluster has no db jail",
        ));
        return;
    }
    if voters.is_multiple_of(2) {
        let majority = voters / 2 + 1;
        let why = format!(
            "{voters} voters ({} db, {} witness) need {majority} for a majority, so losing {} of them stops all writes",
            data.len(),
            witnesses.len(),
            voters - majority + 1
        );
        let d = if witnesses.is_empty() {
            Diagnostic::error(at, format!("the db group cannot keep a majority: {why}")).hint(
                "add a witness jail (role = \"witness\") on a third host, ideally the gate host",
            )
        } else {
            Diagnostic::error(
                at,
                format!("the db group has an even number of voters: {why}"),
            )
            .hint("use an odd number of voters: add or remove a witness")
        };
        diags.push(d);
    }
    let mut by_host: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for j in data.iter().chain(&witnesses) {
        by_host.entry(&j.host).or_default().push(&j.name);
    }
    for (host, jails) in by_host {
        if jails.len() > 1 && c.hosts.len() > 1 {
            diags.push(Diagnostic::warning(
                None,
                format!(
                    "db voters {} share host `{host}`: losing that host loses {} votes at once",
                    jails.join(", "),
                    jails.len()
                ),
            ));
        }
    }
}

//! Reading a cluster file: TOML with positions → the model, collecting every problem on the way
//! instead of stopping at the first one.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::str::FromStr;
use std::time::Duration;

use ipnet::Ipv4Net;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::Diagnostic;
use crate::model::*;
use crate::units::{parse_duration, parse_size};

pub const DEFAULT_RESTART: RestartPolicy = RestartPolicy::Always;
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

type Value<'i> = Spanned<DeValue<'i>>;

/// The keys of one TOML table, read one at a time; whatever is left unread at the end is an
/// unknown key.
struct Fields<'a, 'i> {
    table: &'a DeTable<'i>,
    span: Range<usize>,
    /// How messages name this table, e.g. "jail `app-1`".
    what: String,
    known: &'a [&'a str],
}

impl<'a, 'i> Fields<'a, 'i> {
    fn new(
        value: &'a Value<'i>,
        what: impl Into<String>,
        known: &'a [&'a str],
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Self> {
        let what = what.into();
        match value.get_ref() {
            DeValue::Table(table) => Some(Fields {
                table,
                span: value.span(),
                what,
                known,
            }),
            other => {
                diags.push(Diagnostic::error(
                    Some(value.span()),
                    format!("{what} must be a table, found {}", other.type_str()),
                ));
                None
            }
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value<'i>> {
        debug_assert!(self.known.contains(&key), "{key} not declared as known");
        self.table.get(key)
    }

    fn missing(&self, key: &str, diags: &mut Vec<Diagnostic>) {
        diags.push(Diagnostic::error(
            Some(self.span.clone()),
            format!("{} is missing the required key `{key}`", self.what),
        ));
    }

    fn str(&self, key: &str, diags: &mut Vec<Diagnostic>) -> Option<(String, Range<usize>)> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some((s.to_string(), v.span())),
            other => {
                diags.push(type_error(&self.what, key, "a string", other, v.span()));
                None
            }
        }
    }

    fn required_str(
        &self,
        key: &str,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<(String, Range<usize>)> {
        if self.get(key).is_none() {
            self.missing(key, diags);
            return None;
        }
        self.str(key, diags)
    }

    fn int(&self, key: &str, diags: &mut Vec<Diagnostic>) -> Option<(i64, Range<usize>)> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some((n, v.span())),
                Err(_) => {
                    diags.push(Diagnostic::error(
                        Some(v.span()),
                        format!("`{key}` of {} is out of range", self.what),
                    ));
                    None
                }
            },
            other => {
                diags.push(type_error(&self.what, key, "an integer", other, v.span()));
                None
            }
        }
    }

    fn number(&self, key: &str, diags: &mut Vec<Diagnostic>) -> Option<(f64, Range<usize>)> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Float(f) => match f64::from_str(&f.as_str().replace('_', "")) {
                Ok(n) => Some((n, v.span())),
                Err(_) => {
                    diags.push(Diagnostic::error(
                        Some(v.span()),
                        format!("`{key}` of {} is not a number", self.what),
                    ));
                    None
                }
            },
            DeValue::Integer(_) => self.int(key, diags).map(|(n, s)| (n as f64, s)),
            other => {
                diags.push(type_error(&self.what, key, "a number", other, v.span()));
                None
            }
        }
    }

    fn port(&self, key: &str, diags: &mut Vec<Diagnostic>) -> Option<(u16, Range<usize>)> {
        let (n, span) = self.int(key, diags)?;
        check_port(n, &span, &format!("`{key}` of {}", self.what), diags).map(|p| (p, span))
    }

    fn duration(&self, key: &str, diags: &mut Vec<Diagnostic>) -> Option<Duration> {
        let (s, span) = self.str(key, diags)?;
        match parse_duration(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                diags.push(
                    Diagnostic::error(Some(span), format!("`{key}` of {}: {e}", self.what))
                        .hint("write a duration such as \"500ms\", \"10s\" or \"2m\""),
                );
                None
            }
        }
    }

    fn string_list(&self, key: &str, diags: &mut Vec<Diagnostic>) -> Vec<String> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        let DeValue::Array(items) = v.get_ref() else {
            diags.push(type_error(
                &self.what,
                key,
                "an array of strings",
                v.get_ref(),
                v.span(),
            ));
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| match item.get_ref() {
                DeValue::String(s) => Some(s.to_string()),
                other => {
                    diags.push(type_error(
                        &self.what,
                        key,
                        "strings only",
                        other,
                        item.span(),
                    ));
                    None
                }
            })
            .collect()
    }

    /// A table of string values, e.g. `env = { A = "1" }`.
    fn string_map(
        &self,
        key: &str,
        diags: &mut Vec<Diagnostic>,
    ) -> Vec<(String, String, Range<usize>)> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        let DeValue::Table(table) = v.get_ref() else {
            diags.push(type_error(
                &self.what,
                key,
                "a table",
                v.get_ref(),
                v.span(),
            ));
            return Vec::new();
        };
        table
            .iter()
            .filter_map(|(k, val)| match val.get_ref() {
                DeValue::String(s) => Some((k.get_ref().to_string(), s.to_string(), val.span())),
                other => {
                    diags.push(type_error(
                        &self.what,
                        &format!("{key}.{}", k.get_ref()),
                        "a string",
                        other,
                        val.span(),
                    ));
                    None
                }
            })
            .collect()
    }

    /// Reports every key this table has that nobody asked about.
    fn finish(self, diags: &mut Vec<Diagnostic>) {
        for key in self.table.keys() {
            let name = key.get_ref().as_ref();
            if self.known.contains(&name) {
                continue;
            }
            let mut d = Diagnostic::error(
                Some(key.span()),
                format!("unknown key `{name}` in {}", self.what),
            );
            d = match closest(name, self.known) {
                Some(best) => d.hint(format!("did you mean `{best}`?")),
                None => d.hint(format!("known keys: {}", self.known.join(", "))),
            };
            diags.push(d);
        }
    }
}

fn type_error(
    what: &str,
    key: &str,
    expected: &str,
    found: &DeValue<'_>,
    span: Range<usize>,
) -> Diagnostic {
    Diagnostic::error(
        Some(span),
        format!(
            "`{key}` of {what} must be {expected}, found {}",
            found.type_str()
        ),
    )
}

fn check_port(n: i64, span: &Range<usize>, what: &str, diags: &mut Vec<Diagnostic>) -> Option<u16> {
    match u16::try_from(n) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            diags.push(Diagnostic::error(
                Some(span.clone()),
                format!("{what} is {n}, not a port (1 to 65535)"),
            ));
            None
        }
    }
}

/// The known word nearest to a misspelt one, if it is near enough to be a likely typo.
pub(crate) fn closest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

const TOP_KEYS: &[&str] = &["cluster", "segments", "host", "jail"];
const CLUSTER_KEYS: &[&str] = &["name", "zone"];
const HOST_KEYS: &[&str] = &["name", "backend", "addresses", "links", "agent"];
const JAIL_KEYS: &[&str] = &[
    "name",
    "host",
    "role",
    "addresses",
    "command",
    "args",
    "env",
    "restart",
    "stop_grace",
    "memory",
    "cpus",
    "pids",
    "ports",
    "health",
    "weight",
];
const HEALTH_KEYS: &[&str] = &["check", "port", "path", "segment", "interval", "timeout"];

/// Reads a parsed document into a cluster. Fields that could not be read are left out and
/// reported; the caller decides whether the result is usable (it is not if any error was found).
/// `sections` are further top-level tables that role checkers read (e.g. `gate`).
pub(crate) fn read_cluster(
    doc: &Value<'_>,
    sections: &[&str],
    diags: &mut Vec<Diagnostic>,
) -> Cluster {
    let mut cluster = Cluster {
        name: String::new(),
        zone: String::new(),
        segments: Vec::new(),
        hosts: Vec::new(),
        jails: Vec::new(),
        sections: Default::default(),
    };
    let top_keys: Vec<&str> = TOP_KEYS.iter().chain(sections).copied().collect();
    let Some(top) = Fields::new(doc, "the cluster file", &top_keys, diags) else {
        return cluster;
    };

    match top.get("cluster") {
        Some(v) => {
            if let Some(f) = Fields::new(v, "[cluster]", CLUSTER_KEYS, diags) {
                if let Some((name, _)) = f.required_str("name", diags) {
                    cluster.name = name;
                }
                cluster.zone = match f.str("zone", diags) {
                    Some((zone, _)) => zone,
                    None => format!("{}.internal", cluster.name),
                };
                f.finish(diags);
            }
        }
        None => diags.push(
            Diagnostic::error(Some(0..0), "the cluster file has no [cluster] table")
                .hint("start the file with [cluster] and name = \"...\""),
        ),
    }

    match top.get("segments") {
        Some(v) => match v.get_ref() {
            DeValue::Table(table) => {
                for (name, net) in table {
                    if let Some(seg) = read_segment(name, net, diags) {
                        cluster.segments.push(seg);
                    }
                }
            }
            other => diags.push(type_error(
                "the cluster file",
                "segments",
                "a table of name = \"CIDR\"",
                other,
                v.span(),
            )),
        },
        None => diags.push(
            Diagnostic::error(Some(0..0), "the cluster file declares no [segments]")
                .hint("add e.g. [segments] front = \"127.10.0.0/24\""),
        ),
    }

    for (i, v) in array_of_tables(&top, "host", diags).iter().enumerate() {
        if let Some(f) = Fields::new(v, format!("host #{}", i + 1), HOST_KEYS, diags) {
            cluster.hosts.push(read_host(f, diags));
        }
    }
    for (i, v) in array_of_tables(&top, "jail", diags).iter().enumerate() {
        if let Some(f) = Fields::new(v, format!("jail #{}", i + 1), JAIL_KEYS, diags) {
            cluster.jails.push(read_jail(f, diags));
        }
    }
    top.finish(diags);
    // Addresses come out of a TOML table in key order; put them in segment order, so that a
    // jail's first address is on the first segment declared.
    let order: Vec<String> = cluster.segments.iter().map(|s| s.name.clone()).collect();
    for jail in &mut cluster.jails {
        jail.addresses.sort_by_key(|a| {
            order
                .iter()
                .position(|s| *s == a.segment)
                .unwrap_or(usize::MAX)
        });
    }
    cluster
}

fn array_of_tables<'a, 'i>(
    top: &Fields<'a, 'i>,
    key: &str,
    diags: &mut Vec<Diagnostic>,
) -> &'a [Value<'i>] {
    match top.get(key).map(|v| (v, v.get_ref())) {
        None => &[],
        Some((_, DeValue::Array(items))) => items,
        Some((v, other)) => {
            diags.push(
                type_error(
                    "the cluster file",
                    key,
                    "an array of tables",
                    other,
                    v.span(),
                )
                .hint(format!("write each one as a [[{key}]] table")),
            );
            &[]
        }
    }
}

fn read_segment(
    name: &Spanned<std::borrow::Cow<'_, str>>,
    net: &Value<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Segment> {
    let mut spans = Spans::default();
    spans.set("name", name.span());
    spans.set("net", net.span());
    let name = name.get_ref().to_string();
    check_label(&name, "segment name", spans.get("name"), diags);
    let DeValue::String(text) = net.get_ref() else {
        diags.push(type_error(
            "[segments]",
            &name,
            "a CIDR string such as \"127.10.0.0/24\"",
            net.get_ref(),
            net.span(),
        ));
        return None;
    };
    match Ipv4Net::from_str(text) {
        Ok(parsed) if parsed.trunc() != parsed => {
            diags.push(
                Diagnostic::error(
                    Some(net.span()),
                    format!(
                        "segment `{name}`: {text} has bits set past its /{} prefix",
                        parsed.prefix_len()
                    ),
                )
                .hint(format!("did you mean \"{}\"?", parsed.trunc())),
            );
            None
        }
        Ok(parsed) => Some(Segment {
            name,
            net: parsed,
            spans,
        }),
        Err(_) => {
            diags.push(
                Diagnostic::error(
                    Some(net.span()),
                    format!("segment `{name}`: \"{text}\" is not an IPv4 CIDR"),
                )
                .hint("write an address and a prefix length, e.g. \"127.10.0.0/24\""),
            );
            None
        }
    }
}

fn read_host(f: Fields<'_, '_>, diags: &mut Vec<Diagnostic>) -> Host {
    let mut host = Host {
        name: String::new(),
        backend: Backend::Process,
        addresses: Default::default(),
        links: Default::default(),
        agent: None,
        spans: Spans::default(),
    };
    if let Some((name, span)) = f.required_str("name", diags) {
        check_label(&name, "host name", Some(span.clone()), diags);
        host.spans.set("name", span);
        host.name = name;
    }
    if let Some((backend, span)) = f.str("backend", diags) {
        match Backend::parse(&backend) {
            Some(b) => host.backend = b,
            None => diags.push(unknown_word(
                "backend",
                &backend,
                Backend::NAMES,
                span.clone(),
            )),
        }
        host.spans.set("backend", span);
    }
    for (segment, text, span) in f.string_map("addresses", diags) {
        match Ipv4Addr::from_str(&text) {
            Ok(addr) => {
                host.spans.set(format!("addresses.{segment}"), span);
                host.addresses.insert(segment, addr);
            }
            Err(_) => diags.push(Diagnostic::error(
                Some(span),
                format!(
                    "{}: address \"{text}\" on segment `{segment}` is not an IPv4 address",
                    f.what
                ),
            )),
        }
    }
    for (segment, link, span) in f.string_map("links", diags) {
        host.spans.set(format!("links.{segment}"), span);
        host.links.insert(segment, link);
    }
    if let Some((text, span)) = f.str("agent", diags) {
        let addr = std::net::SocketAddr::from_str(&text).ok().or_else(|| {
            std::net::IpAddr::from_str(&text)
                .ok()
                .map(|ip| std::net::SocketAddr::new(ip, Host::AGENT_PORT))
        });
        match addr {
            Some(addr) => host.agent = Some(addr),
            None => diags.push(Diagnostic::error(
                Some(span.clone()),
                format!(
                    "{}: agent \"{text}\" is not an address (\"192.168.1.12\" or \"192.168.1.12:7443\")",
                    f.what
                ),
            )),
        }
        host.spans.set("agent", span);
    }
    f.finish(diags);
    host
}

fn unknown_word(what: &str, word: &str, known: &[&str], span: Range<usize>) -> Diagnostic {
    let d = Diagnostic::error(Some(span), format!("unknown {what} \"{word}\""));
    match closest(word, known) {
        Some(best) => d.hint(format!(
            "did you mean \"{best}\"? (one of: {})",
            known.join(", ")
        )),
        None => d.hint(format!("one of: {}", known.join(", "))),
    }
}

fn read_jail(mut f: Fields<'_, '_>, diags: &mut Vec<Diagnostic>) -> Jail {
    let mut jail = Jail {
        name: String::new(),
        host: String::new(),
        role: Role::Command,
        addresses: Vec::new(),
        command: None,
        args: Vec::new(),
        env: BTreeMap::new(),
        restart: DEFAULT_RESTART,
        stop_grace: DEFAULT_STOP_GRACE,
        limits: Limits::default(),
        health: None,
        ports: Vec::new(),
        weight: None,
        spans: Spans::default(),
    };
    jail.spans.set("", f.span.clone());
    if let Some((name, span)) = f.required_str("name", diags) {
        check_label(&name, "jail name", Some(span.clone()), diags);
        jail.spans.set("name", span);
        f.what = format!("jail `{name}`");
        jail.name = name;
    }
    if let Some((host, span)) = f.required_str("host", diags) {
        jail.spans.set("host", span);
        jail.host = host;
    }
    if let Some((role, span)) = f.required_str("role", diags) {
        match Role::parse(&role) {
            Some(r) => jail.role = r,
            None => diags.push(unknown_word("role", &role, Role::NAMES, span.clone())),
        }
        jail.spans.set("role", span);
    }
    if let Some(v) = f.get("addresses") {
        jail.spans.set("addresses", v.span());
    }
    for (segment, text, span) in f.string_map("addresses", diags) {
        match Ipv4Addr::from_str(&text) {
            Ok(addr) => {
                jail.spans.set(format!("addresses.{segment}"), span);
                jail.addresses.push(JailAddress { segment, addr });
            }
            Err(_) => diags.push(Diagnostic::error(
                Some(span),
                format!(
                    "{}: address \"{text}\" on segment `{segment}` is not an IPv4 address",
                    f.what
                ),
            )),
        }
    }
    if let Some((command, span)) = f.str("command", diags) {
        if command.trim().is_empty() {
            diags.push(Diagnostic::error(
                Some(span.clone()),
                format!("{}: `command` is empty", f.what),
            ));
        }
        jail.spans.set("command", span);
        jail.command = Some(command);
    }
    jail.args = f.string_list("args", diags);
    for (key, value, span) in f.string_map("env", diags) {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            diags.push(Diagnostic::error(
                Some(span),
                format!("{}: `{key}` cannot be an environment variable", f.what),
            ));
            continue;
        }
        jail.env.insert(key, value);
    }
    if let Some((restart, span)) = f.str("restart", diags) {
        match RestartPolicy::parse(&restart) {
            Some(r) => jail.restart = r,
            None => diags.push(unknown_word(
                "restart policy",
                &restart,
                RestartPolicy::NAMES,
                span,
            )),
        }
    }
    if let Some(d) = f.duration("stop_grace", diags) {
        jail.stop_grace = d;
    }
    if let Some((text, span)) = f.str("memory", diags) {
        match parse_size(&text) {
            Ok(bytes) => jail.limits.memory = Some(bytes),
            Err(e) => diags.push(
                Diagnostic::error(Some(span), format!("{}: memory: {e}", f.what))
                    .hint("write a size such as \"256MiB\" or \"1G\""),
            ),
        }
    }
    if let Some((cpus, span)) = f.number("cpus", diags) {
        if cpus > 0.0 && cpus.is_finite() {
            jail.limits.cpus = Some(cpus);
        } else {
            diags.push(Diagnostic::error(
                Some(span),
                format!("{}: cpus must be more than 0, found {cpus}", f.what),
            ));
        }
    }
    if let Some((weight, span)) = f.number("weight", diags) {
        jail.spans.set("weight", span.clone());
        if weight > 0.0 && weight.is_finite() {
            jail.weight = Some(weight);
        } else {
            diags.push(Diagnostic::error(
                Some(span),
                format!("{}: weight must be more than 0, found {weight}", f.what),
            ));
        }
    }
    if let Some((pids, span)) = f.int("pids", diags) {
        if (1..=4_194_304).contains(&pids) {
            jail.limits.pids = Some(pids as u64);
        } else {
            diags.push(Diagnostic::error(
                Some(span),
                format!(
                    "{}: pids must be between 1 and 4194304, found {pids}",
                    f.what
                ),
            ));
        }
    }
    if let Some(v) = f.get("ports") {
        match v.get_ref() {
            DeValue::Array(items) => {
                for item in items.iter() {
                    let port = match item.get_ref() {
                        DeValue::Integer(i) => {
                            i64::from_str_radix(i.as_str(), i.radix()).unwrap_or(-1)
                        }
                        _ => -1,
                    };
                    if let Some(p) = check_port(
                        port,
                        &item.span(),
                        &format!("{}: a `ports` entry", f.what),
                        diags,
                    ) {
                        jail.ports.push(p);
                    }
                }
            }
            other => diags.push(type_error(
                &f.what,
                "ports",
                "an array of ports",
                other,
                v.span(),
            )),
        }
    }
    if let Some(v) = f.get("health") {
        jail.spans.set("health", v.span());
        let what = format!("the health check of {}", f.what);
        if let Some(h) = Fields::new(v, what, HEALTH_KEYS, diags) {
            jail.health = read_health(h, &mut jail.spans, diags);
        }
    }
    f.finish(diags);
    jail
}

fn read_health(
    f: Fields<'_, '_>,
    spans: &mut Spans,
    diags: &mut Vec<Diagnostic>,
) -> Option<HealthCheck> {
    let check = f.required_str("check", diags);
    let port = match f.get("port") {
        Some(_) => f.port("port", diags),
        None => {
            f.missing("port", diags);
            None
        }
    };
    let path = f.str("path", diags);
    let segment = f.str("segment", diags).map(|(segment, span)| {
        spans.set("health.segment", span);
        segment
    });
    let interval = f
        .duration("interval", diags)
        .unwrap_or(DEFAULT_HEALTH_INTERVAL);
    let timeout = f
        .duration("timeout", diags)
        .unwrap_or(DEFAULT_HEALTH_TIMEOUT.min(interval));
    let probe = match check {
        Some((kind, span)) => match kind.as_str() {
            "tcp" => {
                if let Some((_, span)) = &path {
                    diags.push(
                        Diagnostic::error(Some(span.clone()), "a tcp health check has no `path`")
                            .hint("use check = \"http\" to probe a path"),
                    );
                }
                Some(Probe::Tcp)
            }
            "http" => {
                let path = path.map_or_else(|| "/".to_string(), |(p, _)| p);
                if path.starts_with('/') {
                    Some(Probe::Http { path })
                } else {
                    diags.push(Diagnostic::error(
                        Some(span),
                        format!("health path \"{path}\" must start with /"),
                    ));
                    None
                }
            }
            other => {
                diags.push(unknown_word("health check", other, &["tcp", "http"], span));
                None
            }
        },
        None => None,
    };
    f.finish(diags);
    Some(HealthCheck {
        probe: probe?,
        port: port?.0,
        segment,
        interval,
        timeout,
    })
}

/// Names become DNS labels (`<jail>.<zone>`) and file names, so they follow the DNS label rules.
pub(crate) fn check_label(
    name: &str,
    what: &str,
    span: Option<Range<usize>>,
    diags: &mut Vec<Diagnostic>,
) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        diags.push(
            Diagnostic::error(span, format!("{what} \"{name}\" is not a valid name")).hint(
                "use 1 to 63 lowercase letters, digits and inner hyphens (it becomes a DNS name)",
            ),
        );
    }
}

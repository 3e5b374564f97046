//! Every kind of mistake a cluster file can hold is reported at its line and column, all at once.

use citadel_spec::{BUILTIN, Capabilities, Report, Role, line_col, parse};

fn errors_of(src: &str) -> Report {
    match parse(src, "test.toml", &Capabilities::all()) {
        Ok(_) => panic!("expected errors in:\n{src}"),
        Err(report) => report,
    }
}

/// Asserts one error mentions `needle` and sits on the line holding `marker` (at its column).
fn assert_error_at(report: &Report, needle: &str, marker: &str) {
    let offset = report
        .source
        .find(marker)
        .unwrap_or_else(|| panic!("marker {marker} not in source"));
    let want = line_col(&report.source, offset);
    let found = report
        .errors()
        .find(|d| d.message.contains(needle))
        .unwrap_or_else(|| panic!("no error mentioning {needle:?} in:\n{report}"));
    let span = found.span.clone().expect("error has a place");
    assert_eq!(
        line_col(&report.source, span.start),
        want,
        "place of {needle:?}:\n{report}"
    );
}

const HEAD: &str = r#"
[cluster]
name = "t"
[segments]
front = "127.10.0.0/24"
back = "127.20.0.0/24"
[[host]]
name = "h1"
[[host]]
name = "h2"
"#;

#[test]
fn the_builtin_cluster_is_valid() {
    let (cluster, warnings) = parse(BUILTIN, "builtin", &Capabilities::all()).expect("valid");
    assert_eq!(cluster.jails.len(), 9, "{warnings}");
    assert_eq!(cluster.hosts.len(), 3);
    assert_eq!(cluster.zone, "citadel.internal");
    let app = cluster.jail("app-1").expect("app-1");
    assert_eq!(
        app.address("front").map(|a| a.to_string()),
        Some("127.10.0.11".into())
    );
    assert_eq!(app.limits.memory, Some(256 << 20));
    let stores: Vec<&str> = cluster
        .jails
        .iter()
        .filter(|j| j.role == citadel_spec::Role::Store)
        .map(|j| j.host.as_str())
        .collect();
    assert_eq!(
        stores,
        ["server-1", "server-2"],
        "a store jail on each server"
    );
}

#[test]
fn every_problem_is_reported_at_once_with_its_place() {
    let src = format!(
        r#"{HEAD}
[[jail]]
name = "a"
host = "h1"
role = "command"
command = "true"
colour = "blue"
addresses = {{ front = "127.10.0.5", back = "127.99.0.5" }}

[[jail]]
name = "b"
host = "nowhere"
role = "command"
command = "true"
addresses = {{ front = "127.10.0.5" }}

[[jail]]
name = "a"
host = "h2"
role = "wizard"
restart = "sometimes"
stop_grace = "ten"
addresses = {{ front = "127.10.0.7" }}
"#
    );
    let report = errors_of(&src);
    assert_error_at(&report, "unknown key `colour`", "colour");
    assert_error_at(&report, "outside segment `back`", "\"127.99.0.5\"");
    assert_error_at(&report, "host `nowhere`", "\"nowhere\"");
    assert_error_at(&report, "both use address 127.10.0.5", "\"127.10.0.5\" }");
    assert_error_at(&report, "two jails are named `a`", "\"a\"\nhost = \"h2\"");
    assert_error_at(&report, "unknown role \"wizard\"", "\"wizard\"");
    assert_error_at(&report, "restart policy", "\"sometimes\"");
    assert_error_at(&report, "stop_grace", "\"ten\"");
    assert!(report.errors().count() >= 8, "{report}");
    let text = report.to_string();
    assert!(text.contains("test.toml:"), "{text}");
    assert!(text.contains("hint:"), "{text}");
}

#[test]
fn bad_cidrs_are_named() {
    let src = r#"
[cluster]
name = "t"
[segments]
front = "127.10.0.0/33"
back = "127.20.0.9/24"
odd = 7
[[host]]
name = "h1"
"#;
    let report = errors_of(src);
    assert_error_at(&report, "segment `front`", "\"127.10.0.0/33\"");
    assert_error_at(&report, "past its /24 prefix", "\"127.20.0.9/24\"");
    assert_error_at(&report, "`odd`", "7\n");
}

#[test]
fn process_jails_need_loopback_addresses() {
    let src = r#"
[cluster]
name = "t"
[segments]
lan = "10.1.0.0/24"
[[host]]
name = "h1"
[[jail]]
name = "a"
host = "h1"
role = "command"
command = "true"
addresses = { lan = "10.1.0.5" }
"#;
    let report = errors_of(src);
    assert_error_at(&report, "not a loopback address", "\"10.1.0.5\"");
}

#[test]
fn two_db_voters_without_a_witness_cannot_keep_a_majority() {
    let src = format!(
        r#"{HEAD}
[[jail]]
name = "db-1"
host = "h1"
role = "db"
addresses = {{ back = "127.20.0.1" }}
[[jail]]
name = "db-2"
host = "h2"
role = "db"
addresses = {{ back = "127.20.0.2" }}
"#
    );
    let report = errors_of(&src);
    assert_error_at(&report, "cannot keep a majority", "\"db\"");
    let msg = report
        .errors()
        .find(|d| d.message.contains("majority"))
        .map(|d| d.message.clone());
    assert!(
        msg.unwrap_or_default().contains("need 2 for a majority"),
        "{report}"
    );

    let with_witness = format!(
        "{src}[[jail]]\nname = \"w\"\nhost = \"h1\"\nrole = \"witness\"\naddresses = {{ front = \"127.10.0.9\" }}\n"
    );
    let (cluster, _) = parse(&with_witness, "t", &Capabilities::all()).expect("3 voters are fine");
    assert_eq!(
        cluster.jails.iter().filter(|j| j.role.is_voter()).count(),
        3
    );
}

#[test]
fn roles_not_built_in_need_a_command() {
    let src = format!(
        "{HEAD}[[jail]]\nname = \"x\"\nhost = \"h1\"\nrole = \"app\"\naddresses = {{ front = \"127.10.0.3\" }}\n"
    );
    let caps = Capabilities {
        builtin_roles: vec![],
        ..Capabilities::all()
    };
    let report = parse(&src, "t", &caps).expect_err("app is not built in");
    assert!(
        report.to_string().contains("app role is not built into"),
        "{report}"
    );
    assert!(
        parse(
            &src,
            "t",
            &Capabilities {
                builtin_roles: vec![Role::App],
                ..caps
            }
        )
        .is_ok()
    );
}

#[test]
fn wrong_types_and_missing_keys() {
    let src = r#"
[cluster]
zone = 5
[segments]
front = "127.10.0.0/24"
[[host]]
backend = "vm"
[[jail]]
name = "UPPER"
role = "command"
command = ["x"]
ports = [0, 70000, "x"]
health = { check = "udp", port = 8000 }
addresses = { front = "127.10.0.0" }
"#;
    let report = errors_of(src);
    assert_error_at(&report, "`zone` of [cluster] must be a string", "5");
    assert_error_at(&report, "missing the required key `name`", "[cluster]");
    assert_error_at(&report, "unknown backend \"vm\"", "\"vm\"");
    assert_error_at(&report, "not a valid name", "\"UPPER\"");
    assert_error_at(&report, "missing the required key `host`", "[[jail]]");
    assert_error_at(
        &report,
        "`command` of jail `UPPER` must be a string",
        "[\"x\"]",
    );
    assert_error_at(&report, "is 0, not a port", "0,");
    assert_error_at(&report, "is 70000, not a port", "70000");
    assert_error_at(&report, "unknown health check \"udp\"", "\"udp\"");
    assert_error_at(&report, "network or broadcast", "\"127.10.0.0\"");
}

#[test]
fn toml_syntax_errors_have_a_place() {
    let report = errors_of("[cluster]\nname = \"t\nzone = 1\n");
    assert_error_at(&report, "invalid TOML", "\nzone");
}

#[test]
fn role_sections_are_checked_by_their_role_and_kept_for_it() {
    fn check(source: &str, cluster: &citadel_spec::Cluster) -> Vec<citadel_spec::Diagnostic> {
        let at = source.find("colour").map(|i| i..i + 6);
        let n = cluster.sections.get("extra").map_or(0, |t| t.len());
        vec![citadel_spec::Diagnostic::error(
            at,
            format!("extra has {n} keys and a colour"),
        )]
    }
    let src = format!("{HEAD}[extra]\nsize = 3\ncolour = \"red\"\n");
    assert!(errors_of(&src).to_string().contains("unknown key `extra`"));
    let caps = Capabilities {
        sections: vec![("extra", check)],
        ..Capabilities::all()
    };
    let report = parse(&src, "test.toml", &caps).expect_err("the section check fails");
    assert_error_at(&report, "extra has 2 keys and a colour", "colour");
}

#[test]
fn host_addresses_and_links_are_checked() {
    let src = r#"
[cluster]
name = "t"
[segments]
front = "198.18.94.0/24"
[[host]]
name = "a"
backend = "netns"
addresses = { front = "198.18.94.2" }
links = { front = "eth1" }
[[host]]
name = "b"
backend = "netns"
addresses = { front = "198.18.95.3", back = "198.18.94.9" }
links = { front = "a very long interface name" }
[[host]]
name = "c"
addresses = { front = "127.0.0.9" }
[[jail]]
name = "j"
host = "a"
role = "command"
command = "true"
addresses = { front = "198.18.94.2" }
"#;
    let report = errors_of(src);
    assert_error_at(
        &report,
        "not a host address of segment `front`",
        "\"198.18.95.3\"",
    );
    assert_error_at(&report, "no segment named `back`", "\"198.18.94.9\"");
    assert_error_at(&report, "not a network interface name", "\"a very long");
    assert_error_at(&report, "is for the netns backend", "\"127.0.0.9\"");
    assert_error_at(
        &report,
        "also jail `j`'s address",
        "\"198.18.94.2\" }\nlinks",
    );

    let ok = src
        .replace("198.18.95.3", "198.18.94.3")
        .replace(", back = \"198.18.94.9\"", "")
        .replace("a very long interface name", "eth1")
        .replace("addresses = { front = \"127.0.0.9\" }\n", "")
        .replace("addresses = { front = \"198.18.94.2\" }\n\"#", "")
        .replace(
            "command = \"true\"\naddresses = { front = \"198.18.94.2\" }",
            "command = \"true\"\naddresses = { front = \"198.18.94.11\" }",
        );
    let (cluster, _) = parse(&ok, "ok.toml", &Capabilities::all()).expect("valid");
    let a = cluster.host("a").expect("host a");
    assert_eq!(a.links.get("front").map(String::as_str), Some("eth1"));
    let front = cluster.segment("front").expect("front");
    assert_eq!(
        a.bridge_address(front).map(|x| x.to_string()),
        Some("198.18.94.2".into())
    );
}

#[test]
fn a_hosts_agent_address_is_read_or_derived() {
    let src = r#"
[cluster]
name = "t"
[segments]
front = "198.18.94.0/24"
back = "198.18.95.0/24"
[[host]]
name = "a"
backend = "netns"
addresses = { back = "198.18.95.2", front = "198.18.94.2" }
[[host]]
name = "b"
agent = "192.0.2.7"
[[host]]
name = "c"
agent = "192.0.2.8:9443"
[[host]]
name = "d"
agent = "nowhere:7443"
[[jail]]
name = "j"
host = "a"
role = "command"
command = "true"
addresses = { front = "198.18.94.11" }
"#;
    assert_error_at(
        &errors_of(src),
        "agent \"nowhere:7443\" is not an address",
        "\"nowhere",
    );
    let ok = src.replace("[[host]]\nname = \"d\"\nagent = \"nowhere:7443\"\n", "");
    let (cluster, _) = parse(&ok, "ok.toml", &Capabilities::all()).expect("valid");
    let addr = |h: &str| {
        cluster
            .agent_addr(cluster.host(h).expect("host"))
            .map(|a| a.to_string())
    };
    // The host's own address on its first declared segment (front), not the first by name.
    assert_eq!(addr("a").as_deref(), Some("198.18.94.2:7443"));
    assert_eq!(addr("b").as_deref(), Some("192.0.2.7:7443"));
    assert_eq!(addr("c").as_deref(), Some("192.0.2.8:9443"));
}

#[test]
fn a_store_weight_is_positive_and_for_store_jails_only() {
    let src = format!(
        r#"{HEAD}
[[jail]]
name = "s1"
host = "h1"
role = "store"
addresses = {{ front = "127.10.0.5" }}
weight = 0

[[jail]]
name = "c1"
host = "h2"
role = "command"
command = "true"
addresses = {{ front = "127.10.0.6" }}
weight = 2
"#
    );
    let report = errors_of(&src);
    assert_error_at(&report, "weight must be more than 0", "0\n\n[[jail]]");
    assert_error_at(&report, "applies to store jails only", "2\n");
}

#[test]
fn a_store_weight_defaults_to_one() {
    let (cluster, _) = parse(BUILTIN, "builtin", &Capabilities::all()).expect("valid");
    let s = cluster.jail("store-1").expect("store-1");
    assert_eq!(s.store_weight(), 1.0);
    let src = format!(
        r#"{HEAD}
[[jail]]
name = "s1"
host = "h1"
role = "store"
addresses = {{ front = "127.10.0.5" }}
weight = 2.5
"#
    );
    let (cluster, _) = parse(&src, "t", &Capabilities::all()).expect("valid");
    assert_eq!(cluster.jail("s1").unwrap().store_weight(), 2.5);
}

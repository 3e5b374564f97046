//! The cluster file: one TOML file that describes a whole Citadel cluster — its segments,
//! hosts and jails — read into a checked model, with every problem reported at once.

mod diag;
mod model;
mod read;
pub mod units;
mod validate;

pub use diag::{Diagnostic, Report, Severity, line_col};
pub use model::*;
pub use validate::{Capabilities, SectionCheck};

/// The cluster `citadel up` runs when no file is given: the source design's diagram.
pub const BUILTIN: &str = include_str!("builtin.toml");
pub const BUILTIN_ORIGIN: &str = "<built-in cluster>";

/// Reads and checks a cluster file. `origin` names it in messages (usually its path).
/// Returns the cluster and its warnings, or a report of every problem found.
pub fn parse(source: &str, origin: &str, caps: &Capabilities) -> Result<(Cluster, Report), Report> {
    let mut diags = Vec::new();
    let (doc, syntax) = toml::de::DeTable::parse_recoverable(source);
    for e in &syntax {
        diags.push(Diagnostic::error(
            e.span(),
            format!("invalid TOML: {}", e.message()),
        ));
    }
    let doc = toml::Spanned::new(doc.span(), toml::de::DeValue::Table(doc.into_inner()));
    let names: Vec<&str> = caps.sections.iter().map(|(name, _)| *name).collect();
    let mut cluster = read::read_cluster(&doc, &names, &mut diags);
    if syntax.is_empty() {
        validate::validate(&cluster, caps, &mut diags);
        if let Ok(mut table) = toml::from_str::<toml::Table>(source) {
            for name in &names {
                if let Some(toml::Value::Table(section)) = table.remove(*name) {
                    cluster.sections.insert(name.to_string(), section);
                }
            }
        }
        for (_, check) in &caps.sections {
            diags.extend(check(source, &cluster));
        }
    }
    diags.sort_by_key(|d| d.span.as_ref().map_or(usize::MAX, |s| s.start));
    let report = Report {
        origin: origin.to_string(),
        source: source.to_string(),
        diagnostics: diags,
    };
    if report.has_errors() {
        Err(report)
    } else {
        Ok((cluster, report))
    }
}

/// Checks a cluster that was changed at run time (a clone or a restore added a jail).
pub fn recheck(cluster: &Cluster, caps: &Capabilities, origin: &str) -> Result<(), Report> {
    let mut diags = Vec::new();
    validate::validate(cluster, caps, &mut diags);
    let report = Report {
        origin: origin.to_string(),
        source: String::new(),
        diagnostics: diags,
    };
    if report.has_errors() {
        Err(report)
    } else {
        Ok(())
    }
}

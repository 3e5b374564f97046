//! The cluster's certificates on the operator's machine: `citadel init` makes the CA and the
//! operator's certificate in `DIR/pki/`, `citadel host add` issues a host its bundle.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use citadel_pki::{Bundle, Ca, Identity};
use clap::Subcommand;

use crate::output::done;

#[derive(Subcommand)]
pub enum HostVerb {
    /// Issue a host its certificate: a bundle file (CA, certificate, key) to copy to it.
    #[command(after_help = "Example:
  citadel host add server-1 192.168.1.12     writes ./pki/hosts/server-1.bundle")]
    Add {
        /// The host's name in the cluster file.
        name: String,
        /// The address its agent will listen on (in the certificate).
        addr: IpAddr,
        /// Where `citadel init` wrote the cluster file and `pki/`.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Replace an existing bundle for this host.
        #[arg(long)]
        force: bool,
    },
}

fn pki_dir(dir: &Path) -> PathBuf {
    dir.join("pki")
}

/// Writes a file readable by its owner only (keys), refusing to replace one unless `force`.
fn write_private(path: &Path, text: &str, force: bool) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).with_context(|| {
        if path.exists() {
            format!(
                "{} already exists; pass --force to replace it",
                path.display()
            )
        } else {
            format!("cannot write {}", path.display())
        }
    })?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `citadel init`'s second half: the cluster's CA and the operator's certificate, made once.
/// An existing CA is never replaced (every host's certificate hangs on it), even with
/// `--force`; returns what was written.
pub fn init_pki(dir: &Path, cluster: &str) -> anyhow::Result<Vec<PathBuf>> {
    let pki = pki_dir(dir);
    if pki.join("ca.pem").exists() {
        return Ok(Vec::new());
    }
    let ca = Ca::create(cluster)?;
    let user = std::env::var("USER").unwrap_or_else(|_| "admin".into());
    let user: String = user
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let op = ca.issue(&Identity::Operator(user), &[])?;
    let files = [
        ("ca.key", &ca.key_pem),
        ("ca.pem", &ca.cert_pem),
        ("operator.key", &op.key_pem),
        ("operator.pem", &op.cert_pem),
    ];
    let mut written = Vec::new();
    for (name, text) in files {
        let path = pki.join(name);
        write_private(&path, text, false)?;
        written.push(path);
    }
    Ok(written)
}

pub fn host(verb: HostVerb, json: bool) -> anyhow::Result<i32> {
    let HostVerb::Add {
        name,
        addr,
        dir,
        force,
    } = verb;
    let pki = pki_dir(&dir);
    let read = |f: &str| {
        std::fs::read_to_string(pki.join(f)).with_context(|| {
            format!(
                "no cluster CA at {} (made by `citadel init {}`)",
                pki.join(f).display(),
                dir.display()
            )
        })
    };
    let ca = Ca {
        cert_pem: read("ca.pem")?,
        key_pem: read("ca.key")?,
    };
    let bundle = Bundle::new(&ca, &name, &[addr])?;
    let path = pki.join("hosts").join(format!("{name}.bundle"));
    if path.exists() && !force {
        bail!(
            "{} already exists; pass --force to issue host `{name}` a new certificate",
            path.display()
        );
    }
    write_private(&path, &bundle.to_toml(), force)?;
    done(
        json,
        format!(
            "issued host `{name}` ({addr}) a certificate: {} — copy it to the host (it holds the host's private key)",
            path.display()
        ),
        serde_json::json!({"host": name, "addr": addr, "bundle": path}),
    );
    Ok(0)
}

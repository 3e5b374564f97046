//! Library errors.

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("config: {0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("tls: {0}")]
    Tls(String),
    #[error("bad request: {0}")]
    BadInput(String),
}

impl GateError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        GateError::Io {
            what: what.into(),
            source,
        }
    }
}

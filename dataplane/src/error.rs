//! Why a sidecar did not start, or why its stream to the zone control plane
//! ended. Each message names the flag, file or peer at fault, and carries
//! its cause in its text (the binary prints the message alone).

use std::path::PathBuf;

use common::pki::PkiError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag, the bootstrap file or a config is wrong; the message names
    /// it and what to fix.
    #[error("{0}")]
    Config(String),
    /// An address flag is not `host:port`; `what` names it.
    #[error("{what}: {source}")]
    Address {
        what: String,
        #[source]
        source: std::net::AddrParseError,
    },
    /// A name given in a flag is invalid.
    #[error(transparent)]
    Name(#[from] model::resource::FieldError),
    #[error("--admin-token-file: {0}")]
    AdminToken(#[source] common::telemetry::AdminTokenError),
    /// The dataplane (or gateway) token does not decode.
    #[error("the {kind} token: {source}")]
    Token {
        kind: &'static str,
        #[source]
        source: model::token::TokenError,
    },
    /// The token file is missing, unreadable, or open to other users.
    #[error("the {kind} token (--token-file): {source}")]
    TokenFile {
        kind: &'static str,
        #[source]
        source: model::fsutil::FsError,
    },
    /// A file or folder is missing, unreadable, or open to other users.
    #[error(transparent)]
    File(#[from] model::fsutil::FsError),
    /// Reading a file failed; `what` says which.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A listener could not bind its address (in use, or not ours).
    #[error(transparent)]
    Bind(#[from] common::bind::BindError),
    /// The policies of the bootstrap file at `path` do not compile.
    #[error("{path}: policies: {source}")]
    Policies {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },
    /// The kept state does not decode.
    #[error("{what} is corrupt; delete it: {source}")]
    Corrupt {
        what: String,
        #[source]
        source: prost::DecodeError,
    },
    /// A certificate, key or trust bundle is invalid; `what` names where
    /// it came from.
    #[error("{what}: {source}")]
    Certificate {
        what: String,
        #[source]
        source: PkiError,
    },
    /// A key or certificate could not be made or read.
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Tls(#[from] common::tls::TlsConfigError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// The stream to the zone control plane failed, was refused or closed.
    #[error("{0}")]
    Stream(String),
    /// The zone control plane sent config out of order.
    #[error(transparent)]
    Sync(#[from] common::sync::SyncError),
}

impl Error {
    /// An invalid certificate, key or trust bundle from `what`.
    pub(crate) fn certificate(what: String) -> impl FnOnce(PkiError) -> Self {
        move |source| Self::Certificate { what, source }
    }
}

/// A message that could not be queued on the stream (timed out, or the
/// stream closed).
impl<T> From<tokio::sync::mpsc::error::SendTimeoutError<T>> for Error {
    fn from(e: tokio::sync::mpsc::error::SendTimeoutError<T>) -> Self {
        Self::Stream(e.to_string())
    }
}

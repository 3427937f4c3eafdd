//! Why the zone control plane did not start or join, why a CA renewal was
//! not installed, or why the sync stream to the global ended. Each message
//! names the flag, file or peer at fault, and carries its cause in its text
//! (the binary prints the message alone).

use common::pki::PkiError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Flags or the data folder do not fit together; the message says
    /// what to do.
    #[error("{0}")]
    Config(String),
    #[error("--admin-token-file: {0}")]
    AdminToken(#[source] common::telemetry::AdminTokenError),
    #[error("--policy-dir: {0}")]
    PolicyDir(String),
    #[error("the zone token (--token-file): {0}")]
    TokenFile(#[source] model::fsutil::FsError),
    #[error("the zone token: {0}")]
    Token(#[source] model::token::TokenError),
    /// The data folder or a file in it is open to other users.
    #[error(transparent)]
    File(#[from] model::fsutil::FsError),
    /// Reading or writing a file in the data folder failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A file does not decode; `what` names it, and what to do.
    #[error("{what}: {source}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A listener could not bind its address (in use, or not ours).
    #[error(transparent)]
    Bind(#[from] common::bind::BindError),
    /// A certificate or key is invalid; `what` names it.
    #[error("{what}: {source}")]
    Certificate {
        what: &'static str,
        #[source]
        source: PkiError,
    },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Tls(#[from] common::tls::TlsConfigError),
    /// A renewed CA from the global does not answer this zone's request.
    #[error("{0}")]
    Renewal(String),
    /// The global refused, or the stream to it failed or closed.
    #[error("{0}")]
    Global(String),
    /// The global sent deltas out of order.
    #[error(transparent)]
    Sync(#[from] common::sync::SyncError),
    /// The registry is gone (shutting down).
    #[error(transparent)]
    Registry(#[from] tokio::sync::watch::error::RecvError),
}

impl Error {
    /// An invalid certificate or key, named by `what`.
    pub(crate) fn certificate(what: &'static str) -> impl FnOnce(PkiError) -> Self {
        move |source| Self::Certificate { what, source }
    }
}

/// A message that could not be queued on the stream (timed out, or the
/// stream closed).
impl<T> From<tokio::sync::mpsc::error::SendTimeoutError<T>> for Error {
    fn from(e: tokio::sync::mpsc::error::SendTimeoutError<T>) -> Self {
        Self::Global(e.to_string())
    }
}

//! Why the global control plane did not start. Each message names the
//! file, step or address at fault, and carries its cause in its text (the
//! binary prints the message alone).

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data folder or a file in it is unreadable, unwritable, or open
    /// to other users.
    #[error(transparent)]
    File(#[from] model::fsutil::FsError),
    /// Writing a file failed; the message names it.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A start-up step on the store failed; `what` names it.
    #[error("{what}: {source}")]
    Start {
        what: String,
        #[source]
        source: StoreError,
    },
    /// A drill left running by the previous process could not be ended.
    #[error("end a drill left running: {0}")]
    Drill(String),
    /// A listener could not bind its address (in use, or not ours).
    #[error(transparent)]
    Bind(#[from] common::bind::BindError),
    #[error("load mesh root CA from the store: {0}")]
    RootCa(#[source] common::pki::PkiError),
    #[error(transparent)]
    Pki(#[from] common::pki::PkiError),
    #[error(transparent)]
    Tls(#[from] common::tls::TlsConfigError),
    /// The stored token signing key is unusable.
    #[error(transparent)]
    Token(#[from] model::token::TokenError),
    /// A stored value that should be text is not.
    #[error(transparent)]
    Utf8(#[from] std::string::FromUtf8Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// A failed start-up step on the store, named by `what`.
    pub(crate) fn start(what: impl Into<String>) -> impl FnOnce(StoreError) -> Self {
        let what = what.into();
        move |source| Self::Start { what, source }
    }
}

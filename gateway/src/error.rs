//! Why a gateway did not start, could not install its identity, or could
//! not reach another zone's gateway. Each message names the flag, file or
//! peer at fault, and carries its cause in its text (the binary prints the
//! message alone).

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What the gateway shares with the sidecar: its flags, token, files,
    /// listeners and kept state.
    #[error(transparent)]
    Dataplane(#[from] dataplane::Error),
    /// A listener or the QUIC socket could not bind its address.
    #[error(transparent)]
    Bind(#[from] common::bind::BindError),
    /// The QUIC endpoint could not be set up on its socket.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] common::tls::TlsConfigError),
    #[error(transparent)]
    QuicTls(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error(transparent)]
    Connect(#[from] quinn::ConnectError),
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    /// No stream to another zone's gateway: the message names the zone or
    /// gateway, and why.
    #[error("{0}")]
    Remote(String),
}

//! A listener that could not bind its address: the one error every
//! component reports the same way at start-up.

use std::net::SocketAddr;

/// `what` names the listener (say `"bind admin"`), `addr` its address.
#[derive(Debug, thiserror::Error)]
#[error("{what} {addr}: {source}")]
pub struct BindError {
    pub what: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// For `map_err`: a bind failure of the listener `what` on `addr`.
pub fn failed(what: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> BindError {
    move |source| BindError { what, addr, source }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_message_names_the_listener_address_and_cause() {
        let e = super::failed("bind admin", "127.0.0.1:9".parse().unwrap())(std::io::Error::from(
            std::io::ErrorKind::AddrInUse,
        ));
        assert_eq!(e.to_string(), "bind admin 127.0.0.1:9: address in use");
    }
}

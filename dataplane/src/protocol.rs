//! What a proxy speaks: the app protocols it fronts, and the ALPN ids that
//! choose what a connection between sidecars (or to a gateway) carries.

use common::tls;

pub const ALPN_TCP: &[u8] = b"tern/tcp";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// Sidecar -> local gateway hop.
pub const ALPN_GATEWAY: &[u8] = b"tern/gw";

/// What a connection between sidecars carries, chosen by ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// HTTP/2: h2 and gRPC apps, many requests multiplexed per connection.
    H2,
    /// HTTP/1.1 apps: pooled keep-alive connections, no protocol translation.
    Http1,
    /// Opaque TCP.
    Tcp,
    /// The mTLS hop from a sidecar to its zone's gateway.
    Gateway,
}

impl Alpn {
    pub fn id(self) -> &'static [u8] {
        match self {
            Alpn::H2 => tls::ALPN_H2,
            Alpn::Http1 => ALPN_HTTP1,
            Alpn::Tcp => ALPN_TCP,
            Alpn::Gateway => ALPN_GATEWAY,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Tcp,
    /// Gateways only: another zone's gateways.
    Quic,
}

impl Protocol {
    /// What an inbound listener accepts for an app that speaks this: HTTP
    /// apps take HTTP/2 or HTTP/1.1 (the sidecar translates), a TCP app
    /// only opaque TCP. A caller cannot pick a mode that would hand its own
    /// bytes (and headers) to an HTTP app unparsed.
    pub fn inbound_alpns(self) -> &'static [&'static [u8]] {
        match self {
            Protocol::Http1 | Protocol::Http2 => &[tls::ALPN_H2, ALPN_HTTP1],
            Protocol::Tcp => &[ALPN_TCP],
            Protocol::Quic => &[],
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "http" | "http1" => Ok(Self::Http1),
            "http2" | "grpc" => Ok(Self::Http2),
            "tcp" => Ok(Self::Tcp),
            "quic" => Ok(Self::Quic),
            other => Err(format!(
                "unknown protocol {other:?}; use http, http2, grpc or tcp"
            )),
        }
    }
}

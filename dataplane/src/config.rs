//! The sidecar's flags, and the checks on them that clap cannot make.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::protocol::Protocol;
use crate::Error;

#[derive(Parser, Debug, Clone)]
#[command(name = "dataplane", version, about = "Tern sidecar proxy")]
pub struct Config {
    /// Run standalone from this bootstrap file (no control plane).
    #[arg(long, conflicts_with_all = ["cp_address", "token_file", "service", "outbound_ports"])]
    pub bootstrap: Option<PathBuf>,
    /// Zone control plane address, host:port.
    #[arg(long, env = "TERN_CP_ADDRESS")]
    pub cp_address: Option<String>,
    /// File holding the dataplane token.
    #[arg(long, env = "TERN_DATAPLANE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Service this proxy fronts.
    #[arg(long)]
    pub service: Option<String>,
    /// Instance name (unique in the zone). Defaults to SERVICE-ADDRESS-PORT.
    #[arg(long)]
    pub instance: Option<String>,
    /// IP other sidecars use to reach this proxy's inbound listener.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: std::net::IpAddr,
    /// Inbound mTLS listener.
    #[arg(long, default_value = "127.0.0.1:15006")]
    pub inbound: SocketAddr,
    /// The local app.
    #[arg(long)]
    pub app: Option<SocketAddr>,
    /// What the local app speaks: http, http2, grpc or tcp.
    #[arg(long, default_value = "http")]
    pub protocol: String,
    /// Host-routed outbound HTTP listener; empty to disable.
    #[arg(long, default_value = "127.0.0.1:15001")]
    pub outbound: String,
    /// Extra outbound listeners bound to one service: `SERVICE=ADDR`
    /// (HTTP) or `tcp:SERVICE=ADDR` (opaque TCP). Repeatable.
    #[arg(long = "outbound-port")]
    pub outbound_ports: Vec<String>,
    /// Labels of this instance, `key=value`. Repeatable.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// The services this app calls, comma-separated (repeatable). Its config
    /// then holds only these (and what their routes send to); a call to
    /// any other service is refused. Default: every service.
    #[arg(long = "reachable-services", value_delimiter = ',')]
    pub reachable_services: Vec<String>,
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// TCP apps: accept TLS 1.3 early data (0-RTT) from callers resuming a
    /// session, so a new connection's first bytes (up to 16 KiB) reach the
    /// app a round trip sooner (across zones, one round trip instead of
    /// two). Tickets are single-use, but an attacker on the network path
    /// between sidecars who replays a caller's hello first makes the caller
    /// send those bytes again on a new handshake: turn this on only for apps
    /// whose protocol tolerates its first bytes arriving twice.
    #[arg(long, env = "TERN_ACCEPT_EARLY_DATA")]
    pub accept_early_data: bool,
    /// File holding a bearer token for `/config_dump` and `PUT /log-level`
    /// on the admin port (closed to other users). Without one those answer
    /// only on a loopback admin address.
    #[arg(long, env = "TERN_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,
    /// Worker threads for the data path.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Per-attempt timeout of requests that may be retried, when no Retry
    /// policy sets `perTryTimeout`; a timed-out attempt is retried in the
    /// next locality.
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    pub per_try_timeout: Duration,
    /// How long a request waits for its response head, across all its
    /// attempts, when no Timeout policy sets `request` for its destination
    /// (also the limit on the local app's answer to an inbound request);
    /// 0 waits as long as the caller. Streaming bodies are not limited by
    /// it.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// An opaque TCP flow or upgraded connection (WebSocket) on which
    /// nothing moves either way this long is closed.
    #[arg(long, default_value = "1h", value_parser = positive_duration)]
    pub tcp_idle_timeout: Duration,
    /// Most header lines an HTTP/1.1 request or response may have, on every
    /// hop. A request over it gets 431; a response over it, a 502 that
    /// names the limit (the endpoint is not ejected).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(8..=10_000))]
    pub max_headers: u32,
    /// Largest HTTP/2 header block (decoded; name + value + 32 bytes per
    /// field), on every hop.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    pub max_header_bytes: u32,
    /// How often this zone's gateways (the paths to other zones) are
    /// probed (TCP connect); 0 disables. Other sidecars are never probed:
    /// each checks its own app (HealthCheck policy).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,
    /// On SIGTERM: deregister, keep serving this long, then exit.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Keep the last certificate, trust and config here (a 0700 folder),
    /// so a restart while the zone control plane is down still serves.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The folder an AccessLog policy with `to: file` writes in (the policy
    /// names only the file). Without it, such a policy writes to stdout.
    #[arg(long)]
    pub access_log_dir: Option<PathBuf>,
    #[arg(long)]
    pub json_logs: bool,
}

/// What a sidecar listens on, from its flags or its bootstrap file.
pub(crate) struct Listeners {
    /// Listen address, app address, app protocol.
    pub inbound: Option<(SocketAddr, SocketAddr, Protocol)>,
    /// Listen address, fixed destination service (else by Host), protocol.
    pub outbound: Vec<(SocketAddr, Option<String>, Protocol)>,
}

/// A duration above zero (flag value parser).
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be more than 0".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A byte size: `65536`, `64KiB` or `1MiB`.
pub(crate) fn parse_size(s: &str) -> Result<u32, String> {
    let (n, mult) = if let Some(n) = s.strip_suffix("KiB") {
        (n, 1024)
    } else if let Some(n) = s.strip_suffix("MiB") {
        (n, 1024 * 1024)
    } else {
        (s, 1)
    };
    n.trim()
        .parse::<u32>()
        .ok()
        .and_then(|v| v.checked_mul(mult))
        .filter(|v| (1024..=16 * 1024 * 1024).contains(v))
        .ok_or_else(|| format!("{s:?}: expected a size from 1KiB to 16MiB, like 65536 or 64KiB"))
}

/// An `--outbound-port` value: `SERVICE=ADDR`, or `tcp:SERVICE=ADDR`.
pub(crate) fn parse_outbound_port(
    s: &str,
) -> Result<(SocketAddr, Option<String>, Protocol), Error> {
    let (proto, rest) = match s.strip_prefix("tcp:") {
        Some(r) => (Protocol::Tcp, r),
        None => (Protocol::Http1, s),
    };
    let (svc, addr) = rest.split_once('=').ok_or_else(|| {
        Error::Config(format!(
            "--outbound-port {s:?}: expected SERVICE=ADDR or tcp:SERVICE=ADDR"
        ))
    })?;
    let addr: SocketAddr = addr.parse().map_err(|source| Error::Address {
        what: format!("--outbound-port {s:?}: {addr:?} is not host:port"),
        source,
    })?;
    Ok((addr, Some(svc.to_string()), proto))
}

/// `--accept-early-data` is for opaque TCP apps; an HTTP app's callers
/// pool their connections and never send early data.
pub(crate) fn early_data_needs_tcp(on: bool, app: Protocol) -> Result<(), Error> {
    if on && app != Protocol::Tcp {
        return Err(Error::Config(format!(
            "--accept-early-data applies to TCP apps only (this app speaks {app:?}); drop the flag or start the sidecar with --protocol tcp"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // --accept-early-data on an HTTP app is refused, naming the fix.
    #[test]
    fn early_data_is_refused_for_http_apps() {
        assert!(early_data_needs_tcp(true, Protocol::Tcp).is_ok());
        assert!(early_data_needs_tcp(false, Protocol::Http1).is_ok());
        let e = early_data_needs_tcp(true, Protocol::Http2)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("TCP apps only") && e.contains("--protocol tcp"),
            "{e}"
        );
    }
}

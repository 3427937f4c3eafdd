//! The proxy's dynamic state: its identity and TLS configs, and the
//! clusters it routes to. Both are swapped atomically (ArcSwap); requests in
//! flight keep the version they started with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use common::ident::SpiffeId;
use common::rustls::{ClientConfig, ServerConfig};
use common::tls::{self, Expect, Identity, SpiffeServerVerifier};
use proto::v1 as pb;

pub const ALPN_TCP: &[u8] = b"tern/tcp";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// What a connection between sidecars carries, chosen by ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// HTTP/2: h2 and gRPC apps, many requests multiplexed per connection.
    H2,
    /// HTTP/1.1 apps: pooled keep-alive connections, no protocol translation.
    Http1,
    /// Opaque TCP.
    Tcp,
}

impl Alpn {
    pub fn id(self) -> &'static [u8] {
        match self {
            Alpn::H2 => tls::ALPN_H2,
            Alpn::Http1 => ALPN_HTTP1,
            Alpn::Tcp => ALPN_TCP,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Tcp,
}

impl Protocol {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "http" | "http1" => Ok(Self::Http1),
            "http2" | "grpc" => Ok(Self::Http2),
            "tcp" => Ok(Self::Tcp),
            other => Err(format!(
                "unknown protocol {other:?}; use http, http2, grpc or tcp"
            )),
        }
    }
}

/// Identity plus the rustls configs built from it.
pub struct Tls {
    pub ident: Arc<Identity>,
    pub server: Arc<ServerConfig>,
    clients: Mutex<HashMap<(SpiffeId, Alpn), Arc<ClientConfig>>>,
}

impl Tls {
    pub fn new(ident: Identity, trust_domain: &str) -> Result<Self, tls::TlsConfigError> {
        let server =
            tls::server_config_mtls(&ident, trust_domain, &[tls::ALPN_H2, ALPN_HTTP1, ALPN_TCP])?;
        Ok(Self {
            ident: Arc::new(ident),
            server: Arc::new(server),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Client config that presents our identity and requires `expect`.
    pub fn client_for(
        &self,
        expect: &SpiffeId,
        alpn: Alpn,
    ) -> Result<Arc<ClientConfig>, tls::TlsConfigError> {
        let mut g = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = g.get(&(expect.clone(), alpn)) {
            return Ok(c.clone());
        }
        let verifier =
            SpiffeServerVerifier::new(self.ident.root_store(), Expect::Exact(expect.clone()));
        let c = Arc::new(tls::client_config(
            Some(&self.ident),
            Arc::new(verifier),
            &[alpn.id()],
        )?);
        g.insert((expect.clone(), alpn), c.clone());
        Ok(c)
    }
}

#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `addr` as a URI authority, built once.
    pub authority: http::uri::Authority,
    pub identity: SpiffeId,
    pub zone: String,
    pub region: String,
    /// Passive health: ejected until this many ms after `epoch()`.
    ejected_until: AtomicU64,
}

fn epoch() -> Instant {
    static E: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl Endpoint {
    pub fn ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms()
    }
    /// Outlier detection: stop picking this endpoint for a while.
    pub fn eject(&self, for_: Duration) {
        self.ejected_until
            .store(now_ms() + for_.as_millis() as u64, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct Cluster {
    pub service: String,
    pub protocol: Protocol,
    pub endpoints: Vec<Arc<Endpoint>>,
    rr: AtomicUsize,
}

impl Cluster {
    /// Round robin over endpoints that are not ejected and not in `tried`.
    /// When every endpoint is ejected, ejection is ignored (panic mode).
    pub fn pick(&self, tried: &[SocketAddr]) -> Option<Arc<Endpoint>> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        let candidates = || {
            (0..n)
                .map(|i| &self.endpoints[(start + i) % n])
                .filter(|e| !tried.contains(&e.addr))
        };
        candidates()
            .find(|e| !e.ejected())
            .or_else(|| candidates().next())
            .cloned()
    }
}

#[derive(Default, Debug)]
pub struct Clusters {
    pub by_service: HashMap<String, Arc<Cluster>>,
    pub version: u64,
}

impl Clusters {
    /// Build from config, keeping endpoint health from `old`.
    pub fn build(cfg: &[pb::Cluster], old: &Clusters, version: u64) -> Result<Self, String> {
        let mut by_service = HashMap::new();
        let known: HashMap<(SocketAddr, &SpiffeId), &Arc<Endpoint>> = old
            .by_service
            .values()
            .flat_map(|c| c.endpoints.iter())
            .map(|e| ((e.addr, &e.identity), e))
            .collect();
        for c in cfg {
            let protocol =
                Protocol::parse(&c.protocol).map_err(|e| format!("cluster {}: {e}", c.service))?;
            let mut endpoints = Vec::new();
            for e in c.endpoints.iter().filter(|e| e.healthy) {
                let ip: std::net::IpAddr = e.address.parse().map_err(|_| {
                    format!(
                        "cluster {}: bad endpoint address {:?}",
                        c.service, e.address
                    )
                })?;
                let port = u16::try_from(e.port)
                    .map_err(|_| format!("cluster {}: bad port {}", c.service, e.port))?;
                let addr = SocketAddr::new(ip, port);
                let identity = SpiffeId::parse(&e.identity)
                    .map_err(|x| format!("cluster {}: {x}", c.service))?;
                let ep = match known.get(&(addr, &identity)) {
                    Some(old) => (*old).clone(),
                    None => Arc::new(Endpoint {
                        addr,
                        authority: addr
                            .to_string()
                            .parse()
                            .map_err(|_| format!("bad address {addr}"))?,
                        identity,
                        zone: e.zone.clone(),
                        region: e.region.clone(),
                        ejected_until: AtomicU64::new(0),
                    }),
                };
                endpoints.push(ep);
            }
            by_service.insert(
                c.service.clone(),
                Arc::new(Cluster {
                    service: c.service.clone(),
                    protocol,
                    endpoints,
                    rr: AtomicUsize::new(0),
                }),
            );
        }
        Ok(Self {
            by_service,
            version,
        })
    }

    /// Expected identity per endpoint address, for the connector.
    pub fn identities(&self) -> HashMap<SocketAddr, SpiffeId> {
        self.by_service
            .values()
            .flat_map(|c| c.endpoints.iter())
            .map(|e| (e.addr, e.identity.clone()))
            .collect()
    }

    pub fn dump(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for (name, c) in &self.by_service {
            out.insert(
                name.clone(),
                serde_json::json!({
                    "protocol": format!("{:?}", c.protocol),
                    "endpoints": c.endpoints.iter().map(|e| serde_json::json!({
                        "address": e.addr.to_string(),
                        "identity": e.identity.to_string(),
                        "zone": e.zone, "region": e.region,
                        "ejected": e.ejected(),
                    })).collect::<Vec<_>>(),
                }),
            );
        }
        serde_json::Value::Object(out)
    }
}

/// What the data path reads on every request or connection.
pub struct Shared {
    pub tls: ArcSwapOption<Tls>,
    pub clusters: ArcSwap<Clusters>,
    pub identities: ArcSwap<HashMap<SocketAddr, SpiffeId>>,
    pub trust_domain: ArcSwap<String>,
}

impl Shared {
    pub fn new(trust_domain: &str) -> Self {
        Self {
            tls: ArcSwapOption::empty(),
            clusters: ArcSwap::from_pointee(Clusters::default()),
            identities: ArcSwap::from_pointee(HashMap::new()),
            trust_domain: ArcSwap::from_pointee(trust_domain.to_string()),
        }
    }

    pub fn set_identity(&self, ident: Identity) -> Result<(), tls::TlsConfigError> {
        let td = self.trust_domain.load();
        let t = Tls::new(ident, &td)?;
        tracing::info!(id = %t.ident.id, not_after = %humantime::format_rfc3339_seconds(t.ident.not_after), "workload certificate installed");
        self.tls.store(Some(Arc::new(t)));
        Ok(())
    }

    pub fn apply(&self, cfg: &[pb::Cluster], version: u64) -> Result<(), String> {
        let new = Clusters::build(cfg, &self.clusters.load(), version)?;
        self.identities.store(Arc::new(new.identities()));
        self.clusters.store(Arc::new(new));
        Ok(())
    }
}

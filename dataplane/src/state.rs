//! The proxy's dynamic state: its identity and TLS configs, and the
//! clusters it routes to. Both are swapped atomically (ArcSwap); requests in
//! flight keep the version they started with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use common::ident::SpiffeId;
use common::rustls::{ClientConfig, ServerConfig};
use common::tls::{self, Expect, Identity, SpiffeServerVerifier};
use common::trust::TrustPolicy;
use proto::v1 as pb;

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

/// Identity and trust, plus the rustls configs built from them.
pub struct Tls {
    pub ident: Arc<Identity>,
    pub policy: Arc<TrustPolicy>,
    pub server: Arc<ServerConfig>,
    inbound: Protocol,
    clients: Mutex<HashMap<(SpiffeId, Alpn), Arc<ClientConfig>>>,
}

impl Tls {
    pub fn new(
        ident: Arc<Identity>,
        policy: Arc<TrustPolicy>,
        inbound: Protocol,
    ) -> Result<Self, tls::TlsConfigError> {
        let server = tls::server_config_mtls(&ident, policy.clone(), inbound.inbound_alpns())?;
        Ok(Self {
            ident,
            policy,
            server: Arc::new(server),
            inbound,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The ALPN ids the inbound listener accepts.
    pub fn inbound_alpns(&self) -> &'static [&'static [u8]] {
        self.inbound.inbound_alpns()
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
            SpiffeServerVerifier::new(self.policy.clone(), Expect::Exact(expect.clone()));
        let c = Arc::new(tls::client_config(
            Some(&self.ident),
            Arc::new(verifier),
            &[alpn.id()],
        )?);
        g.insert((expect.clone(), alpn), c.clone());
        Ok(c)
    }
}

/// Where a connection to an endpoint goes and whom it must reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The TCP address dialed: the endpoint's sidecar, or a local gateway.
    pub addr: SocketAddr,
    /// The SPIFFE ID the end-to-end mTLS session must reach.
    pub identity: SpiffeId,
    /// Set when the endpoint is another zone reached through a local gateway.
    pub via: Option<Via>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    pub dest_zone: String,
    pub service: String,
}

#[derive(Debug)]
pub struct Endpoint {
    pub target: Arc<Target>,
    /// Unique per target, used as the URI authority, so pooled connections
    /// never mix targets (one gateway address carries many zones/services).
    pub authority: http::uri::Authority,
    pub zone: String,
    pub region: String,
    /// Locality tier: 0 own zone, 1 own region, 2.. other regions.
    pub priority: u32,
    pub weight: u32,
    /// Passive health: ejected until this many ms after `epoch()`.
    ejected_until: AtomicU64,
    /// Active health: the last probe's result.
    probe_ok: AtomicBool,
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
    pub fn available(&self) -> bool {
        self.probe_ok.load(Ordering::Relaxed) && !self.ejected()
    }
    /// Record an active probe. A recovery clears any ejection, so a
    /// restored endpoint gets traffic back within one probe interval.
    pub fn set_probe(&self, ok: bool) {
        let was = self.probe_ok.swap(ok, Ordering::Relaxed);
        if ok && !was {
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }
}

/// How much load a tier may take per unit of health, as in Envoy: a tier
/// keeps all traffic until fewer than 1/1.4 (~71%) of its weight is healthy,
/// then spills the rest over to the next tier in proportion.
pub const OVERPROVISIONING: f64 = 1.4;

#[derive(Debug)]
pub struct Cluster {
    pub service: String,
    pub protocol: Protocol,
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Endpoints grouped by priority, lowest (closest) first.
    pub tiers: Vec<Vec<Arc<Endpoint>>>,
    /// Per tier: whether it holds gateway paths (else the fast path applies).
    tier_has_via: Vec<bool>,
    rng: AtomicU64,
}

/// A pick: the endpoint, and the index of its tier.
pub type Pick = (Arc<Endpoint>, usize);

impl Cluster {
    fn next_rand(&self) -> f64 {
        // xorshift64*, lock-free; quality is ample for load spreading.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A tier's endpoints grouped into destinations: a local endpoint is its
    /// own group; a remote zone is one group whose members are the paths to
    /// it through each local gateway. Health and weight count groups, so a
    /// dead gateway does not make a healthy zone look half down.
    fn groups<'a>(
        tier: &'a [Arc<Endpoint>],
        tried: &[Arc<Endpoint>],
    ) -> Vec<(u64, Vec<&'a Arc<Endpoint>>, bool)> {
        type Group<'a> = (Option<&'a str>, u64, Vec<&'a Arc<Endpoint>>, bool);
        let mut out: Vec<Group<'a>> = Vec::new();
        for e in tier {
            let key = e.target.via.as_ref().map(|v| v.dest_zone.as_str());
            let ok = e.available() && !tried.iter().any(|x| Arc::ptr_eq(x, e));
            let slot = match key {
                Some(k) => out.iter_mut().position(|g| g.0 == Some(k)),
                None => None,
            };
            match slot {
                Some(i) => {
                    if ok {
                        out[i].2.push(e);
                    }
                    out[i].3 |= ok;
                }
                None => out.push((
                    key,
                    e.weight.max(1) as u64,
                    if ok { vec![e] } else { vec![] },
                    ok,
                )),
            }
        }
        out.into_iter().map(|(_, w, m, ok)| (w, m, ok)).collect()
    }

    /// Share of traffic each tier takes (sums to 1 when anything is up).
    pub fn tier_loads(&self, tried: &[Arc<Endpoint>], min_tier: usize) -> Vec<f64> {
        let mut remaining = 1.0f64;
        self.tiers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if i < min_tier {
                    return 0.0;
                }
                let (total, healthy) = if self.tier_has_via[i] {
                    let groups = Self::groups(t, tried);
                    (
                        groups.iter().map(|g| g.0).sum::<u64>(),
                        groups.iter().filter(|g| g.2).map(|g| g.0).sum::<u64>(),
                    )
                } else {
                    // Local endpoints only: no allocation on the hot path.
                    t.iter().fold((0u64, 0u64), |(tot, ok), e| {
                        let w = e.weight.max(1) as u64;
                        let up = e.available() && !tried.iter().any(|x| Arc::ptr_eq(x, e));
                        (tot + w, ok + if up { w } else { 0 })
                    })
                };
                let frac = if total == 0 {
                    0.0
                } else {
                    healthy as f64 / total as f64
                };
                let load = (frac * OVERPROVISIONING).min(remaining);
                remaining -= load;
                load
            })
            .collect()
    }

    /// Pick an endpoint: a tier by locality and health, then a destination
    /// in it by weight, then one of its paths. Endpoints in `tried` and tiers
    /// before `min_tier` are skipped. When nothing is available, any untried
    /// endpoint is used (panic mode) rather than failing outright.
    pub fn pick(&self, tried: &[Arc<Endpoint>], min_tier: usize) -> Option<Pick> {
        let loads = self.tier_loads(tried, min_tier);
        let sum: f64 = loads.iter().sum();
        let untried = |e: &&Arc<Endpoint>| !tried.iter().any(|x| Arc::ptr_eq(x, e));
        if sum <= 0.0 {
            return self
                .tiers
                .iter()
                .enumerate()
                .skip(min_tier)
                .find_map(|(i, t)| t.iter().find(untried).map(|e| (e.clone(), i)))
                .or_else(|| {
                    self.tiers
                        .iter()
                        .enumerate()
                        .find_map(|(i, t)| t.iter().find(untried).map(|e| (e.clone(), i)))
                });
        }
        let mut r = self.next_rand() * sum;
        let mut tier = loads.len() - 1;
        for (i, l) in loads.iter().enumerate() {
            if *l > 0.0 && r < *l {
                tier = i;
                break;
            }
            r -= l;
        }
        while loads[tier] <= 0.0 && tier > 0 {
            tier -= 1;
        }
        if !self.tier_has_via[tier] {
            let up = |e: &&Arc<Endpoint>| e.available() && !tried.iter().any(|x| Arc::ptr_eq(x, e));
            let total: u64 = self.tiers[tier]
                .iter()
                .filter(up)
                .map(|e| e.weight.max(1) as u64)
                .sum();
            let mut x = (self.next_rand() * total as f64) as u64;
            let mut last = None;
            for e in self.tiers[tier].iter().filter(up) {
                let w = e.weight.max(1) as u64;
                if x < w {
                    return Some((e.clone(), tier));
                }
                x -= w;
                last = Some(e);
            }
            return last.map(|e| (e.clone(), tier));
        }
        let groups: Vec<(u64, Vec<&Arc<Endpoint>>, bool)> = Self::groups(&self.tiers[tier], tried)
            .into_iter()
            .filter(|g| g.2)
            .collect();
        let total: u64 = groups.iter().map(|g| g.0).sum();
        let mut x = (self.next_rand() * total as f64) as u64;
        let mut chosen = groups.last()?;
        for g in &groups {
            if x < g.0 {
                chosen = g;
                break;
            }
            x -= g.0;
        }
        let paths = &chosen.1;
        let i = (self.next_rand() * paths.len() as f64) as usize;
        paths
            .get(i.min(paths.len() - 1))
            .map(|e| ((*e).clone(), tier))
    }
}

#[derive(Default, Debug)]
pub struct Clusters {
    pub by_service: HashMap<String, Arc<Cluster>>,
    pub version: u64,
}

fn authority_for(addr: SocketAddr, via: &Option<Via>) -> Result<http::uri::Authority, String> {
    let s = match via {
        None => addr.to_string(),
        Some(v) => {
            let ip = addr.ip().to_string().replace([':', '.'], "-");
            format!("{}.{}.gw-{ip}:{}", v.service, v.dest_zone, addr.port())
        }
    };
    s.parse()
        .map_err(|_| format!("cannot form an authority from {s:?}"))
}

impl Clusters {
    /// Build from config, keeping endpoint health from `old`.
    pub fn build(cfg: &[pb::Cluster], old: &Clusters, version: u64) -> Result<Self, String> {
        let mut by_service = HashMap::new();
        let known: HashMap<(&str, &SpiffeId), &Arc<Endpoint>> = old
            .by_service
            .values()
            .flat_map(|c| c.endpoints.iter())
            .map(|e| ((e.authority.as_str(), &e.target.identity), e))
            .collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ version;
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
                let via = e.via_gateway.then(|| Via {
                    dest_zone: e.zone.clone(),
                    service: c.service.clone(),
                });
                let authority = authority_for(addr, &via)?;
                let ep = match known.get(&(authority.as_str(), &identity)) {
                    Some(old) if old.priority == e.priority && old.weight == e.weight.max(1) => {
                        (*old).clone()
                    }
                    _ => Arc::new(Endpoint {
                        target: Arc::new(Target {
                            addr,
                            identity,
                            via,
                        }),
                        authority,
                        zone: e.zone.clone(),
                        region: e.region.clone(),
                        priority: e.priority,
                        weight: e.weight.max(1),
                        ejected_until: AtomicU64::new(0),
                        probe_ok: AtomicBool::new(true),
                    }),
                };
                endpoints.push(ep);
            }
            let mut prios: Vec<u32> = endpoints.iter().map(|e| e.priority).collect();
            prios.sort_unstable();
            prios.dedup();
            let tiers: Vec<Vec<Arc<Endpoint>>> = prios
                .iter()
                .map(|p| {
                    endpoints
                        .iter()
                        .filter(|e| e.priority == *p)
                        .cloned()
                        .collect()
                })
                .collect();
            let tier_has_via = tiers
                .iter()
                .map(|t| t.iter().any(|e| e.target.via.is_some()))
                .collect();
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            by_service.insert(
                c.service.clone(),
                Arc::new(Cluster {
                    service: c.service.clone(),
                    protocol,
                    endpoints,
                    tiers,
                    tier_has_via,
                    rng: AtomicU64::new(seed | 1),
                }),
            );
        }
        Ok(Self {
            by_service,
            version,
        })
    }

    /// Target per authority, for the connector.
    pub fn targets(&self) -> HashMap<String, Arc<Target>> {
        self.by_service
            .values()
            .flat_map(|c| c.endpoints.iter())
            .map(|e| (e.authority.to_string(), e.target.clone()))
            .collect()
    }

    pub fn dump(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for (name, c) in &self.by_service {
            out.insert(
                name.clone(),
                serde_json::json!({
                    "protocol": format!("{:?}", c.protocol),
                    "tierLoads": c.tier_loads(&[], 0),
                    "endpoints": c.endpoints.iter().map(|e| serde_json::json!({
                        "address": e.target.addr.to_string(),
                        "authority": e.authority.to_string(),
                        "identity": e.target.identity.to_string(),
                        "zone": e.zone, "region": e.region,
                        "priority": e.priority, "weight": e.weight,
                        "viaGateway": e.target.via.is_some(),
                        "ejected": e.ejected(),
                        "probeOk": e.probe_ok.load(Ordering::Relaxed),
                    })).collect::<Vec<_>>(),
                }),
            );
        }
        serde_json::Value::Object(out)
    }
}

/// Pre-handshaked mTLS connections to this zone's gateways, taken by new
/// cross-zone flows and refilled in the background. Spares older than
/// [`SPARE_MAX_AGE`] are dropped (the gateway closes idle ones later).
#[derive(Default)]
pub struct Spares {
    pool: Mutex<HashMap<SocketAddr, Vec<(Instant, SpareConn)>>>,
    refilling: Mutex<std::collections::HashSet<SocketAddr>>,
}

pub type SpareConn = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;
pub const SPARES_PER_GATEWAY: usize = 2;
pub const SPARE_MAX_AGE: Duration = Duration::from_secs(20);

impl Spares {
    pub fn take(&self, addr: SocketAddr) -> Option<SpareConn> {
        let mut g = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let v = g.get_mut(&addr)?;
        while let Some((born, c)) = v.pop() {
            if born.elapsed() < SPARE_MAX_AGE {
                return Some(c);
            }
        }
        None
    }

    fn count(&self, addr: SocketAddr) -> usize {
        let mut g = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let v = g.entry(addr).or_default();
        v.retain(|(born, _)| born.elapsed() < SPARE_MAX_AGE);
        v.len()
    }

    /// Top the pool for `addr` up in the background (one refill at a time).
    pub fn refill(&self, shared: Arc<Shared>, addr: SocketAddr) {
        if !self
            .refilling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr)
        {
            return;
        }
        tokio::spawn(async move {
            while shared.spares.count(addr) < SPARES_PER_GATEWAY {
                match crate::proxy::dial_gateway(&shared, addr).await {
                    Ok(c) => shared
                        .spares
                        .pool
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(addr)
                        .or_default()
                        .push((Instant::now(), c)),
                    Err(_) => break,
                }
            }
            shared
                .spares
                .refilling
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&addr);
        });
    }
}

/// What the data path reads on every request or connection.
pub struct Shared {
    pub spares: Spares,
    /// Built once both an identity and a trust policy are known; until then
    /// the proxy fails closed.
    pub tls: ArcSwapOption<Tls>,
    identity: ArcSwapOption<Identity>,
    trust: ArcSwapOption<TrustPolicy>,
    /// Serializes rebuilds of `tls`.
    rebuild: Mutex<()>,
    /// Bumped whenever `tls` is rebuilt (new identity or new trust).
    pub identity_changed: tokio::sync::watch::Sender<u64>,
    /// Open connections and their peers, re-checked when trust changes.
    pub live: crate::live::LiveConns,
    pub clusters: ArcSwap<Clusters>,
    pub targets: ArcSwap<HashMap<String, Arc<Target>>>,
    /// What the local app speaks, which fixes what the inbound accepts.
    pub inbound: Protocol,
}

impl Shared {
    pub fn new(inbound: Protocol) -> Self {
        Self {
            inbound,
            spares: Spares::default(),
            tls: ArcSwapOption::empty(),
            identity: ArcSwapOption::empty(),
            trust: ArcSwapOption::empty(),
            rebuild: Mutex::new(()),
            identity_changed: tokio::sync::watch::channel(0).0,
            live: Default::default(),
            clusters: ArcSwap::from_pointee(Clusters::default()),
            targets: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    pub fn set_identity(&self, ident: Identity) -> Result<(), tls::TlsConfigError> {
        tracing::info!(id = %ident.id, not_after = %humantime::format_rfc3339_seconds(ident.not_after), "workload certificate installed");
        let _g = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        self.identity.store(Some(Arc::new(ident)));
        self.rebuild_tls()
    }

    /// Install a new trust policy; open connections whose peer it refuses
    /// are cut.
    pub fn set_trust(&self, policy: TrustPolicy) -> Result<(), tls::TlsConfigError> {
        let _g = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        let policy = Arc::new(policy);
        self.trust.store(Some(policy.clone()));
        self.rebuild_tls()?;
        let cut = self.live.sweep(&policy);
        if cut > 0 {
            tracing::warn!(
                connections = cut,
                "closed connections whose peer is no longer trusted"
            );
        }
        Ok(())
    }

    pub fn trust(&self) -> Option<Arc<TrustPolicy>> {
        self.trust.load_full()
    }

    fn rebuild_tls(&self) -> Result<(), tls::TlsConfigError> {
        if let (Some(ident), Some(policy)) = (self.identity.load_full(), self.trust.load_full()) {
            self.tls
                .store(Some(Arc::new(Tls::new(ident, policy, self.inbound)?)));
            self.identity_changed.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    pub fn apply(&self, cfg: &[pb::Cluster], version: u64) -> Result<(), String> {
        let new = Clusters::build(cfg, &self.clusters.load(), version)?;
        self.targets.store(Arc::new(new.targets()));
        self.clusters.store(Arc::new(new));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: &str, zone: &str, prio: u32, weight: u32, via: bool) -> pb::Endpoint {
        pb::Endpoint {
            address: ip.into(),
            port: 15006,
            healthy: true,
            zone: zone.into(),
            identity: format!("spiffe://tern/zone/{zone}/svc/api"),
            weight,
            via_gateway: via,
            priority: prio,
            ..Default::default()
        }
    }

    fn cluster() -> Arc<Cluster> {
        let cfg = vec![pb::Cluster {
            service: "api".into(),
            protocol: "http".into(),
            endpoints: vec![
                ep("127.0.0.1", "z1", 0, 1, false),
                ep("127.0.0.2", "z1", 0, 1, false),
                ep("127.0.0.5", "z2", 1, 4, true),
                ep("127.0.0.5", "z3", 2, 1, true),
            ],
        }];
        Clusters::build(&cfg, &Clusters::default(), 1)
            .unwrap()
            .by_service["api"]
            .clone()
    }

    fn zone_shares(c: &Cluster, n: usize) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for _ in 0..n {
            let (e, _) = c.pick(&[], 0).unwrap();
            *m.entry(e.zone.clone()).or_default() += 1;
        }
        m
    }

    #[test]
    fn local_zone_keeps_all_traffic_while_healthy() {
        let c = cluster();
        assert_eq!(c.tiers.len(), 3);
        // One gateway address carries two zones: distinct authorities.
        assert_ne!(c.tiers[1][0].authority, c.tiers[2][0].authority);
        let s = zone_shares(&c, 2000);
        assert_eq!(s.get("z1"), Some(&2000), "{s:?}");
    }

    #[test]
    fn spills_over_in_proportion_then_fails_over_whole() {
        let c = cluster();
        c.tiers[0][0].eject(Duration::from_secs(60));
        // 50% healthy * 1.4 = 70% stays local, 30% spills to the region.
        let s = zone_shares(&c, 4000);
        let local = *s.get("z1").unwrap() as f64 / 4000.0;
        assert!((0.64..0.76).contains(&local), "local share {local}: {s:?}");
        assert!(
            !s.contains_key("z3"),
            "the next region is not needed: {s:?}"
        );
        c.tiers[0][1].set_probe(false);
        let s = zone_shares(&c, 1000);
        assert_eq!(s.get("z2"), Some(&1000), "{s:?}");
        c.tiers[1][0].eject(Duration::from_secs(60));
        let s = zone_shares(&c, 1000);
        assert_eq!(s.get("z3"), Some(&1000), "{s:?}");
        // A recovered probe clears the ejection.
        c.tiers[0][0].set_probe(false);
        c.tiers[0][0].set_probe(true);
        assert!(c.tiers[0][0].available());
    }

    #[test]
    fn a_dead_gateway_path_does_not_halve_a_remote_zone() {
        let cfg = vec![pb::Cluster {
            service: "api".into(),
            protocol: "http".into(),
            endpoints: vec![
                ep("127.0.0.5", "z2", 1, 3, true),
                ep("127.0.0.6", "z2", 1, 3, true),
                ep("127.0.0.5", "z3", 2, 1, true),
            ],
        }];
        let c = Clusters::build(&cfg, &Clusters::default(), 1)
            .unwrap()
            .by_service["api"]
            .clone();
        c.tiers[0][0].set_probe(false);
        for _ in 0..500 {
            let (e, tier) = c.pick(&[], 0).unwrap();
            assert_eq!(
                tier, 0,
                "z2 is still fully healthy through its other gateway"
            );
            assert_eq!(e.target.addr.to_string(), "127.0.0.6:15006");
        }
    }

    #[test]
    fn retries_move_to_the_next_locality_and_panic_mode_still_answers() {
        let c = cluster();
        let (first, tier) = c.pick(&[], 0).unwrap();
        assert_eq!(tier, 0);
        let (second, tier) = c.pick(std::slice::from_ref(&first), 1).unwrap();
        assert_eq!((second.zone.as_str(), tier), ("z2", 1));
        let (third, tier) = c.pick(&[first.clone(), second.clone()], 2).unwrap();
        assert_eq!((third.zone.as_str(), tier), ("z3", 2));
        // Nothing left past tier 2: fall back to an untried local endpoint.
        let (fourth, tier) = c.pick(&[first.clone(), second, third], 3).unwrap();
        assert_eq!(tier, 0);
        assert!(!Arc::ptr_eq(&fourth, &first));
        // Everything ejected: still pick something rather than fail.
        for e in &c.endpoints {
            e.eject(Duration::from_secs(60));
        }
        assert!(c.pick(&[], 0).is_some());
    }
}

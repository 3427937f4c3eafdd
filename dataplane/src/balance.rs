//! The locality-aware balancer: endpoints grouped into tiers by the
//! priority the zone-cp set (own zone, own region, other regions), Envoy-style
//! spill-over between tiers, remote zones counted once across the gateway
//! paths that reach them, and passive (ejection) and active (probe) health.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::ident::SpiffeId;
use proto::v1 as pb;

use crate::drill::{unix_ms, Drain};
use crate::protocol::Protocol;
use crate::resilience::{Defaults, Resilience};
pub use crate::rng::Rng;

/// Where a connection to an endpoint goes and whom it must reach.
#[derive(Debug, Clone)]
pub struct Target {
    /// The TCP address dialed: the endpoint's sidecar, or a local gateway.
    pub addr: SocketAddr,
    /// The SPIFFE ID the end-to-end mTLS session must reach.
    pub identity: SpiffeId,
    /// Set when the endpoint is another zone reached through a local gateway.
    pub via: Option<Via>,
    /// The destination's settings: how long connecting may take, and how
    /// many connections may be open to it.
    pub policy: Arc<Resilience>,
}

impl PartialEq for Target {
    fn eq(&self, o: &Self) -> bool {
        self.addr == o.addr
            && self.identity == o.identity
            && self.via == o.via
            && Arc::ptr_eq(&self.policy, &o.policy)
    }
}

impl Eq for Target {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    pub dest_zone: String,
    pub service: String,
    /// Labels the serving instance must have there (keys ascending; empty:
    /// any instance), sent in the flow header.
    pub subset: Vec<(String, String)>,
}

/// A remote zone's label set and how many healthy instances have it.
pub type RemoteSubset = (std::collections::BTreeMap<String, String>, u32);

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
    /// The instance's labels, for route backends that select a subset. A
    /// path to a remote zone has none, unless it is a subset path
    /// ([`Endpoint::subset_path`]): then they are the subset's selector.
    pub labels: std::collections::BTreeMap<String, String>,
    /// For a path to a remote zone: that zone's label sets.
    pub remote_subsets: Vec<RemoteSubset>,
    /// Shared with the endpoint's subset paths, and kept across config
    /// updates for the same authority and identity.
    health: Arc<Health>,
}

/// An endpoint's health state.
#[derive(Debug)]
pub struct Health {
    /// Passive health: ejected until this many ms after `epoch()`.
    ejected_until: AtomicU64,
    /// Active health: the last probe's result.
    probe_ok: AtomicBool,
    /// Passive health: outcomes of attempts, for outlier detection.
    outlier: crate::outlier::Counters,
    /// Requests sent and waiting for their response head (least request).
    active: std::sync::atomic::AtomicU32,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            ejected_until: AtomicU64::new(0),
            probe_ok: AtomicBool::new(true),
            outlier: Default::default(),
            active: Default::default(),
        }
    }
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
        self.health.ejected_until.load(Ordering::Relaxed) > now_ms()
    }
    /// Outlier detection: stop picking this endpoint for a while.
    pub fn eject(&self, for_: Duration) {
        self.health
            .ejected_until
            .store(now_ms() + for_.as_millis() as u64, Ordering::Relaxed);
    }
    /// For a path to a remote zone that has instances with all of
    /// `selector`'s labels: a path to just those, weighted by how many are
    /// healthy there (its own health state; the gateway on the far side
    /// picks only matching instances).
    pub fn subset_path(
        &self,
        selector: &std::collections::BTreeMap<String, String>,
    ) -> Option<Arc<Endpoint>> {
        let via = self.target.via.as_ref()?;
        let matched: u32 = self
            .remote_subsets
            .iter()
            .filter(|(labels, _)| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
            .map(|(_, n)| *n)
            .sum();
        if matched == 0 {
            return None;
        }
        let via = Via {
            subset: selector
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..via.clone()
        };
        let authority = authority_for(self.target.addr, &Some(via.clone())).ok()?;
        Some(Arc::new(Endpoint {
            target: Arc::new(Target {
                addr: self.target.addr,
                identity: self.target.identity.clone(),
                via: Some(via),
                policy: self.target.policy.clone(),
            }),
            authority,
            zone: self.zone.clone(),
            region: self.region.clone(),
            priority: self.priority,
            weight: matched,
            labels: selector.clone(),
            remote_subsets: Vec::new(),
            // The subset is reached over the same path: it is up, down or
            // ejected with it.
            health: self.health.clone(),
        }))
    }

    /// Requests in progress to this endpoint (waiting for their head).
    pub fn active(&self) -> u32 {
        self.health.active.load(Ordering::Relaxed)
    }

    /// Count a request in progress until the guard drops.
    pub fn start_request(&self) -> Active<'_> {
        self.health.active.fetch_add(1, Ordering::Relaxed);
        Active(&self.health.active)
    }

    pub fn outlier(&self) -> &crate::outlier::Counters {
        &self.health.outlier
    }

    pub fn available(&self) -> bool {
        self.health.probe_ok.load(Ordering::Relaxed) && !self.ejected()
    }
    /// Record an active probe. A recovery clears any ejection, so a
    /// restored endpoint gets traffic back within one probe interval.
    pub fn set_probe(&self, ok: bool) {
        let was = self.health.probe_ok.swap(ok, Ordering::Relaxed);
        if ok && !was {
            self.health.ejected_until.store(0, Ordering::Relaxed);
        }
    }
}

/// A request in progress to an endpoint.
pub struct Active<'a>(&'a std::sync::atomic::AtomicU32);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
    rng: Rng,
    /// What the destination's Retry and Timeout policies say; shared with
    /// the route backends built from this cluster (one retry budget).
    pub resilience: Arc<Resilience>,
    /// Per tier, for a ring hash: its ring.
    rings: Vec<crate::choose::Ring>,
    /// Round robin's turn.
    turn: std::sync::atomic::AtomicUsize,
    /// A drain drill on some of the cluster's localities.
    pub drain: Option<Arc<Drain>>,
}

/// A pick: the endpoint, and the index of its tier.
pub type Pick = (Arc<Endpoint>, usize);

impl Cluster {
    /// A cluster of `endpoints`, grouped into locality tiers.
    pub fn new(service: String, protocol: Protocol, endpoints: Vec<Arc<Endpoint>>) -> Self {
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
        Self {
            service,
            protocol,
            endpoints,
            tiers,
            tier_has_via,
            rng: Rng::new(),
            resilience: default_resilience(),
            rings: Vec::new(),
            turn: Default::default(),
            drain: None,
        }
    }

    pub fn with_drain(mut self, d: Option<Arc<Drain>>) -> Self {
        self.drain = d;
        self
    }

    pub fn with_resilience(mut self, r: Arc<Resilience>) -> Self {
        self.rings = if r.algorithm == crate::choose::Algorithm::RingHash {
            self.tiers
                .iter()
                .map(|t| crate::choose::Ring::new(t))
                .collect()
        } else {
            Vec::new()
        };
        self.resilience = r;
        self
    }

    fn next_rand(&self) -> f64 {
        self.rng.unit()
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
                let load = (frac * self.resilience.overprovisioning).min(remaining);
                remaining -= load;
                load
            })
            .collect()
    }

    /// Pick an endpoint: a tier by locality and health, then a destination
    /// in it by weight, then one of its paths. Endpoints in `tried` and tiers
    /// before `min_tier` are skipped. When nothing there is available, an
    /// untried endpoint that is available in a closer tier is used (another
    /// gateway path to a zone whose first path failed), then any untried one
    /// (panic mode) rather than failing outright.
    pub fn pick(&self, tried: &[Arc<Endpoint>], min_tier: usize) -> Option<Pick> {
        self.pick_keyed(tried, min_tier, None)
    }

    /// [`Cluster::pick`], where a ring hash uses `key` (a request without
    /// one is placed at random).
    pub fn pick_keyed(
        &self,
        tried: &[Arc<Endpoint>],
        min_tier: usize,
        key: Option<u64>,
    ) -> Option<Pick> {
        if let Some(d) = &self.drain {
            // A drained pick: the drill's localities count as tried, so
            // the pick fails over exactly as if they were gone (and fails
            // when nothing else is left).
            if unix_ms() < d.until_ms && self.rng.hit(d.per_million) {
                let mut t = tried.to_vec();
                t.extend(
                    self.endpoints
                        .iter()
                        .filter(|e| d.zones.contains(&e.zone))
                        .cloned(),
                );
                return self.pick_among(&t, min_tier, key);
            }
        }
        self.pick_among(tried, min_tier, key)
    }

    fn pick_among(
        &self,
        tried: &[Arc<Endpoint>],
        min_tier: usize,
        key: Option<u64>,
    ) -> Option<Pick> {
        let loads = self.tier_loads(tried, min_tier);
        let sum: f64 = loads.iter().sum();
        let untried = |e: &&Arc<Endpoint>| !tried.iter().any(|x| Arc::ptr_eq(x, e));
        if sum <= 0.0 {
            let first = |from: usize, ok: &dyn Fn(&&Arc<Endpoint>) -> bool| {
                self.tiers.iter().enumerate().skip(from).find_map(|(i, t)| {
                    t.iter()
                        .find(|e| untried(e) && ok(e))
                        .map(|e| (e.clone(), i))
                })
            };
            return first(0, &|e| e.available())
                .or_else(|| first(min_tier, &|_| true))
                .or_else(|| first(0, &|_| true));
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
            let up = |e: &Arc<Endpoint>| e.available() && !tried.iter().any(|x| Arc::ptr_eq(x, e));
            return crate::choose::choose(
                self.resilience.algorithm,
                &self.tiers[tier],
                up,
                &self.rng,
                &self.turn,
                self.rings.get(tier),
                key,
            )
            .map(|e| (e.clone(), tier));
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

/// The settings of a destination no policy names, with the built-in
/// defaults (used by clusters built outside a config, as in tests).
fn default_resilience() -> Arc<Resilience> {
    static D: std::sync::OnceLock<Arc<Resilience>> = std::sync::OnceLock::new();
    D.get_or_init(|| {
        Arc::new(Resilience::build(None, &Defaults::default()).expect("defaults are valid"))
    })
    .clone()
}

fn authority_for(addr: SocketAddr, via: &Option<Via>) -> Result<http::uri::Authority, String> {
    let s = match via {
        None => addr.to_string(),
        Some(v) => {
            let ip = addr.ip().to_string().replace([':', '.'], "-");
            let subset = if v.subset.is_empty() {
                String::new()
            } else {
                format!(".s{:016x}", subset_hash(&v.subset))
            };
            format!(
                "{}.{}{subset}.gw-{ip}:{}",
                v.service,
                v.dest_zone,
                addr.port()
            )
        }
    };
    s.parse()
        .map_err(|_| format!("cannot form an authority from {s:?}"))
}

/// FNV-1a over `k=v;` pairs: tells subset paths apart in authorities.
fn subset_hash(subset: &[(String, String)]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in subset {
        for b in k.bytes().chain([b'=']).chain(v.bytes()).chain([b';']) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl Clusters {
    /// Build from config, keeping endpoint health from `old`.
    pub fn build(
        cfg: &[pb::Cluster],
        old: &Clusters,
        version: u64,
        defaults: &Defaults,
    ) -> Result<Self, String> {
        let mut by_service = HashMap::new();
        let known: HashMap<(&str, &SpiffeId), &Arc<Endpoint>> = old
            .by_service
            .values()
            .flat_map(|c| c.endpoints.iter())
            .map(|e| ((e.authority.as_str(), &e.target.identity), e))
            .collect();
        for c in cfg {
            let protocol =
                Protocol::parse(&c.protocol).map_err(|e| format!("cluster {}: {e}", c.service))?;
            let resilience = Resilience::build(c.resilience.as_ref(), defaults)
                .map_err(|e| format!("cluster {}: {e}", c.service))?;
            // Unchanged settings keep their retry budget's window.
            let resilience = match old.by_service.get(&c.service) {
                Some(o) if o.resilience.same_settings(&resilience) => o.resilience.clone(),
                _ => Arc::new(resilience),
            };
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
                    subset: Vec::new(),
                });
                let remote_subsets: Vec<RemoteSubset> = e
                    .subsets
                    .iter()
                    .map(|s| (s.labels.clone().into_iter().collect(), s.healthy))
                    .collect();
                let authority = authority_for(addr, &via)?;
                let prior: Option<Arc<Endpoint>> = known
                    .get(&(authority.as_str(), &identity))
                    .map(|e| Arc::clone(e));
                let ep = match &prior {
                    Some(old)
                        if old.priority == e.priority
                            && Arc::ptr_eq(&old.target.policy, &resilience)
                            && old.weight == e.weight.max(1)
                            && old.labels.len() == e.labels.len()
                            && e.labels.iter().all(|(k, v)| old.labels.get(k) == Some(v))
                            && old.remote_subsets == remote_subsets =>
                    {
                        old.clone()
                    }
                    _ => Arc::new(Endpoint {
                        target: Arc::new(Target {
                            addr,
                            identity,
                            via,
                            policy: resilience.clone(),
                        }),
                        authority,
                        zone: e.zone.clone(),
                        region: e.region.clone(),
                        priority: e.priority,
                        weight: e.weight.max(1),
                        labels: e.labels.clone().into_iter().collect(),
                        remote_subsets,
                        // A changed endpoint (its weight, labels or a remote
                        // zone's label sets) keeps its health.
                        health: prior.map(|o| o.health.clone()).unwrap_or_default(),
                    }),
                };
                endpoints.push(ep);
            }
            by_service.insert(
                c.service.clone(),
                Arc::new(
                    Cluster::new(c.service.clone(), protocol, endpoints)
                        .with_resilience(resilience)
                        .with_drain(c.drain.as_ref().and_then(Drain::from_pb).map(Arc::new)),
                ),
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
                    "resilience": c.resilience.dump(),
                    "drain": c.drain.as_ref().map(|d| serde_json::json!({
                        "drill": d.name, "zones": d.zones,
                        "percent": d.per_million as f64 / 10_000.0,
                        "untilUnixMs": d.until_ms,
                        "active": unix_ms() < d.until_ms,
                    })),
                    "endpoints": c.endpoints.iter().map(|e| serde_json::json!({
                        "address": e.target.addr.to_string(),
                        "authority": e.authority.to_string(),
                        "identity": e.target.identity.to_string(),
                        "zone": e.zone, "region": e.region,
                        "priority": e.priority, "weight": e.weight,
                        "viaGateway": e.target.via.is_some(),
                        "subsets": e.remote_subsets.iter().map(|(l, n)| serde_json::json!({"labels": l, "healthy": n})).collect::<Vec<_>>(),
                        "ejected": e.ejected(),
                        "probeOk": e.health.probe_ok.load(Ordering::Relaxed),
                    })).collect::<Vec<_>>(),
                }),
            );
        }
        serde_json::Value::Object(out)
    }
}

/// For tests: a destination `api` in zone z1 with one endpoint per weight
/// (127.0.0.1, .2, ...), built from config as a sidecar builds it.
#[cfg(test)]
pub(crate) fn test_endpoints(weights: &[u32]) -> Vec<Arc<Endpoint>> {
    let cfg = vec![pb::Cluster {
        service: "api".into(),
        protocol: "http".into(),
        endpoints: weights
            .iter()
            .enumerate()
            .map(|(i, w)| pb::Endpoint {
                address: format!("127.0.0.{}", i + 1),
                port: 15006,
                healthy: true,
                zone: "z1".into(),
                identity: "spiffe://tern/zone/z1/svc/api".into(),
                weight: *w,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }];
    Clusters::build(&cfg, &Clusters::default(), 1, &Defaults::default())
        .expect("valid config")
        .by_service["api"]
        .endpoints
        .clone()
}

#[cfg(test)]
mod tests;

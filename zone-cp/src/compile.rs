//! Per-proxy config: the clusters a proxy routes to.
//!
//! Sidecars get every local service (priority 0) plus, for each other zone
//! that reported healthy endpoints of a service, one endpoint per local
//! gateway, weighted by that zone's healthy count and placed in a locality
//! tier: 1 = same region, 2.. = other regions in this zone's failover order
//! (`Zone` `spec.regionOrder`), the rest by name. Gateways get the local
//! services and, per remote zone, a `@gateways/ZONE` cluster of that zone's
//! gateway QUIC addresses.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use model::drill::DrillRunSpec;
use model::ident::SpiffeId;
use proto::v1 as pb;

use crate::Zone;
use common::policy::ProxyFacts;
use proto::ProxyItem;

pub const GATEWAYS_PREFIX: &str = "@gateways/";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    Sidecar,
    Gateway,
}

/// Priority of another zone in `region`, seen from this zone.
pub fn priority(own_region: &str, region: &str, order: &[String], all_regions: &[String]) -> u32 {
    if region == own_region {
        return 1;
    }
    let mut ranked: Vec<&String> = order.iter().filter(|r| *r != own_region).collect();
    let mut rest: Vec<&String> = all_regions
        .iter()
        .filter(|r| *r != own_region && !order.contains(r))
        .collect();
    rest.sort();
    rest.dedup();
    ranked.extend(rest);
    2 + ranked
        .iter()
        .position(|r| *r == region)
        .unwrap_or(ranked.len()) as u32
}

/// What every proxy of the zone trusts: the mesh roots, and the zone
/// intermediates the global lists (`ZoneCa`, newest first), with this zone's
/// current CA first (the zone-cp knows it before the global's list has it).
pub fn trust(z: &Zone) -> pb::Trust {
    let mut cas = z.global.zone_cas();
    // The CA the zone signs with comes first for its own zone: proxies
    // holding a certificate from another one renew.
    let own = z.boot.ca().fingerprint.clone();
    let list = cas.entry(z.boot.zone.clone()).or_default();
    list.retain(|f| *f != own);
    list.insert(0, own);
    pb::Trust {
        roots_pem: z.boot.roots_pem().to_string(),
        zone_cas: cas
            .into_iter()
            .map(|(zone, fps)| (zone, pb::ZoneCaList { fingerprints: fps }))
            .collect(),
    }
}

/// Compiled configs for one (global, local policies, registry) version:
/// the clusters every sidecar (or gateway) of the zone shares, and per
/// distinct proxy view (service and labels: what policies can target in
/// one zone) its items. Proxies with the same view share the same items,
/// so a change is compiled once per view, not once per proxy, and each
/// proxy's sync state holds pointers, not copies.
#[derive(Default)]
pub struct Compiled {
    key: (u64, u64, u64, u64),
    /// The trust every proxy gets, with the CA fingerprint and the roots it
    /// was built from (both change outside the global's versions: a CA
    /// renewal, and the roots the zone takes up after applying a delta).
    trust: Option<CachedTrust>,
    sidecar: Arc<BTreeMap<String, Arc<pb::Cluster>>>,
    gateway: Option<Arc<BTreeMap<String, ProxyItem>>>,
    /// What `sidecar` and `gateway` were built from: when only policies
    /// changed (most global versions), they are kept, not rebuilt.
    inputs: Option<ClusterInputs>,
    views: HashMap<View, Arc<BTreeMap<String, ProxyItem>>>,
    /// The views of the version before: an item that did not change keeps
    /// its `Arc`, so each proxy's diff is a pointer comparison.
    previous: HashMap<View, Arc<BTreeMap<String, ProxyItem>>>,
}

/// The trust of a global version, zone CA and roots.
struct CachedTrust {
    version: u64,
    ca: String,
    roots: Arc<String>,
    trust: Arc<pb::Trust>,
}

/// What tells one zone's proxies' configs apart: what policies can target
/// (service and labels) and the services the proxy declared it calls
/// (sorted; empty: every service). Built once per proxy stream, so a
/// lookup of its compiled config copies nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct View {
    service: String,
    labels: BTreeMap<String, String>,
    reachable: Vec<String>,
}

impl View {
    /// `reachable` sorted and without repeats, as the registry keeps it.
    pub fn new(facts: &ProxyFacts, reachable: &[String]) -> View {
        View {
            service: facts.service.clone(),
            labels: facts.labels.clone(),
            reachable: reachable.to_vec(),
        }
    }
}

/// Everything [`clusters`] reads that can change: the registry (this zone's
/// instances and gateways), the other zones' ingresses and this zone's
/// failover order.
#[derive(PartialEq)]
struct ClusterInputs {
    registry: u64,
    ingresses: Vec<(String, model::resource::ZoneIngressSpec)>,
    order: Vec<String>,
    drill: Option<DrillRunSpec>,
}

fn cluster_inputs(z: &Zone) -> ClusterInputs {
    ClusterInputs {
        registry: z.registry.generation(),
        ingresses: z.global.ingresses(),
        order: z.global.region_order(&z.boot.zone),
        drill: crate::drill::current(z),
    }
}

/// [`trust`], built once per global version and zone CA and shared; an
/// unchanged trust keeps its `Arc` across versions, so each proxy's "did my
/// trust change" is a pointer check.
pub fn shared_trust(z: &Zone) -> Arc<pb::Trust> {
    let mut g = z.compiled.lock().unwrap_or_else(|e| e.into_inner());
    refresh(z, &mut g);
    let ca = z.boot.ca().fingerprint.clone();
    let roots = z.boot.roots_pem();
    let version = z.global.version();
    if let Some(c) = &g.trust {
        if c.version == version && c.ca == ca && (Arc::ptr_eq(&c.roots, &roots) || c.roots == roots)
        {
            return c.trust.clone();
        }
    }
    let mut t = Arc::new(trust(z));
    if let Some(c) = &g.trust {
        if c.trust == t {
            t = c.trust.clone();
        }
    }
    g.trust = Some(CachedTrust {
        version,
        ca,
        roots,
        trust: t.clone(),
    });
    t
}

/// Start over when the global, the local policies or the registry changed.
fn refresh(z: &Zone, g: &mut Compiled) {
    let key = (
        z.global.version(),
        z.local_policies.version(),
        z.registry.generation(),
        *z.drills.epoch.borrow(),
    );
    if g.key != key || g.sidecar.is_empty() && g.gateway.is_none() && g.views.is_empty() {
        let mut old = std::mem::take(g);
        let trust = old.trust.take();
        let mut previous = old.previous;
        previous.extend(old.views);
        // Read before building: inputs newer than what was built only
        // cause a rebuild next time, never a stale reuse.
        let inputs = cluster_inputs(z);
        // Gateways' items hold their Trace policy too: rebuilt on any
        // change (a zone has few gateways and few clusters).
        let (sidecar, gateway) = if old.inputs.as_ref() == Some(&inputs) {
            (old.sidecar, None)
        } else {
            let sidecar = clusters(z, ProxyKind::Sidecar, inputs.drill.as_ref())
                .into_iter()
                .map(|(k, c)| {
                    let c = match old.sidecar.get(&k) {
                        Some(o) if **o == c => o.clone(),
                        _ => Arc::new(c),
                    };
                    (k, c)
                })
                .collect();
            (Arc::new(sidecar), None)
        };
        *g = Compiled {
            key,
            sidecar,
            gateway,
            inputs: Some(inputs),
            trust,
            previous,
            ..Default::default()
        };
    }
}

/// `item`, or the equal one `old` holds (so it keeps its pointer).
fn intern(item: ProxyItem, old: Option<&ProxyItem>) -> ProxyItem {
    match old {
        Some(o) if *o == item => o.clone(),
        _ => item,
    }
}

/// Everything a proxy is sent: its clusters and, for a sidecar, the routes
/// its policies give each one and its inbound policy. `view.reachable`: the
/// services the proxy declared it calls; empty, every service. A declared
/// service's routes may send to (or mirror to) others: those come too.
pub fn proxy_config(
    z: &Zone,
    kind: ProxyKind,
    facts: &ProxyFacts,
    view: &View,
) -> Arc<BTreeMap<String, ProxyItem>> {
    let mut g = z.compiled.lock().unwrap_or_else(|e| e.into_inner());
    refresh(z, &mut g);
    if kind == ProxyKind::Gateway {
        if g.gateway.is_none() {
            let drill = g.inputs.as_ref().and_then(|i| i.drill.as_ref());
            let mut items: BTreeMap<String, ProxyItem> = clusters(z, ProxyKind::Gateway, drill)
                .into_iter()
                .map(|(k, c)| (k, ProxyItem::Cluster(Arc::new(c))))
                .collect();
            // A gateway takes only its Trace policy of the inbound ones
            // (it serves no app), and what a running drill makes it refuse.
            let inbound = z.policies().inbound(facts);
            let gateway_drills: Vec<pb::GatewayDrill> = drill
                .and_then(|d| crate::drill::gateway(d, &z.boot.zone))
                .into_iter()
                .collect();
            if inbound.trace.is_some() || !gateway_drills.is_empty() {
                let only_trace = proto::v1::InboundPolicy {
                    policies: inbound
                        .policies
                        .iter()
                        .filter(|p| p.starts_with("Trace/"))
                        .cloned()
                        .chain(gateway_drills.iter().map(|d| d.name.clone()))
                        .collect(),
                    trace: inbound.trace,
                    gateway_drills,
                    ..Default::default()
                };
                items.insert(
                    proto::INBOUND_KEY.to_string(),
                    ProxyItem::Inbound(Arc::new(only_trace)),
                );
            }
            g.gateway = Some(Arc::new(items));
        }
        return g.gateway.clone().unwrap_or_default();
    }
    if let Some(items) = g.views.get(view) {
        return items.clone();
    }
    let reachable = &view.reachable;
    let set = z.policies();
    let old = g.previous.remove(view);
    let old_item = |k: &str| old.as_ref().and_then(|o| o.get(k));
    let mut routed = BTreeMap::new();
    let mut wanted: BTreeSet<String> = reachable.iter().cloned().collect();
    for name in reachable {
        if g.sidecar.contains_key(name) {
            let r = set.routes(facts, name);
            wanted.extend(route_targets(&r.0, r.1.as_ref()).map(str::to_string));
            routed.insert(name.as_str(), r);
        }
    }
    let mut out: BTreeMap<String, ProxyItem> = BTreeMap::new();
    for (name, c) in g.sidecar.iter() {
        if !reachable.is_empty() && !wanted.contains(name) {
            continue;
        }
        let (http, tcp, mut policies) = routed
            .remove(name.as_str())
            .unwrap_or_else(|| set.routes(facts, name));
        let (resilience, more) = set.resilience(facts, name);
        policies.extend(more);
        let item = if http.is_empty() && tcp.is_none() && resilience.is_none() {
            // No policy for calls to it: the cluster every sidecar shares.
            c.clone()
        } else {
            let mut endpoints = c.endpoints.clone();
            if let Some(lb) = resilience.as_ref().and_then(|r| r.balancer.as_ref()) {
                common::resilience::apply_locality(lb, facts, &mut endpoints);
            }
            Arc::new(pb::Cluster {
                http_routes: http,
                tcp_route: tcp,
                policies,
                resilience,
                endpoints,
                ..(**c).clone()
            })
        };
        out.insert(
            name.clone(),
            intern(ProxyItem::Cluster(item), old_item(name)),
        );
    }
    let mut inbound = set.inbound(facts);
    if let Some(d) = g.inputs.as_ref().and_then(|i| i.drill.as_ref()) {
        inbound.traffic_report_ms = crate::drill::PROXY_REPORT_MS;
        // A blackhole's faults come first: the drill decides before any
        // policy's fault.
        let faults = crate::drill::blackhole(d, &z.boot.zone, &facts.service);
        if !faults.is_empty() {
            inbound.policies.push(faults[0].name.clone());
            inbound.faults.splice(0..0, faults);
        }
    }
    out.insert(
        proto::INBOUND_KEY.to_string(),
        intern(
            ProxyItem::Inbound(Arc::new(inbound)),
            old_item(proto::INBOUND_KEY),
        ),
    );
    let out = Arc::new(out);
    g.views.insert(view.clone(), out.clone());
    out
}

/// The other services a cluster's routes send to or mirror to.
fn route_targets<'a>(
    http: &'a [pb::HttpRouteRule],
    tcp: Option<&'a pb::TcpRoute>,
) -> impl Iterator<Item = &'a str> {
    http.iter()
        .flat_map(|r| {
            r.backends
                .iter()
                .chain(r.mirror.as_ref().and_then(|m| m.backend.as_ref()))
        })
        .chain(tcp.into_iter().flat_map(|t| t.backends.iter()))
        .map(|b| b.service.as_str())
        .filter(|s| !s.is_empty())
}

/// The clusters every sidecar (or gateway) of the zone shares; a drain
/// drill in `drill` is set on the clusters it names.
pub fn clusters(
    z: &Zone,
    kind: ProxyKind,
    drill: Option<&DrillRunSpec>,
) -> BTreeMap<String, pb::Cluster> {
    let mut out = clusters_without_drill(z, kind);
    if let (ProxyKind::Sidecar, Some(d)) = (kind, drill) {
        for c in out.values_mut() {
            c.drain = crate::drill::drain(d, &c.service);
        }
    }
    out
}

fn clusters_without_drill(z: &Zone, kind: ProxyKind) -> BTreeMap<String, pb::Cluster> {
    let mut out = z.registry.clusters();
    let td = &z.boot.trust_domain;
    let own_region = z.registry.region().to_string();
    let remote: Vec<(String, model::resource::ZoneIngressSpec)> = z
        .global
        .ingresses()
        .into_iter()
        .filter(|(name, _)| *name != z.boot.zone)
        .collect();
    let order = z.global.region_order(&z.boot.zone);
    let regions: Vec<String> = remote.iter().map(|(_, s)| s.region.clone()).collect();
    match kind {
        ProxyKind::Sidecar => {
            let gateways = z.registry.gateways();
            if gateways.is_empty() {
                return out;
            }
            for (rz, spec) in &remote {
                if spec.gateways.is_empty() {
                    continue;
                }
                let prio = priority(&own_region, &spec.region, &order, &regions);
                for (svc, sum) in &spec.services {
                    if sum.healthy == 0 {
                        continue;
                    }
                    let c = out.entry(svc.clone()).or_insert_with(|| pb::Cluster {
                        service: svc.clone(),
                        protocol: sum.protocol.clone(),
                        ..Default::default()
                    });
                    let subsets: Vec<pb::Subset> = sum
                        .subsets
                        .iter()
                        .map(|s| pb::Subset {
                            labels: s.labels.clone().into_iter().collect(),
                            healthy: s.healthy,
                        })
                        .collect();
                    for gw in &gateways {
                        c.endpoints.push(pb::Endpoint {
                            address: gw.address.clone(),
                            port: gw.port,
                            healthy: true,
                            region: spec.region.clone(),
                            zone: rz.clone(),
                            identity: SpiffeId::workload(td, rz, svc).to_string(),
                            protocol: sum.protocol.clone(),
                            instance: format!("{rz}/via/{}", gw.instance),
                            weight: sum.healthy,
                            via_gateway: true,
                            priority: prio,
                            subsets: subsets.clone(),
                            ..Default::default()
                        });
                    }
                }
            }
        }
        ProxyKind::Gateway => {
            for (rz, spec) in &remote {
                let prio = priority(&own_region, &spec.region, &order, &regions);
                let endpoints = spec
                    .gateways
                    .iter()
                    .filter_map(|a| a.parse::<std::net::SocketAddr>().ok())
                    .map(|a| pb::Endpoint {
                        address: a.ip().to_string(),
                        port: a.port() as u32,
                        healthy: true,
                        region: spec.region.clone(),
                        zone: rz.clone(),
                        identity: SpiffeId::gateway(td, rz).to_string(),
                        protocol: "quic".into(),
                        weight: 1,
                        priority: prio,
                        ..Default::default()
                    })
                    .collect();
                let name = format!("{GATEWAYS_PREFIX}{rz}");
                out.insert(
                    name.clone(),
                    pb::Cluster {
                        service: name,
                        protocol: "quic".into(),
                        endpoints,
                        ..Default::default()
                    },
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::priority;

    #[test]
    fn locality_tiers() {
        let all: Vec<String> = ["eu", "us", "ap"].iter().map(|s| s.to_string()).collect();
        assert_eq!(priority("eu", "eu", &[], &all), 1);
        // Default: other regions by name.
        assert_eq!(priority("eu", "ap", &[], &all), 2);
        assert_eq!(priority("eu", "us", &[], &all), 3);
        // A configured order wins; unlisted regions follow.
        let order = vec!["us".to_string()];
        assert_eq!(priority("eu", "us", &order, &all), 2);
        assert_eq!(priority("eu", "ap", &order, &all), 3);
    }
}

//! Per-proxy config: the clusters a proxy routes to.
//!
//! Sidecars get every local service (priority 0) plus, for each other zone
//! that reported healthy endpoints of a service, one endpoint per local
//! gateway, weighted by that zone's healthy count and placed in a locality
//! tier: 1 = same region, 2.. = other regions in this zone's failover order
//! (`Zone` `spec.regionOrder`), the rest by name. Gateways get the local
//! services and, per remote zone, a `@gateways/ZONE` cluster of that zone's
//! gateway QUIC addresses.

use std::collections::BTreeMap;

use model::ident::SpiffeId;
use proto::v1 as pb;

use crate::policy::ProxyFacts;
use crate::Zone;
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

/// Everything a proxy is sent: its clusters and, for a sidecar, the routes
/// its policies give each one and its inbound policy.
pub fn proxy_config(z: &Zone, kind: ProxyKind, facts: &ProxyFacts) -> BTreeMap<String, ProxyItem> {
    let mut clusters = clusters(z, kind);
    let mut out = BTreeMap::new();
    if kind == ProxyKind::Sidecar {
        let set = z.policies();
        for c in clusters.values_mut() {
            let (http, tcp, policies) = set.routes(facts, &c.service);
            c.http_routes = http;
            c.tcp_route = tcp;
            c.policies = policies;
        }
        out.insert(
            proto::INBOUND_KEY.to_string(),
            ProxyItem::Inbound(set.inbound(facts)),
        );
    }
    out.extend(
        clusters
            .into_iter()
            .map(|(k, c)| (k, ProxyItem::Cluster(c))),
    );
    out
}

pub fn clusters(z: &Zone, kind: ProxyKind) -> BTreeMap<String, pb::Cluster> {
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

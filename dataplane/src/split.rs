//! Where a routed request goes: a weighted split across backends (subsets
//! of a service by zone and labels, or other services), and a mirror that
//! copies a share of requests elsewhere. Each backend is a locality-aware
//! cluster of its own, built once per config from the same endpoints (and
//! the same health state) as the service's cluster.

use std::collections::HashMap;
use std::sync::Arc;

use proto::v1 as pb;

use crate::balance::{Cluster, Endpoint, Rng};

#[derive(Debug)]
pub struct Backend {
    pub weight: u32,
    pub cluster: Arc<Cluster>,
}

/// Weighted backends.
#[derive(Debug)]
pub struct Split {
    pub backends: Vec<Backend>,
    rng: Rng,
}

/// The endpoints of `b`: those of its service (`default` when it names
/// none) in its zones, with its labels. Another zone is reached for a
/// label subset through its subset paths: weighted by how many of its
/// healthy instances have the labels, and served there only by those.
pub fn backend_cluster(
    b: &pb::Backend,
    default: &str,
    clusters: &HashMap<String, Arc<Cluster>>,
) -> Arc<Cluster> {
    let service = if b.service.is_empty() {
        default
    } else {
        b.service.as_str()
    };
    let Some(base) = clusters.get(service) else {
        return Arc::new(Cluster::new(
            service.to_string(),
            crate::protocol::Protocol::Http1,
            vec![],
        ));
    };
    if b.zones.is_empty() && b.labels.is_empty() {
        return base.clone();
    }
    let in_zones = |e: &Arc<Endpoint>| b.zones.is_empty() || b.zones.iter().any(|z| *z == e.zone);
    let endpoints = if b.labels.is_empty() {
        base.endpoints
            .iter()
            .filter(|e| in_zones(e))
            .cloned()
            .collect()
    } else {
        let selector: std::collections::BTreeMap<String, String> = b
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        base.endpoints
            .iter()
            .filter(|e| in_zones(e))
            .filter_map(|e| match e.target.via {
                Some(_) => e.subset_path(&selector),
                None => selector
                    .iter()
                    .all(|(k, v)| e.labels.get(k) == Some(v))
                    .then(|| e.clone()),
            })
            .collect()
    };
    Arc::new(
        Cluster::new(base.service.clone(), base.protocol, endpoints)
            .with_resilience(base.resilience.clone())
            .with_drain(base.drain.clone()),
    )
}

impl Split {
    /// Every endpoint a backend may pick.
    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.backends
            .iter()
            .flat_map(|b| b.cluster.endpoints.iter())
    }

    pub fn build(
        backends: &[pb::Backend],
        default: &str,
        clusters: &HashMap<String, Arc<Cluster>>,
    ) -> Result<Self, String> {
        if backends.iter().all(|b| b.weight == 0) {
            return Err("every backend has weight 0".into());
        }
        Ok(Self {
            backends: backends
                .iter()
                .map(|b| Backend {
                    weight: b.weight,
                    cluster: backend_cluster(b, default, clusters),
                })
                .collect(),
            rng: Rng::new(),
        })
    }

    /// A backend by weight, among those that have endpoints (a backend with
    /// none, such as a canary not deployed yet, takes no share).
    pub fn pick(&self) -> Option<&Arc<Cluster>> {
        let live = |b: &&Backend| b.weight > 0 && !b.cluster.endpoints.is_empty();
        let total: u64 = self
            .backends
            .iter()
            .filter(live)
            .map(|b| b.weight as u64)
            .sum();
        if total == 0 {
            return None;
        }
        let mut x = self.rng.next_u64() % total;
        for b in self.backends.iter().filter(live) {
            if x < b.weight as u64 {
                return Some(&b.cluster);
            }
            x -= b.weight as u64;
        }
        None
    }

    pub fn dump(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.backends
                .iter()
                .map(|b| {
                    serde_json::json!({
                        "weight": b.weight,
                        "service": b.cluster.service,
                        "endpoints": b.cluster.endpoints.iter().map(|e| e.authority.to_string()).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        )
    }
}

/// Where copies go, and how many.
#[derive(Debug)]
pub struct Mirror {
    pub cluster: Arc<Cluster>,
    pub per_million: u32,
    rng: Rng,
}

impl Mirror {
    pub fn build(
        m: &pb::Mirror,
        default: &str,
        clusters: &HashMap<String, Arc<Cluster>>,
    ) -> Result<Self, String> {
        let b = m.backend.as_ref().ok_or("mirror without a backend")?;
        if m.per_million == 0 || m.per_million > 1_000_000 {
            return Err(format!("mirror share {} out of range", m.per_million));
        }
        Ok(Self {
            cluster: backend_cluster(b, default, clusters),
            per_million: m.per_million,
            rng: Rng::new(),
        })
    }

    /// Whether this request is copied.
    pub fn sample(&self) -> bool {
        if self.per_million >= 1_000_000 {
            return true;
        }
        (self.rng.next_u64() >> 11) % 1_000_000 < self.per_million as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: &str, zone: &str, labels: &[(&str, &str)]) -> pb::Endpoint {
        pb::Endpoint {
            address: ip.into(),
            port: 15006,
            healthy: true,
            zone: zone.into(),
            identity: format!("spiffe://tern/zone/{zone}/svc/api"),
            weight: 1,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn clusters() -> HashMap<String, Arc<Cluster>> {
        let cfg = vec![pb::Cluster {
            service: "api".into(),
            protocol: "http".into(),
            endpoints: vec![
                ep("10.0.0.1", "z1", &[("version", "v1")]),
                ep("10.0.0.2", "z1", &[("version", "v2")]),
                ep("10.0.0.3", "z2", &[("version", "v1")]),
            ],
            ..Default::default()
        }];
        crate::balance::Clusters::build(&cfg, &Default::default(), 1, &Default::default())
            .unwrap()
            .by_service
    }

    fn b(weight: u32, zones: &[&str], labels: &[(&str, &str)]) -> pb::Backend {
        pb::Backend {
            weight,
            service: String::new(),
            zones: zones.iter().map(|z| z.to_string()).collect(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn backends_select_endpoints_by_zone_and_labels_and_share_their_health() {
        let cs = clusters();
        let v2 = backend_cluster(&b(1, &[], &[("version", "v2")]), "api", &cs);
        assert_eq!(v2.endpoints.len(), 1);
        assert_eq!(v2.endpoints[0].target.addr.to_string(), "10.0.0.2:15006");
        let z2 = backend_cluster(&b(1, &["z2"], &[]), "api", &cs);
        assert_eq!(z2.endpoints.len(), 1);
        let v1_z1 = backend_cluster(&b(1, &["z1"], &[("version", "v1")]), "api", &cs);
        assert_eq!(v1_z1.endpoints.len(), 1);
        // The same endpoint objects: ejecting one in the subset ejects it
        // for the service too.
        v2.endpoints[0].eject(std::time::Duration::from_secs(5));
        assert!(cs["api"].endpoints.iter().any(|e| e.ejected()));
        // An unknown service gives an empty backend.
        let none = backend_cluster(
            &pb::Backend {
                service: "nope".into(),
                ..b(1, &[], &[])
            },
            "api",
            &cs,
        );
        assert!(none.endpoints.is_empty());
    }

    /// Another zone reached through two local gateways, running v1 (3
    /// instances) and v2 (1) by its published label sets.
    fn with_remote() -> HashMap<String, Arc<Cluster>> {
        let gw = |ip: &str| pb::Endpoint {
            via_gateway: true,
            weight: 4,
            priority: 2,
            subsets: vec![
                pb::Subset {
                    labels: [("version".to_string(), "v1".to_string())].into(),
                    healthy: 3,
                },
                pb::Subset {
                    labels: [
                        ("version".to_string(), "v2".to_string()),
                        ("track".to_string(), "beta".to_string()),
                    ]
                    .into(),
                    healthy: 1,
                },
            ],
            ..ep(ip, "z3", &[])
        };
        let cfg = vec![pb::Cluster {
            service: "api".into(),
            protocol: "http".into(),
            endpoints: vec![
                ep("10.0.0.1", "z1", &[("version", "v1")]),
                gw("10.0.1.1"),
                gw("10.0.1.2"),
            ],
            ..Default::default()
        }];
        crate::balance::Clusters::build(&cfg, &Default::default(), 1, &Default::default())
            .unwrap()
            .by_service
    }

    /// A labels backend reaches another zone's matching instances through
    /// subset paths: one per gateway, weighted by the matching healthy
    /// count, naming the subset for the far gateway, with authorities of
    /// their own; a zone with no match is left out.
    #[test]
    fn labels_backends_reach_other_zones_through_subset_paths() {
        let cs = with_remote();
        let v1 = backend_cluster(&b(1, &[], &[("version", "v1")]), "api", &cs);
        assert_eq!(v1.endpoints.len(), 3, "the local v1 and two paths to z3");
        let paths: Vec<_> = v1
            .endpoints
            .iter()
            .filter(|e| e.target.via.is_some())
            .collect();
        for p in &paths {
            assert_eq!(p.weight, 3);
            assert_eq!(p.priority, 2);
            let via = p.target.via.as_ref().unwrap();
            assert_eq!(via.subset, [("version".to_string(), "v1".to_string())]);
            assert!(cs["api"]
                .endpoints
                .iter()
                .all(|e| e.authority != p.authority));
        }
        assert_ne!(paths[0].authority, paths[1].authority);
        // A selector matches a label set that has all its labels.
        let v2 = backend_cluster(&b(1, &["z3"], &[("version", "v2")]), "api", &cs);
        assert_eq!(v2.endpoints.len(), 2);
        assert!(v2.endpoints.iter().all(|e| e.weight == 1));
        let v1_paths = backend_cluster(&b(1, &["z3"], &[("version", "v1")]), "api", &cs);
        assert_ne!(v1_paths.endpoints[0].authority, v2.endpoints[0].authority);
        // No instance there has v9, nor v2 with track stable.
        for labels in [
            &[("version", "v9")][..],
            &[("version", "v2"), ("track", "stable")],
        ] {
            let none = backend_cluster(&b(1, &["z3"], labels), "api", &cs);
            assert!(none.endpoints.is_empty(), "{labels:?}");
        }
        // A subset path shares its gateway path's health: ejecting one
        // ejects the other, and a rebuild whose label sets changed keeps it.
        paths[0].eject(std::time::Duration::from_secs(5));
        let base = |cs: &HashMap<String, Arc<Cluster>>| {
            cs["api"]
                .endpoints
                .iter()
                .find(|e| e.target.via.is_some() && e.target.addr == paths[0].target.addr)
                .cloned()
                .unwrap()
        };
        assert!(base(&cs).ejected());
        let mut cfg = vec![pb::Cluster {
            service: "api".into(),
            protocol: "http".into(),
            endpoints: cs["api"]
                .endpoints
                .iter()
                .map(|e| pb::Endpoint {
                    address: e.target.addr.ip().to_string(),
                    zone: e.zone.clone(),
                    via_gateway: e.target.via.is_some(),
                    weight: e.weight,
                    priority: e.priority,
                    ..ep(&e.target.addr.ip().to_string(), &e.zone, &[])
                })
                .collect(),
            ..Default::default()
        }];
        cfg[0].endpoints[0].labels = [("version".to_string(), "v1".to_string())].into();
        let old = crate::balance::Clusters {
            by_service: cs.clone(),
            version: 1,
        };
        let rebuilt = crate::balance::Clusters::build(&cfg, &old, 2, &Default::default())
            .unwrap()
            .by_service;
        assert!(
            base(&rebuilt).ejected(),
            "health kept although the label sets changed"
        );
        // Without labels, the service's own paths (no subset).
        let all = backend_cluster(&b(1, &["z3"], &[]), "api", &cs);
        assert!(all
            .endpoints
            .iter()
            .all(|e| e.target.via.as_ref().unwrap().subset.is_empty()));
    }

    /// A 90/10 split over 20,000 picks lands within 1.5 points of 10%:
    /// the binomial standard deviation is 0.21 points, so this bound is
    /// over seven of them (a false failure is far below one in a million).
    #[test]
    fn a_weighted_split_lands_near_its_weights_and_skips_empty_backends() {
        let cs = clusters();
        let s = Split::build(
            &[
                b(90, &[], &[("version", "v1")]),
                b(10, &[], &[("version", "v2")]),
                b(50, &[], &[("version", "v3")]),
            ],
            "api",
            &cs,
        )
        .unwrap();
        let n = 20_000;
        // v3 has no endpoints: it takes no share.
        assert!(s.backends[2].cluster.endpoints.is_empty());
        let v2_picks = (0..n)
            .filter(|_| Arc::ptr_eq(s.pick().unwrap(), &s.backends[1].cluster))
            .count();
        let share = v2_picks as f64 / n as f64;
        assert!((share - 0.10).abs() < 0.015, "v2 share {share}");
        assert!(Split::build(&[b(0, &[], &[])], "api", &cs).is_err());
        // Nothing left when every backend is empty.
        let empty = Split::build(&[b(1, &["z9"], &[])], "api", &cs).unwrap();
        assert!(empty.pick().is_none());
    }

    #[test]
    fn a_mirror_copies_its_share() {
        let cs = clusters();
        let m = Mirror::build(
            &pb::Mirror {
                backend: Some(b(1, &["z2"], &[])),
                per_million: 250_000,
            },
            "api",
            &cs,
        )
        .unwrap();
        let n = 20_000;
        let copied = (0..n).filter(|_| m.sample()).count() as f64 / n as f64;
        // Standard deviation 0.31 points; the bound is five of them.
        assert!((copied - 0.25).abs() < 0.016, "{copied}");
        let all = Mirror::build(
            &pb::Mirror {
                backend: Some(b(1, &[], &[])),
                per_million: 1_000_000,
            },
            "api",
            &cs,
        )
        .unwrap();
        assert!((0..100).all(|_| all.sample()));
    }
}

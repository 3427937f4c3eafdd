//! Drills as a proxy applies them: a drain on a cluster (picks skip the
//! drill's localities), and what a gateway refuses (a partition between
//! two zones, a blackhole of services here). Each carries its deadline:
//! a proxy stops applying a drill at that wall time on its own, whatever
//! happened to its control planes. A sidecar's blackhole is an inbound
//! fault (`fault.rs`) with the same deadline.

use proto::v1 as pb;

use crate::rng::Rng;

/// Wall-clock unix milliseconds: drills' deadlines are wall times, set by
/// the global and checked by every zone and proxy on its own.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A drain drill on a cluster: `per_million` of the picks treat the
/// endpoints in `zones` as gone, until `until_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    pub name: String,
    pub zones: Vec<String>,
    pub per_million: u32,
    pub until_ms: u64,
}

impl Drain {
    pub fn from_pb(d: &pb::Drain) -> Option<Drain> {
        (d.per_million > 0 && !d.zones.is_empty()).then(|| Drain {
            name: d.name.clone(),
            zones: d.zones.clone(),
            per_million: d.per_million.min(1_000_000),
            until_ms: d.until_unix_ms,
        })
    }
}

/// A drill's refusals on a gateway.
#[derive(Debug, Clone)]
struct Refusal {
    name: String,
    peer_zones: Vec<String>,
    services: Vec<String>,
    all_services: bool,
    per_million: u32,
    until_ms: u64,
}

/// What running drills make this gateway refuse.
#[derive(Debug, Default)]
pub struct GatewayDrills {
    list: Vec<Refusal>,
    rng: Rng,
}

impl GatewayDrills {
    pub fn build(p: &[pb::GatewayDrill]) -> Self {
        Self {
            list: p
                .iter()
                .map(|d| Refusal {
                    name: d.name.clone(),
                    peer_zones: d.peer_zones.clone(),
                    services: d.services.clone(),
                    all_services: d.all_services,
                    per_million: d.per_million.min(1_000_000),
                    until_ms: d.until_unix_ms,
                })
                .collect(),
            rng: Rng::new(),
        }
    }

    /// The drill refusing a flow from this zone to `dest_zone`, if one
    /// draws it.
    pub fn refuse_outbound(&self, dest_zone: &str) -> Option<&str> {
        self.first(|r| r.peer_zones.iter().any(|z| z == dest_zone))
    }

    /// The drill refusing a flow from `from_zone` to `service` here, if one
    /// draws it.
    pub fn refuse_inbound(&self, from_zone: &str, service: &str) -> Option<&str> {
        self.first(|r| {
            r.peer_zones.iter().any(|z| z == from_zone)
                || r.all_services
                || r.services.iter().any(|s| s == service)
        })
    }

    fn first(&self, applies: impl Fn(&Refusal) -> bool) -> Option<&str> {
        if self.list.is_empty() {
            return None;
        }
        let now = unix_ms();
        self.list
            .iter()
            .find(|r| now < r.until_ms && applies(r))
            .filter(|r| self.rng.hit(r.per_million))
            .map(|r| r.name.as_str())
    }

    pub fn dump(&self) -> serde_json::Value {
        let now = unix_ms();
        self.list
            .iter()
            .map(|r| {
                serde_json::json!({
                    "drill": r.name, "peerZones": r.peer_zones, "services": r.services,
                    "allServices": r.all_services, "percent": r.per_million as f64 / 10_000.0,
                    "untilUnixMs": r.until_ms, "active": now < r.until_ms,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drill(until_ms: u64) -> pb::GatewayDrill {
        pb::GatewayDrill {
            name: "Drill/cut".into(),
            peer_zones: vec!["b".into()],
            services: vec!["api".into()],
            per_million: 1_000_000,
            until_unix_ms: until_ms,
            ..Default::default()
        }
    }

    #[test]
    fn a_gateway_refuses_what_a_drill_names_until_its_deadline() {
        let g = GatewayDrills::build(&[drill(unix_ms() + 60_000)]);
        assert_eq!(g.refuse_outbound("b"), Some("Drill/cut"));
        assert_eq!(g.refuse_outbound("c"), None);
        assert_eq!(g.refuse_inbound("b", "web"), Some("Drill/cut"));
        assert_eq!(g.refuse_inbound("c", "api"), Some("Drill/cut"));
        assert_eq!(g.refuse_inbound("c", "web"), None);
        let past = GatewayDrills::build(&[drill(unix_ms() - 1)]);
        assert_eq!(past.refuse_outbound("b"), None);
    }

    #[test]
    fn a_drain_needs_zones_and_a_share() {
        let d = pb::Drain {
            name: "Drill/x".into(),
            zones: vec![],
            per_million: 5,
            until_unix_ms: 1,
        };
        assert!(Drain::from_pb(&d).is_none());
        let d = pb::Drain {
            zones: vec!["a".into()],
            per_million: 2_000_000,
            ..d
        };
        assert_eq!(Drain::from_pb(&d).unwrap().per_million, 1_000_000);
    }
}

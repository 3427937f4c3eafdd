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

/// Resolves with the refusing drill's name once `refused` holds for a
/// config `drills` takes up (never while it does not): a flow that a new
/// stage refuses is cut, not only the flows opened after.
pub async fn cut_when(
    mut drills: tokio::sync::watch::Receiver<std::sync::Arc<GatewayDrills>>,
    refused: impl Fn(&GatewayDrills) -> Option<String>,
) -> String {
    loop {
        if drills.changed().await.is_err() {
            return std::future::pending().await;
        }
        let now = drills.borrow_and_update().clone();
        if let Some(why) = refused(&now) {
            return why;
        }
    }
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

    /// A flow's draw, made once when it opens: a drill of share `p`
    /// refuses the flows whose ticket is below `p` (in millionths), so a
    /// later stage with a larger share cuts those flows and more, never
    /// others.
    pub fn ticket(&self) -> u32 {
        (self.rng.next_u64() % 1_000_000) as u32
    }

    /// The drill refusing a flow from this zone to `dest_zone`, if any.
    pub fn refuse_outbound(&self, dest_zone: &str, ticket: u32) -> Option<&str> {
        self.first(ticket, |r| r.peer_zones.iter().any(|z| z == dest_zone))
    }

    /// The drill refusing a flow from `from_zone` to `service` here, if any.
    pub fn refuse_inbound(&self, from_zone: &str, service: &str, ticket: u32) -> Option<&str> {
        self.first(ticket, |r| {
            r.peer_zones.iter().any(|z| z == from_zone)
                || r.all_services
                || r.services.iter().any(|s| s == service)
        })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn first(&self, ticket: u32, applies: impl Fn(&Refusal) -> bool) -> Option<&str> {
        if self.list.is_empty() {
            return None;
        }
        let now = unix_ms();
        self.list
            .iter()
            .find(|r| now < r.until_ms && ticket < r.per_million && applies(r))
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
        let t = g.ticket();
        assert_eq!(g.refuse_outbound("b", t), Some("Drill/cut"));
        assert_eq!(g.refuse_outbound("c", t), None);
        assert_eq!(g.refuse_inbound("b", "web", t), Some("Drill/cut"));
        assert_eq!(g.refuse_inbound("c", "api", t), Some("Drill/cut"));
        assert_eq!(g.refuse_inbound("c", "web", t), None);
        let past = GatewayDrills::build(&[drill(unix_ms() - 1)]);
        assert_eq!(past.refuse_outbound("b", t), None);
        // A share refuses the tickets below it: a larger share, a superset.
        let half = GatewayDrills::build(&[pb::GatewayDrill {
            per_million: 500_000,
            ..drill(unix_ms() + 60_000)
        }]);
        assert!(half.refuse_outbound("b", 499_999).is_some());
        assert!(half.refuse_outbound("b", 500_000).is_none());
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

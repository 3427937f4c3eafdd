//! A running drill, as this zone applies it: the `DrillRun` the global
//! wrote, compiled into proxies' configs until its deadline. The zone
//! enforces the deadline itself (a timer bumps [`Drills::epoch`], which
//! makes every proxy's config be compiled again without the drill), so a
//! drill ends even when the global dies or this zone loses it mid-drill.
//! Each proxy also gets the deadline and stops on its own (`dataplane`'s
//! `drill.rs`), in case this zone control plane is down at that moment.
//!
//! What each method compiles to:
//! - `drain`: callers' clusters of the named services get a `Drain` of the
//!   target zones (every zone's callers, so remote callers stop sending
//!   through their gateways too);
//! - `blackhole`: the target's sidecars get two inbound faults (503 for
//!   requests, a reset for TCP connections), and the target zones'
//!   gateways refuse flows to the named services;
//! - `partition`: the two zones' gateways refuse flows between them.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use model::drill::DrillRunSpec;
use model::resource::Resource;
use proto::v1 as pb;
use tokio::sync::watch;

use crate::Zone;

/// The abort a blackhole gives an HTTP request: what an overloaded or
/// failing instance answers.
pub const BLACKHOLE_STATUS: u32 = 503;

pub struct Drills {
    /// Bumped when a drill's deadline passes here.
    pub epoch: watch::Sender<u64>,
}

impl Default for Drills {
    fn default() -> Self {
        Self {
            epoch: watch::channel(0).0,
        }
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The drill in force now, if any (at most one runs in the mesh); one at
/// 0% is restored and being observed: it only makes proxies report faster.
pub fn current(z: &Zone) -> Option<DrillRunSpec> {
    let now = unix_ms();
    z.global.with_resources(|all| {
        all.range("DrillRun/".to_string().."DrillRun0".to_string())
            .filter_map(|(_, v)| serde_json::from_value::<Resource>(v.clone()).ok())
            .filter_map(|r| serde_json::from_value::<DrillRunSpec>(r.spec).ok())
            .filter(|s| s.until_unix_ms > now)
            .min_by(|a, b| a.drill.cmp(&b.drill))
    })
}

/// Wake at each drill's deadline and have every proxy's config compiled
/// again (without the drill).
pub fn spawn(z: Arc<Zone>) {
    tokio::spawn(async move {
        let mut global = z.global.watch();
        loop {
            let wait = current(&z).map(|r| {
                Duration::from_millis(r.until_unix_ms.saturating_sub(unix_ms()))
                    + Duration::from_millis(5)
            });
            tokio::select! {
                r = global.changed() => if r.is_err() { return },
                _ = async { tokio::time::sleep(wait.unwrap_or_default()).await }, if wait.is_some() => {
                    tracing::warn!("a drill's deadline passed; restoring this zone's proxies");
                    z.drills.epoch.send_modify(|e| *e += 1);
                }
            }
        }
    });
}

fn reference(r: &DrillRunSpec) -> String {
    format!("Drill/{}", r.drill)
}

/// How often proxies report traffic while a drill is in force (ms).
pub const PROXY_REPORT_MS: u32 = 1000;

/// A drain of `service`'s endpoints in the target zones, for callers.
pub fn drain(r: &DrillRunSpec, service: &str) -> Option<pb::Drain> {
    (r.method == "drain" && r.per_million() > 0 && r.names_service(service)).then(|| pb::Drain {
        name: reference(r),
        zones: r.zones.clone(),
        per_million: r.per_million(),
        until_unix_ms: r.until_unix_ms,
    })
}

/// The inbound faults a blackhole gives a sidecar of `service` in `zone`
/// (none when the drill does not name it).
pub fn blackhole(r: &DrillRunSpec, zone: &str, service: &str) -> Vec<pb::Fault> {
    if r.method != "blackhole"
        || r.per_million() == 0
        || !r.zones.iter().any(|z| z == zone)
        || !r.names_service(service)
    {
        return Vec::new();
    }
    let base = pb::Fault {
        name: reference(r),
        abort_per_million: r.per_million(),
        until_unix_ms: r.until_unix_ms,
        ..Default::default()
    };
    vec![
        pb::Fault {
            abort_http_status: BLACKHOLE_STATUS,
            ..base.clone()
        },
        pb::Fault {
            abort_reset: true,
            ..base
        },
    ]
}

/// What a gateway of `zone` must refuse.
pub fn gateway(r: &DrillRunSpec, zone: &str) -> Option<pb::GatewayDrill> {
    if r.per_million() == 0 || !r.zones.iter().any(|z| z == zone) {
        return None;
    }
    let base = pb::GatewayDrill {
        name: reference(r),
        per_million: r.per_million(),
        until_unix_ms: r.until_unix_ms,
        ..Default::default()
    };
    match r.method.as_str() {
        "partition" => Some(pb::GatewayDrill {
            peer_zones: r.zones.iter().filter(|z| *z != zone).cloned().collect(),
            ..base
        }),
        "blackhole" => Some(pb::GatewayDrill {
            services: r.services.clone(),
            all_services: r.services.is_empty(),
            ..base
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(method: &str, zones: &[&str], services: &[&str]) -> DrillRunSpec {
        DrillRunSpec {
            drill: "d".into(),
            run: "d-1".into(),
            method: method.into(),
            zones: zones.iter().map(|s| s.to_string()).collect(),
            services: services.iter().map(|s| s.to_string()).collect(),
            percent: 50.0,
            stage: 0,
            until_unix_ms: 99,
        }
    }

    #[test]
    fn each_method_compiles_to_what_it_names_and_nothing_else() {
        let d = run("drain", &["a"], &["api"]);
        assert_eq!(drain(&d, "api").unwrap().per_million, 500_000);
        assert!(drain(&d, "web").is_none());
        assert!(blackhole(&d, "a", "api").is_empty());
        assert!(gateway(&d, "a").is_none());

        let b = run("blackhole", &["a"], &["api"]);
        let f = blackhole(&b, "a", "api");
        assert_eq!(f.len(), 2);
        assert!(f
            .iter()
            .all(|f| f.until_unix_ms == 99 && f.name == "Drill/d"));
        assert!(blackhole(&b, "b", "api").is_empty());
        assert!(blackhole(&b, "a", "web").is_empty());
        assert!(drain(&b, "api").is_none());
        assert_eq!(gateway(&b, "a").unwrap().services, vec!["api"]);
        assert!(gateway(&b, "b").is_none());

        let p = run("partition", &["a", "b"], &[]);
        assert_eq!(gateway(&p, "a").unwrap().peer_zones, vec!["b"]);
        assert_eq!(gateway(&p, "b").unwrap().peer_zones, vec!["a"]);
        assert!(gateway(&p, "c").is_none());
        assert!(blackhole(&p, "a", "api").is_empty());

        // Restored (0%), being observed: no effect at all.
        let done = |m: &str| DrillRunSpec {
            percent: 0.0,
            ..run(m, &["a", "b"], &["api"])
        };
        assert!(drain(&done("drain"), "api").is_none());
        assert!(blackhole(&done("blackhole"), "a", "api").is_empty());
        assert!(gateway(&done("partition"), "a").is_none());
        assert!(gateway(&done("blackhole"), "a").is_none());
    }
}

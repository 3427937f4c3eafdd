//! Active probes of this zone's gateways: every interval, a TCP connect to
//! each distinct local gateway address that paths to other zones go
//! through (a handful per zone). A failed probe takes those paths out of
//! the balancer until a probe succeeds. Sidecars never probe each other:
//! each one checks its own app (`appcheck.rs`) and the zone control plane
//! publishes only healthy instances, so probes grow with the mesh, not its
//! square. Passive outlier detection (`outlier.rs`) works alongside.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::balance::Endpoint;
use crate::state::Shared;

pub async fn probe_loop(shared: Arc<Shared>, interval: Duration) {
    let timeout = (interval / 2).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let clusters = shared.clusters.load_full();
        let mut by_addr: HashMap<SocketAddr, Vec<Arc<Endpoint>>> = HashMap::new();
        for c in clusters.by_service.values() {
            if c.protocol == crate::protocol::Protocol::Quic {
                continue; // another zone's gateways: the gateway watches those
            }
            for e in c.endpoints.iter().filter(|e| e.target.via.is_some()) {
                by_addr.entry(e.target.addr).or_default().push(e.clone());
            }
        }
        let probes = by_addr.into_iter().map(|(addr, eps)| async move {
            let ok = matches!(
                tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
                Ok(Ok(_))
            );
            for e in eps {
                e.set_probe(ok);
            }
        });
        futures_util::future::join_all(probes).await;
    }
}

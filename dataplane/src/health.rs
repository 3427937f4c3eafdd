//! Active health checking: every interval, a TCP connect to each distinct
//! endpoint address (sidecars of this zone, and local gateways for other
//! zones). A failed probe takes the endpoint out of the balancer until a
//! probe succeeds; passive outlier detection (ejection on failed requests)
//! works alongside it.

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
            for e in &c.endpoints {
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

//! Probes of proxies in their grace period: a proxy whose stream to this
//! zone-cp broke stays published for `--deregister-after` (a restart should
//! not withdraw it), but one whose port refuses connections is dead, not
//! restarting slowly. Every second each such proxy gets one TCP connect;
//! while it fails, the proxy is withdrawn (callers stop using it within a
//! second and a push). Connected proxies are never probed: their stream
//! says they are alive, and their own checks say whether their app is.
//! One prober per zone, probing only the few disconnected proxies.

use std::sync::Arc;
use std::time::Duration;

use crate::registry::Registry;

pub const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_millis(500);

pub fn spawn(registry: Arc<Registry>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let probes = registry.disconnected().into_iter().map(|(instance, addr)| {
                let registry = registry.clone();
                async move {
                    let ok = matches!(
                        tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(&addr)).await,
                        Ok(Ok(_))
                    );
                    registry.set_reachable(&instance, ok);
                }
            });
            futures_util::future::join_all(probes).await;
        }
    });
}

//! Spare connections to this zone's gateways, so that a new cross-zone flow
//! pays only for its own end-to-end handshake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Pre-handshaked mTLS connections to this zone's gateways, taken by new
/// cross-zone flows and refilled in the background. Spares older than
/// [`SPARE_MAX_AGE`] are dropped (the gateway closes idle ones later).
#[derive(Default)]
pub struct Spares {
    pool: Mutex<HashMap<SocketAddr, Vec<(Instant, SpareConn)>>>,
    refilling: Mutex<std::collections::HashSet<SocketAddr>>,
}

pub type SpareConn = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;
pub const SPARES_PER_GATEWAY: usize = 2;
pub const SPARE_MAX_AGE: Duration = Duration::from_secs(20);

impl Spares {
    pub fn take(&self, addr: SocketAddr) -> Option<SpareConn> {
        let mut g = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let v = g.get_mut(&addr)?;
        while let Some((born, c)) = v.pop() {
            if born.elapsed() < SPARE_MAX_AGE {
                return Some(c);
            }
        }
        None
    }

    fn count(&self, addr: SocketAddr) -> usize {
        let mut g = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let v = g.entry(addr).or_default();
        v.retain(|(born, _)| born.elapsed() < SPARE_MAX_AGE);
        v.len()
    }

    /// Top the pool for `addr` up in the background (one refill at a time),
    /// with `dial` making each connection.
    pub fn refill<F, Fut, E>(self: &Arc<Self>, addr: SocketAddr, dial: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<SpareConn, E>> + Send,
    {
        if !self
            .refilling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr)
        {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            while me.count(addr) < SPARES_PER_GATEWAY {
                match dial().await {
                    Ok(c) => me
                        .pool
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(addr)
                        .or_default()
                        .push((Instant::now(), c)),
                    Err(_) => break,
                }
            }
            me.refilling
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&addr);
        });
    }
}

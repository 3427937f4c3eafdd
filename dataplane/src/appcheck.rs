//! Health checks of this sidecar's own app, as the service's `HealthCheck`
//! policy says: an HTTP GET, a TCP connect, or the gRPC health protocol,
//! every interval (plus a random jitter), each bounded by a timeout. After
//! `unhealthyThreshold` failures in a row the app is unhealthy; after
//! `healthyThreshold` successes in a row healthy again. The state goes to
//! the zone control plane (`cp_client.rs`), which publishes only healthy
//! instances: no sidecar probes another.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Either, Full};
use proto::v1 as pb;

use crate::balance::Rng;
use crate::proxy::Proxy;

/// A check, compiled from the policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub name: String,
    pub kind: Kind,
    pub interval: Duration,
    pub timeout: Duration,
    pub jitter: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Http { path: String, expect: Vec<u16> },
    Tcp,
    Grpc { service: String },
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_UNHEALTHY: u32 = 3;
pub const DEFAULT_HEALTHY: u32 = 2;

fn ms_or(ms: u64, d: Duration) -> Duration {
    if ms == 0 {
        d
    } else {
        Duration::from_millis(ms)
    }
}

impl Check {
    pub fn build(p: &pb::HealthCheck) -> Result<Self, String> {
        let kind = match p.kind.as_str() {
            "http" => Kind::Http {
                path: p.path.clone(),
                expect: p.expected_statuses.iter().map(|s| *s as u16).collect(),
            },
            "tcp" => Kind::Tcp,
            "grpc" => Kind::Grpc {
                service: p.grpc_service.clone(),
            },
            other => return Err(format!("unknown health check kind {other:?}")),
        };
        Ok(Self {
            name: p.name.clone(),
            kind,
            interval: ms_or(p.interval_ms, DEFAULT_INTERVAL),
            timeout: ms_or(p.timeout_ms, DEFAULT_TIMEOUT),
            jitter: Duration::from_millis(p.jitter_ms),
            unhealthy_threshold: if p.unhealthy_threshold == 0 {
                DEFAULT_UNHEALTHY
            } else {
                p.unhealthy_threshold
            },
            healthy_threshold: if p.healthy_threshold == 0 {
                DEFAULT_HEALTHY
            } else {
                p.healthy_threshold
            },
        })
    }
}

/// The thresholds' state machine: healthy until enough failures in a row,
/// then unhealthy until enough successes in a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub healthy: bool,
    streak: u32,
}

impl Default for Verdict {
    /// An instance starts healthy: it registered and serves.
    fn default() -> Self {
        Self {
            healthy: true,
            streak: 0,
        }
    }
}

impl Verdict {
    /// Record one check; returns whether the verdict changed.
    pub fn record(&mut self, ok: bool, c: &Check) -> bool {
        if ok == self.healthy {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let needed = if self.healthy {
            c.unhealthy_threshold
        } else {
            c.healthy_threshold
        };
        if self.streak >= needed {
            self.healthy = ok;
            self.streak = 0;
            true
        } else {
            false
        }
    }
}

impl Proxy {
    /// Run the checks the current config asks for, for as long as the proxy
    /// runs; each verdict change is published on `shared.app_health`.
    pub async fn app_check_loop(self: Arc<Self>) {
        let rng = Rng::new();
        let mut verdict = Verdict::default();
        let mut current: Option<Check> = None;
        loop {
            let check = self.shared.health_check.load_full();
            if check.as_deref() != current.as_ref() {
                // A new or changed check starts from a clean slate.
                current = check.as_deref().cloned();
                verdict = Verdict::default();
                self.shared
                    .app_health
                    .send_replace(current.as_ref().map(|_| true));
            }
            let Some(c) = current.clone() else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let wait = c.interval + c.jitter.mul_f64(rng.unit());
            tokio::time::sleep(wait).await;
            let result = match tokio::time::timeout(c.timeout, self.check_app(&c.kind)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {:?}", c.timeout)),
            };
            let ok = result.is_ok();
            self.metrics
                .health_checks
                .get_or_create(&crate::metrics::ResultLabel {
                    result: if ok { "healthy" } else { "unhealthy" },
                })
                .inc();
            if let Err(why) = &result {
                tracing::debug!(check = %c.name, error = %why, "app health check failed");
            }
            if verdict.record(ok, &c) {
                match &result {
                    Ok(()) => tracing::info!(check = %c.name, "app healthy again"),
                    Err(why) => tracing::warn!(check = %c.name, error = %why, "app unhealthy"),
                }
                self.shared.app_health.send_replace(Some(verdict.healthy));
            }
        }
    }

    async fn check_app(&self, kind: &Kind) -> Result<(), String> {
        let Some(addr) = self.app_addr else {
            return Err("no local app (--app)".into());
        };
        match kind {
            Kind::Tcp => tokio::net::TcpStream::connect(addr)
                .await
                .map(|_| ())
                .map_err(|e| format!("connect {addr}: {e}")),
            Kind::Http { path, expect } => {
                let req = Request::get(format!("http://{addr}{path}"))
                    .header("user-agent", "tern-health-check")
                    .version(self.app_version())
                    .body(Either::Right(Full::new(Bytes::new())))
                    .map_err(|e| e.to_string())?;
                let resp = self.app.send(req).await.map_err(|e| e.to_string())?;
                let s = resp.status();
                let ok = if expect.is_empty() {
                    s.is_success() || s.is_redirection()
                } else {
                    expect.contains(&s.as_u16())
                };
                // Read the body so the connection can be reused.
                let _ = resp.into_body().collect().await;
                ok.then_some(()).ok_or_else(|| format!("answered {s}"))
            }
            Kind::Grpc { service } => {
                let req = Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .version(Version::HTTP_2)
                    .body(Either::Right(Full::new(grpc_request(service))))
                    .map_err(|e| e.to_string())?;
                let resp = self.app.send(req).await.map_err(|e| e.to_string())?;
                if resp.status() != StatusCode::OK {
                    return Err(format!("answered {}", resp.status()));
                }
                let head_status = crate::resilience::grpc_status(resp.headers());
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?;
                let trailer_status = body.trailers().and_then(crate::resilience::grpc_status);
                match head_status.or(trailer_status) {
                    Some(0) | None => {}
                    Some(s) => return Err(format!("grpc-status {s}")),
                }
                match serving_status(&body.to_bytes()) {
                    Some(1) => Ok(()),
                    Some(s) => Err(format!("health status {s} (1 is SERVING)")),
                    None => Err("no health status in the answer".into()),
                }
            }
        }
    }

    fn app_version(&self) -> Version {
        if self.app_protocol == crate::protocol::Protocol::Http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        }
    }
}

/// A framed `HealthCheckRequest { service = 1 }`.
fn grpc_request(service: &str) -> Bytes {
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut out = vec![0u8];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    Bytes::from(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The `status` (field 1) of a framed `HealthCheckResponse`; an empty
/// message means status 0 (UNKNOWN).
fn serving_status(framed: &[u8]) -> Option<u64> {
    if framed.len() < 5 || framed[0] != 0 {
        return None;
    }
    let len = u32::from_be_bytes(framed[1..5].try_into().ok()?) as usize;
    let mut msg = framed.get(5..5 + len)?;
    let mut status = 0;
    while !msg.is_empty() {
        let (tag, rest) = varint(msg)?;
        msg = rest;
        match tag & 7 {
            0 => {
                let (v, rest) = varint(msg)?;
                msg = rest;
                if tag >> 3 == 1 {
                    status = v;
                }
            }
            2 => {
                let (n, rest) = varint(msg)?;
                msg = rest.get(n as usize..)?;
            }
            _ => return None,
        }
    }
    Some(status)
}

fn varint(b: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, &b[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(unhealthy: u32, healthy: u32) -> Check {
        Check {
            name: "c".into(),
            kind: Kind::Tcp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            jitter: Duration::ZERO,
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
        }
    }

    #[test]
    fn thresholds_need_that_many_results_in_a_row() {
        let c = check(3, 2);
        let mut v = Verdict::default();
        assert!(!v.record(false, &c) && !v.record(false, &c));
        assert!(!v.record(true, &c), "a success breaks the streak");
        assert!(!v.record(false, &c) && !v.record(false, &c));
        assert!(v.record(false, &c) && !v.healthy, "third failure in a row");
        assert!(!v.record(true, &c));
        assert!(!v.record(false, &c), "a failure breaks the streak");
        assert!(!v.record(true, &c));
        assert!(v.record(true, &c) && v.healthy, "second success in a row");
    }

    #[test]
    fn grpc_health_messages_are_framed_and_read() {
        assert_eq!(&grpc_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &grpc_request("a.B")[..],
            &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
        );
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(serving_status(&[0, 0, 0, 0, 9, 0x08]), None, "truncated");
        assert_eq!(serving_status(&[1, 0, 0, 0, 0]), None, "compressed");
    }
}

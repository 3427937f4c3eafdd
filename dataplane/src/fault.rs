//! Fault injection on the inbound side: the faults the zone control plane
//! compiled for this proxy (`pb::InboundPolicy.faults`, from
//! `FaultInjection` policies), drawn per HTTP request or TCP connection
//! once the access rules have let it in. The first fault whose callers and
//! conditions match applies; its delay and its abort are drawn each with
//! its own share. An injected abort looks to the caller like the app's own
//! answer (no `x-tern-error`), so callers' real detection paths see it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use proto::v1 as pb;

use crate::access::{Caller, Condition, Request};
use crate::balance::Rng;
use crate::proxy::Body;

/// Response header naming the fault that delayed or answered a request.
pub const FAULT_HEADER: &str = "x-tern-fault";

/// How an aborted request or connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abort {
    /// This HTTP status (HTTP only).
    Http(StatusCode),
    /// A gRPC status, trailers-only (HTTP only).
    Grpc(u32),
    /// A TCP reset (TCP connections only).
    Reset,
}

struct Fault {
    name: Arc<str>,
    cond: Condition,
    delay: Option<(Duration, u32)>,
    abort: Option<(Abort, u32)>,
    /// A drill's fault: not applied from this time on (unix ms).
    until_ms: Option<u64>,
}

/// What to do to one request or connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injected {
    pub fault: Arc<str>,
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

/// The compiled faults of this proxy.
#[derive(Default)]
pub struct Faults {
    faults: Vec<Fault>,
    rng: Rng,
    summary: Vec<serde_json::Value>,
}

impl Faults {
    pub fn build(p: &[pb::Fault]) -> Result<Self, String> {
        let mut faults = Vec::with_capacity(p.len());
        for f in p {
            let share = |n: u32| -> Result<u32, String> {
                if n > 1_000_000 {
                    Err(format!("fault {}: share {n} out of range", f.name))
                } else {
                    Ok(n)
                }
            };
            let abort = match (f.abort_http_status, f.abort_grpc_status, f.abort_reset) {
                (0, 0, false) => None,
                (s, 0, false) => Some(Abort::Http(
                    u16::try_from(s)
                        .ok()
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .ok_or_else(|| format!("fault {}: bad HTTP status {s}", f.name))?,
                )),
                (0, g, false) if g <= 16 => Some(Abort::Grpc(g)),
                (0, g, false) => return Err(format!("fault {}: bad gRPC status {g}", f.name)),
                (0, 0, true) => Some(Abort::Reset),
                _ => return Err(format!("fault {}: more than one abort", f.name)),
            };
            faults.push(Fault {
                name: f.name.as_str().into(),
                cond: Condition::build(&f.name, &f.from, &f.methods, &f.paths, f.http_only)?,
                delay: (f.delay_ms > 0 && f.delay_per_million > 0)
                    .then(|| {
                        Ok::<_, String>((
                            Duration::from_millis(f.delay_ms),
                            share(f.delay_per_million)?,
                        ))
                    })
                    .transpose()?,
                abort: match abort {
                    Some(a) if f.abort_per_million > 0 => Some((a, share(f.abort_per_million)?)),
                    _ => None,
                },
                until_ms: (f.until_unix_ms > 0).then_some(f.until_unix_ms),
            });
        }
        let summary = p
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name,
                    "callers": f.from.len(),
                    "methods": f.methods,
                    "paths": f.paths.len(),
                    "delayMs": f.delay_ms,
                    "delayPercent": f.delay_per_million as f64 / 10_000.0,
                    "abortHttpStatus": f.abort_http_status,
                    "abortGrpcStatus": f.abort_grpc_status,
                    "abortReset": f.abort_reset,
                    "abortPercent": f.abort_per_million as f64 / 10_000.0,
                    "untilUnixMs": (f.until_unix_ms > 0).then_some(f.until_unix_ms),
                })
            })
            .collect();
        Ok(Self {
            faults,
            rng: Rng::new(),
            summary,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }

    pub fn dump(&self) -> serde_json::Value {
        serde_json::Value::Array(self.summary.clone())
    }

    fn hit(&self, per_million: u32) -> bool {
        self.rng.hit(per_million)
    }

    /// For `caller` (None: plaintext) making `req` (None: a TCP
    /// connection): the first matching fault, with its delay and abort
    /// drawn (an abort that cannot apply to this kind of traffic is not).
    pub fn draw(&self, caller: Option<&Caller>, req: Option<Request<'_>>) -> Option<Injected> {
        // A fault with nothing to do to this kind of traffic (an HTTP abort
        // for a TCP connection, a reset for a request, and no delay) does
        // not match it, so it cannot hide a later fault that does.
        let tcp = req.is_none();
        let f = self
            .faults
            .iter()
            .filter(|f| {
                f.delay.is_some() || f.abort.is_some_and(|(a, _)| (a == Abort::Reset) == tcp)
            })
            .filter(|f| f.until_ms.is_none_or(|u| crate::drill::unix_ms() < u))
            .find(|f| f.cond.matches(caller, req))?;
        let delay = f.delay.filter(|(_, n)| self.hit(*n)).map(|(d, _)| d);
        let abort = f
            .abort
            .filter(|(a, _)| (*a == Abort::Reset) == tcp)
            .filter(|(_, n)| self.hit(*n))
            .map(|(a, _)| a);
        (delay.is_some() || abort.is_some()).then(|| Injected {
            fault: f.name.clone(),
            delay,
            abort,
        })
    }
}

impl Faults {
    /// For a TCP connection already open: the drill whose reset it draws
    /// now, if any (a blackhole that begins cuts live connections too;
    /// other faults apply to new connections only).
    pub fn drill_cut(&self, caller: Option<&Caller>) -> Option<Arc<str>> {
        let now = crate::drill::unix_ms();
        let f = self
            .faults
            .iter()
            .filter(|f| f.name.starts_with("Drill/") && f.until_ms.is_none_or(|u| now < u))
            .filter(|f| f.abort.is_some_and(|(a, _)| a == Abort::Reset))
            .find(|f| f.cond.matches(caller, None))?;
        let (_, share) = f.abort?;
        self.hit(share).then(|| f.name.clone())
    }
}

/// The answer to an HTTP request aborted by `fault`.
pub fn abort_response(abort: Abort, fault: &str) -> Response<Body> {
    let msg = format!("fault injected by {fault}");
    let mut r = match abort {
        Abort::Grpc(code) => {
            let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
            let h = r.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", HeaderValue::from(code));
            if let Ok(v) = HeaderValue::from_str(&msg) {
                h.insert("grpc-message", v);
            }
            r
        }
        Abort::Http(status) => {
            let mut r = Response::new(Either::Right(Full::new(Bytes::from(msg + "\n"))));
            *r.status_mut() = status;
            r
        }
        // Never drawn for HTTP; answered as unavailable if it were.
        Abort::Reset => {
            let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }
    };
    if let Ok(v) = HeaderValue::from_str(fault) {
        r.headers_mut().insert(FAULT_HEADER, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(name: &str, from_service: &str, paths: &[&str]) -> pb::Fault {
        pb::Fault {
            name: name.into(),
            from: if from_service.is_empty() {
                vec![]
            } else {
                vec![pb::Caller {
                    service: from_service.into(),
                    ..Default::default()
                }]
            },
            paths: paths
                .iter()
                .map(|p| pb::StringMatch {
                    r#match: Some(pb::string_match::Match::Prefix(p.to_string())),
                })
                .collect(),
            http_only: !paths.is_empty(),
            ..Default::default()
        }
    }

    fn web() -> Caller {
        Caller::from_peer(
            &model::ident::SpiffeId::parse("spiffe://tern/zone/z1/svc/web").unwrap(),
            None,
        )
    }

    fn get(path: &str) -> Request<'_> {
        Request {
            method: &http::Method::GET,
            path,
        }
    }

    /// The first fault whose callers and conditions match applies; others
    /// are not consulted; a caller or path nothing names gets nothing.
    #[test]
    fn a_drill_reset_cuts_live_connections_until_its_deadline_and_other_faults_do_not() {
        let reset = |name: &str, until: u64| pb::Fault {
            abort_reset: true,
            abort_per_million: 1_000_000,
            until_unix_ms: until,
            ..fault(name, "", &[])
        };
        let later = crate::drill::unix_ms() + 60_000;
        let c = web();
        let f = Faults::build(&[reset("FaultInjection/f/r", 0), reset("Drill/d", later)]).unwrap();
        assert_eq!(f.drill_cut(Some(&c)).as_deref(), Some("Drill/d"));
        let only_policy = Faults::build(&[reset("FaultInjection/f/r", 0)]).unwrap();
        assert!(only_policy.drill_cut(Some(&c)).is_none());
        let over = Faults::build(&[reset("Drill/d", 1)]).unwrap();
        assert!(over.drill_cut(Some(&c)).is_none());
        assert!(over.draw(Some(&c), None).is_none(), "past its deadline");
    }

    #[test]
    fn the_first_matching_fault_applies() {
        let f = Faults::build(&[
            pb::Fault {
                abort_http_status: 503,
                abort_per_million: 1_000_000,
                ..fault("F/a/slow-web", "web", &["/slow"])
            },
            pb::Fault {
                delay_ms: 5,
                delay_per_million: 1_000_000,
                ..fault("F/a/everyone", "", &[])
            },
        ])
        .unwrap();
        let c = web();
        let i = f.draw(Some(&c), Some(get("/slow/x"))).unwrap();
        assert_eq!(&*i.fault, "F/a/slow-web");
        assert_eq!(i.abort, Some(Abort::Http(StatusCode::SERVICE_UNAVAILABLE)));
        assert_eq!(i.delay, None);
        // Another path: the catch-all, a delay only.
        let i = f.draw(Some(&c), Some(get("/fast"))).unwrap();
        assert_eq!(&*i.fault, "F/a/everyone");
        assert_eq!(i.delay, Some(Duration::from_millis(5)));
        // A plaintext caller is not `web`, but every caller matches the
        // catch-all, TCP connections included.
        assert_eq!(
            &*f.draw(None, Some(get("/slow"))).unwrap().fault,
            "F/a/everyone"
        );
        assert_eq!(&*f.draw(Some(&c), None).unwrap().fault, "F/a/everyone");
        assert!(Faults::default().draw(Some(&c), None).is_none());
    }

    /// An HTTP abort never applies to a TCP connection, a reset never to
    /// HTTP: the fault still matches, the abort is not drawn.
    #[test]
    fn aborts_apply_only_to_the_traffic_they_can_end() {
        let f = |http: u32, reset: bool| {
            Faults::build(&[pb::Fault {
                abort_http_status: http,
                abort_reset: reset,
                abort_per_million: 1_000_000,
                ..fault("F/a/x", "", &[])
            }])
            .unwrap()
        };
        let c = web();
        assert!(f(503, false).draw(Some(&c), None).is_none());
        assert!(f(0, true).draw(Some(&c), Some(get("/"))).is_none());
        assert_eq!(
            f(0, true).draw(Some(&c), None).unwrap().abort,
            Some(Abort::Reset)
        );
        assert!(Faults::build(&[pb::Fault {
            abort_http_status: 503,
            abort_reset: true,
            ..fault("F/a/x", "", &[])
        }])
        .is_err());
        // A reset-only fault does not hide a later fault from HTTP requests,
        // nor an HTTP abort from TCP connections.
        let both = Faults::build(&[
            pb::Fault {
                abort_reset: true,
                abort_per_million: 1_000_000,
                ..fault("F/a/reset", "", &[])
            },
            pb::Fault {
                abort_http_status: 503,
                abort_per_million: 1_000_000,
                ..fault("F/a/abort", "", &[])
            },
        ])
        .unwrap();
        assert_eq!(
            &*both.draw(Some(&c), Some(get("/"))).unwrap().fault,
            "F/a/abort"
        );
        assert_eq!(&*both.draw(Some(&c), None).unwrap().fault, "F/a/reset");
    }

    /// A 25% abort over 20,000 requests lands within 1.6 points of 25%:
    /// the binomial standard deviation is 0.31 points, so the bound is
    /// five of them.
    #[test]
    fn shares_are_drawn_per_request() {
        let f = Faults::build(&[pb::Fault {
            abort_grpc_status: 14,
            abort_per_million: 250_000,
            ..fault("F/a/x", "", &[])
        }])
        .unwrap();
        let c = web();
        let n = 20_000;
        let hit = (0..n)
            .filter(|_| f.draw(Some(&c), Some(get("/"))).is_some())
            .count() as f64
            / n as f64;
        assert!((hit - 0.25).abs() < 0.016, "{hit}");
    }

    #[test]
    fn a_grpc_abort_is_a_trailers_only_answer_naming_the_fault() {
        let r = abort_response(Abort::Grpc(14), "FaultInjection/f/unavailable");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(
            r.headers()["grpc-message"],
            "fault injected by FaultInjection/f/unavailable"
        );
        assert_eq!(r.headers()[FAULT_HEADER], "FaultInjection/f/unavailable");
        let r = abort_response(Abort::Http(StatusCode::IM_A_TEAPOT), "F/x/y");
        assert_eq!(r.status(), 418);
    }
}

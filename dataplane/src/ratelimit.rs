//! Local rate limits on the inbound side: the limits the zone control
//! plane compiled for this proxy (`pb::InboundPolicy.rate_limits`, from
//! `RateLimit` policies), checked per HTTP request or TCP connection once
//! the access rules have let it in. The first limit whose callers and
//! conditions match applies; it takes a token from its bucket (one, one per
//! caller, or one per value of a header), or answers 429 with
//! `retry-after` (HTTP) or resets the connection (TCP). Buckets outlive
//! config updates that leave their limit unchanged.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use proto::v1 as pb;

use crate::access::{Caller, Condition, Request};
use crate::proxy::Body;

/// Response header naming the limit that refused a request.
pub const LIMIT_HEADER: &str = "x-tern-ratelimit";
/// Keyed buckets one limit keeps; past that, new keys share one bucket.
pub const MAX_KEYS: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Per {
    One,
    Caller,
    Header(HeaderName),
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Rate {
    /// Tokens per second.
    per_sec: f64,
    burst: f64,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        // Callers read the clock before taking the lock, so `now` may be a
        // little older than `last`: never move `last` back (that would
        // credit the same time twice).
        if now > self.last {
            let dt = (now - self.last).as_secs_f64();
            self.tokens = (self.tokens + dt * rate.per_sec).min(rate.burst);
            self.last = now;
        }
    }

    /// Take a token, or say how long until one is there.
    fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate.per_sec))
        }
    }
}

struct Buckets {
    one: Bucket,
    /// By a keyed hash of the caller or header value (values are the
    /// caller's to choose and may be long; a hash bounds the memory).
    keyed: HashMap<u64, Bucket>,
    hasher: std::collections::hash_map::RandomState,
    /// When a full table was last swept for refilled buckets (at most
    /// once a second, so a flood of new keys does not scan it each time).
    swept: Option<Instant>,
}

/// How often a full table of keyed buckets may be swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Limit {
    name: Arc<str>,
    cond: Condition,
    tcp: bool,
    per: Per,
    rate: Rate,
    buckets: Arc<Mutex<Buckets>>,
}

/// A refusal: which limit, and when a token will be there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limited {
    pub limit: Arc<str>,
    pub retry_after: Duration,
}

/// The compiled rate limits of this proxy.
#[derive(Default)]
pub struct RateLimits {
    limits: Vec<Limit>,
    summary: Vec<serde_json::Value>,
}

impl RateLimits {
    /// Build from config; a limit `old` holds unchanged keeps its buckets.
    pub fn build(p: &[pb::RateLimit], old: &RateLimits) -> Result<Self, String> {
        let now = Instant::now();
        let mut limits = Vec::with_capacity(p.len());
        for l in p {
            if l.tokens == 0 || l.interval_ms == 0 || l.burst == 0 {
                return Err(format!("rate limit {}: empty bucket", l.name));
            }
            let rate = Rate {
                per_sec: l.tokens as f64 / (l.interval_ms as f64 / 1000.0),
                burst: l.burst as f64,
            };
            let per = match (l.per_caller, l.per_header.as_str()) {
                (false, "") => Per::One,
                (true, "") => Per::Caller,
                (false, h) => Per::Header(
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| format!("rate limit {}: bad header {h:?}", l.name))?,
                ),
                (true, _) => return Err(format!("rate limit {}: two keys", l.name)),
            };
            let kept = old
                .limits
                .iter()
                .find(|o| *o.name == *l.name && o.tcp == l.tcp && o.per == per && o.rate == rate);
            limits.push(Limit {
                name: l.name.as_str().into(),
                cond: Condition::build(&l.name, &l.from, &l.methods, &l.paths, l.http_only)?,
                tcp: l.tcp,
                per,
                rate,
                buckets: match kept {
                    Some(o) => o.buckets.clone(),
                    None => Arc::new(Mutex::new(Buckets {
                        one: Bucket::full(rate, now),
                        keyed: HashMap::new(),
                        hasher: Default::default(),
                        swept: None,
                    })),
                },
            });
        }
        let summary = p
            .iter()
            .map(|l| {
                serde_json::json!({
                    "name": l.name,
                    "kind": if l.tcp { "tcp" } else { "http" },
                    "callers": l.from.len(),
                    "methods": l.methods,
                    "paths": l.paths.len(),
                    "tokens": l.tokens,
                    "intervalMs": l.interval_ms,
                    "burst": l.burst,
                    "per": if l.per_caller { "caller".to_string() } else if l.per_header.is_empty() { "one bucket".to_string() } else { format!("header {}", l.per_header) },
                })
            })
            .collect();
        Ok(Self { limits, summary })
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    pub fn dump(&self) -> serde_json::Value {
        serde_json::Value::Array(self.summary.clone())
    }

    /// For `caller` (None: plaintext) making `req` with `headers` (None: a
    /// TCP connection): `Some` when the first matching limit refuses it.
    pub fn check(
        &self,
        caller: Option<&Caller>,
        req: Option<(Request<'_>, &HeaderMap)>,
    ) -> Option<Limited> {
        self.check_at(caller, req, Instant::now())
    }

    fn check_at(
        &self,
        caller: Option<&Caller>,
        req: Option<(Request<'_>, &HeaderMap)>,
        now: Instant,
    ) -> Option<Limited> {
        let l = self
            .limits
            .iter()
            .filter(|l| l.tcp == req.is_none())
            .find(|l| l.cond.matches(caller, req.map(|(r, _)| r)))?;
        let mut b = l.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = &mut *b;
        let key = match &l.per {
            Per::One => None,
            Per::Caller => Some(match caller {
                Some(c) => b.hasher.hash_one((&c.zone, &c.service)),
                None => b.hasher.hash_one("plaintext"),
            }),
            Per::Header(h) => Some(
                b.hasher.hash_one(
                    req.and_then(|(_, hs)| hs.get(h))
                        .map(|v| v.as_bytes())
                        .unwrap_or_default(),
                ),
            ),
        };
        let bucket = match key {
            None => &mut b.one,
            Some(k) => {
                let full = !b.keyed.contains_key(&k) && b.keyed.len() >= MAX_KEYS;
                if full
                    && b.swept
                        .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY)
                {
                    // Forget buckets that have filled up again (they hold
                    // nothing a fresh one would not).
                    b.swept = Some(now);
                    let rate = l.rate;
                    b.keyed.retain(|_, x| {
                        x.refill(rate, now);
                        x.tokens < rate.burst
                    });
                }
                if b.keyed.contains_key(&k) || b.keyed.len() < MAX_KEYS {
                    b.keyed
                        .entry(k)
                        .or_insert_with(|| Bucket::full(l.rate, now))
                } else {
                    // Still full: new keys share the limit's single bucket.
                    &mut b.one
                }
            }
        };
        bucket.take(l.rate, now).err().map(|wait| Limited {
            limit: l.name.clone(),
            retry_after: wait,
        })
    }
}

/// The 429 for a request `limited` refused: `retry-after` in whole seconds
/// (at least 1), the limit named in the body and in `x-tern-ratelimit`.
pub fn too_many(limited: &Limited) -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(format!(
        "rate limited by {}\n",
        limited.limit
    )))));
    *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let secs = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    r.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    if let Ok(v) = HeaderValue::from_str(&limited.limit) {
        r.headers_mut().insert(LIMIT_HEADER, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(name: &str, tokens: u32, interval_ms: u64, burst: u32) -> pb::RateLimit {
        pb::RateLimit {
            name: name.into(),
            http_only: true,
            tokens,
            interval_ms,
            burst,
            ..Default::default()
        }
    }

    fn caller(service: &str) -> Caller {
        Caller::from_peer(
            &model::ident::SpiffeId::parse(&format!("spiffe://tern/zone/z1/svc/{service}"))
                .unwrap(),
            None,
        )
    }

    fn get() -> Request<'static> {
        Request {
            method: &http::Method::GET,
            path: "/",
        }
    }

    /// A bucket of 10 per second with a burst of 5: five pass at once, the
    /// sixth is refused with the time until the next token (100 ms), which
    /// comes at that time and not before; idle, it fills up to the burst
    /// and no more.
    #[test]
    fn a_token_bucket_allows_its_burst_then_its_rate() {
        let l = RateLimits::build(&[limit("R/a/x", 10, 1000, 5)], &Default::default()).unwrap();
        let h = HeaderMap::new();
        let c = caller("web");
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(l.check_at(Some(&c), Some((get(), &h)), t0).is_none());
        }
        let refused = l.check_at(Some(&c), Some((get(), &h)), t0).unwrap();
        assert_eq!(&*refused.limit, "R/a/x");
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        assert!(l
            .check_at(Some(&c), Some((get(), &h)), t0 + Duration::from_millis(99))
            .is_some());
        assert!(l
            .check_at(Some(&c), Some((get(), &h)), t0 + Duration::from_millis(200))
            .is_none());
        let later = t0 + Duration::from_secs(60);
        let passed = (0..20)
            .filter(|_| l.check_at(Some(&c), Some((get(), &h)), later).is_none())
            .count();
        assert_eq!(passed, 5, "refilled to the burst, not beyond");
        // A clock read before another thread's (an older `now`) credits
        // nothing twice. The bucket is empty at `later`; at +50 ms it holds
        // half a token; a reading of +10 ms then comes late; at +100 ms one
        // token is there (not 1.4), and at +160 ms only 0.6 again.
        let at = |ms: u64| {
            l.check_at(
                Some(&c),
                Some((get(), &h)),
                later + Duration::from_millis(ms),
            )
        };
        assert!(at(50).is_some());
        assert!(at(10).is_some());
        assert!(at(100).is_none());
        assert!(at(100).is_some());
        assert!(at(160).is_some(), "a backwards clock credited time twice");
        // An HTTP limit never applies to a TCP connection.
        assert!(l.check_at(Some(&c), None, t0).is_none());
    }

    /// Per caller and per header value, each key has its own bucket.
    #[test]
    fn keyed_limits_keep_a_bucket_per_caller_or_header_value() {
        let per_caller = RateLimits::build(
            &[pb::RateLimit {
                per_caller: true,
                ..limit("R/a/c", 1, 1000, 1)
            }],
            &Default::default(),
        )
        .unwrap();
        let h = HeaderMap::new();
        let t = Instant::now();
        let (web, batch) = (caller("web"), caller("batch"));
        assert!(per_caller
            .check_at(Some(&web), Some((get(), &h)), t)
            .is_none());
        assert!(per_caller
            .check_at(Some(&web), Some((get(), &h)), t)
            .is_some());
        assert!(per_caller
            .check_at(Some(&batch), Some((get(), &h)), t)
            .is_none());

        let per_key = RateLimits::build(
            &[pb::RateLimit {
                per_header: "x-api-key".into(),
                ..limit("R/a/k", 1, 1000, 1)
            }],
            &Default::default(),
        )
        .unwrap();
        let with = |k: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-api-key", k.parse().unwrap());
            h
        };
        let (a, b) = (with("a"), with("b"));
        assert!(per_key.check_at(Some(&web), Some((get(), &a)), t).is_none());
        assert!(per_key.check_at(Some(&web), Some((get(), &a)), t).is_some());
        assert!(per_key.check_at(Some(&web), Some((get(), &b)), t).is_none());
    }

    /// A config update that keeps a limit keeps its buckets (an update must
    /// not hand every caller a fresh burst); a changed limit starts full.
    #[test]
    fn buckets_outlive_config_updates_that_keep_their_limit() {
        let cfg = [limit("R/a/x", 1, 60_000, 1)];
        let h = HeaderMap::new();
        let c = caller("web");
        let first = RateLimits::build(&cfg, &Default::default()).unwrap();
        assert!(first.check(Some(&c), Some((get(), &h))).is_none());
        let same = RateLimits::build(&cfg, &first).unwrap();
        assert!(same.check(Some(&c), Some((get(), &h))).is_some());
        let changed = RateLimits::build(&[limit("R/a/x", 2, 60_000, 2)], &same).unwrap();
        assert!(changed.check(Some(&c), Some((get(), &h))).is_none());
    }

    #[test]
    fn a_refusal_says_when_to_come_back() {
        let r = too_many(&Limited {
            limit: "RateLimit/l/x".into(),
            retry_after: Duration::from_millis(1500),
        });
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(r.headers()[LIMIT_HEADER], "RateLimit/l/x");
    }
}

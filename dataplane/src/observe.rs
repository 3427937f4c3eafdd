//! What a request leaves behind besides its answer: one record of it
//! ([`Line`]), built once from facts taken before it went on, from which
//! come its span (`trace.rs`) and its access log line or OTLP log record
//! (`access_log.rs`), in JSON or text (`observe/render.rs`).

mod render;

use std::time::{Duration, SystemTime};

use common::traffic::Decision;
use http::HeaderValue;

use crate::metrics::Direction;
use crate::state::Shared;
use crate::trace;

/// A request in progress, as far as traces and access logs care: its span
/// (if its trace is recorded here) and its facts (if a span or a log line
/// will want them), taken once.
pub struct Observed {
    span: Option<trace::Active>,
    facts: Option<RequestFacts>,
}

/// Where a request went and how it ended, for [`Observed::finish`].
pub struct Ends<'a> {
    pub direction: Direction,
    pub source_service: &'a str,
    pub source_zone: &'a str,
    pub source_identity: Option<&'a str>,
    pub destination_service: &'a str,
    pub destination_zone: &'a str,
    pub upstream: Option<std::net::SocketAddr>,
    pub route: Option<&'a str>,
    pub status: u16,
    pub decision: Decision,
    pub elapsed: Duration,
}

impl Observed {
    /// Before the request goes on: start its span, and pass on a
    /// `traceparent` naming it.
    pub fn start<B>(shared: &Shared, direction: Direction, req: &mut http::Request<B>) -> Self {
        let span = shared.tracer.start(req.headers().get(trace::TRACEPARENT));
        if let Some(a) = &span {
            req.headers_mut().insert(trace::TRACEPARENT, a.ctx.header());
        }
        let sampled = span.as_ref().is_some_and(|a| a.ctx.sampled);
        let facts = (sampled || shared.access_logs.wants(direction)).then(|| RequestFacts::of(req));
        Observed { span, facts }
    }

    /// Whether anything will be recorded (so callers skip gathering the
    /// rest).
    pub fn wanted(&self) -> bool {
        self.facts.is_some()
    }

    /// Record the span and the access log line, from the same facts.
    pub fn finish(self, shared: &Shared, e: Ends<'_>) {
        let Some(f) = self.facts else {
            return;
        };
        let line = Line {
            start: SystemTime::now() - e.elapsed,
            direction: e.direction,
            protocol: "http",
            source_service: e.source_service,
            source_zone: e.source_zone,
            source_identity: e.source_identity,
            destination_service: e.destination_service,
            destination_zone: e.destination_zone,
            upstream: e.upstream,
            method: Some(f.method.as_str()),
            authority: f.authority(),
            path: Some(f.path()),
            route: e.route,
            status: Some(e.status),
            decision: e.decision,
            duration: e.elapsed,
            bytes_sent: None,
            bytes_received: None,
        };
        // An unsampled span (most, at low rates) records nothing: skip
        // building its name and attributes.
        if let Some(a) = self.span.filter(|a| a.ctx.sampled) {
            shared.tracer.finish(
                a,
                format!("{} {}", f.method, e.destination_service),
                e.direction == Direction::Inbound,
                line.attributes(false),
                e.status >= 500,
            );
        }
        shared.access_logs.log(&line);
    }
}

/// What a span and a log line need of a request, taken once before it is
/// sent on (shared, not copied: the parts are reference-counted).
pub struct RequestFacts {
    pub method: http::Method,
    pub authority: Option<HeaderValue>,
    pub path: Option<http::uri::PathAndQuery>,
}

impl RequestFacts {
    pub fn of<B>(req: &http::Request<B>) -> Self {
        Self {
            method: req.method().clone(),
            authority: req
                .headers()
                .get(http::header::HOST)
                .filter(|h| h.to_str().is_ok())
                .cloned()
                .or_else(|| {
                    req.uri()
                        .authority()
                        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                }),
            path: req.uri().path_and_query().cloned(),
        }
    }

    fn authority(&self) -> Option<&str> {
        self.authority.as_ref().and_then(|h| h.to_str().ok())
    }

    fn path(&self) -> &str {
        self.path.as_ref().map_or("/", |p| p.as_str())
    }
}

/// One request or connection.
pub struct Line<'a> {
    pub start: SystemTime,
    pub direction: Direction,
    /// `http` or `tcp`.
    pub protocol: &'static str,
    pub source_service: &'a str,
    pub source_zone: &'a str,
    /// The caller's SPIFFE ID (verified), if known.
    pub source_identity: Option<&'a str>,
    pub destination_service: &'a str,
    pub destination_zone: &'a str,
    /// Where this proxy sent it: the endpoint (outbound) or the app.
    pub upstream: Option<std::net::SocketAddr>,
    pub method: Option<&'a str>,
    pub authority: Option<&'a str>,
    pub path: Option<&'a str>,
    pub route: Option<&'a str>,
    pub status: Option<u16>,
    pub decision: common::traffic::Decision,
    pub duration: Duration,
    /// TCP: bytes towards the destination and back.
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
}

/// The ends of a TCP connection, for its line: (service, zone) each.
pub struct TcpEnds<'a> {
    pub source: (&'a str, &'a str),
    pub destination: (&'a str, &'a str),
}

impl<'a> Line<'a> {
    /// The line of a TCP connection that started at `started` and ends
    /// now: `upstream` where it went (if anywhere), `bytes` each way.
    pub fn tcp(
        direction: Direction,
        started: std::time::Instant,
        ends: TcpEnds<'a>,
        upstream: Option<std::net::SocketAddr>,
        decision: common::traffic::Decision,
        bytes: Option<(u64, u64)>,
    ) -> Line<'a> {
        let duration = started.elapsed();
        Line {
            start: SystemTime::now() - duration,
            direction,
            protocol: "tcp",
            source_service: ends.source.0,
            source_zone: ends.source.1,
            source_identity: None,
            destination_service: ends.destination.0,
            destination_zone: ends.destination.1,
            upstream,
            method: None,
            authority: None,
            path: None,
            route: None,
            status: None,
            decision,
            duration,
            bytes_sent: bytes.map(|b| b.0),
            bytes_received: bytes.map(|b| b.1),
        }
    }
}

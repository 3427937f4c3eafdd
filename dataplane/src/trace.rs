//! Traces: a span for each HTTP request this proxy handles while its
//! `Trace` policy says so, with W3C trace context (`traceparent`) carried
//! through, exported in batches over OTLP (gRPC, or HTTP with a protobuf
//! body) to the collector the policy names.
//!
//! Sampling is head-based: the first proxy a request meets without a
//! `traceparent` decides, at the policy's rate, and writes its decision
//! into the header it passes on; every proxy after it follows, so a trace
//! is whole or absent. Without a policy a proxy records nothing and
//! passes the header on untouched. Spans wait in a bounded queue for one
//! exporter task; when it falls behind they are dropped and counted.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use prometheus_client::metrics::counter::Counter;
use proto::otlp as otel;
use proto::v1 as pb;
use tokio::sync::mpsc;

use crate::otlp::{Collector, Origin};

pub const TRACEPARENT: &str = "traceparent";
/// Spans waiting for the exporter.
const QUEUE: usize = 2048;

/// A W3C trace context (`traceparent`, version 00).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

fn hex_into(s: &[u8], out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(())
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Lower-case hex of `b` into `out` (twice as long).
fn hex_out(b: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (x, o) in b.iter().zip(out.chunks_exact_mut(2)) {
        o[0] = DIGITS[usize::from(x >> 4)];
        o[1] = DIGITS[usize::from(x & 0xf)];
    }
}

impl Context {
    /// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`; a later
    /// version's header is read by its first four fields, as the spec
    /// asks. All-zero ids are invalid.
    pub fn parse(v: &HeaderValue) -> Option<Context> {
        Self::parse_bytes(v.as_bytes())
    }

    /// As [`Context::parse`], from text (a flow header's field).
    pub fn parse_str(s: &str) -> Option<Context> {
        Self::parse_bytes(s.as_bytes())
    }

    /// The fields sit at fixed offsets (2-32-16-2 hex digits, dashes
    /// between), in every version; a later version may add `-...` after.
    fn parse_bytes(b: &[u8]) -> Option<Context> {
        const LEN: usize = 55;
        if b.len() < LEN || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let version = &b[..2];
        let later = b.len() > LEN;
        if version == b"ff" || (version == b"00" && later) || (later && b[LEN] != b'-') {
            return None;
        }
        let mut v = [0u8; 1];
        hex_into(version, &mut v)?;
        let mut c = Context {
            trace_id: [0; 16],
            span_id: [0; 8],
            sampled: false,
        };
        hex_into(&b[3..35], &mut c.trace_id)?;
        hex_into(&b[36..52], &mut c.span_id)?;
        let mut f = [0u8; 1];
        hex_into(&b[53..55], &mut f)?;
        c.sampled = f[0] & 1 == 1;
        if c.trace_id == [0; 16] || c.span_id == [0; 8] {
            return None;
        }
        Some(c)
    }

    pub fn header(&self) -> HeaderValue {
        // 00-<32>-<16>-<2>: 55 bytes, built in place.
        let mut v = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_out(&self.trace_id, &mut v[3..35]);
        hex_out(&self.span_id, &mut v[36..52]);
        if self.sampled {
            v[54] = b'1';
        }
        HeaderValue::from_bytes(&v).expect("hex is a valid header value")
    }
}

tokio::task_local! {
    /// The sampled trace of the request being sent, while a connection is
    /// opened for it: a flow to a gateway carries it in its header, so the
    /// gateways' spans join the request's trace.
    pub static FLOW_CONTEXT: Context;
}

/// The context to open a connection under for a request carrying
/// `traceparent` (sampled traces only).
pub fn flow_context(h: Option<&HeaderValue>) -> Option<Context> {
    let b = h?.as_bytes();
    // Most requests are not sampled: the flags' low bit, at its fixed
    // offset in every version, says so without reading the ids.
    if nibble(*b.get(54)?)? & 1 == 0 {
        return None;
    }
    Context::parse_bytes(b).filter(|c| c.sampled)
}

/// The `traceparent` for a new flow's header, if a sampled request is
/// opening it.
pub fn current_flow_traceparent() -> Option<String> {
    FLOW_CONTEXT
        .try_with(|c| c.header().to_str().ok().map(str::to_string))
        .ok()
        .flatten()
}

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `Trace/NAME`.
    pub name: String,
    /// 0 to 1.
    pub ratio: f64,
    pub collector: Collector,
}

impl Settings {
    pub fn of(p: &pb::Trace) -> Result<Settings, String> {
        if !(0.0..=1.0).contains(&p.sampling) {
            return Err(format!("{}: sampling {} is not 0 to 1", p.name, p.sampling));
        }
        Ok(Settings {
            name: p.name.clone(),
            ratio: p.sampling,
            collector: Collector::of(&p.endpoint, &p.protocol, &p.name)?,
        })
    }
}

struct Exporter {
    settings: Settings,
    tx: mpsc::Sender<otel::Span>,
}

/// A span in progress.
pub struct Active {
    /// Ours: what the next hop sees as its parent.
    pub ctx: Context,
    parent: Option<[u8; 8]>,
    start: SystemTime,
}

#[derive(Default)]
pub struct Tracer {
    current: ArcSwapOption<Exporter>,
    rng: crate::balance::Rng,
    pub exported: Counter,
    pub dropped: Counter,
}

impl Tracer {
    /// Follow the policy: a new exporter when the settings change, none
    /// without a policy.
    pub fn apply(&self, settings: Option<Settings>, origin: impl Fn() -> Origin + Send + 'static) {
        let same = match (&*self.current.load(), &settings) {
            (Some(e), Some(s)) => e.settings == *s,
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        let Some(settings) = settings else {
            self.current.store(None);
            tracing::info!("tracing off");
            return;
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tracing::info!(policy = %settings.name, endpoint = %settings.collector.endpoint, http = settings.collector.http, ratio = settings.ratio, "tracing on");
        tokio::spawn(crate::otlp::export_loop::<crate::otlp::Traces>(
            settings.collector.clone(),
            rx,
            origin,
            self.exported.clone(),
            self.dropped.clone(),
        ));
        self.current
            .store(Some(Arc::new(Exporter { settings, tx })));
    }

    fn id<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            let v = self.rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        if out.iter().all(|b| *b == 0) {
            out[0] = 1;
        }
        out
    }

    /// The span for a request whose incoming `traceparent` is `parent`,
    /// and the header to pass on; `None` when this proxy has no Trace
    /// policy (the header then passes untouched). A request without one
    /// starts a trace, sampled at the policy's rate.
    pub fn start(&self, parent: Option<&HeaderValue>) -> Option<Active> {
        self.start_from(parent.and_then(Context::parse))
    }

    /// As [`Tracer::start`], from a parsed parent.
    pub fn start_from(&self, parent: Option<Context>) -> Option<Active> {
        let e = self.current.load();
        let e = e.as_ref()?;
        let (trace_id, sampled, parent_id) = match parent {
            Some(p) => (p.trace_id, p.sampled, Some(p.span_id)),
            None => {
                let draw = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                (self.id::<16>(), draw < e.settings.ratio, None)
            }
        };
        Some(Active {
            ctx: Context {
                trace_id,
                span_id: self.id::<8>(),
                sampled,
            },
            parent: parent_id,
            // Only a sampled span is ever recorded: skip the clock read.
            start: if sampled {
                SystemTime::now()
            } else {
                SystemTime::UNIX_EPOCH
            },
        })
    }

    /// Record a finished span (if its trace is sampled).
    pub fn finish(
        &self,
        a: Active,
        name: String,
        server: bool,
        attributes: Vec<otel::KeyValue>,
        error: bool,
    ) {
        if !a.ctx.sampled {
            return;
        }
        let guard = self.current.load();
        let Some(e) = guard.as_ref() else {
            return;
        };
        let nanos = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        };
        let span = otel::Span {
            trace_id: a.ctx.trace_id.to_vec(),
            span_id: a.ctx.span_id.to_vec(),
            parent_span_id: a.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name,
            kind: if server {
                otel::span::SpanKind::Server
            } else {
                otel::span::SpanKind::Client
            } as i32,
            start_time_unix_nano: nanos(a.start),
            end_time_unix_nano: nanos(SystemTime::now()),
            attributes,
            status: Some(otel::Status {
                message: String::new(),
                code: if error {
                    otel::status::StatusCode::Error
                } else {
                    otel::status::StatusCode::Unset
                } as i32,
            }),
            flags: 0x100 | 1,
            ..Default::default()
        };
        if e.tx.try_send(span).is_err() {
            self.dropped.inc();
        }
    }

    /// For `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        match &*self.current.load() {
            None => serde_json::Value::Null,
            Some(e) => serde_json::json!({
                "policy": e.settings.name,
                "sampling": e.settings.ratio,
                "endpoint": e.settings.collector.endpoint,
                "protocol": if e.settings.collector.http { "http" } else { "grpc" },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_bad_ones_are_ignored() {
        let v = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let c = Context::parse(&v).unwrap();
        assert!(c.sampled);
        assert_eq!(c.header(), v);
        // A future version with more fields is read by its first four.
        let later = HeaderValue::from_static(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra",
        );
        assert!(!Context::parse(&later).unwrap().sampled);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bZ-01",
        ] {
            assert_eq!(
                Context::parse(&HeaderValue::from_static(bad)),
                None,
                "{bad}"
            );
        }
    }

    // A connection carries a request's context to the gateways only when
    // the request is sampled; the quick look at the flags agrees with the
    // full parse.
    #[test]
    fn only_sampled_valid_contexts_travel_with_a_flow() {
        let h = |s: &'static str| HeaderValue::from_static(s);
        let sampled = h("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(flow_context(Some(&sampled)), Context::parse(&sampled));
        assert!(flow_context(Some(&sampled)).is_some());
        for none in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
        ] {
            assert_eq!(flow_context(Some(&h(none))), None, "{none}");
        }
        assert_eq!(flow_context(None), None);
    }

    fn settings(ratio: f64) -> Settings {
        Settings {
            name: "Trace/t".into(),
            ratio,
            collector: Collector {
                endpoint: "127.0.0.1:1".into(),
                http: false,
            },
        }
    }

    #[tokio::test]
    async fn a_trace_is_started_at_the_rate_and_followed_after() {
        let t = Tracer::default();
        assert!(t.start(None).is_none(), "no policy, no span");
        let origin = || Origin {
            service: "web".into(),
            zone: "z".into(),
        };
        t.apply(Some(settings(0.25)), origin);
        let sampled = (0..4000)
            .filter(|_| t.start(None).unwrap().ctx.sampled)
            .count();
        assert!((800..1200).contains(&sampled), "{sampled} of 4000 at 25%");
        // A parent's decision is followed, either way, in the same trace.
        let parent = Context {
            trace_id: [7; 16],
            span_id: [9; 8],
            sampled: false,
        };
        let child = t.start(Some(&parent.header())).unwrap();
        assert_eq!(child.ctx.trace_id, [7; 16]);
        assert!(!child.ctx.sampled);
        assert_ne!(child.ctx.span_id, [9; 8]);
        assert_eq!(child.parent, Some([9; 8]));
    }
}

//! Traces across zones, and access logs as OTLP log records: Trace
//! policies applied at the global, spans
//! recorded by the caller's and the destination's sidecars, W3C trace
//! context carried end to end through the gateways, exported over OTLP
//! (gRPC and HTTP) to a receiver built on OpenTelemetry's published
//! protobuf definitions (the `opentelemetry-proto` crate's own types, not
//! Tern's). The two-zone mesh of `support::mesh`: `pay` in z1 (.12), its
//! caller `web` in z2 (.40).
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use support::mesh::*;
use support::*;

const H: &str = "apiVersion: tern.dev/v1alpha1\n";

/// A span as received, with its resource's attributes.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    zone: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    kind: i32,
    name: String,
    attrs: Vec<(String, String)>,
    via: &'static str,
}

impl Got {
    fn attr(&self, k: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(x, _)| x == k)
            .map(|(_, v)| v.as_str())
    }
}

type Spans = Arc<Mutex<Vec<Got>>>;

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn keep(spans: &Spans, req: ExportTraceServiceRequest, via: &'static str) {
    let mut g = spans.lock().unwrap();
    for rs in req.resource_spans {
        let res: Vec<(String, String)> = rs
            .resource
            .map(|r| {
                r.attributes
                    .iter()
                    .map(|a| (a.key.clone(), text(&a.value)))
                    .collect()
            })
            .unwrap_or_default();
        let get = |k: &str| {
            res.iter()
                .find(|(x, _)| x == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        for ss in rs.scope_spans {
            for s in ss.spans {
                g.push(Got {
                    service: get("service.name"),
                    zone: get("tern.zone"),
                    trace_id: s.trace_id,
                    span_id: s.span_id,
                    parent: s.parent_span_id,
                    kind: s.kind,
                    name: s.name,
                    attrs: s
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), text(&a.value)))
                        .collect(),
                    via,
                });
            }
        }
    }
}

/// A log record as received: its resource's service, body and attributes.
#[derive(Clone, Debug)]
struct Record {
    service: String,
    body: String,
    attrs: Vec<(String, String)>,
    via: &'static str,
}

impl Record {
    fn attr(&self, k: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(x, _)| x == k)
            .map(|(_, v)| v.as_str())
    }
}

type Records = Arc<Mutex<Vec<Record>>>;

fn keep_logs(records: &Records, req: ExportLogsServiceRequest, via: &'static str) {
    let mut g = records.lock().unwrap();
    for rl in req.resource_logs {
        let service = rl
            .resource
            .and_then(|r| {
                r.attributes
                    .iter()
                    .find(|a| a.key == "service.name")
                    .map(|a| text(&a.value))
            })
            .unwrap_or_default();
        for sl in rl.scope_logs {
            for l in sl.log_records {
                g.push(Record {
                    service: service.clone(),
                    body: text(&l.body),
                    attrs: l
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), text(&a.value)))
                        .collect(),
                    via,
                });
            }
        }
    }
}

struct LogsGrpc(Records);

#[tonic::async_trait]
impl LogsService for LogsGrpc {
    async fn export(
        &self,
        req: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        keep_logs(&self.0, req.into_inner(), "grpc");
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

struct Grpc(Spans);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, req.into_inner(), "grpc");
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// An OTLP/HTTP request's answer: decoded into `spans` or `records` by its
/// path (protobuf only), else 400.
async fn otlp_http(
    req: http::Request<hyper::body::Incoming>,
    spans: Spans,
    records: Records,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    use http_body_util::BodyExt;
    let protobuf = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/x-protobuf");
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let ok = protobuf
        && match path.as_str() {
            "/v1/traces" => <ExportTraceServiceRequest as prost::Message>::decode(body)
                .map(|r| keep(&spans, r, "http"))
                .is_ok(),
            "/v1/logs" => <ExportLogsServiceRequest as prost::Message>::decode(body)
                .map(|r| keep_logs(&records, r, "http"))
                .is_ok(),
            _ => false,
        };
    http::Response::builder()
        .status(if ok { 200 } else { 400 })
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap()
}

/// OTLP receivers on `grpc` (TraceService, LogsService) and `http` (POST
/// /v1/traces and /v1/logs, protobuf), run on their own runtime until the
/// test ends.
fn receivers(grpc: SocketAddr, http: SocketAddr) -> (Spans, Records, tokio::runtime::Runtime) {
    let spans: Spans = Default::default();
    let records: Records = Default::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (s, r) = (spans.clone(), records.clone());
    rt.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Grpc(s)))
            .add_service(LogsServiceServer::new(LogsGrpc(r)))
            .serve(grpc)
            .await
            .unwrap();
    });
    let (s, r) = (spans.clone(), records.clone());
    let listener = rt.block_on(tokio::net::TcpListener::bind(http)).unwrap();
    rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (s, r) = (s.clone(), r.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let (s, r) = (s.clone(), r.clone());
                    async move { Ok::<_, std::convert::Infallible>(otlp_http(req, s, r).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (spans, records, rt)
}

fn trace_policy(m: &Mesh, sampling: &str, endpoint: SocketAddr, protocol: &str) {
    m.g.apply(&format!(
        "{H}kind: Trace\nmetadata: {{name: mesh-traces}}\nspec: {{sampling: {sampling}, otlp: {{endpoint: '{endpoint}', protocol: {protocol}}}}}\n"
    ));
}

fn spans_of(spans: &Spans, trace: &[u8]) -> Vec<Got> {
    spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.trace_id == trace)
        .cloned()
        .collect()
}

/// One request from web (z2) to pay (z1), traced at 100%, on a new
/// connection: the receiver gets exactly four spans of one trace: web's
/// client span (resource web in z2, destination pay in z1, status 200);
/// the span of z2's gateway opening the stream to z1 (a child of web's:
/// the context travels in the flow header); the span of z1's gateway
/// connecting to pay's sidecar (a child of z2's gateway's); and pay's
/// server span (resource pay in z1, source web in z2) whose parent is
/// web's span, the context having crossed both gateways inside the
/// end-to-end mTLS session. The app
/// behind pay receives a traceparent naming pay's span. At 0% no span is
/// recorded, yet a request that arrives with a sampled traceparent is
/// still traced in the caller's trace (the first proxy's decision is
/// followed). With `protocol: http`, spans arrive over OTLP/HTTP.
#[test]
fn one_trace_crosses_two_zones_and_sampling_is_decided_once() {
    let m = Mesh::start("traces", Net(74), None);
    let grpc = m.net.addr(250, 4317);
    let http_at = m.net.addr(251, 4318);
    let (spans, _, _rt) = receivers(grpc, http_at);
    let pay = m.workload("z1", 12, "pay", &[]);
    let web = m.workload("z2", 40, "web", &[]);
    wait_for("pay in web's config", T, || {
        (!web.endpoints("pay").is_empty()).then_some(())
    });
    trace_policy(&m, "100", grpc, "grpc");
    for w in [&web, &pay] {
        wait_dump(w, "/trace/sampling", |v| v.as_f64() == Some(1.0));
    }
    for g in &m.gateways {
        wait_for("the Trace policy at every gateway", T, || {
            let d = get(m.net.addr(g.host, 15090), "x", "/config_dump")
                .ok()?
                .json();
            (d["trace"]["sampling"].as_f64() == Some(1.0)).then_some(())
        });
    }
    // The first call opens web's connection to pay through the gateways.
    let r = http(web.outbound(), "GET", "pay", "/headers", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let got = wait_for("four spans at the receiver", patient(T), || {
        let g = spans.lock().unwrap().clone();
        (g.len() >= 4).then_some(g)
    });
    assert_eq!(got.len(), 4, "{got:#?}");
    let is = |service: &str, kind: SpanKind| {
        got.iter()
            .find(|s| s.service == service && s.kind == kind as i32)
            .unwrap_or_else(|| panic!("no {kind:?} span of {service}: {got:#?}"))
    };
    let client = is("web", SpanKind::Client);
    let server = is("pay", SpanKind::Server);
    // The gateways' spans: z2's (opening the stream to z1) is a child of
    // web's; z1's (connecting to pay's sidecar) a child of z2's.
    let gw_out = is("gateway", SpanKind::Client);
    let gw_in = is("gateway", SpanKind::Server);
    assert_eq!((gw_out.zone.as_str(), gw_in.zone.as_str()), ("z2", "z1"));
    assert_eq!(gw_out.parent, client.span_id, "{gw_out:#?}");
    assert_eq!(gw_in.parent, gw_out.span_id, "{gw_in:#?}");
    assert!(
        got.iter().all(|s| s.trace_id == client.trace_id),
        "one trace: {got:#?}"
    );
    assert_eq!(gw_in.attr("tern.destination.service"), Some("pay"));
    assert_eq!(gw_out.attr("tern.destination.zone"), Some("z1"));
    assert_eq!(client.trace_id, server.trace_id, "one trace");
    assert_eq!(client.trace_id.len(), 16);
    assert_eq!(
        server.parent, client.span_id,
        "pay's span is a child of web's"
    );
    assert!(client.parent.is_empty(), "web's span starts the trace");
    assert_eq!(
        (client.service.as_str(), client.zone.as_str()),
        ("web", "z2")
    );
    assert_eq!(
        (server.service.as_str(), server.zone.as_str()),
        ("pay", "z1")
    );
    assert_eq!(client.attr("tern.destination.zone"), Some("z1"));
    assert_eq!(client.attr("tern.destination.service"), Some("pay"));
    assert_eq!(server.attr("tern.source.zone"), Some("z2"));
    assert_eq!(server.attr("tern.source.service"), Some("web"));
    assert_eq!(client.attr("http.response.status_code"), Some("200"));
    assert_eq!(server.attr("url.path"), Some("/headers"));
    assert_eq!(client.name, "GET pay");
    assert_eq!(client.via, "grpc");
    // The app saw the context with pay's span as its parent.
    let want = format!("00-{}-{}-01", hex(&server.trace_id), hex(&server.span_id));
    assert!(r.body.contains(&want), "the app got {want}: {}", r.body);

    // 0%: nothing is started...
    trace_policy(&m, "0", grpc, "grpc");
    for w in [&web, &pay] {
        wait_dump(w, "/trace/sampling", |v| v.as_f64() == Some(0.0));
    }
    let before = spans.lock().unwrap().len();
    for _ in 0..20 {
        assert_eq!(
            http(web.outbound(), "GET", "pay", "/r", &[])
                .unwrap()
                .status,
            200
        );
    }
    // ...but a sampled trace that began upstream is followed.
    let upstream = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = http(
        web.outbound(),
        "GET",
        "pay",
        "/r",
        &[("traceparent", upstream)],
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let trace: Vec<u8> = (0..16)
        .map(|i| {
            u8::from_str_radix(&"0af7651916cd43dd8448eb211c80319c"[2 * i..2 * i + 2], 16).unwrap()
        })
        .collect();
    let followed = wait_for("the upstream trace's spans", patient(T), || {
        let s = spans_of(&spans, &trace);
        (s.len() >= 2).then_some(s)
    });
    let c = followed
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .unwrap();
    assert_eq!(
        hex(&c.parent),
        "b7ad6b7169203331",
        "web's span continues the caller's"
    );
    assert_eq!(
        spans.lock().unwrap().len(),
        before + 2,
        "only the upstream-sampled request was traced (on the open connection: no gateway spans)"
    );

    // OTLP over HTTP.
    trace_policy(&m, "100", http_at, "http");
    for w in [&web, &pay] {
        wait_dump(w, "/trace/protocol", |v| v == "http");
    }
    assert_eq!(
        http(web.outbound(), "GET", "pay", "/r", &[])
            .unwrap()
            .status,
        200
    );
    wait_for("two spans over OTLP/HTTP", patient(T), || {
        let n = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.via == "http")
            .count();
        (n >= 2).then_some(())
    });
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An AccessLog policy with `to: otlp` sends one OTLP log record per
/// request to the collector instead of lines: pay's sidecar, for a request
/// from web in z2, sends a record from resource pay whose attributes name
/// the method, path, status, the caller's service, zone and SPIFFE ID and
/// the destination zone, with the text line as its body; over gRPC, then
/// over OTLP/HTTP when the policy says `protocol: http`. Nothing goes to
/// the sidecar's own output.
#[test]
fn access_logs_reach_an_otlp_collector_as_log_records() {
    let m = Mesh::start("otlp-logs", Net(76), None);
    let grpc = m.net.addr(250, 4317);
    let http_at = m.net.addr(251, 4318);
    let (_, records, _rt) = receivers(grpc, http_at);
    let pay = m.workload("z1", 12, "pay", &[]);
    let web = m.workload("z2", 40, "web", &[]);
    wait_for("pay in web's config", T, || {
        (!web.endpoints("pay").is_empty()).then_some(())
    });
    for (protocol, at) in [("grpc", grpc), ("http", http_at)] {
        m.g.apply(&format!(
            "{H}kind: AccessLog\nmetadata: {{name: pay-otlp}}\nspec: {{targetRef: {{service: pay}}, directions: [inbound], to: otlp, otlp: {{endpoint: '{at}', protocol: {protocol}}}}}\n"
        ));
        wait_dump(&pay, "/accessLog/to", |v| {
            v.as_str()
                .is_some_and(|t| t.starts_with(&format!("otlp {protocol}://")))
        });
        let path = format!("/r?via={protocol}");
        assert_eq!(
            http(web.outbound(), "GET", "pay", &path, &[])
                .unwrap()
                .status,
            200
        );
        let rec = wait_for("the request's log record", patient(T), || {
            records
                .lock()
                .unwrap()
                .iter()
                .find(|r| r.attr("url.path") == Some(path.as_str()))
                .cloned()
        });
        assert_eq!(rec.via, protocol);
        assert_eq!(rec.service, "pay");
        assert_eq!(rec.attr("http.request.method"), Some("GET"));
        assert_eq!(rec.attr("http.response.status_code"), Some("200"));
        assert_eq!(rec.attr("tern.source.service"), Some("web"));
        assert_eq!(rec.attr("tern.source.zone"), Some("z2"));
        assert_eq!(rec.attr("tern.destination.zone"), Some("z1"));
        assert_eq!(
            rec.attr("tern.source.identity"),
            Some("spiffe://tern/zone/z2/svc/web")
        );
        assert!(
            rec.body.contains(" inbound http web.z2 -> pay.z1 "),
            "{}",
            rec.body
        );
    }
    assert!(
        !pay.sidecar
            .log_text()
            .lines()
            .any(|l| l.contains("\"protocol\":\"http\"")),
        "no lines on the sidecar's output"
    );
}

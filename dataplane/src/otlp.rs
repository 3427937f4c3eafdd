//! OTLP export: spans (`trace.rs`) and log records (`access_log.rs`) in
//! batches from a bounded queue to a collector, over gRPC or OTLP/HTTP
//! (protobuf). One task per signal and collector; a batch leaves when it
//! is full or a second after its first item. A collector that does not
//! take a batch loses it (counted), and is warned about once until an
//! export works again.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use proto::otlp as otel;
use tokio::sync::mpsc;

/// A batch leaves when it has this many items, or after [`FLUSH`]. Each
/// waiting span holds about a kilobyte (its attributes), so batches stay
/// small: at 400 sampled requests a second, 512 kept about 1 MB more
/// resident per sidecar than 128 (docs/performance.md).
const BATCH: usize = 128;
const FLUSH: Duration = Duration::from_secs(1);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a signal goes.
#[derive(Clone, Debug, PartialEq)]
pub struct Collector {
    /// host:port.
    pub endpoint: String,
    /// OTLP/HTTP (else gRPC).
    pub http: bool,
}

impl Collector {
    /// From a policy's `otlp` settings.
    pub fn of(endpoint: &str, protocol: &str, what: &str) -> Result<Collector, String> {
        let http = match protocol {
            "grpc" | "" => false,
            "http" => true,
            x => return Err(format!("{what}: unknown OTLP protocol {x:?}")),
        };
        if endpoint.parse::<http::uri::Authority>().is_err() {
            return Err(format!("{what}: {endpoint:?} is not host:port"));
        }
        Ok(Collector {
            endpoint: endpoint.to_string(),
            http,
        })
    }
}

/// What the proxy is, for the resource of what it sends.
#[derive(Clone)]
pub struct Origin {
    pub service: Arc<str>,
    pub zone: Arc<str>,
}

/// A string attribute, or an integer one.
pub enum Value {
    Str(String),
    Int(i64),
}

pub fn kv(k: &str, v: Value) -> otel::KeyValue {
    use otel::any_value::Value as V;
    otel::KeyValue {
        key: k.to_string(),
        value: Some(otel::AnyValue {
            value: Some(match v {
                Value::Str(s) => V::StringValue(s),
                Value::Int(i) => V::IntValue(i),
            }),
        }),
    }
}

fn resource(o: &Origin) -> otel::Resource {
    otel::Resource {
        attributes: vec![
            kv("service.name", Value::Str(o.service.to_string())),
            kv("tern.zone", Value::Str(o.zone.to_string())),
            kv("telemetry.sdk.name", Value::Str("tern".into())),
        ],
        dropped_attributes_count: 0,
    }
}

fn scope() -> otel::InstrumentationScope {
    otel::InstrumentationScope {
        name: "tern-dataplane".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// One OTLP signal: its items, its export message and where it goes.
pub trait Signal: Send + 'static {
    type Item: Send + 'static;
    type Request: prost::Message + Default + Send + 'static;
    type Response: prost::Message + Default + Send + 'static;
    const GRPC_PATH: &'static str;
    const HTTP_PATH: &'static str;
    fn request(items: Vec<Self::Item>, origin: &Origin) -> Self::Request;
}

pub struct Traces;

impl Signal for Traces {
    type Item = otel::Span;
    type Request = otel::ExportTraceServiceRequest;
    type Response = otel::ExportTraceServiceResponse;
    const GRPC_PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    const HTTP_PATH: &'static str = "/v1/traces";
    fn request(spans: Vec<otel::Span>, origin: &Origin) -> Self::Request {
        otel::ExportTraceServiceRequest {
            resource_spans: vec![otel::ResourceSpans {
                resource: Some(resource(origin)),
                scope_spans: vec![otel::ScopeSpans {
                    scope: Some(scope()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }
}

pub struct Logs;

impl Signal for Logs {
    type Item = otel::LogRecord;
    type Request = otel::ExportLogsServiceRequest;
    type Response = otel::ExportLogsServiceResponse;
    const GRPC_PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    const HTTP_PATH: &'static str = "/v1/logs";
    fn request(log_records: Vec<otel::LogRecord>, origin: &Origin) -> Self::Request {
        otel::ExportLogsServiceRequest {
            resource_logs: vec![otel::ResourceLogs {
                resource: Some(resource(origin)),
                scope_logs: vec![otel::ScopeLogs {
                    scope: Some(scope()),
                    log_records,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }
}

/// Send what arrives on `rx` to `c` until the sender is dropped.
pub async fn export_loop<S: Signal>(
    c: Collector,
    mut rx: mpsc::Receiver<S::Item>,
    origin: impl Fn() -> Origin,
    exported: Counter,
    dropped: Counter,
) {
    let grpc = if c.http {
        None
    } else {
        match tonic::transport::Endpoint::from_shared(format!("http://{}", c.endpoint)) {
            Ok(e) => Some(tonic::client::Grpc::new(
                e.timeout(EXPORT_TIMEOUT)
                    .connect_timeout(EXPORT_TIMEOUT)
                    .connect_lazy(),
            )),
            Err(e) => {
                tracing::error!(endpoint = %c.endpoint, error = %e, "bad OTLP endpoint; nothing is sent until the policy changes");
                return;
            }
        }
    };
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut batch = Vec::with_capacity(BATCH);
    let mut warned = false;
    loop {
        // Wait for a first item, then up to FLUSH for the batch to fill.
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + FLUSH;
        while batch.len() < BATCH {
            let room = BATCH - batch.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let n = batch.len() as u64;
        let req = S::request(std::mem::take(&mut batch), &origin());
        let result: Result<(), String> = match &grpc {
            Some(g) => {
                let mut g = g.clone();
                match g.ready().await {
                    Err(e) => Err(e.to_string()),
                    Ok(()) => g
                        .unary(
                            tonic::Request::new(req),
                            http::uri::PathAndQuery::from_static(S::GRPC_PATH),
                            tonic::codec::ProstCodec::<S::Request, S::Response>::default(),
                        )
                        .await
                        .map(|_| ())
                        .map_err(|e| e.message().to_string()),
                }
            }
            None => {
                let body = prost::Message::encode_to_vec(&req);
                let r = http::Request::post(format!("http://{}{}", c.endpoint, S::HTTP_PATH))
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    .map_err(|e| e.to_string());
                match r {
                    Err(e) => Err(e),
                    Ok(r) => match tokio::time::timeout(EXPORT_TIMEOUT, http.request(r)).await {
                        Err(_) => Err("timed out".into()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
                        Ok(Ok(resp)) => Err(format!("answered {}", resp.status())),
                    },
                }
            }
        };
        match result {
            Ok(()) => {
                exported.inc_by(n);
                warned = false;
            }
            Err(e) => {
                dropped.inc_by(n);
                if !warned {
                    tracing::warn!(endpoint = %c.endpoint, path = S::HTTP_PATH, error = %e, items = n, "could not export to the OTLP collector; dropping (said once until an export works)");
                    warned = true;
                }
            }
        }
    }
}

//! Demo service: answers HTTP/1.1 and h2c with a JSON description of who
//! served the request and who called (`x-tern-client-id`), or echoes TCP.
//! `/fake-mesh-error` answers 503 with the mesh's own error header.
//!
//! Tests steer an instance through `/control/...` on its own address (not
//! through the mesh): `/control/fail?status=S&every=N` makes it answer S to
//! every request but each N-th (no N: every request; status 0 ends it), and
//! `/control/delay?ms=M` delays every answer by M ms.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: std::net::SocketAddr,
    #[arg(long, default_value = "demo")]
    name: String,
    #[arg(long, default_value = "")]
    zone: String,
    /// Echo raw TCP instead of serving HTTP.
    #[arg(long)]
    tcp_echo: bool,
    /// With --tcp-echo: first send `NAME ZONE\n`, so callers see who
    /// answered.
    #[arg(long)]
    greet: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let who = Arc::new((args.name, args.zone, args.listen.to_string()));
    // Requests this app has received (GET /stats excluded), so tests can
    // tell whether a request was delivered twice.
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Of those, copies a mesh proxy mirrored here (`x-tern-mirror`).
    let mirrored = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let control = Arc::new(Control::default());
    loop {
        let (mut tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        if args.tcp_echo {
            let hello = args.greet.then(|| format!("{} {}\n", who.0, who.1));
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                if let Some(h) = hello {
                    if tcp.write_all(h.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
            continue;
        }
        let who = who.clone();
        let served = served.clone();
        let mirrored = mirrored.clone();
        let control = control.clone();
        tokio::spawn(async move {
            let inner = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let who = who.clone();
                let served = served.clone();
                let mirrored = mirrored.clone();
                let control = control.clone();
                async move {
                    if req.uri().path().starts_with("/control/") {
                        return Ok::<_, Infallible>(control.set(req.uri()));
                    }
                    if req.uri().path() == "/stats" {
                        let n = served.load(std::sync::atomic::Ordering::SeqCst);
                        let m = mirrored.load(std::sync::atomic::Ordering::SeqCst);
                        let body =
                            serde_json::json!({ "requests": n, "mirrored": m }).to_string() + "\n";
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))));
                    }
                    served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let delay = control.delay_ms.load(std::sync::atomic::Ordering::SeqCst);
                    if delay > 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                    }
                    if let Some(status) = control.failing() {
                        let mut r = Response::new(Full::new(Bytes::from("failing on purpose\n")));
                        *r.status_mut() = status;
                        return Ok::<_, Infallible>(r);
                    }
                    if req.headers().contains_key("x-tern-mirror") {
                        mirrored.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    let client = req
                        .headers()
                        .get("x-tern-client-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    // An app pretending to be the mesh, to prove sidecars
                    // strip the header callers eject and retry on.
                    if req.uri().path() == "/fake-mesh-error" {
                        let mut r = Response::new(Full::new(Bytes::from("app error\n")));
                        *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                        r.headers_mut().insert(
                            "x-tern-error",
                            hyper::header::HeaderValue::from_static("app"),
                        );
                        return Ok::<_, Infallible>(r);
                    }
                    // An app that takes this many ms to answer.
                    if let Some(ms) = req.uri().path().strip_prefix("/sleep/") {
                        let ms: u64 = ms.parse().unwrap_or(0);
                        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                            "slept\n",
                        ))));
                    }
                    // A response with N extra header lines, to test the
                    // proxies' header limits.
                    if let Some(n) = req.uri().path().strip_prefix("/many-headers/") {
                        let n: usize = n.parse().unwrap_or(0);
                        let mut r = Response::new(Full::new(Bytes::from("many headers\n")));
                        for i in 0..n {
                            r.headers_mut().insert(
                                hyper::header::HeaderName::from_bytes(
                                    format!("x-h-{i}").as_bytes(),
                                )
                                .expect("valid name"),
                                hyper::header::HeaderValue::from(i),
                            );
                        }
                        return Ok::<_, Infallible>(r);
                    }
                    let method = req.method().to_string();
                    let version = format!("{:?}", req.version());
                    let path = req.uri().path().to_string();
                    // HTTP/2's `:authority` (an HTTP/1.1 request in origin
                    // form has none).
                    let authority = req.uri().authority().map(|a| a.to_string());
                    // The name it was called by: Host, else :authority.
                    let host = req
                        .headers()
                        .get(hyper::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .or_else(|| req.uri().authority().map(|a| a.as_str()))
                        .unwrap_or("")
                        .to_string();
                    // The request's own `x-` headers (the mesh's excepted),
                    // so tests see what routes changed, and its trace
                    // context.
                    let headers: serde_json::Map<String, serde_json::Value> = req
                        .headers()
                        .iter()
                        .filter(|(k, _)| {
                            (k.as_str().starts_with("x-") && !k.as_str().starts_with("x-tern-"))
                                || k.as_str() == "traceparent"
                        })
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                        .collect();
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let v = serde_json::json!({
                        "service": who.0, "zone": who.1, "instance": who.2,
                        "clientId": client, "method": method, "path": path, "version": version, "host": host,
                        "authority": authority,
                        "bodyBytes": body.len(), "headers": headers,
                    });
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(v.to_string() + "\n"))))
                }
            });
            // `/drip/MS/N`: N chunks, one every MS ms (a slow stream).
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let inner = inner.clone();
                async move {
                    use hyper::service::Service;
                    if let Some(rest) = req.uri().path().strip_prefix("/drip/") {
                        return Ok::<_, Infallible>(drip(rest));
                    }
                    inner.call(req).await.map(|r| r.map(|b| b.boxed()))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// How tests steer this instance.
#[derive(Default)]
struct Control {
    fail_status: std::sync::atomic::AtomicU64,
    fail_every: std::sync::atomic::AtomicU64,
    fail_count: std::sync::atomic::AtomicU64,
    delay_ms: std::sync::atomic::AtomicU64,
}

impl Control {
    fn set(&self, uri: &hyper::Uri) -> Response<Full<Bytes>> {
        use std::sync::atomic::Ordering::SeqCst;
        let q = |name: &str| -> Option<u64> {
            uri.query()?
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        };
        match uri.path() {
            "/control/fail" => {
                self.fail_count.store(0, SeqCst);
                self.fail_every.store(q("every").unwrap_or(0), SeqCst);
                self.fail_status.store(q("status").unwrap_or(0), SeqCst);
            }
            "/control/delay" => self.delay_ms.store(q("ms").unwrap_or(0), SeqCst),
            _ => {
                let mut r = Response::new(Full::new(Bytes::from("unknown control\n")));
                *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                return r;
            }
        }
        Response::new(Full::new(Bytes::from("ok\n")))
    }

    /// The status to fail this request with, if it fails.
    fn failing(&self) -> Option<hyper::StatusCode> {
        use std::sync::atomic::Ordering::SeqCst;
        let status = self.fail_status.load(SeqCst);
        if status == 0 {
            return None;
        }
        let k = self.fail_count.fetch_add(1, SeqCst) + 1;
        let every = self.fail_every.load(SeqCst);
        if every > 0 && k.is_multiple_of(every) {
            return None;
        }
        hyper::StatusCode::from_u16(status as u16).ok()
    }
}

/// A response of `n` chunks sent `ms` apart (`rest` is `MS/N`).
fn drip(rest: &str) -> Response<http_body_util::combinators::BoxBody<Bytes, Infallible>> {
    let mut it = rest.split('/').map(|x| x.parse::<u64>().unwrap_or(0));
    let (ms, n) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, Infallible>>(1);
    tokio::spawn(async move {
        for i in 0..n {
            if i > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            let chunk = Bytes::from(format!("chunk {i}\n"));
            if tx.send(Ok(hyper::body::Frame::data(chunk))).await.is_err() {
                return;
            }
        }
    });
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::new(body.boxed())
}

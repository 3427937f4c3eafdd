use super::*;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// Counts the connections it opens.
struct Tcp {
    addr: std::net::SocketAddr,
    opened: Arc<AtomicUsize>,
}

impl Connect for Tcp {
    type Io = TokioIo<TcpStream>;
    async fn connect(&self, _: &Authority) -> Result<Self::Io, BoxError> {
        self.opened.fetch_add(1, Ordering::SeqCst);
        Ok(TokioIo::new(TcpStream::connect(self.addr).await?))
    }
}

/// An HTTP server answering every request with its path (`/hold`: and
/// then a body that never ends); HTTP/1.1 connections close after
/// `close_after` requests when set.
async fn server(h2: bool, close_after: Option<usize>) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let served = Arc::new(AtomicUsize::new(0));
                let svc = hyper::service::service_fn(move |r: Request<Incoming>| {
                    let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                    async move {
                        let path = Bytes::from(r.uri().path().to_string());
                        let body = if r.uri().path() == "/hold" {
                            let first = futures_util::stream::iter([Ok::<_, Infallible>(
                                hyper::body::Frame::data(path),
                            )]);
                            BodyExt::boxed(StreamBody::new(
                                first.chain(futures_util::stream::pending()),
                            ))
                        } else {
                            BodyExt::boxed(Full::new(path))
                        };
                        let mut resp = Response::new(body);
                        if close_after == Some(n) {
                            resp.headers_mut()
                                .insert(header::CONNECTION, "close".parse().unwrap());
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let io = TokioIo::new(s);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    addr
}

fn pool(addr: std::net::SocketAddr, version: Version) -> (Pool<Tcp>, Arc<AtomicUsize>) {
    let opened = Arc::new(AtomicUsize::new(0));
    let p = Pool::new(
        Tcp {
            addr,
            opened: opened.clone(),
        },
        Settings {
            version,
            limits: HeaderLimits::default(),
            idle_timeout: Duration::from_secs(90),
            max_idle_per_host: 8,
            h2_keepalive: None,
        },
    );
    (p, opened)
}

fn get(addr: std::net::SocketAddr, path: &str, v: http::Version) -> Request<Body> {
    let mut r = Request::new(Either::Right(Full::new(Bytes::new())));
    *r.uri_mut() = format!("http://{addr}{path}").parse().unwrap();
    *r.version_mut() = v;
    r
}

async fn text(r: Response<Incoming>) -> String {
    let b = r.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

/// GET `path` over HTTP/1.1 through `p`: the answer's body.
async fn fetch(p: &Pool<Tcp>, addr: std::net::SocketAddr, path: &str) -> String {
    let r = p
        .send(get(addr, path, http::Version::HTTP_11))
        .await
        .unwrap();
    text(r).await
}

#[tokio::test]
async fn http1_reuses_a_connection_once_its_response_is_read() {
    let addr = server(false, None).await;
    let (p, opened) = pool(addr, Version::Http1);
    for i in 0..5 {
        assert_eq!(fetch(&p, addr, &format!("/{i}")).await, format!("/{i}"));
    }
    assert_eq!(
        opened.load(Ordering::SeqCst),
        1,
        "one connection served all five"
    );
}

#[tokio::test]
async fn http1_never_sends_on_a_connection_whose_response_is_still_arriving() {
    let addr = server(false, None).await;
    let (p, opened) = pool(addr, Version::Http1);
    let held = p
        .send(get(addr, "/hold", http::Version::HTTP_11))
        .await
        .unwrap();
    // The first response's body has not ended: its connection is busy,
    // so the next requests get a second connection, and share it.
    for i in 0..3 {
        assert_eq!(fetch(&p, addr, &format!("/{i}")).await, format!("/{i}"));
    }
    assert_eq!(opened.load(Ordering::SeqCst), 2);
    let mut held = held.into_body();
    let first = held.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "/hold");
}

#[tokio::test]
async fn http1_request_on_a_connection_the_peer_closed_goes_over_a_new_one() {
    // The server closes each connection after one response.
    let addr = server(false, Some(1)).await;
    let (p, opened) = pool(addr, Version::Http1);
    for i in 0..3 {
        assert_eq!(fetch(&p, addr, &format!("/{i}")).await, format!("/{i}"));
    }
    assert_eq!(opened.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn http2_shares_one_connection_among_concurrent_requests() {
    let addr = server(true, None).await;
    let (p, opened) = pool(addr, Version::Http2);
    let mut all = Vec::new();
    for i in 0..20 {
        let p = p.clone();
        all.push(tokio::spawn(async move {
            let r = p
                .send(get(addr, &format!("/{i}"), http::Version::HTTP_2))
                .await
                .unwrap();
            text(r).await
        }));
    }
    for (i, t) in all.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), format!("/{i}"));
    }
    assert_eq!(
        opened.load(Ordering::SeqCst),
        1,
        "20 concurrent requests, one connection"
    );
}

#[tokio::test]
async fn a_refused_connect_is_a_connect_error() {
    // A port nobody listens on: bind, take the port, close.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    for v in [Version::Http1, Version::Http2] {
        let (p, _) = pool(addr, v);
        let hv = if v == Version::Http1 {
            http::Version::HTTP_11
        } else {
            http::Version::HTTP_2
        };
        let e = p.send(get(addr, "/", hv)).await.unwrap_err();
        assert!(e.is_connect(), "{v:?}: {e}");
    }
}

/// A request no connection could be opened for comes back from
/// `try_send` with its body unread (what lets an upgrade's body go to the
/// next endpoint), and that same request then succeeds elsewhere.
#[tokio::test]
async fn a_request_no_connection_took_comes_back_with_its_body() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = l.local_addr().unwrap();
    drop(l);
    let live = server(false, None).await;
    let (p, _) = pool(refused, Version::Http1);
    let mut r = get(refused, "/next", http::Version::HTTP_11);
    *r.body_mut() = Either::Right(Full::new(Bytes::from_static(b"the body")));
    let Err(u) = p.try_send(r).await else {
        panic!("a refused port answered");
    };
    assert!(u.error.is_connect(), "{}", u.error);
    let back = u.request.expect("the request comes back");
    let (parts, body) = back.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"the body");
    let (next, _) = pool(live, Version::Http1);
    let mut again = Request::from_parts(parts, Either::Right(Full::new(body)));
    *again.uri_mut() = format!("http://{live}/next").parse().unwrap();
    assert_eq!(text(next.send(again).await.unwrap()).await, "/next");
}

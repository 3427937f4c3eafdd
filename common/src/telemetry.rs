//! Logging, metrics and the admin port every component exposes:
//! `/ready`, `/metrics`, `/config_dump` and `/log-level`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::{layer::SubscriberExt, reload, util::SubscriberInitExt};

pub type LogHandle = reload::Handle<Targets, tracing_subscriber::Registry>;

/// The process's log filter handle, set by `init_tracing`; every admin
/// port's `PUT /log-level` changes it.
static LOG: std::sync::OnceLock<LogHandle> = std::sync::OnceLock::new();

/// A log filter: comma-separated directives, each a level (`info`) or
/// `target=level` (`dataplane::outbound=debug`); the most specific target
/// wins. The same syntax as `RUST_LOG` and `PUT /log-level`.
pub fn parse_log_filter(s: &str) -> Result<Targets, String> {
    const SYNTAX: &str =
        "use a level (error, warn, info, debug, trace, off) or target=level, comma-separated";
    match s.trim() {
        "" => Err(format!("empty filter; {SYNTAX}")),
        s => s.parse::<Targets>().map_err(|e| format!("{e}; {SYNTAX}")),
    }
}

/// Initialise tracing. `RUST_LOG` overrides `default` (an invalid one is
/// reported and ignored); `json` switches to JSON lines. Returns a handle
/// to change the filter at run time (the admin port uses the same one).
pub fn init_tracing(default: &str, json: bool) -> LogHandle {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let filter = match from_env.as_deref().map(parse_log_filter) {
        Some(Ok(f)) => f,
        other => {
            if let Some(Err(e)) = other {
                eprintln!("RUST_LOG ignored ({e}); logging at {default:?}");
            }
            parse_log_filter(default).unwrap_or_default()
        }
    };
    let (filter, handle) = reload::Layer::new(filter);
    let _ = LOG.set(handle.clone());
    let reg = tracing_subscriber::registry().with(filter);
    if json {
        let _ = reg
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init();
    } else {
        let _ = reg
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(std::io::stderr),
            )
            .try_init();
    }
    handle
}

type DumpFn = dyn Fn() -> serde_json::Value + Send + Sync;
type ReadyFn = dyn Fn() -> Result<(), String> + Send + Sync;

#[derive(Clone)]
pub struct Admin {
    registry: Arc<Mutex<Registry>>,
    ready: Arc<ReadyFn>,
    dump: Arc<DumpFn>,
    log: Option<LogHandle>,
    /// When set, `/config_dump` and `/log-level` require `Authorization: Bearer <token>`.
    token: Option<Arc<String>>,
    /// Without a token, whether those two answer at all: only on a
    /// loopback address (set by [`Admin::serve`]).
    open_without_token: bool,
}

impl Admin {
    pub fn new(
        registry: Registry,
        ready: impl Fn() -> Result<(), String> + Send + Sync + 'static,
        dump: impl Fn() -> serde_json::Value + Send + Sync + 'static,
    ) -> Self {
        Self {
            registry: Arc::new(Mutex::new(registry)),
            ready: Arc::new(ready),
            dump: Arc::new(dump),
            log: LOG.get().cloned(),
            token: None,
            open_without_token: true,
        }
    }
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.map(Arc::new);
        self
    }

    pub fn router(self) -> Router {
        Router::new()
            .route("/ready", get(ready))
            .route("/metrics", get(metrics))
            .route("/config_dump", get(config_dump))
            .route("/log-level", axum::routing::put(log_level))
            .with_state(self)
    }

    /// Serve the admin router on `addr` in the background. Without a
    /// token, `/config_dump` and `/log-level` answer only when `addr` is a
    /// loopback address; elsewhere they refuse every request and say how
    /// to set a token (`/ready` and `/metrics` stay open for probes and
    /// scrapers).
    pub async fn serve(mut self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        self.open_without_token = addr.ip().is_loopback();
        if self.token.is_none() && !self.open_without_token {
            tracing::warn!(%addr, "admin port is not on loopback and has no token: /config_dump and /log-level are refused (set --admin-token-file)");
        }
        serve_router(self.router(), addr).await
    }

    /// Whether a request may read the config or change the log level.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
        match &self.token {
            Some(t) if bearer(headers).is_some_and(|b| constant_time_eq(b.as_bytes(), t.as_bytes())) => Ok(()),
            Some(_) => Err((StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n")),
            None if self.open_without_token => Ok(()),
            None => Err((
                StatusCode::FORBIDDEN,
                "this admin port is not on loopback and has no token: start the component with --admin-token-file to use /config_dump and /log-level\n",
            )),
        }
    }
}

/// Connections an admin port serves at once; more are closed on accept.
pub const ADMIN_MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send a request head.
pub const ADMIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long one admin connection may stay open (ternctl, probes and
/// scrapes use short ones).
pub const ADMIN_CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(300);

/// Serve `router` on `addr` in the background, with bounded connections: a
/// client that opens many, sends a partial request head, or holds one open
/// for ever cannot starve the port.
pub async fn serve_router(router: Router, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(ADMIN_MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = crate::grpc::accept(&listener, "admin").await;
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%remote, limit = ADMIN_MAX_CONNECTIONS, "admin port at its connection limit; closed a new connection");
                continue;
            };
            let svc = hyper_util::service::TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                b.http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(ADMIN_HEADER_TIMEOUT);
                b.http2().timer(TokioTimer::new());
                let conn = b.serve_connection(TokioIo::new(tcp), svc);
                let _ = tokio::time::timeout(ADMIN_CONNECTION_LIFETIME, conn).await;
                drop(slot);
            });
        }
    });
    Ok(local)
}

#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error(transparent)]
    File(#[from] model::fsutil::FsError),
    #[error("admin token file {0} is empty; put a long random string in it")]
    Empty(String),
}

/// The admin token from `--admin-token-file` (trimmed), if given. The file
/// must be closed to other users and not empty.
pub fn admin_token(path: Option<&std::path::Path>) -> Result<Option<String>, AdminTokenError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let token = model::fsutil::read_secret(path)?.trim().to_string();
    if token.is_empty() {
        return Err(AdminTokenError::Empty(path.display().to_string()));
    }
    Ok(Some(token))
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn ready(State(a): State<Admin>) -> impl IntoResponse {
    match (a.ready)() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(a): State<Admin>) -> impl IntoResponse {
    let mut out = String::new();
    let reg = a.registry.lock().unwrap_or_else(|e| e.into_inner());
    if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            HeaderMap::new(),
            String::new(),
        );
    }
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
            .parse()
            .unwrap(),
    );
    (StatusCode::OK, h, out)
}

async fn config_dump(State(a): State<Admin>, headers: HeaderMap) -> axum::response::Response {
    if let Err(refused) = a.authorize(&headers) {
        return refused.into_response();
    }
    axum::Json((a.dump)()).into_response()
}

async fn log_level(State(a): State<Admin>, headers: HeaderMap, body: String) -> impl IntoResponse {
    if let Err((code, why)) = a.authorize(&headers) {
        return (code, why.to_string());
    }
    let Some(h) = &a.log else {
        return (StatusCode::NOT_IMPLEMENTED, "no log handle\n".into());
    };
    match parse_log_filter(&body) {
        Ok(f) => match h.reload(f) {
            Ok(()) => (
                StatusCode::OK,
                format!("log level set to {}\n", body.trim()),
            ),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("invalid filter {:?}: {e}\n", body.trim()),
        ),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The data-path runtime: one worker is a current-thread runtime (no
/// work-stealing overhead), more is a multi-thread one. Exits with status
/// 64 on zero, as for any bad configuration.
pub fn data_runtime(program: &str, workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match workers {
        0 => {
            eprintln!("{program}: invalid configuration: --workers must be at least 1");
            std::process::exit(64);
        }
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

/// Parse a daemon's flags; bad flags exit with status 64 (EX_USAGE), as
/// every other configuration error does. `--help`/`--version` exit 0.
pub fn parse_config<T: clap::Parser>() -> T {
    match T::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Levels and `target=level` directives parse, the most specific target
    /// wins; an empty filter and a bad level are refused with an error that
    /// names the syntax.
    #[test]
    fn log_filters_take_levels_and_target_directives() {
        use tracing::Level;
        let f = parse_log_filter(" dataplane::outbound=debug,warn ").unwrap();
        assert!(f.would_enable("dataplane::outbound", &Level::DEBUG));
        assert!(!f.would_enable("dataplane::outbound", &Level::TRACE));
        assert!(!f.would_enable("dataplane::inbound", &Level::INFO));
        assert!(f.would_enable("dataplane::inbound", &Level::WARN));
        let f = parse_log_filter("info").unwrap();
        assert!(f.would_enable("gateway", &Level::INFO));
        assert!(!f.would_enable("gateway", &Level::DEBUG));
        assert!(!parse_log_filter("off")
            .unwrap()
            .would_enable("x", &Level::ERROR));
        for bad in ["", "  ", "=[bad", "dataplane=loud"] {
            let e = parse_log_filter(bad).unwrap_err();
            assert!(e.contains("target=level"), "{bad:?}: {e}");
        }
    }

    fn admin() -> Admin {
        Admin::new(
            Registry::default(),
            || Ok(()),
            || serde_json::json!({"k": 1}),
        )
    }

    /// The status line's code for one request to `addr`.
    async fn status(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> u16 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 4\r\nConnection: close\r\n\r\ninfo"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out[9..12].parse().unwrap()
    }

    // With a token, reading the config and changing the log level need it;
    // probes and scrapes do not.
    #[tokio::test]
    async fn a_token_guards_the_config_and_the_log_level() {
        let a = admin().with_token(Some("s3cret".into()));
        let addr = a.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        assert_eq!(status(addr, "GET", "/config_dump", None).await, 401);
        assert_eq!(
            status(addr, "GET", "/config_dump", Some("wrong")).await,
            401
        );
        assert_eq!(
            status(addr, "GET", "/config_dump", Some("s3cret")).await,
            200
        );
        assert_eq!(status(addr, "PUT", "/log-level", None).await, 401);
        assert_eq!(status(addr, "GET", "/ready", None).await, 200);
        assert_eq!(status(addr, "GET", "/metrics", None).await, 200);
    }

    // Without a token: open on loopback (as documented), refused on any
    // other bind address (here the unspecified one, reached over loopback).
    #[tokio::test]
    async fn without_a_token_only_a_loopback_admin_port_serves_the_config() {
        let local = admin().serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        assert_eq!(status(local, "GET", "/config_dump", None).await, 200);
        let any = admin().serve("0.0.0.0:0".parse().unwrap()).await.unwrap();
        let any = SocketAddr::from(([127, 0, 0, 1], any.port()));
        assert_eq!(status(any, "GET", "/config_dump", None).await, 403);
        assert_eq!(status(any, "PUT", "/log-level", None).await, 403);
        assert_eq!(status(any, "GET", "/ready", None).await, 200);
        assert_eq!(status(any, "GET", "/metrics", None).await, 200);
    }

    #[test]
    fn admin_token_files_must_be_private_and_not_empty() {
        let dir = std::env::temp_dir().join(format!("tern-admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "  tok\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(admin_token(Some(&f)).unwrap().as_deref(), Some("tok"));
        assert_eq!(admin_token(None).unwrap(), None);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(admin_token(Some(&f)).is_err(), "a file others can read");
        std::fs::write(&f, " \n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = admin_token(Some(&f)).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

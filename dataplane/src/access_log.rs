//! Access logs: one line per request or TCP connection, written when the
//! proxy's `AccessLog` policy asks (off otherwise), as JSON or text, to
//! stdout or to a file inside `--access-log-dir`; or one OTLP log record
//! each, sent to a collector (`otlp.rs`).
//!
//! Lines go through a bounded queue to one writer task, so a slow disk or
//! a blocked stdout never slows a request: when the queue is full, lines
//! are dropped and counted (`tern_proxy_access_log_dropped_total`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use proto::v1 as pb;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::metrics::Direction;

/// Lines waiting for the writer.
const QUEUE: usize = 4096;

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `AccessLog/NAME`.
    pub name: String,
    pub json: bool,
    /// None: stdout.
    pub file: Option<PathBuf>,
    /// Set: OTLP log records to this collector (not lines).
    pub otlp: Option<crate::otlp::Collector>,
    pub inbound: bool,
    pub outbound: bool,
}

enum Tx {
    Lines(mpsc::Sender<String>),
    Records(mpsc::Sender<proto::otlp::LogRecord>),
}

struct Writer {
    settings: Settings,
    tx: Tx,
}

/// The proxy's access log, as its policy sets it.
#[derive(Default)]
pub struct AccessLogs {
    current: ArcSwapOption<Writer>,
    /// `--access-log-dir`: the only folder files are written in.
    dir: Option<PathBuf>,
    pub dropped: Counter,
    pub written: Counter,
}

impl AccessLogs {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            ..Default::default()
        }
    }

    /// The settings for a policy (checked again here: a name, never a
    /// path). A file without `--access-log-dir` goes to stdout, with a
    /// warning.
    pub fn settings(&self, p: &pb::AccessLog) -> Result<Settings, String> {
        let json = match p.format.as_str() {
            "json" | "" => true,
            "text" => false,
            f => return Err(format!("{}: unknown format {f:?}", p.name)),
        };
        let file = if p.file.is_empty() {
            None
        } else {
            let f = &p.file;
            if f.starts_with('.')
                || f.len() > 128
                || !f
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(format!("{}: {f:?} is not a file name", p.name));
            }
            match &self.dir {
                Some(d) => Some(d.join(f)),
                None => {
                    tracing::warn!(policy = %p.name, file = %f, "the AccessLog policy names a file, but this sidecar has no --access-log-dir; writing to stdout");
                    None
                }
            }
        };
        let otlp = if p.otlp_endpoint.is_empty() {
            None
        } else {
            Some(crate::otlp::Collector::of(
                &p.otlp_endpoint,
                &p.otlp_protocol,
                &p.name,
            )?)
        };
        Ok(Settings {
            name: p.name.clone(),
            json,
            file,
            otlp,
            inbound: p.inbound,
            outbound: p.outbound,
        })
    }

    /// Follow the policy: a new writer when the settings change, none when
    /// no policy applies. The old writer finishes its queue and stops.
    pub fn apply(
        &self,
        settings: Option<Settings>,
        origin: impl Fn() -> crate::otlp::Origin + Send + 'static,
    ) {
        let same = match (&*self.current.load(), &settings) {
            (Some(w), Some(s)) => w.settings == *s,
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        let Some(settings) = settings else {
            self.current.store(None);
            tracing::info!("access log off");
            return;
        };
        tracing::info!(policy = %settings.name, file = ?settings.file, otlp = ?settings.otlp, json = settings.json, "access log on");
        let tx = match &settings.otlp {
            Some(c) => {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(crate::otlp::export_loop::<crate::otlp::Logs>(
                    c.clone(),
                    rx,
                    origin,
                    self.written.clone(),
                    self.dropped.clone(),
                ));
                Tx::Records(tx)
            }
            None => {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(write_loop(settings.file.clone(), rx, self.written.clone()));
                Tx::Lines(tx)
            }
        };
        self.current.store(Some(Arc::new(Writer { settings, tx })));
    }

    /// Whether lines of this direction are wanted (checked before a
    /// request's details are gathered).
    pub fn wants(&self, d: Direction) -> bool {
        match &*self.current.load() {
            Some(w) => match d {
                Direction::Inbound => w.settings.inbound,
                Direction::Outbound => w.settings.outbound,
            },
            None => false,
        }
    }

    pub fn log(&self, line: &Line<'_>) {
        let guard = self.current.load();
        let Some(w) = &*guard else {
            return;
        };
        let wanted = match line.direction {
            Direction::Inbound => w.settings.inbound,
            Direction::Outbound => w.settings.outbound,
        };
        if !wanted {
            return;
        }
        let sent = match &w.tx {
            Tx::Lines(tx) => tx
                .try_send(if w.settings.json {
                    line.json()
                } else {
                    line.text()
                })
                .is_ok(),
            Tx::Records(tx) => tx.try_send(line.record()).is_ok(),
        };
        if !sent {
            self.dropped.inc();
        }
    }

    /// For `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        match &*self.current.load() {
            None => serde_json::Value::Null,
            Some(w) => serde_json::json!({
                "policy": w.settings.name,
                "format": if w.settings.json { "json" } else { "text" },
                "to": match (&w.settings.otlp, &w.settings.file) {
                    (Some(c), _) => format!("otlp {}://{}", if c.http { "http" } else { "grpc" }, c.endpoint),
                    (None, Some(f)) => f.display().to_string(),
                    (None, None) => "stdout".into(),
                },
                "inbound": w.settings.inbound,
                "outbound": w.settings.outbound,
            }),
        }
    }
}

async fn write_loop(file: Option<PathBuf>, mut rx: mpsc::Receiver<String>, written: Counter) {
    let mut out: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = match &file {
        None => Box::new(tokio::io::stdout()),
        Some(path) => {
            // The --access-log-dir folder, made if it is missing.
            if let Some(dir) = path.parent() {
                let _ = tokio::fs::create_dir_all(dir).await;
            }
            let mut o = tokio::fs::OpenOptions::new();
            o.create(true).append(true);
            #[cfg(unix)]
            o.mode(0o640);
            match o.open(path).await {
                Ok(f) => Box::new(f),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot open the access log file; lines are dropped until the policy changes");
                    while rx.recv().await.is_some() {}
                    return;
                }
            }
        }
    };
    let mut batch = Vec::with_capacity(256);
    let mut buf = String::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        buf.clear();
        for line in batch.drain(..) {
            buf.push_str(&line);
            buf.push('\n');
            written.inc();
        }
        if let Err(e) = out.write_all(buf.as_bytes()).await {
            tracing::warn!(error = %e, "could not write access log lines");
        }
        let _ = out.flush().await;
    }
}

/// What a log line needs of a request, taken before it is sent on.
pub struct RequestFacts {
    pub method: String,
    pub authority: Option<String>,
    pub path: String,
}

impl RequestFacts {
    pub fn of<B>(req: &http::Request<B>) -> Self {
        Self {
            method: req.method().to_string(),
            authority: req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().authority().map(|a| a.as_str()))
                .map(str::to_string),
            path: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .to_string(),
        }
    }
}

/// A JSON object written field by field.
struct JsonObject(String);

impl JsonObject {
    fn with_capacity(n: usize) -> Self {
        let mut s = String::with_capacity(n);
        s.push('{');
        JsonObject(s)
    }

    fn key(&mut self, k: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        self.0.push('"');
        self.0.push_str(k);
        self.0.push_str("\":");
    }

    /// A string value, escaped as JSON requires.
    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        self.0.push('"');
        for c in v.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.0, "\\u{:04x}", c as u32);
                }
                c => self.0.push(c),
            }
        }
        self.0.push('"');
    }

    /// A number, as written.
    fn raw(&mut self, k: &str, v: &str) {
        self.key(k);
        self.0.push_str(v);
    }

    fn finish(mut self) -> String {
        self.0.push('}');
        self.0
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
    pub upstream: Option<String>,
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

impl Line<'_> {
    fn direction(&self) -> &'static str {
        match self.direction {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    /// One JSON object, fields in a fixed order, those that do not apply
    /// left out. Written straight into one string (no JSON value built per
    /// request).
    pub fn json(&self) -> String {
        let mut o = JsonObject::with_capacity(384);
        o.str(
            "time",
            &humantime::format_rfc3339_millis(self.start).to_string(),
        );
        o.str("direction", self.direction());
        o.str("protocol", self.protocol);
        o.str("sourceService", self.source_service);
        o.str("sourceZone", self.source_zone);
        if let Some(v) = self.source_identity {
            o.str("sourceIdentity", v);
        }
        o.str("destinationService", self.destination_service);
        o.str("destinationZone", self.destination_zone);
        if let Some(v) = &self.upstream {
            o.str("upstream", v);
        }
        for (k, v) in [
            ("method", self.method),
            ("authority", self.authority),
            ("path", self.path),
            ("route", self.route),
        ] {
            if let Some(v) = v {
                o.str(k, v);
            }
        }
        if let Some(c) = self.status {
            o.raw("status", &c.to_string());
        }
        o.str("decision", self.decision.name());
        let ms = (self.duration.as_secs_f64() * 1e6).round() / 1e3;
        o.raw("durationMs", &ms.to_string());
        if let (Some(a), Some(b)) = (self.bytes_sent, self.bytes_received) {
            o.raw("bytesSent", &a.to_string());
            o.raw("bytesReceived", &b.to_string());
        }
        o.finish()
    }

    /// An OTLP log record: the text line as its body, the fields as
    /// attributes (OpenTelemetry's names where they exist).
    pub fn record(&self) -> proto::otlp::LogRecord {
        use crate::otlp::{kv, Value};
        let nanos = self
            .start
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let s = |v: &str| Value::Str(v.to_string());
        let mut attrs = vec![
            kv("tern.direction", s(self.direction())),
            kv("network.protocol.name", s(self.protocol)),
            kv("tern.source.service", s(self.source_service)),
            kv("tern.source.zone", s(self.source_zone)),
            kv("tern.destination.service", s(self.destination_service)),
            kv("tern.destination.zone", s(self.destination_zone)),
            kv("tern.decision", s(self.decision.name())),
            kv(
                "tern.duration_us",
                Value::Int(self.duration.as_micros() as i64),
            ),
        ];
        let mut opt = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                attrs.push(kv(k, v));
            }
        };
        opt("tern.source.identity", self.source_identity.map(s));
        opt("network.peer.address", self.upstream.as_deref().map(s));
        opt("http.request.method", self.method.map(s));
        opt("server.address", self.authority.map(s));
        opt("url.path", self.path.map(s));
        opt("http.route", self.route.map(s));
        opt(
            "http.response.status_code",
            self.status.map(|c| Value::Int(i64::from(c))),
        );
        opt(
            "tern.bytes_sent",
            self.bytes_sent.map(|b| Value::Int(b as i64)),
        );
        opt(
            "tern.bytes_received",
            self.bytes_received.map(|b| Value::Int(b as i64)),
        );
        proto::otlp::LogRecord {
            time_unix_nano: nanos,
            observed_time_unix_nano: nanos,
            severity_number: 9,
            severity_text: "INFO".into(),
            body: Some(proto::otlp::AnyValue {
                value: Some(proto::otlp::any_value::Value::StringValue(self.text())),
            }),
            attributes: attrs,
            ..Default::default()
        }
    }

    /// `TIME DIRECTION PROTOCOL SRC.ZONE -> DST.ZONE "METHOD AUTHORITY PATH"
    /// STATUS DECISION DURATIONms key=value...`; `-` for what does not
    /// apply. Client-sent parts are quoted with escapes, so a line is
    /// always one line.
    pub fn text(&self) -> String {
        let mut s = String::with_capacity(160);
        let _ = write!(
            s,
            "{} {} {} {}.{} -> {}.{} ",
            humantime::format_rfc3339_millis(self.start),
            self.direction(),
            self.protocol,
            self.source_service,
            self.source_zone,
            self.destination_service,
            self.destination_zone,
        );
        match self.method {
            Some(m) => {
                let _ = write!(
                    s,
                    "\"{} {} {}\" ",
                    m.escape_debug(),
                    self.authority.unwrap_or("-").escape_debug(),
                    self.path.unwrap_or("-").escape_debug()
                );
            }
            None => s.push_str("- "),
        }
        match self.status {
            Some(c) => {
                let _ = write!(s, "{c} ");
            }
            None => s.push_str("- "),
        }
        let _ = write!(
            s,
            "{} {:.3}ms",
            self.decision.name(),
            self.duration.as_secs_f64() * 1e3
        );
        if let Some(r) = self.route {
            let _ = write!(s, " route={r}");
        }
        if let Some(u) = &self.upstream {
            let _ = write!(s, " upstream={u}");
        }
        if let Some(id) = self.source_identity {
            let _ = write!(s, " id={id}");
        }
        if let (Some(a), Some(b)) = (self.bytes_sent, self.bytes_received) {
            let _ = write!(s, " sent={a} received={b}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(path: &str) -> Line<'_> {
        Line {
            start: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            direction: Direction::Inbound,
            protocol: "http",
            source_service: "web",
            source_zone: "z2",
            source_identity: Some("spiffe://tern/zone/z2/svc/web"),
            destination_service: "api",
            destination_zone: "z1",
            upstream: Some("127.0.0.1:8080".into()),
            method: Some("GET"),
            authority: Some("api"),
            path: Some(path),
            route: None,
            status: Some(200),
            decision: common::traffic::Decision::None,
            duration: Duration::from_micros(1234),
            bytes_sent: None,
            bytes_received: None,
        }
    }

    #[test]
    fn text_lines_stay_one_line_whatever_the_client_sent() {
        let t = line("/a\"b\nc").text();
        assert_eq!(
            t,
            "2023-11-14T22:13:20.123Z inbound http web.z2 -> api.z1 \"GET api /a\\\"b\\nc\" 200 none 1.234ms upstream=127.0.0.1:8080 id=spiffe://tern/zone/z2/svc/web"
        );
        assert!(!t.contains('\n'));
    }

    #[test]
    fn json_lines_escape_what_the_client_sent() {
        let nasty = "/a\"b\\c\nd\u{1}é";
        let v: serde_json::Value = serde_json::from_str(&line(nasty).json()).unwrap();
        assert_eq!(v["path"], nasty);
        assert!(!line(nasty).json().contains('\n'));
    }

    #[test]
    fn json_lines_carry_what_applies_and_nothing_else() {
        let v: serde_json::Value = serde_json::from_str(&line("/r").json()).unwrap();
        assert_eq!(v["sourceZone"], "z2");
        assert_eq!(v["status"], 200);
        assert_eq!(v["durationMs"], 1.234);
        assert!(v.get("route").is_none() && v.get("bytesSent").is_none());
    }

    #[test]
    fn a_file_is_a_name_inside_the_configured_folder() {
        let logs = AccessLogs::new(Some("/var/log/tern".into()));
        let p = |file: &str| pb::AccessLog {
            name: "AccessLog/a".into(),
            format: "text".into(),
            file: file.into(),
            inbound: true,
            outbound: true,
            ..Default::default()
        };
        assert_eq!(
            logs.settings(&p("api.log")).unwrap().file,
            Some(PathBuf::from("/var/log/tern/api.log"))
        );
        for bad in ["../x", "a/b", ".hidden"] {
            assert!(logs.settings(&p(bad)).is_err(), "{bad}");
        }
        let no_dir = AccessLogs::new(None);
        assert_eq!(no_dir.settings(&p("api.log")).unwrap().file, None);
    }
}

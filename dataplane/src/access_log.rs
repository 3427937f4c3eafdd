//! Access logs: one line per request or TCP connection, written when the
//! proxy's `AccessLog` policy asks (off otherwise), as JSON or text, to
//! stdout or to a file inside `--access-log-dir`; or one OTLP log record
//! each, sent to a collector (`otlp.rs`).
//!
//! Lines wait in a bounded buffer for a writer thread (`access_log/sink.rs`),
//! and OTLP records in a bounded queue for the exporter task, so a slow disk,
//! a blocked stdout or a slow collector never slows a request: what does not
//! fit is dropped and counted (`tern_proxy_access_log_dropped_total`).

mod sink;

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use proto::v1 as pb;
use tokio::sync::mpsc;

use crate::metrics::Direction;
use crate::observe::Line;

/// OTLP records waiting for the exporter.
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
    Lines(sink::Sink),
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
            None => Tx::Lines(sink::Sink::start(
                settings.file.clone(),
                sink::FLUSH_EVERY,
                self.written.clone(),
                self.dropped.clone(),
            )),
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
        match &w.tx {
            Tx::Lines(sink) => sink.push_with(|b| {
                if w.settings.json {
                    line.json_into(b)
                } else {
                    line.text_into(b)
                }
            }),
            Tx::Records(tx) => {
                if tx.try_send(line.record()).is_err() {
                    self.dropped.inc();
                }
            }
        }
    }

    /// The proxy is stopping: write the lines that wait (up to `limit`).
    pub fn close(&self, limit: std::time::Duration) {
        if let Some(w) = self.current.swap(None) {
            if let Tx::Lines(sink) = &w.tx {
                sink.close(limit);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

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

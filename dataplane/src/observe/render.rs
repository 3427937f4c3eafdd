//! Rendering a [`Line`]: a JSON object or a text line for the access log,
//! an OTLP log record, or a span's attributes.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use proto::otlp as otel;

use super::Line;
use crate::metrics::Direction;
use crate::otlp::{kv, Value};

/// A JSON object written field by field, straight into its line.
struct JsonObject<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> JsonObject<'a> {
    fn open(out: &'a mut String) -> Self {
        out.push('{');
        JsonObject { out, first: true }
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(k);
        self.out.push_str("\":");
    }

    /// A string value, escaped as JSON requires (runs of plain bytes are
    /// copied whole; every byte escaped is ASCII, so runs end on character
    /// boundaries).
    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        self.out.push('"');
        let mut run = 0;
        for (i, b) in v.bytes().enumerate() {
            let escaped = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.out.push_str(&v[run..i]);
            if escaped.is_empty() {
                let _ = write!(self.out, "\\u{:04x}", b);
            } else {
                self.out.push_str(escaped);
            }
            run = i + 1;
        }
        self.out.push_str(&v[run..]);
        self.out.push('"');
    }

    /// A value whose text needs no escaping (an address), as a string.
    fn display(&mut self, k: &str, v: &impl std::fmt::Display) {
        self.key(k);
        let _ = write!(self.out, "\"{v}\"");
    }

    /// A time, RFC 3339 UTC with milliseconds.
    /// RFC 3339 in UTC with milliseconds (`2026-12-07T13:50:12.345Z`). The
    /// date and time up to the second are computed once per second per
    /// thread; lines within it copy them.
    fn time(&mut self, k: &str, t: SystemTime) {
        thread_local! {
            static SECOND: std::cell::RefCell<(u64, String)> = const {
                std::cell::RefCell::new((u64::MAX, String::new()))
            };
        }
        self.key(k);
        let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        SECOND.with_borrow_mut(|(at, text)| {
            if *at != secs {
                let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
                text.clear();
                let _ = write!(text, "{}", humantime::format_rfc3339_seconds(whole));
                text.pop(); // the `Z`
                *at = secs;
            }
            let _ = write!(self.out, "\"{text}.{:03}Z\"", since.subsec_millis());
        });
    }

    /// A number, as written.
    fn raw(&mut self, k: &str, v: impl std::fmt::Display) {
        self.key(k);
        let _ = write!(self.out, "{v}");
    }

    /// Milliseconds with up to three decimals (whole microseconds, rounded),
    /// as a JSON number: `12`, `0.5`, `1.234`. Written from integers, the
    /// way `{}` would print the same value as a float.
    fn millis(&mut self, k: &str, d: Duration) {
        self.key(k);
        let us = (d.as_nanos() + 500) / 1000;
        let (whole, mut frac, mut digits) = (us / 1000, us % 1000, 3);
        let _ = write!(self.out, "{whole}");
        if frac > 0 {
            while frac % 10 == 0 {
                frac /= 10;
                digits -= 1;
            }
            let _ = write!(self.out, ".{frac:0digits$}");
        }
    }

    fn finish(self) {
        self.out.push('}');
    }
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
        let mut s = String::with_capacity(384);
        self.json_into(&mut s);
        s
    }

    /// As [`Line::json`], appended to `out`.
    pub fn json_into(&self, out: &mut String) {
        let mut o = JsonObject::open(out);
        o.time("time", self.start);
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
            o.display("upstream", v);
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
            o.raw("status", c);
        }
        o.str("decision", self.decision.name());
        o.millis("durationMs", self.duration);
        if let (Some(a), Some(b)) = (self.bytes_sent, self.bytes_received) {
            o.raw("bytesSent", a);
            o.raw("bytesReceived", b);
        }
        o.finish();
    }

    /// The line's fields as OTLP attributes, with OpenTelemetry's names
    /// where they exist. A log record keeps the query in `url.path` and
    /// carries the duration and TCP bytes; a span (`for_log` false) has the
    /// path alone and its own times.
    pub fn attributes(&self, for_log: bool) -> Vec<otel::KeyValue> {
        let s = |v: &str| Value::Str(v.to_string());
        let mut attrs = vec![
            kv("tern.direction", s(self.direction())),
            kv("network.protocol.name", s(self.protocol)),
            kv("tern.source.service", s(self.source_service)),
            kv("tern.source.zone", s(self.source_zone)),
            kv("tern.destination.service", s(self.destination_service)),
            kv("tern.destination.zone", s(self.destination_zone)),
            kv("tern.decision", s(self.decision.name())),
        ];
        let mut opt = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                attrs.push(kv(k, v));
            }
        };
        let path = match (for_log, self.path) {
            (false, Some(p)) => p.split('?').next(),
            (_, p) => p,
        };
        opt("tern.source.identity", self.source_identity.map(s));
        opt(
            "network.peer.address",
            self.upstream.map(|a| Value::Str(a.to_string())),
        );
        opt("http.request.method", self.method.map(s));
        opt("server.address", self.authority.map(s));
        opt("url.path", path.map(s));
        opt("http.route", self.route.map(s));
        opt(
            "http.response.status_code",
            self.status.map(|c| Value::Int(i64::from(c))),
        );
        if for_log {
            opt(
                "tern.duration_us",
                Some(Value::Int(self.duration.as_micros() as i64)),
            );
            opt(
                "tern.bytes_sent",
                self.bytes_sent.map(|b| Value::Int(b as i64)),
            );
            opt(
                "tern.bytes_received",
                self.bytes_received.map(|b| Value::Int(b as i64)),
            );
        }
        attrs
    }

    /// An OTLP log record: the text line as its body, the fields as
    /// attributes.
    pub fn record(&self) -> otel::LogRecord {
        let nanos = self
            .start
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        otel::LogRecord {
            time_unix_nano: nanos,
            observed_time_unix_nano: nanos,
            severity_number: 9,
            severity_text: "INFO".into(),
            body: Some(otel::AnyValue {
                value: Some(otel::any_value::Value::StringValue(self.text())),
            }),
            attributes: self.attributes(true),
            ..Default::default()
        }
    }

    /// `TIME DIRECTION PROTOCOL SRC.ZONE -> DST.ZONE "METHOD AUTHORITY PATH"
    /// STATUS DECISION DURATIONms key=value...`; `-` for what does not
    /// apply. Client-sent parts are quoted with escapes, so a line is
    /// always one line.
    pub fn text(&self) -> String {
        let mut s = String::with_capacity(160);
        self.text_into(&mut s);
        s
    }

    /// As [`Line::text`], appended to `s`.
    pub fn text_into(&self, s: &mut String) {
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
            upstream: Some("127.0.0.1:8080".parse().unwrap()),
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
    fn a_span_gets_the_path_alone_and_a_log_record_the_query_too() {
        let l = line("/r?x=1");
        let path = |attrs: Vec<otel::KeyValue>| {
            attrs
                .into_iter()
                .find(|a| a.key == "url.path")
                .and_then(|a| a.value)
                .and_then(|v| v.value)
        };
        use otel::any_value::Value as V;
        assert_eq!(path(l.attributes(false)), Some(V::StringValue("/r".into())));
        assert_eq!(
            path(l.attributes(true)),
            Some(V::StringValue("/r?x=1".into()))
        );
    }

    // durationMs is written from integers; it reads as the float the line
    // carried before (microseconds rounded, up to three decimals).
    #[test]
    fn duration_ms_is_written_as_the_rounded_float_was() {
        for ns in [
            0u64,
            499,
            500,
            1_000,
            10_000,
            100_000,
            999_499,
            999_500,
            1_000_000,
            1_000_400,
            1_230_000,
            1_234_000,
            1_234_567,
            12_000_000,
            123_456_789_012,
        ] {
            let d = Duration::from_nanos(ns);
            let mut out = String::new();
            JsonObject::open(&mut out).millis("d", d);
            let want = format!("{}", (d.as_secs_f64() * 1e6).round() / 1e3);
            assert_eq!(out, format!("{{\"d\":{want}"), "{ns} ns");
        }
    }

    // The cached second gives the text humantime would write.
    #[test]
    fn times_are_rfc3339_with_milliseconds() {
        let base = SystemTime::UNIX_EPOCH + Duration::from_millis(1_765_115_412_345);
        for t in [
            base,
            base + Duration::from_millis(1),
            base + Duration::from_millis(655),
            base + Duration::from_secs(86_400 * 40) + Duration::from_nanos(999_999_999),
            SystemTime::UNIX_EPOCH,
        ] {
            let mut out = String::new();
            JsonObject::open(&mut out).time("t", t);
            let want = format!("{{\"t\":\"{}\"", humantime::format_rfc3339_millis(t));
            assert_eq!(out, want);
        }
    }
}

//! `ternctl drill report -o html`: one standalone page (no scripts, no
//! external assets) with the timeline, the tables and, per service, SVG
//! charts of requests per second by serving zone, error rate and p99,
//! with the stages and the restore marked.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

use crate::output::s;

const W: f64 = 760.0;
const H: f64 = 180.0;
const PAD: f64 = 40.0;
const COLORS: &[&str] = &[
    "#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#be185d",
];

pub fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// "zone a (services api)", "region eu", "link a ↔ b".
pub fn target(v: &Value) -> String {
    let t = &v["target"];
    let services: Vec<&str> = t["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let base = if let Some(z) = t["zone"].as_str() {
        format!("zone {z}")
    } else if let Some(r) = t["region"].as_str() {
        format!("region {r}")
    } else {
        let l: Vec<&str> = t["link"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        format!("link {}", l.join(" ↔ "))
    };
    if services.is_empty() {
        base
    } else {
        format!("{base} (services {})", services.join(", "))
    }
}

/// One chart: `series` of (t, y) with names; `marks` as (t, label).
fn chart(
    title: &str,
    unit: &str,
    series: &[(String, Vec<(u64, f64)>)],
    marks: &[(u64, String)],
) -> String {
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut t0, mut t1, mut ymax) = (u64::MAX, 0u64, 0.0f64);
    for (t, y) in pts {
        t0 = t0.min(*t);
        t1 = t1.max(*t);
        ymax = ymax.max(*y);
    }
    for (t, _) in marks {
        t0 = t0.min(*t);
        t1 = t1.max(*t);
    }
    if t0 >= t1 {
        return format!("<p>{}: no figures yet</p>", esc(title));
    }
    let ymax = if ymax <= 0.0 { 1.0 } else { ymax * 1.1 };
    let x = |t: u64| PAD + (t - t0) as f64 / (t1 - t0) as f64 * (W - 2.0 * PAD);
    let y = |v: f64| H - PAD / 2.0 - v / ymax * (H - PAD);
    let mut o = String::new();
    let _ = write!(
        o,
        r##"<figure><figcaption>{}</figcaption><svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img"><line x1="{PAD}" y1="{}" x2="{}" y2="{}" stroke="#999"/><text x="2" y="{}" font-size="10">{:.1}{}</text><text x="2" y="{}" font-size="10">0</text>"##,
        esc(title),
        y(0.0),
        W - PAD,
        y(0.0),
        y(ymax / 1.1) + 4.0,
        ymax / 1.1,
        esc(unit),
        y(0.0),
    );
    for (t, label) in marks {
        let _ = write!(
            o,
            r##"<line x1="{0:.1}" y1="10" x2="{0:.1}" y2="{1}" stroke="#888" stroke-dasharray="4 3"/><text x="{2:.1}" y="12" font-size="10">{3}</text>"##,
            x(*t),
            y(0.0),
            x(*t) + 3.0,
            esc(label)
        );
    }
    for (i, (name, p)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let d: Vec<String> = p
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let _ = write!(
            o,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/><text x="{}" y="{}" font-size="11" fill="{c}">{}</text>"#,
            d.join(" "),
            W - PAD + 4.0,
            20.0 + 14.0 * i as f64,
            esc(name)
        );
    }
    o.push_str("</svg></figure>");
    o
}

fn rows_table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut o = String::from("<table><tr>");
    for h in head {
        let _ = write!(o, "<th>{}</th>", esc(h));
    }
    o.push_str("</tr>");
    for r in rows {
        o.push_str("<tr>");
        for c in r {
            let _ = write!(o, "<td>{}</td>", esc(c));
        }
        o.push_str("</tr>");
    }
    o.push_str("</table>");
    o
}

pub fn page(v: &Value) -> String {
    let start = v["startedAt"].as_u64().unwrap_or(0);
    let mut marks: Vec<(u64, String)> = v["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|st| Some((st["startedAt"].as_u64()?, format!("{}%", st["percent"]))))
        .collect();
    if let Some(r) = v["restoredAt"].as_u64() {
        marks.push((r, "restored".into()));
    }
    let title = format!("Drill {} — run {}", s(v, "/drill"), s(v, "/run"));
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>body{{font:14px system-ui,sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}figure{{margin:1em 0}}figcaption{{font-weight:600}}.passed{{color:#16a34a}}.aborted,.interrupted{{color:#dc2626}}</style></head><body><h1>{}</h1>",
        esc(&title),
        esc(&title)
    );
    let outcome = v["outcome"].as_str().unwrap_or("running");
    let _ = write!(
        o,
        "<p>{} of {} — <b class=\"{}\">{}</b> {}</p>",
        esc(&s(v, "/method")),
        esc(&target(v)),
        esc(outcome),
        esc(outcome),
        esc(v["reason"].as_str().unwrap_or(""))
    );
    o.push_str("<h2>Timeline</h2>");
    let events: Vec<Vec<String>> = v["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            vec![
                format!(
                    "+{:.0}s",
                    e["at"].as_u64().unwrap_or(start).saturating_sub(start) as f64 / 1000.0
                ),
                s(e, "/event"),
                e["detail"].as_str().unwrap_or("").into(),
            ]
        })
        .collect();
    o.push_str(&rows_table(&["time", "event", "detail"], &events));
    o.push_str("<h2>SLOs</h2>");
    let slos: Vec<Vec<String>> = v["slos"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            vec![
                s(x, "/service"),
                x["maxErrorRate"].to_string(),
                s(x, "/errorRate"),
                x["maxP99Ms"].to_string(),
                x["p99Ms"].to_string(),
                if x["met"] == true { "met" } else { "BREACHED" }.into(),
            ]
        })
        .collect();
    o.push_str(&rows_table(
        &[
            "service",
            "max error %",
            "error %",
            "max p99 ms",
            "p99 ms",
            "verdict",
        ],
        &slos,
    ));
    for f in v["services"].as_array().into_iter().flatten() {
        let svc = s(f, "/service");
        let _ = write!(o, "<h2>{}</h2>", esc(&svc));
        let _ = write!(
            o,
            "<p>{} requests, {} failed ({} and {} during the drill); target share before {:.0}%; moved after {}; returned after {}</p>",
            s(f, "/total/requests"),
            s(f, "/total/failed"),
            s(f, "/during/requests"),
            s(f, "/during/failed"),
            f["baselineShare"].as_f64().unwrap_or(0.0) * 100.0,
            esc(&f["movedAfterSeconds"].to_string()),
            esc(&f["returnedAfterSeconds"].to_string()),
        );
        let points: Vec<&Value> = v["points"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["service"] == svc.as_str())
            .collect();
        let mut by_zone: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
        let mut errors = Vec::new();
        let mut p99 = Vec::new();
        for p in &points {
            let t = p["t"].as_u64().unwrap_or(0);
            for (z, r) in p["rps"].as_object().into_iter().flatten() {
                by_zone
                    .entry(z.clone())
                    .or_default()
                    .push((t, r.as_f64().unwrap_or(0.0)));
            }
            errors.push((t, p["errorRate"].as_f64().unwrap_or(0.0) * 100.0));
            if let Some(x) = p["p99Ms"].as_f64() {
                p99.push((t, x));
            }
        }
        let zones: Vec<(String, Vec<(u64, f64)>)> = by_zone.into_iter().collect();
        o.push_str(&chart("requests/s by serving zone", "/s", &zones, &marks));
        o.push_str(&chart(
            "error rate",
            "%",
            &[("errors".into(), errors)],
            &marks,
        ));
        o.push_str(&chart("p99 latency", "ms", &[("p99".into(), p99)], &marks));
        let mut rows = Vec::new();
        for phase in ["before", "during", "after"] {
            for (zone, c) in f[phase]["byZone"].as_object().into_iter().flatten() {
                rows.push(vec![
                    phase.to_string(),
                    zone.clone(),
                    s(c, "/requests"),
                    s(c, "/failed"),
                    c["p99Ms"].to_string(),
                ]);
            }
        }
        o.push_str(&rows_table(
            &["phase", "served by", "requests", "failed", "p99 ms"],
            &rows,
        ));
    }
    o.push_str("</body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_page_escapes_what_it_shows_and_draws_charts() {
        let v = serde_json::json!({
            "drill": "d<x>", "run": "r", "method": "drain",
            "target": {"zone": "a", "services": ["api"]},
            "startedAt": 1000, "restoredAt": 20000, "outcome": "passed",
            "stages": [{"percent": 100, "startedAt": 1000}],
            "events": [{"at": 1000, "event": "started", "detail": "<script>"}],
            "slos": [], "services": [{"service": "api", "total": {"requests": 5, "failed": 0}}],
            "points": [
                {"t": 5000, "service": "api", "rps": {"a": 1.0}, "errorRate": 0.0, "p99Ms": 3.0},
                {"t": 10000, "service": "api", "rps": {"b": 1.0}, "errorRate": 0.0}
            ]
        });
        let p = page(&v);
        assert!(!p.contains("<script>") && p.contains("&lt;script&gt;"));
        assert!(p.contains("d&lt;x&gt;"));
        assert_eq!(p.matches("<svg").count(), 3);
        assert!(p.contains("restored"));
    }
}

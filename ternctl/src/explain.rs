//! `ternctl inspect dataplane` for people: who a proxy is, what applies to
//! it, and what results.

use serde_json::Value;

use crate::output::s;

/// `inspect dataplane` for people: who, what applies, and what results.
pub(crate) fn explain_text(v: &Value) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let d = &v["dataplane"];
    let labels = |l: &Value| {
        l.as_object()
            .filter(|m| !m.is_empty())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_else(|| "-".into())
    };
    let list = |l: &Value| {
        l.as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let _ = writeln!(
        o,
        "dataplane {} ({}): service {}, zone {} (region {}), labels {}, {}",
        s(d, "/name"),
        s(d, "/kind"),
        s(d, "/service"),
        s(d, "/zone"),
        s(d, "/region"),
        labels(&d["labels"]),
        if d["connected"] == true {
            "connected"
        } else {
            "disconnected"
        }
    );
    let i = &v["inbound"];
    if !i.is_null() {
        let _ = writeln!(
            o,
            "\ninbound: mTLS {}; when no rule matches: {} ({})",
            s(i, "/mtlsMode"),
            s(i, "/default"),
            s(i, "/defaultMode")
        );
        let pols = list(&i["policies"]);
        let _ = writeln!(
            o,
            "  policies: {}",
            if pols.is_empty() { "none".into() } else { pols }
        );
        for (n, r) in i["rules"].as_array().into_iter().flatten().enumerate() {
            let from = match &r["from"] {
                Value::String(x) => x.clone(),
                f => f
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|c| {
                                let mut parts = vec![];
                                if let Some(x) = c["service"].as_str() {
                                    parts.push(format!("service {x}"));
                                }
                                if !c["zones"].is_null() {
                                    parts.push(format!("zones [{}]", list(&c["zones"])));
                                }
                                if !c["labels"].is_null() {
                                    parts.push(format!("labels {}", labels(&c["labels"])));
                                }
                                parts.join(" ")
                            })
                            .collect::<Vec<_>>()
                            .join(" | ")
                    })
                    .unwrap_or_default(),
            };
            let mut when = list(&r["methods"]);
            let paths: Vec<String> = r["paths"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| p.to_string())
                .collect();
            if !paths.is_empty() {
                when = format!("{when} {}", paths.join(" ")).trim().to_string();
            }
            let _ = writeln!(
                o,
                "  {}. {}: {}{} from {}{}",
                n + 1,
                s(r, "/name"),
                s(r, "/action"),
                if r["shadow"] == true { " (shadow)" } else { "" },
                from,
                if when.is_empty() {
                    String::new()
                } else {
                    format!(" when {when}")
                }
            );
        }
    }
    let _ = writeln!(o, "\noutbound:");
    for (svc, c) in v["outbound"].as_object().into_iter().flatten() {
        let pols = list(&c["policies"]);
        let _ = writeln!(
            o,
            "  {svc} ({}){}",
            s(c, "/protocol"),
            if pols.is_empty() {
                String::new()
            } else {
                format!(": {pols}")
            }
        );
        for r in c["httpRoutes"].as_array().into_iter().flatten() {
            let _ = writeln!(o, "    route {}", s(r, "/name"));
            for b in r["backends"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    o,
                    "      weight {} -> {}: {}",
                    s(b, "/weight"),
                    s(b, "/service"),
                    list(&b["endpoints"])
                );
            }
            if !r["mirror"].is_null() {
                let _ = writeln!(
                    o,
                    "      mirror {}% -> {}",
                    s(&r["mirror"], "/percent"),
                    list(&r["mirror"]["backend"]["endpoints"])
                );
            }
        }
        if let Some(r) = c["resilience"].as_object().filter(|r| !r.is_empty()) {
            let settings: Vec<String> = r
                .iter()
                .map(|(k, v)| match v {
                    Value::String(x) => format!("{k} {x}"),
                    other => format!("{k} {other}"),
                })
                .collect();
            let _ = writeln!(o, "    resilience: {}", settings.join(", "));
        }
        if let Some(t) = c["tcpRoute"].as_object() {
            let _ = writeln!(
                o,
                "    tcp route {}",
                t.get("name").and_then(Value::as_str).unwrap_or_default()
            );
            for b in t
                .get("backends")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let _ = writeln!(
                    o,
                    "      weight {} -> {}",
                    s(b, "/weight"),
                    list(&b["endpoints"])
                );
            }
        }
        let eps: Vec<String> = c["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| s(e, "/name"))
            .collect();
        let _ = writeln!(o, "    endpoints: {}", eps.join(", "));
    }
    o
}

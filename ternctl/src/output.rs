//! Printing: tables, JSON or YAML values, and the cells they share.

use clap::ValueEnum;
use serde_json::Value;

/// `-o`: how a command prints.
#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub(crate) enum Output {
    Table,
    /// A table with more columns (where a command has them).
    Wide,
    Yaml,
    Json,
}

/// The rate columns of a service or flow (`common::traffic::Rates`).
pub(crate) fn rate_cells(v: &Value, wide: bool) -> Vec<String> {
    let f = |k: &str| v[k].as_f64();
    let ms = |k: &str| match f(k) {
        Some(x) if x < 10.0 => format!("{x:.2}ms"),
        Some(x) => format!("{x:.0}ms"),
        None => "-".into(),
    };
    let mut out = vec![
        format!("{:.1}", f("rps").unwrap_or(0.0)),
        format!("{:.2}%", f("errorRate").unwrap_or(0.0) * 100.0),
        ms("p50Ms"),
        ms("p99Ms"),
    ];
    if wide {
        out.push(format!("{:.1}", f("tcpCps").unwrap_or(0.0)));
        out.push(format!("{:.1}", f("tcpFailedCps").unwrap_or(0.0)));
        out.push(format!("{:.0}", f("tcpBps").unwrap_or(0.0)));
        let d: Vec<String> = v["decisions"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, n)| format!("{k}={:.1}", n.as_f64().unwrap_or(0.0)))
            .collect();
        out.push(if d.is_empty() {
            "-".into()
        } else {
            d.join(",")
        });
    }
    out
}

pub(crate) fn print_value(v: &Value, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v)?),
        _ => print!("{}", serde_yaml::to_string(v)?),
    }
    Ok(())
}

pub(crate) fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<width$}", c, width = w[i]))
            .collect();
        println!("{}", s.join("   ").trim_end());
    };
    line(headers.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r);
    }
}

pub(crate) fn s(v: &Value, p: &str) -> String {
    match v.pointer(p) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

//! `ternctl drill run|status|abort|report`.

use std::time::Duration;

use anyhow::bail;
use clap::{Subcommand, ValueEnum};
use serde_json::Value;

use crate::api::Api;
use crate::output::{s, table};

#[derive(Subcommand)]
pub enum DrillCmd {
    /// Start a drill now (preflight first). With --wait, follow it to the
    /// end of its report and exit non-zero unless it passed.
    Run {
        name: String,
        #[arg(long)]
        wait: bool,
    },
    /// The drill running now, and recent runs.
    Status {
        #[arg(short, long, value_enum, default_value = "table")]
        output: ReportOutput,
    },
    /// Stop a running drill and restore at once.
    Abort { name: String },
    /// A run's report (the drill's latest run unless --run is given).
    Report {
        name: String,
        #[arg(long)]
        run: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: ReportOutput,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum ReportOutput {
    Table,
    Yaml,
    Json,
    /// A standalone page with charts (reports only).
    Html,
}

pub async fn run(api: &Api, cmd: DrillCmd) -> anyhow::Result<()> {
    if let DrillCmd::Run { name, .. } | DrillCmd::Abort { name } | DrillCmd::Report { name, .. } =
        &cmd
    {
        crate::api::name(name)?;
    }
    match cmd {
        DrillCmd::Run { name, wait } => {
            let v = api
                .ok("POST", &format!("/api/v1/drills/{name}/run"), None)
                .await?;
            println!("drill {name} started: run {}", s(&v, "/run"));
            for p in v["preflight"].as_array().into_iter().flatten() {
                println!("  preflight: {}", p.as_str().unwrap_or_default());
            }
            if wait {
                return follow(api, &name, &s(&v, "/run")).await;
            }
            println!("follow it with `ternctl drill report {name}`; stop it with `ternctl drill abort {name}`");
        }
        DrillCmd::Abort { name } => {
            api.ok("POST", &format!("/api/v1/drills/{name}/abort"), None)
                .await?;
            println!("drill {name} aborted; its target is restored");
        }
        DrillCmd::Status { output } => {
            let v = api.ok("GET", "/api/v1/drill-runs", None).await?;
            match output {
                ReportOutput::Json | ReportOutput::Html => {
                    println!("{}", serde_json::to_string_pretty(&v)?)
                }
                ReportOutput::Yaml => print!("{}", serde_yaml::to_string(&v)?),
                ReportOutput::Table => {
                    match v["running"].as_object() {
                        Some(_) => println!(
                            "running: {} (run {})\n",
                            s(&v, "/running/drill"),
                            s(&v, "/running/run")
                        ),
                        None => println!("no drill running\n"),
                    }
                    let rows = v["runs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|r| {
                            vec![
                                s(r, "/drill"),
                                s(r, "/run"),
                                s(r, "/method"),
                                s(r, "/state"),
                                r["outcome"].as_str().unwrap_or("-").into(),
                                time(r["startedAt"].as_u64()),
                                r["reason"].as_str().unwrap_or("").into(),
                            ]
                        })
                        .collect();
                    table(
                        &[
                            "DRILL", "RUN", "METHOD", "STATE", "OUTCOME", "STARTED", "REASON",
                        ],
                        rows,
                    );
                }
            }
        }
        DrillCmd::Report { name, run, output } => {
            let path = match &run {
                Some(r) => format!("/api/v1/drills/{name}/report?run={}", crate::api::enc(r)),
                None => format!("/api/v1/drills/{name}/report"),
            };
            let v = api.ok("GET", &path, None).await?;
            match output {
                ReportOutput::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                ReportOutput::Yaml => print!("{}", serde_yaml::to_string(&v)?),
                ReportOutput::Html => print!("{}", crate::drill_html::page(&v)),
                ReportOutput::Table => print_report(&v),
            }
        }
    }
    Ok(())
}

/// Print events as they come until the report is done.
async fn follow(api: &Api, name: &str, run: &str) -> anyhow::Result<()> {
    let mut shown = 0usize;
    loop {
        let v = api
            .ok(
                "GET",
                &format!("/api/v1/drills/{name}/report?run={}", crate::api::enc(run)),
                None,
            )
            .await?;
        let events = v["events"].as_array().cloned().unwrap_or_default();
        let start = v["startedAt"].as_u64().unwrap_or(0);
        for e in events.iter().skip(shown) {
            println!("{}", event_line(e, start));
        }
        shown = events.len();
        if v["state"] == "done" {
            println!();
            print_report(&v);
            if v["outcome"] != "passed" {
                bail!(
                    "drill {name} did not pass: {}",
                    v["reason"].as_str().unwrap_or("see the report")
                );
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn time(ms: Option<u64>) -> String {
    match ms {
        Some(ms) => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        }
        None => "-".into(),
    }
}

fn since(ms: Option<u64>, start: u64) -> String {
    match ms {
        Some(t) => format!("+{:.0}s", t.saturating_sub(start) as f64 / 1000.0),
        None => "-".into(),
    }
}

fn event_line(e: &Value, start: u64) -> String {
    format!(
        "{:>6}  {:<14} {}",
        since(e["at"].as_u64(), start),
        s(e, "/event"),
        e["detail"].as_str().unwrap_or("")
    )
}

fn secs(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.1}s"))
        .unwrap_or_else(|| "-".into())
}

fn ms(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.1}ms"))
        .unwrap_or_else(|| "-".into())
}

fn print_report(v: &Value) {
    let start = v["startedAt"].as_u64().unwrap_or(0);
    let target = crate::drill_html::target(v);
    println!(
        "drill {}  run {}  {} of {}",
        s(v, "/drill"),
        s(v, "/run"),
        s(v, "/method"),
        target
    );
    println!(
        "state {}  outcome {}  {}",
        s(v, "/state"),
        v["outcome"].as_str().unwrap_or("-"),
        v["reason"].as_str().unwrap_or("")
    );
    println!(
        "started {}  restored {}  deadline {}\n",
        time(v["startedAt"].as_u64()),
        since(v["restoredAt"].as_u64(), start),
        since(v["deadlineAt"].as_u64(), start)
    );
    for e in v["events"].as_array().into_iter().flatten() {
        println!("{}", event_line(e, start));
    }
    println!();
    let services = v["services"].as_array().cloned().unwrap_or_default();
    table(
        &[
            "SERVICE",
            "REQUESTS",
            "FAILED",
            "DURING",
            "FAILED DURING",
            "TARGET SHARE BEFORE",
            "MOVED AFTER (PER STAGE)",
            "RETURNED AFTER",
        ],
        services
            .iter()
            .map(|f| {
                vec![
                    s(f, "/service"),
                    s(f, "/total/requests"),
                    s(f, "/total/failed"),
                    s(f, "/during/requests"),
                    s(f, "/during/failed"),
                    format!("{:.0}%", f["baselineShare"].as_f64().unwrap_or(0.0) * 100.0),
                    f["movedAfterSeconds"]
                        .as_array()
                        .map(|a| a.iter().map(secs).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default(),
                    secs(&f["returnedAfterSeconds"]),
                ]
            })
            .collect(),
    );
    println!();
    let mut rows = Vec::new();
    for f in &services {
        for phase in ["before", "during", "after"] {
            for (zone, c) in f[phase]["byZone"].as_object().into_iter().flatten() {
                rows.push(vec![
                    s(f, "/service"),
                    phase.into(),
                    zone.clone(),
                    s(c, "/requests"),
                    s(c, "/failed"),
                    ms(&c["p99Ms"]),
                ]);
            }
        }
    }
    table(
        &["SERVICE", "PHASE", "SERVED BY", "REQUESTS", "FAILED", "P99"],
        rows,
    );
    println!();
    table(
        &["SLO", "MAX ERRORS", "ERRORS", "MAX P99", "P99", "MET"],
        v["slos"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| {
                vec![
                    s(o, "/service"),
                    o["maxErrorRate"]
                        .as_f64()
                        .map(|x| format!("{x}%"))
                        .unwrap_or_else(|| "-".into()),
                    format!("{}%", s(o, "/errorRate")),
                    ms(&o["maxP99Ms"]),
                    ms(&o["p99Ms"]),
                    if o["met"] == true { "yes" } else { "NO" }.into(),
                ]
            })
            .collect(),
    );
}

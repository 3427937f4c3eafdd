//! `ternctl inspect zones|dataplanes|dataplane|services|traffic`: runtime
//! state, asked of the global (which asks the zones where it must).

use clap::Subcommand;

use crate::api::{enc, Api};
use crate::explain::explain_text;
use crate::output::{print_value, rate_cells, s, table, Output};

#[derive(Subcommand)]
pub enum Inspect {
    /// Zones: online, last seen, versions, NACKs, proxies.
    Zones {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Proxies (sidecars and gateways): version, serving state,
    /// certificate expiry and sync state, asked of the zones now.
    Dataplanes {
        /// One zone only (default: every zone online).
        #[arg(long)]
        zone: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Services across zones: request rate, error rate, p50/p99 latency
    /// and serving instances, from the figures zones report (live, over
    /// the last --window). `-o wide` adds TCP and policy decisions.
    Services {
        #[arg(long, default_value = "1m")]
        window: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Zone-to-zone traffic (who calls whom across zones), over the last
    /// --window. `-o wide` lists the service edges as well.
    Traffic {
        #[arg(long, default_value = "1m")]
        window: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// One proxy, as its zone compiles it: the policies that apply to it
    /// and where each came from, its inbound rules, and the routes and
    /// endpoints of each service it calls.
    Dataplane {
        /// The proxy's instance name (`--instance`; by default
        /// SERVICE-ADDRESS-PORT).
        name: String,
        /// The zone it runs in.
        #[arg(long)]
        zone: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

pub async fn run(api: &Api, what: Inspect) -> anyhow::Result<()> {
    match what {
        Inspect::Dataplane { name, zone, output } => {
            let v = api
                .ok(
                    "GET",
                    &format!("/api/v1/inspect/dataplanes/{}/{}", enc(&zone), enc(&name)),
                    None,
                )
                .await?;
            if !matches!(output, Output::Table | Output::Wide) {
                return print_value(&v, output);
            }
            print!("{}", explain_text(&v));
        }
        Inspect::Dataplanes { zone, output } => {
            let path = match &zone {
                Some(z) => format!("/api/v1/inspect/dataplanes?zone={}", enc(z)),
                None => "/api/v1/inspect/dataplanes".to_string(),
            };
            let v = api.ok("GET", &path, None).await?;
            for (z, e) in v["errors"].as_object().into_iter().flatten() {
                eprintln!("zone {z}: {}", e.as_str().unwrap_or_default());
            }
            if !matches!(output, Output::Table | Output::Wide) {
                return print_value(&v["items"], output);
            }
            let wide = output == Output::Wide;
            let mut head = vec![
                "NAME",
                "ZONE",
                "SERVICE",
                "KIND",
                "VERSION",
                "STATE",
                "CERT EXPIRES",
                "SYNC",
            ];
            if wide {
                head.extend(["ADDRESS", "LAST NACK"]);
            }
            let rows = v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    let state = if d["connected"] != true {
                        "disconnected".to_string()
                    } else if d["kind"] == "gateway" {
                        "connected".into()
                    } else if d["serving"] == true {
                        "serving".into()
                    } else {
                        s(d, "/health")
                    };
                    let mut row = vec![
                        s(d, "/name"),
                        s(d, "/zone"),
                        s(d, "/service"),
                        s(d, "/kind"),
                        s(d, "/version"),
                        state,
                        s(d, "/certificateNotAfter"),
                        if d["lastNack"].is_string() {
                            format!("NACK (acked v{})", s(d, "/ackedVersion"))
                        } else {
                            format!("acked v{}", s(d, "/ackedVersion"))
                        },
                    ];
                    if wide {
                        row.push(s(d, "/address"));
                        row.push(s(d, "/lastNack"));
                    }
                    row
                })
                .collect();
            table(&head, rows);
        }
        Inspect::Services { window, output } => {
            let v = api
                .ok(
                    "GET",
                    &format!("/api/v1/inspect/services?window={}", enc(&window)),
                    None,
                )
                .await?;
            if !matches!(output, Output::Table | Output::Wide) {
                return print_value(&v["items"], output);
            }
            let wide = output == Output::Wide;
            let mut head = vec![
                "SERVICE", "ZONE", "HEALTHY", "REQ/S", "ERRORS", "P50", "P99",
            ];
            if wide {
                head.extend(["TCP CONN/S", "TCP FAIL/S", "TCP B/S", "DECISIONS/S"]);
            }
            let mut rows = Vec::new();
            for svc in v["items"].as_array().into_iter().flatten() {
                for z in svc["zones"].as_array().into_iter().flatten() {
                    let mut row = vec![
                        s(svc, "/service"),
                        s(z, "/zone"),
                        format!("{}/{}", s(z, "/healthy"), s(z, "/instances")),
                    ];
                    row.extend(rate_cells(z, wide));
                    rows.push(row);
                }
            }
            table(&head, rows);
        }
        Inspect::Traffic { window, output } => {
            let v = api
                .ok(
                    "GET",
                    &format!("/api/v1/inspect/traffic?window={}", enc(&window)),
                    None,
                )
                .await?;
            if !matches!(output, Output::Table | Output::Wide) {
                return print_value(&v, output);
            }
            let wide = output == Output::Wide;
            let (key, head): (&str, Vec<&str>) = if wide {
                (
                    "edges",
                    vec![
                        "FROM ZONE",
                        "SERVICE",
                        "TO ZONE",
                        "SERVICE",
                        "REQ/S",
                        "ERRORS",
                        "P50",
                        "P99",
                        "TCP CONN/S",
                        "TCP FAIL/S",
                        "TCP B/S",
                        "DECISIONS/S",
                    ],
                )
            } else {
                (
                    "matrix",
                    vec!["FROM ZONE", "TO ZONE", "REQ/S", "ERRORS", "P50", "P99"],
                )
            };
            let rows = v[key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| {
                    let mut row = vec![s(f, "/sourceZone")];
                    if wide {
                        row.push(s(f, "/sourceService"));
                    }
                    row.push(s(f, "/destinationZone"));
                    if wide {
                        row.push(s(f, "/destinationService"));
                    }
                    row.extend(rate_cells(f, wide));
                    row
                })
                .collect();
            table(&head, rows);
        }
        Inspect::Zones { output } => {
            let v = api.ok("GET", "/api/v1/inspect/zones", None).await?;
            if !matches!(output, Output::Table | Output::Wide) {
                return print_value(&v["items"], output);
            }
            let items = v["items"].as_array().cloned().unwrap_or_default();
            table(
                &[
                    "ZONE",
                    "REGION",
                    "STATUS",
                    "LAST SEEN",
                    "ACKED/GLOBAL",
                    "PROXIES",
                    "SERVICES",
                    "LAST NACK",
                ],
                items
                    .iter()
                    .map(|z| {
                        let svcs = z["services"]
                            .as_object()
                            .map(|m| {
                                m.iter()
                                    .map(|(k, v)| format!("{k}({v})"))
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .unwrap_or_default();
                        vec![
                            s(z, "/name"),
                            match s(z, "/region") {
                                r if r.is_empty() => "-".into(),
                                r => r,
                            },
                            if z["online"] == true {
                                "online".into()
                            } else {
                                "offline".into()
                            },
                            s(z, "/lastSeen"),
                            format!("{}/{}", s(z, "/ackedVersion"), s(z, "/globalVersion")),
                            s(z, "/connectedProxies"),
                            if svcs.is_empty() { "-".into() } else { svcs },
                            s(z, "/lastNack"),
                        ]
                    })
                    .collect(),
            );
        }
    }
    Ok(())
}

//! ternctl: the Tern command-line client. Talks to the global control
//! plane's admin API.

mod api;
mod drill;
mod drill_html;
mod explain;
mod output;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use model::resource::{self, Resource};
use serde_json::{json, Value};

use api::{default_config_path, enc, Api, FileConfig, Target};
use explain::explain_text;
use output::{print_value, rate_cells, s, table, Output};

#[derive(Parser)]
#[command(name = "ternctl", version, about = "Manage a Tern mesh")]
struct Cli {
    /// Admin API of the global control plane, e.g. http://127.0.0.1:5681.
    #[arg(long, env = "TERN_SERVER", global = true)]
    server: Option<String>,
    /// Admin token (default: from the config file).
    #[arg(long, env = "TERN_ADMIN_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Config file with {"server": ..., "token": ...}; the global writes one
    /// to <data-dir>/ternctl.json. Default: ~/.tern/config.json, else
    /// ./tern-global-data/ternctl.json (the global's default data dir).
    #[arg(long, env = "TERN_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

impl Cli {
    fn target(&self) -> Target {
        Target {
            config: self.config.clone(),
            server: self.server.clone(),
            token: self.token.clone(),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Create or update resources from files, folders or stdin (`-f -`).
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
        /// Validate and show what would change (created, configured,
        /// unchanged); store nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List resources of a kind, or show one.
    Get {
        /// mesh(es), zone(s), revocation(s) or tokens.
        kind: String,
        name: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Delete a resource.
    Delete { kind: String, name: String },
    /// Issue tokens.
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
    /// Revoke a token by its id (or give the whole token).
    Revoke {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Inspect runtime state.
    Inspect {
        #[command(subcommand)]
        what: Inspect,
    },
    /// Save a config file (e.g. <data-dir>/ternctl.json) as the default
    /// (~/.tern/config.json, mode 0600).
    UseConfig { path: PathBuf },
    /// The mesh root CA: status and rotation.
    Ca {
        #[command(subcommand)]
        what: CaCmd,
    },
    /// Membership, CA and revocation events recorded by the global, newest
    /// first.
    Audit {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Failover drills: run one, follow it, abort it, read its report.
    Drill {
        #[command(subcommand)]
        what: drill::DrillCmd,
    },
    /// Print a shell completion script: `source <(ternctl completion bash)`,
    /// `ternctl completion zsh > "${fpath[1]}/_ternctl"`, or
    /// `ternctl completion fish > ~/.config/fish/completions/ternctl.fish`.
    Completion { shell: clap_complete::Shell },
}

// The subcommands are `zone-token`, `gateway-token`, `dataplane-token`.
#[allow(clippy::enum_variant_names)]
#[derive(Subcommand)]
enum Generate {
    /// A token a zone control plane joins with (once).
    ZoneToken {
        #[arg(long)]
        zone: String,
        /// e.g. 1h, 24h (default), 7d; at most 30d.
        #[arg(long)]
        valid_for: Option<String>,
        /// Authorize a re-join of a zone that has already joined (its zone
        /// control plane lost its data): the zone gets a new CA and whoever
        /// holds the current one is cut off. Recorded in `ternctl audit`.
        #[arg(long)]
        rejoin: bool,
        #[command(flatten)]
        out: TokenOut,
    },
    /// A token an east-west gateway registers with, scoped to a zone.
    GatewayToken {
        #[arg(long)]
        zone: String,
        /// Default 90d, at most 365d.
        #[arg(long)]
        valid_for: Option<String>,
        /// Gateways registered with this token at once (default 16).
        #[arg(long)]
        max_instances: Option<u32>,
        #[command(flatten)]
        out: TokenOut,
    },
    /// A token a sidecar registers with, scoped to a zone and service.
    DataplaneToken {
        #[arg(long)]
        zone: String,
        #[arg(long)]
        service: String,
        /// Default 90d, at most 365d.
        #[arg(long)]
        valid_for: Option<String>,
        /// Proxies registered with this token at once (default 1000).
        #[arg(long)]
        max_instances: Option<u32>,
        #[command(flatten)]
        out: TokenOut,
    },
}

#[derive(clap::Args)]
struct TokenOut {
    /// Write the token to this file (mode 0600) instead of stdout.
    /// Components refuse token files that other users can read.
    #[arg(long)]
    file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum CaCmd {
    /// The roots, a rotation in progress, and whether each zone's CA is
    /// under the active root.
    Status {
        #[arg(short, long, value_enum, default_value = "yaml")]
        output: Output,
    },
    /// Rotate the mesh root: `start` makes a new root active while the old
    /// one stays trusted; zones renew their CAs on their own; `finish`
    /// retires the old root.
    Rotate {
        #[command(subcommand)]
        step: RotateStep,
    },
}

#[derive(Subcommand)]
enum RotateStep {
    /// Create a new active root; both are trusted until `finish`.
    Start,
    /// Retire the old root. Refused while a zone is still on it, while
    /// certificates under it may be valid, or while unexpired tokens pin
    /// it, unless --force.
    Finish {
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum Inspect {
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

/// Files given to apply: each file, each *.yaml/*.yml/*.json in a folder
/// (sorted), or stdin for `-`.
fn read_sources(args: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for a in args {
        if a == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("read stdin")?;
            out.push(("<stdin>".to_string(), s));
            continue;
        }
        let p = Path::new(a);
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("read folder {a}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
                })
                .collect();
            entries.sort();
            for e in entries {
                let text =
                    std::fs::read_to_string(&e).with_context(|| format!("read {}", e.display()))?;
                out.push((e.display().to_string(), text));
            }
        } else {
            let text = std::fs::read_to_string(p).with_context(|| format!("read {a}"))?;
            out.push((a.clone(), text));
        }
    }
    Ok(out)
}

fn plural(kind: &str) -> anyhow::Result<&'static str> {
    resource::kind_info(kind)
        .map(|k| k.plural)
        .with_context(|| {
            format!(
                "unknown kind {kind:?}; known kinds: {}, and tokens",
                resource::known_kinds()
            )
        })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Cmd::Completion { shell } = cli.cmd {
        // Needs no server, token or config.
        let mut cmd = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut cmd, "ternctl", &mut std::io::stdout());
        return Ok(());
    }
    if let Cmd::UseConfig { path } = &cli.cmd {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let _: FileConfig = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a ternctl config", path.display()))?;
        let dest = default_config_path().context("HOME is not set")?;
        // It holds the admin token: 0600 in a 0700 folder.
        model::fsutil::private_dir(dest.parent().expect("has a parent"), &[])?;
        model::fsutil::write_private(&dest, &text)?;
        println!("ternctl now uses {}", dest.display());
        return Ok(());
    }
    if let Cmd::Apply { files, dry_run } = &cli.cmd {
        // Validate everything locally before sending anything.
        let mut docs: Vec<(String, usize, Resource)> = Vec::new();
        let mut errors = Vec::new();
        for (name, text) in read_sources(files)? {
            match resource::parse_documents(&name, &text) {
                Ok(rs) => docs.extend(
                    rs.into_iter()
                        .enumerate()
                        .map(|(i, r)| (name.clone(), i + 1, r)),
                ),
                Err(es) => errors.extend(es),
            }
        }
        if !errors.is_empty() {
            for e in &errors {
                eprintln!("error: {e}");
            }
            bail!("{} invalid document(s); nothing was applied", errors.len());
        }
        if docs.is_empty() {
            bail!("no resources found in {}", files.join(", "));
        }
        let api = Api::new(cli.target())?;
        let mut failed = 0;
        for (file, _, r) in docs {
            let info = resource::kind_info(&r.kind).expect("validated");
            let path = format!(
                "/api/v1/{}/{}{}",
                info.plural,
                r.metadata.name,
                if *dry_run { "?dryRun=true" } else { "" }
            );
            let (status, v, warnings) = api
                .call_warned("PUT", &path, Some(&serde_json::to_value(&r)?))
                .await?;
            let what = format!("{}/{}", r.kind.to_lowercase(), r.metadata.name);
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            match status {
                200 if *dry_run => println!("{what} {} (dry run)", s(&v, "/result")),
                201 => println!("{what} created"),
                200 => println!(
                    "{what} applied (version {})",
                    s(&v, "/metadata/resourceVersion")
                ),
                _ => {
                    failed += 1;
                    eprintln!(
                        "error: {file}: {what}: {}",
                        v.get("error").and_then(Value::as_str).unwrap_or("failed")
                    );
                }
            }
        }
        if failed > 0 {
            bail!(
                "{failed} resource(s) {}",
                if *dry_run {
                    "would be refused"
                } else {
                    "were not applied"
                }
            );
        }
        return Ok(());
    }
    let api = Api::new(cli.target())?;
    match cli.cmd {
        Cmd::Apply { .. } | Cmd::UseConfig { .. } | Cmd::Completion { .. } => unreachable!(),
        Cmd::Drill { what } => return drill::run(&api, what).await,
        Cmd::Get { kind, name, output } if kind == "tokens" || kind == "token" => {
            let v = api.ok("GET", "/api/v1/tokens", None).await?;
            let items = v["items"].as_array().cloned().unwrap_or_default();
            let items: Vec<Value> = items
                .into_iter()
                .filter(|t| name.as_ref().is_none_or(|n| t["id"] == *n))
                .collect();
            if !matches!(output, Output::Table | Output::Wide) {
                return print_value(&json!(items), output);
            }
            table(
                &["ID", "KIND", "ZONE", "SERVICE", "EXPIRES", "STATE"],
                items
                    .iter()
                    .map(|t| {
                        let state = if t["revoked"] == true {
                            "revoked".to_string()
                        } else if !t["usedAt"].is_null() {
                            format!("used by {}", s(t, "/usedBy"))
                        } else if t["expired"] == true {
                            "expired".to_string()
                        } else if t["purpose"] == "rejoin" {
                            "valid (rejoin)".to_string()
                        } else {
                            "valid".to_string()
                        };
                        vec![
                            s(t, "/id"),
                            s(t, "/kind"),
                            s(t, "/zone"),
                            s(t, "/service"),
                            s(t, "/expiresAt"),
                            state,
                        ]
                    })
                    .collect(),
            );
        }
        Cmd::Get { kind, name, output } => {
            let p = plural(&kind)?;
            let items: Vec<Value> = match &name {
                Some(n) => vec![api.ok("GET", &format!("/api/v1/{p}/{n}"), None).await?],
                None => api.ok("GET", &format!("/api/v1/{p}"), None).await?["items"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            };
            if !matches!(output, Output::Table | Output::Wide) {
                let v = if name.is_some() {
                    items[0].clone()
                } else {
                    json!({ "items": items })
                };
                return print_value(&v, output);
            }
            if items.is_empty() {
                eprintln!("no {p} found");
                return Ok(());
            }
            table(
                &["NAME", "VERSION", "UPDATED", "SPEC"],
                items
                    .iter()
                    .map(|r| {
                        vec![
                            s(r, "/metadata/name"),
                            s(r, "/metadata/resourceVersion"),
                            s(r, "/metadata/updateTimestamp"),
                            r.get("spec").map(|x| x.to_string()).unwrap_or_default(),
                        ]
                    })
                    .collect(),
            );
        }
        Cmd::Delete { kind, name } => {
            let p = plural(&kind)?;
            api.ok("DELETE", &format!("/api/v1/{p}/{name}"), None)
                .await?;
            println!("{}/{name} deleted", kind.to_lowercase());
        }
        Cmd::Generate { what } => {
            let (body, out) = match what {
                Generate::ZoneToken {
                    zone,
                    valid_for,
                    rejoin,
                    out,
                } => (
                    json!({ "kind": "zone", "zone": zone, "validFor": valid_for, "rejoin": rejoin }),
                    out,
                ),
                Generate::GatewayToken {
                    zone,
                    valid_for,
                    max_instances,
                    out,
                } => (
                    json!({ "kind": "gateway", "zone": zone, "validFor": valid_for, "maxInstances": max_instances }),
                    out,
                ),
                Generate::DataplaneToken {
                    zone,
                    service,
                    valid_for,
                    max_instances,
                    out,
                } => (
                    json!({ "kind": "dataplane", "zone": zone, "service": service, "validFor": valid_for, "maxInstances": max_instances }),
                    out,
                ),
            };
            // Check the destination first: a token issued but not written
            // would be valid and held by nobody.
            if let Some(p) = &out.file {
                let dir = p
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                if !dir.is_dir() {
                    bail!(
                        "cannot write the token to {}: folder {} does not exist",
                        p.display(),
                        dir.display()
                    );
                }
            }
            let v = api.ok("POST", "/api/v1/tokens", Some(&body)).await?;
            let token = s(&v, "/token");
            match out.file {
                Some(p) => {
                    model::fsutil::write_private(&p, format!("{token}\n"))
                        .with_context(|| format!("write the token to {}", p.display()))?;
                    eprintln!(
                        "token {} expires at {}; written to {} (mode 0600)",
                        s(&v, "/id"),
                        s(&v, "/expiresAt"),
                        p.display()
                    );
                }
                None => {
                    eprintln!("token {} expires at {}", s(&v, "/id"), s(&v, "/expiresAt"));
                    println!("{token}");
                }
            }
        }
        Cmd::Ca {
            what: CaCmd::Status { output },
        } => {
            let v = api.ok("GET", "/api/v1/ca", None).await?;
            print_value(
                &v,
                if matches!(output, Output::Table | Output::Wide) {
                    Output::Yaml
                } else {
                    output
                },
            )?;
        }
        Cmd::Ca {
            what: CaCmd::Rotate { step },
        } => {
            let body = match step {
                RotateStep::Start => json!({ "action": "start" }),
                RotateStep::Finish { force } => json!({ "action": "finish", "force": force }),
            };
            let v = api.ok("POST", "/api/v1/ca/rotate", Some(&body)).await?;
            print_value(&v, Output::Yaml)?;
        }
        Cmd::Audit { output } => {
            let v = api.ok("GET", "/api/v1/audit", None).await?;
            if !matches!(output, Output::Table | Output::Wide) {
                return print_value(&v["items"], output);
            }
            let items = v["items"].as_array().cloned().unwrap_or_default();
            table(
                &["TIME", "ACTION", "SUBJECT", "DETAIL"],
                items
                    .iter()
                    .map(|a| {
                        vec![
                            s(a, "/at"),
                            s(a, "/action"),
                            s(a, "/subject"),
                            s(a, "/detail"),
                        ]
                    })
                    .collect(),
            );
        }
        Cmd::Revoke { id, reason } => {
            let id = match model::token::decode_unverified(&id) {
                Ok(c) => c.jti,
                Err(_) => id,
            };
            api.ok(
                "POST",
                "/api/v1/revocations",
                Some(&json!({ "id": id, "reason": reason })),
            )
            .await?;
            println!("token {id} revoked");
        }
        Cmd::Inspect {
            what: Inspect::Dataplane { name, zone, output },
        } => {
            let v = api
                .ok(
                    "GET",
                    &format!("/api/v1/inspect/dataplanes/{zone}/{name}"),
                    None,
                )
                .await?;
            if !matches!(output, Output::Table | Output::Wide) {
                return print_value(&v, output);
            }
            print!("{}", explain_text(&v));
        }
        Cmd::Inspect {
            what: Inspect::Dataplanes { zone, output },
        } => {
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
        Cmd::Inspect {
            what: Inspect::Services { window, output },
        } => {
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
                head.extend(["TCP CONN/S", "TCP B/S", "DECISIONS/S"]);
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
        Cmd::Inspect {
            what: Inspect::Traffic { window, output },
        } => {
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
        Cmd::Inspect {
            what: Inspect::Zones { output },
        } => {
            let v = api.ok("GET", "/api/v1/inspect/zones", None).await?;
            if !matches!(output, Output::Table | Output::Wide) {
                return print_value(&v["items"], output);
            }
            let items = v["items"].as_array().cloned().unwrap_or_default();
            table(
                &[
                    "ZONE",
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

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // An empty variable means "not set", not "set to nothing".
    for k in ["TERN_CONFIG", "TERN_SERVER", "TERN_ADMIN_TOKEN"] {
        if std::env::var_os(k).is_some_and(|v| v.is_empty()) {
            std::env::remove_var(k);
        }
    }
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

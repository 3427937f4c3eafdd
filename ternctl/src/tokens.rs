//! Tokens: `ternctl generate zone-token|gateway-token|dataplane-token`,
//! `ternctl get tokens` and `ternctl revoke`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::api::Api;
use crate::output::{print_value, s, table, Output};

// The subcommands are `zone-token`, `gateway-token`, `dataplane-token`.
#[allow(clippy::enum_variant_names)]
#[derive(Subcommand)]
pub enum Generate {
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
pub struct TokenOut {
    /// Write the token to this file (mode 0600) instead of stdout.
    /// Components refuse token files that other users can read.
    #[arg(long)]
    pub file: Option<PathBuf>,
}

/// Issue a token and print it, or write it to `--file`.
pub async fn generate(api: &Api, what: Generate) -> anyhow::Result<()> {
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
    Ok(())
}

/// The tokens the global has issued (`name`: one id), with their state.
pub async fn list(api: &Api, name: Option<String>, output: Output) -> anyhow::Result<()> {
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
    Ok(())
}

/// Revoke by id, or by the token itself (its id is read without verifying).
pub async fn revoke(api: &Api, id: String, reason: Option<String>) -> anyhow::Result<()> {
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
    Ok(())
}

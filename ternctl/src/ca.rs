//! The mesh root CA (`ternctl ca status|rotate`) and the global's audit
//! trail of membership, CA and revocation events (`ternctl audit`).

use clap::Subcommand;
use serde_json::json;

use crate::api::Api;
use crate::output::{print_value, s, table, Output};

#[derive(Subcommand)]
pub enum CaCmd {
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
pub enum RotateStep {
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

pub async fn run(api: &Api, what: CaCmd) -> anyhow::Result<()> {
    match what {
        CaCmd::Status { output } => {
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
        CaCmd::Rotate { step } => {
            let body = match step {
                RotateStep::Start => json!({ "action": "start" }),
                RotateStep::Finish { force } => json!({ "action": "finish", "force": force }),
            };
            let v = api.ok("POST", "/api/v1/ca/rotate", Some(&body)).await?;
            print_value(&v, Output::Yaml)?;
        }
    }
    Ok(())
}

/// Events recorded by the global, newest first.
pub async fn audit(api: &Api, output: Output) -> anyhow::Result<()> {
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
    Ok(())
}

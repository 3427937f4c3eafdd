//! ternctl: the Tern command-line client. Talks to the global control
//! plane's admin API.

mod api;
mod ca;
mod drill;
mod drill_html;
mod explain;
mod inspect;
mod output;
mod resources;
mod tokens;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use api::{Api, Target};
use output::Output;

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
        /// Files, folders (their *.yaml, *.yml and *.json) or `-` for
        /// stdin; each may hold several documents.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
        /// Validate and show what would change (created, configured,
        /// unchanged); store nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List resources of a kind, or show one.
    Get {
        /// Any resource kind, plural or singular (meshes, zones, retries,
        /// drills, ...), or tokens.
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
        what: tokens::Generate,
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
        what: inspect::Inspect,
    },
    /// Save a config file (e.g. <data-dir>/ternctl.json) as the default
    /// (~/.tern/config.json, mode 0600).
    UseConfig { path: PathBuf },
    /// The mesh root CA: status and rotation.
    Ca {
        #[command(subcommand)]
        what: ca::CaCmd,
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let target = cli.target();
    let api = || Api::new(target.clone());
    match cli.cmd {
        Cmd::Completion { shell } => {
            // Needs no server, token or config.
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "ternctl", &mut std::io::stdout());
            Ok(())
        }
        Cmd::UseConfig { path } => api::use_config(&path),
        Cmd::Apply { files, dry_run } => resources::apply(target, &files, dry_run).await,
        Cmd::Get { kind, name, output } if kind == "tokens" || kind == "token" => {
            tokens::list(&api()?, name, output).await
        }
        Cmd::Get { kind, name, output } => resources::get(&api()?, &kind, name, output).await,
        Cmd::Delete { kind, name } => resources::delete(&api()?, &kind, &name).await,
        Cmd::Generate { what } => tokens::generate(&api()?, what).await,
        Cmd::Revoke { id, reason } => tokens::revoke(&api()?, id, reason).await,
        Cmd::Ca { what } => ca::run(&api()?, what).await,
        Cmd::Audit { output } => ca::audit(&api()?, output).await,
        Cmd::Inspect { what } => inspect::run(&api()?, what).await,
        Cmd::Drill { what } => drill::run(&api()?, what).await,
    }
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

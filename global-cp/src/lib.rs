//! Tern global control plane.
//!
//! Holds the mesh's resources in a durable store, the mesh root CA and the
//! token signing key. Zones join with a signed token over server-authenticated
//! TLS, receive an intermediate CA, and from then on sync over mTLS with
//! their zone identity. Operators use the authenticated HTTP/JSON admin API
//! (what `ternctl` talks to).
#![forbid(unsafe_code)]
// tonic::Status and axum::Response are large by design; handlers return them.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod authority;
pub mod console;
pub mod drill;
mod error;
pub mod inventory;
pub mod membership;
pub mod rotation;
pub mod store;
pub mod sync;
pub mod traffic;
pub mod zones;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

pub use error::Error;

#[derive(Parser, Debug, Clone)]
#[command(name = "global-cp", version, about = "Tern global control plane")]
pub struct Config {
    /// Where the embedded store, CA and admin credential live.
    #[arg(
        long,
        env = "TERN_GLOBAL_DATA_DIR",
        default_value = "./tern-global-data"
    )]
    pub data_dir: PathBuf,
    /// Zone sync endpoint (gRPC over TLS).
    #[arg(long, env = "TERN_GLOBAL_SYNC_ADDR", default_value = "127.0.0.1:5685")]
    pub sync_addr: SocketAddr,
    /// Address zones use to reach the sync endpoint, written into zone
    /// tokens. Defaults to --sync-addr.
    #[arg(long, env = "TERN_GLOBAL_ADVERTISE")]
    pub advertise: Option<String>,
    /// Admin API (HTTP/JSON, bearer token) plus /ready, /metrics, /config_dump.
    #[arg(long, env = "TERN_GLOBAL_ADMIN_ADDR", default_value = "127.0.0.1:5681")]
    pub admin_addr: SocketAddr,
    /// SPIFFE trust domain of the mesh; fixed at first start.
    #[arg(long, env = "TERN_TRUST_DOMAIN", default_value = "tern")]
    pub trust_domain: String,
    /// How long a zone may leave a delta unanswered before its stream is closed.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub ack_timeout: Duration,
    /// How long a zone may be offline before the global withdraws its
    /// services and gateway addresses from the other zones.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub zone_offline_ttl: Duration,
    /// Lifetime of the intermediate CA each zone gets. Zones renew it over
    /// their sync stream once two thirds of it have passed.
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
    pub zone_ca_validity: Duration,
    /// Log as JSON lines.
    #[arg(long)]
    pub json_logs: bool,
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        model::resource::check_name("--trust-domain", &self.trust_domain).map_err(|e| e.message)?;
        if self.ack_timeout < Duration::from_secs(1) {
            return Err("--ack-timeout must be at least 1s".into());
        }
        if self.zone_ca_validity < Duration::from_secs(30)
            || self.zone_ca_validity > crate::authority::ROOT_VALIDITY
        {
            return Err("--zone-ca-validity must be between 30s and 10 years".into());
        }
        // Zone tokens carry the advertised address: 0.0.0.0 is not one a
        // zone can dial.
        if self.advertise.is_none() && self.sync_addr.ip().is_unspecified() {
            return Err(format!(
                "--sync-addr {} listens on every address, so zone tokens need an address zones can dial: pass --advertise HOST:PORT",
                self.sync_addr
            ));
        }
        Ok(())
    }
    pub fn advertised(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.sync_addr.to_string())
    }
}

/// Files in the data dir that hold keys or credentials; checked at start.
/// (The store's WAL and SHM files are checked by the store.)
pub const SECRET_FILES: &[&str] = &["global.db", "admin-token", "ternctl.json"];

pub struct State {
    /// The data folder, held while this global runs.
    _data_lock: model::fsutil::DirLock,
    pub config: Config,
    pub store: store::Store,
    pub authority: authority::Authority,
    pub zones: zones::ZoneTable,
    pub metrics: sync::Metrics,
    /// The zones' live traffic figures.
    pub traffic: traffic::MeshTraffic,
    /// The drill running now, if any.
    pub drills: drill::Drills,
}

/// Start everything; returns once listeners are bound.
pub async fn start(config: Config) -> Result<Arc<State>, Error> {
    // The store holds the root CA and token signing keys.
    model::fsutil::private_dir(&config.data_dir, SECRET_FILES)?;
    let data_lock = model::fsutil::lock_dir(&config.data_dir)?;
    let store = store::Store::open(&config.data_dir.join("global.db")).map_err(Error::start(
        format!("open store in {}", config.data_dir.display()),
    ))?;
    let authority = authority::Authority::load_or_init(&store, &config)?;
    let mut registry = prometheus_client::registry::Registry::with_prefix("tern_global");
    let metrics = sync::Metrics::new(&mut registry);
    let traffic = traffic::MeshTraffic::default();
    registry.register(
        "traffic_dropped",
        "Entries of zones' traffic reports not kept (past the bounds, malformed, or speaking for another zone)",
        traffic.dropped.clone(),
    );
    let state = Arc::new(State {
        _data_lock: data_lock,
        store,
        authority,
        zones: zones::ZoneTable::default(),
        metrics,
        traffic,
        drills: Default::default(),
        config: config.clone(),
    });
    drill::recover(&state).map_err(Error::Drill)?;
    membership::reconcile(&state, config.zone_ca_validity)
        .map_err(Error::start("bring zone records up to date"))?;
    rotation::ensure_published(&state).map_err(Error::start("publish the mesh roots"))?;
    let admin_token = admin::init_credential(&state)?;
    sync::serve(state.clone()).await?;
    sync::withdraw_stale_at_start(&state);
    membership::spawn_maintenance(state.clone());
    registry.register_collector(Box::new(zones::ZoneCollector(state.clone())));
    registry.register(
        "store_call_duration_seconds",
        "Store calls (reads, and writes with their fsync), including the wait for the store",
        state.store.latency.clone(),
    );
    admin::serve(state.clone(), registry, admin_token).await?;
    drill::spawn_scheduler(state.clone());
    tracing::info!(
        sync = %config.sync_addr,
        admin = %config.admin_addr,
        trust_domain = %state.authority.trust_domain,
        ca_fingerprint = %state.authority.root_fingerprint(),
        "global control plane started"
    );
    Ok(state)
}

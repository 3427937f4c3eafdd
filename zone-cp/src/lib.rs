//! Tern zone control plane.
//!
//! Joins the global with a zone token (first start only), then syncs over
//! mTLS with the zone identity. Keeps the zone registry of proxies, compiles
//! per-proxy config, streams it to proxies as deltas, and signs their
//! certificates with the zone's intermediate CA. Everything it learned from
//! the global is kept on disk, so it serves proxies while the global is away.
#![forbid(unsafe_code)]
// tonic::Status and axum::Response are large by design; handlers return them.
#![allow(clippy::result_large_err)]

pub mod bootstrap;
pub mod ca;
pub mod compile;
pub mod drill;
mod error;
pub mod explain;
pub mod global_client;
pub mod inventory;
pub mod local_policy;
pub mod prober;
pub mod proxy_server;
pub mod registration;
pub mod registry;
pub mod traffic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::telemetry::Admin;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;

pub use error::Error;

#[derive(Parser, Debug, Clone)]
#[command(name = "zone-cp", version, about = "Tern zone control plane")]
pub struct Config {
    /// This zone's name, as in the token.
    #[arg(long, env = "TERN_ZONE")]
    pub zone: String,
    /// File holding the zone token from `ternctl generate zone-token`.
    /// Needed to join; after that the zone uses its stored identity.
    #[arg(long, env = "TERN_ZONE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    #[arg(long, env = "TERN_ZONE_DATA_DIR", default_value = "./tern-zone-data")]
    pub data_dir: PathBuf,
    /// Region of this zone (locality), given to its endpoints.
    #[arg(long, env = "TERN_REGION", default_value = "default")]
    pub region: String,
    /// Where proxies connect (gRPC over TLS).
    #[arg(long, env = "TERN_ZONE_PROXY_ADDR", default_value = "127.0.0.1:5678")]
    pub proxy_addr: SocketAddr,
    /// /ready, /metrics, /config_dump.
    #[arg(long, env = "TERN_ZONE_ADMIN_ADDR", default_value = "127.0.0.1:5680")]
    pub admin_addr: SocketAddr,
    /// File holding a bearer token for `/config_dump` and `PUT /log-level`
    /// on the admin port (closed to other users). Without one those answer
    /// only on a loopback admin address.
    #[arg(long, env = "TERN_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,
    /// How long a proxy that lost its stream stays registered.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub deregister_after: Duration,
    /// How long a proxy may leave a config delta unanswered.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub ack_timeout: Duration,
    /// A folder of zone-local policy documents (any policy kind, listed in
    /// docs/policies.md) for this zone's proxies only; re-read when its
    /// files change. The global's policies win at equal specificity, and a
    /// request its access rules deny stays denied (docs/policies.md).
    #[arg(long)]
    pub policy_dir: Option<PathBuf>,
    #[arg(long)]
    pub json_logs: bool,
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        model::resource::check_name("--zone", &self.zone).map_err(|e| e.message)?;
        model::resource::check_name("--region", &self.region).map_err(|e| e.message)?;
        for (flag, d) in [
            ("--deregister-after", self.deregister_after),
            ("--ack-timeout", self.ack_timeout),
        ] {
            if d < std::time::Duration::from_secs(1) {
                return Err(format!("{flag} must be at least 1s"));
            }
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct Metrics {
    pub proxies: Gauge,
    pub global_connected: Gauge,
    pub deltas_applied: Counter,
    pub deltas_refused: Counter,
    pub inventory_refused: Counter,
    pub certs_issued: Counter,
    pub proxy_refused: Counter,
    pub ca_expiry: Gauge,
    pub ca_renewals: prometheus_client::metrics::family::Family<Vec<(String, String)>, Counter>,
}

impl Metrics {
    fn new(reg: &mut Registry) -> Self {
        let m = Self {
            proxies: Gauge::default(),
            global_connected: Gauge::default(),
            deltas_applied: Counter::default(),
            deltas_refused: Counter::default(),
            inventory_refused: Counter::default(),
            certs_issued: Counter::default(),
            proxy_refused: Counter::default(),
            ca_expiry: Gauge::default(),
            ca_renewals: Default::default(),
        };
        reg.register(
            "ca_expiry_timestamp_seconds",
            "When the zone's intermediate CA expires (unix seconds); it is renewed once two thirds of its life have passed",
            m.ca_expiry.clone(),
        );
        reg.register(
            "ca_renewals",
            "Zone CA renewals by result",
            m.ca_renewals.clone(),
        );
        reg.register(
            "proxies_connected",
            "Proxies with a live stream",
            m.proxies.clone(),
        );
        reg.register(
            "global_connected",
            "1 while the sync stream to the global is up",
            m.global_connected.clone(),
        );
        reg.register(
            "global_deltas_applied",
            "Deltas from the global applied",
            m.deltas_applied.clone(),
        );
        reg.register(
            "global_deltas_refused",
            "Deltas from the global refused (NACK)",
            m.deltas_refused.clone(),
        );
        reg.register(
            "global_inventory_refused",
            "Inventory reports the global refused (the zone's published services stay as they were; see the log)",
            m.inventory_refused.clone(),
        );
        reg.register(
            "certificates_issued",
            "Workload certificates signed",
            m.certs_issued.clone(),
        );
        reg.register(
            "proxy_refused",
            "Proxy connections refused",
            m.proxy_refused.clone(),
        );
        m
    }
}

pub struct Zone {
    /// The data folder, held while this zone-cp runs.
    _data_lock: model::fsutil::DirLock,
    pub config: Config,
    pub boot: bootstrap::Boot,
    pub global: global_client::GlobalState,
    pub registry: Arc<registry::Registry>,
    pub metrics: Metrics,
    pub local_policies: Arc<local_policy::LocalPolicies>,
    /// The parsed policies, for (global version, local version).
    policy_cache: std::sync::Mutex<Option<PolicyCache>>,
    /// Per-proxy configs, compiled once per version and view.
    pub compiled: std::sync::Mutex<compile::Compiled>,
    /// Its proxies' traffic since the last report to the global.
    pub traffic: Arc<traffic::ZoneTraffic>,
    /// Running drills' deadlines as this zone enforces them.
    pub drills: drill::Drills,
}

/// The parsed policies and the (global, local) versions they were parsed at.
type PolicyCache = ((u64, u64), Arc<common::policy::PolicySet>);

impl Zone {
    /// Every policy this zone knows, parsed once per change.
    pub fn policies(&self) -> Arc<common::policy::PolicySet> {
        let key = (self.global.version(), self.local_policies.version());
        let mut g = self.policy_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, set)) = g.as_ref() {
            if *k == key {
                return set.clone();
            }
        }
        let mut regions: std::collections::BTreeMap<String, String> = self
            .global
            .ingresses()
            .into_iter()
            .map(|(zone, spec)| (zone, spec.region))
            .collect();
        regions.insert(self.config.zone.clone(), self.config.region.clone());
        let local = self.local_policies.resources();
        let set = self
            .global
            .with_resources(|all| common::policy::PolicySet::build(all.values(), &local, regions));
        *g = Some((key, set.clone()));
        set
    }
}

pub async fn start(config: Config) -> Result<Arc<Zone>, Error> {
    // Checked before joining the global, which may wait for it: a bad file
    // is reported at once, not once the zone has joined.
    let admin_token = common::telemetry::admin_token(config.admin_token_file.as_deref())
        .map_err(Error::AdminToken)?;
    // The zone CA's key lives here.
    model::fsutil::private_dir(&config.data_dir, bootstrap::SECRET_FILES)?;
    let data_lock = model::fsutil::lock_dir(&config.data_dir)?;
    let boot = bootstrap::Boot::load_or_join(&config).await?;
    let global = global_client::GlobalState::load(&config.data_dir)?;
    let mut reg = Registry::with_prefix("tern_zone");
    let metrics = Metrics::new(&mut reg);
    let registry = Arc::new(registry::Registry::new(
        &config.zone,
        &config.region,
        config.deregister_after,
    ));
    registry.load(&config.data_dir);
    prober::spawn(registry.clone());
    let local_policies = Arc::new(
        local_policy::LocalPolicies::load(config.policy_dir.clone()).map_err(Error::PolicyDir)?,
    );
    local_policies.spawn_poller();
    reg.register_collector(Box::new(registry::RegistryCollector(registry.clone())));
    let traffic = Arc::new(traffic::ZoneTraffic::new(&config.zone));
    reg.register(
        "traffic_dropped",
        "Traffic figures from proxies not counted: a proxy speaking for another service or zone, a malformed tally or name, or past the bounds",
        traffic.dropped.clone(),
    );
    let zone = Arc::new(Zone {
        _data_lock: data_lock,
        traffic,
        drills: Default::default(),
        local_policies,
        policy_cache: Default::default(),
        compiled: Default::default(),
        registry: registry.clone(),
        config: config.clone(),
        boot,
        global,
        metrics,
    });
    // Before proxies connect or the zone reports to the global: what the
    // registry loaded may name tokens revoked since.
    proxy_server::deregister_revoked(zone.clone());
    // What was synced last may be newer than the files (a crash between).
    ca::follow_mesh_trust(&zone)?;
    zone.metrics.ca_expiry.set(unix(zone.boot.ca().not_after));
    bootstrap::Boot::spawn_rotation_for(zone.clone());
    proxy_server::serve(zone.clone()).await?;
    global_client::spawn(zone.clone());
    drill::spawn(zone.clone());
    let dz = zone.clone();
    Admin::new(
        reg,
        || Ok(()),
        move || {
            json!({
                "zone": dz.config.zone,
                "region": dz.config.region,
                "trustDomain": dz.boot.trust_domain,
                "caFingerprint": dz.boot.ca().fingerprint,
                "caNotAfter": humantime::format_rfc3339_seconds(dz.boot.ca().not_after).to_string(),
                "globalVersion": dz.global.version(),
                "globalConnected": dz.global.connected(),
                "resources": dz.global.keys(),
                "proxies": dz.registry.dump(),
                "drill": drill::current(&dz),
            })
        },
    )
    .with_token(admin_token)
    .serve(config.admin_addr)
    .await
    .map_err(common::bind::failed("bind admin", config.admin_addr))?;
    tracing::info!(zone = %config.zone, proxies = %config.proxy_addr, admin = %config.admin_addr, "zone control plane started");
    Ok(zone)
}

fn unix(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

//! The proxy's dynamic state: its identity and TLS configs, and the
//! clusters it routes to. Both are swapped atomically (ArcSwap); requests in
//! flight keep the version they started with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use common::rustls::{ClientConfig, ServerConfig};
use common::tls::{self, Expect, Identity, SpiffeServerVerifier};
use common::trust::TrustPolicy;
use model::ident::SpiffeId;
use proto::v1 as pb;

use crate::access::Access;
use crate::balance::{Clusters, Target};
use crate::fault::Faults;
use crate::protocol::{Alpn, Protocol};
use crate::ratelimit::RateLimits;
use crate::resilience::Defaults;
use crate::route::Routes;
use crate::spares::Spares;
use crate::split::{Mirror, Split};

/// Identity and trust, plus the rustls configs built from them.
pub struct Tls {
    pub ident: Arc<Identity>,
    pub policy: Arc<TrustPolicy>,
    pub server: Arc<ServerConfig>,
    inbound: Protocol,
    clients: Mutex<HashMap<(SpiffeId, Alpn), Arc<ClientConfig>>>,
}

impl Tls {
    /// `early_data`: accept 0-RTT data from resumed TCP callers (TCP apps
    /// only; `--accept-early-data`).
    pub fn new(
        ident: Arc<Identity>,
        policy: Arc<TrustPolicy>,
        inbound: Protocol,
        early_data: bool,
    ) -> Result<Self, tls::TlsConfigError> {
        let mut server = tls::server_config_mtls(&ident, policy.clone(), inbound.inbound_alpns())?;
        // Opaque TCP callers open a session per connection: let resumed
        // ones send their first bytes with the hello (`inbound_tls.rs`),
        // when the operator said the app's protocol tolerates a replay.
        if inbound == Protocol::Tcp && early_data {
            crate::inbound_tls::enable_early_data(&mut server);
        }
        Ok(Self {
            ident,
            policy,
            server: Arc::new(server),
            inbound,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The ALPN ids the inbound listener accepts.
    pub fn inbound_alpns(&self) -> &'static [&'static [u8]] {
        self.inbound.inbound_alpns()
    }

    /// Client config that presents our identity and requires `expect`.
    pub fn client_for(
        &self,
        expect: &SpiffeId,
        alpn: Alpn,
    ) -> Result<Arc<ClientConfig>, tls::TlsConfigError> {
        let mut g = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = g.get(&(expect.clone(), alpn)) {
            return Ok(c.clone());
        }
        let verifier =
            SpiffeServerVerifier::new(self.policy.clone(), Expect::Exact(expect.clone()));
        let mut c = tls::client_config(Some(&self.ident), Arc::new(verifier), &[alpn.id()])?;
        // TCP flows send their app's first bytes as early data when a
        // resumed session allows (`connect::send_first`).
        c.enable_early_data = alpn == Alpn::Tcp;
        let c = Arc::new(c);
        g.insert((expect.clone(), alpn), c.clone());
        Ok(c)
    }
}

/// What the data path reads on every request or connection.
pub struct Shared {
    pub spares: Arc<Spares>,
    /// Built once both an identity and a trust policy are known; until then
    /// the proxy fails closed.
    pub tls: ArcSwapOption<Tls>,
    identity: ArcSwapOption<Identity>,
    trust: ArcSwapOption<TrustPolicy>,
    /// Serializes rebuilds of `tls`.
    rebuild: Mutex<()>,
    /// Bumped whenever `tls` is rebuilt (new identity or new trust).
    pub identity_changed: tokio::sync::watch::Sender<u64>,
    /// Open connections and their peers, re-checked when trust changes.
    pub live: crate::live::LiveConns,
    pub clusters: ArcSwap<Clusters>,
    /// Per destination service with routes: its compiled routes.
    pub routes: ArcSwap<HashMap<String, Arc<Routes>>>,
    /// The inbound policy: mTLS mode and access rules.
    pub access: ArcSwap<Access>,
    /// Faults to inject into inbound requests and connections.
    pub faults: ArcSwap<Faults>,
    /// Bumped when the faults change: live TCP connections then draw a
    /// drill's reset again.
    pub faults_changed: tokio::sync::watch::Sender<u64>,
    /// Local rate limits on inbound requests and connections.
    pub limits: ArcSwap<RateLimits>,
    pub targets: ArcSwap<HashMap<String, Arc<Target>>>,
    /// What the local app speaks, which fixes what the inbound accepts.
    pub inbound: Protocol,
    /// Accept TLS 1.3 early data from resumed callers (TCP apps only).
    pub accept_early_data: bool,
    /// Timeouts from the command line, for destinations no policy names.
    pub defaults: Defaults,
    /// How to check the local app (its HealthCheck policy), if at all.
    pub health_check: ArcSwapOption<crate::appcheck::Check>,
    /// The app's health as the checks see it (`None`: not checked); the
    /// control-plane client reports each change.
    pub app_health: tokio::sync::watch::Sender<Option<bool>>,
    /// Traffic by peer pair, for `/metrics` and the reports upward.
    pub traffic: Arc<crate::traffic::Traffic>,
    /// The access log, as the proxy's AccessLog policy sets it.
    pub access_logs: crate::access_log::AccessLogs,
    /// Spans, as the proxy's Trace policy sets it.
    pub tracer: crate::trace::Tracer,
    /// How often traffic figures go to the zone-cp (ms; the inbound
    /// policy's `traffic_report_ms`, 0: the default).
    pub traffic_report_ms: std::sync::atomic::AtomicU32,
    /// Gateways: flows running drills make them refuse (a watch, so live
    /// flows are cut when a stage starts refusing them).
    pub gateway_drills: tokio::sync::watch::Sender<Arc<crate::drill::GatewayDrills>>,
}

impl Shared {
    pub fn new(inbound: Protocol) -> Self {
        Self {
            inbound,
            accept_early_data: false,
            defaults: Defaults::default(),
            health_check: ArcSwapOption::empty(),
            app_health: tokio::sync::watch::channel(None).0,
            spares: Arc::new(Spares::default()),
            tls: ArcSwapOption::empty(),
            identity: ArcSwapOption::empty(),
            trust: ArcSwapOption::empty(),
            rebuild: Mutex::new(()),
            identity_changed: tokio::sync::watch::channel(0).0,
            live: Default::default(),
            clusters: ArcSwap::from_pointee(Clusters::default()),
            routes: ArcSwap::from_pointee(HashMap::new()),
            access: ArcSwap::from_pointee(Access::default()),
            faults: ArcSwap::from_pointee(Faults::default()),
            gateway_drills: tokio::sync::watch::channel(Default::default()).0,
            faults_changed: tokio::sync::watch::channel(0).0,
            traffic_report_ms: Default::default(),
            limits: ArcSwap::from_pointee(RateLimits::default()),
            targets: ArcSwap::from_pointee(HashMap::new()),
            traffic: Default::default(),
            access_logs: Default::default(),
            tracer: Default::default(),
        }
    }

    /// With the folder AccessLog files are written in.
    /// Accept 0-RTT data from resumed TCP callers (`--accept-early-data`).
    pub fn with_early_data(mut self, on: bool) -> Self {
        self.accept_early_data = on;
        self
    }

    pub fn with_access_log_dir(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.access_logs = crate::access_log::AccessLogs::new(dir);
        self
    }

    /// With timeouts from the command line.
    pub fn with_defaults(mut self, d: Defaults) -> Self {
        self.defaults = d;
        self
    }

    pub fn set_identity(&self, ident: Identity) -> Result<(), tls::TlsConfigError> {
        tracing::info!(id = %ident.id, not_after = %humantime::format_rfc3339_seconds(ident.not_after), "workload certificate installed");
        self.traffic.set_me(
            ident.id.service().unwrap_or("gateway"),
            ident.id.zone_name().unwrap_or(crate::traffic::UNKNOWN),
        );
        let _g = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        self.identity.store(Some(Arc::new(ident)));
        self.rebuild_tls()
    }

    /// Install a new trust policy; open connections whose peer it refuses
    /// are cut.
    pub fn set_trust(&self, policy: TrustPolicy) -> Result<(), tls::TlsConfigError> {
        let _g = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        let policy = Arc::new(policy);
        self.trust.store(Some(policy.clone()));
        self.rebuild_tls()?;
        let cut = self.live.sweep(&policy);
        if cut > 0 {
            tracing::warn!(
                connections = cut,
                "closed connections whose peer is no longer trusted"
            );
        }
        Ok(())
    }

    pub fn trust(&self) -> Option<Arc<TrustPolicy>> {
        self.trust.load_full()
    }

    fn rebuild_tls(&self) -> Result<(), tls::TlsConfigError> {
        if let (Some(ident), Some(policy)) = (self.identity.load_full(), self.trust.load_full()) {
            self.tls.store(Some(Arc::new(Tls::new(
                ident,
                policy,
                self.inbound,
                self.accept_early_data,
            )?)));
            self.identity_changed.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    /// Install a config: clusters, the routes their policies give them,
    /// and the inbound policy (none: mTLS only, everyone allowed). Nothing
    /// changes when any part is refused.
    pub fn apply(
        &self,
        cfg: &[pb::Cluster],
        inbound: Option<&pb::InboundPolicy>,
        version: u64,
    ) -> Result<(), String> {
        let new = Clusters::build(cfg, &self.clusters.load(), version, &self.defaults)?;
        let mut routes = HashMap::new();
        let mut targets = new.targets();
        // Paths to another zone's label subset exist only in backends: the
        // connector must know them too.
        let subset_paths = std::cell::RefCell::new(Vec::new());
        let remember = |eps: &mut dyn Iterator<Item = &Arc<crate::balance::Endpoint>>| {
            subset_paths.borrow_mut().extend(
                eps.filter(|e| e.target.via.as_ref().is_some_and(|v| !v.subset.is_empty()))
                    .map(|e| (e.authority.to_string(), e.target.clone())),
            )
        };
        for c in cfg
            .iter()
            .filter(|c| !c.http_routes.is_empty() || c.tcp_route.is_some())
        {
            let split = |b: &[pb::Backend]| {
                let s = Split::build(b, &c.service, &new.by_service)?;
                remember(&mut s.endpoints());
                Ok(s)
            };
            let mirror = |m: &pb::Mirror| {
                let m = Mirror::build(m, &c.service, &new.by_service)?;
                remember(&mut m.cluster.endpoints.iter());
                Ok(m)
            };
            let r = Routes::build(c, &split, &mirror).map_err(|e| format!("{}: {e}", c.service))?;
            routes.insert(c.service.clone(), Arc::new(r));
        }
        for (authority, target) in subset_paths.into_inner() {
            match targets.get(&authority) {
                Some(t) if *t != target => {
                    return Err(format!(
                        "two subset paths share the authority {authority}; rename a label"
                    ))
                }
                _ => {
                    targets.insert(authority, target);
                }
            }
        }
        let access = match inbound {
            Some(p) => Access::build(p).map_err(|e| format!("inbound policy: {e}"))?,
            None => Access::default(),
        };
        let faults = match inbound {
            Some(p) => Faults::build(&p.faults).map_err(|e| format!("inbound policy: {e}"))?,
            None => Faults::default(),
        };
        let check = match inbound.and_then(|p| p.health_check.as_ref()) {
            Some(c) => Some(Arc::new(
                crate::appcheck::Check::build(c).map_err(|e| format!("inbound policy: {e}"))?,
            )),
            None => None,
        };
        let access_log = match inbound.and_then(|p| p.access_log.as_ref()) {
            Some(l) => Some(
                self.access_logs
                    .settings(l)
                    .map_err(|e| format!("inbound policy: {e}"))?,
            ),
            None => None,
        };
        let trace = match inbound.and_then(|p| p.trace.as_ref()) {
            Some(t) => {
                Some(crate::trace::Settings::of(t).map_err(|e| format!("inbound policy: {e}"))?)
            }
            None => None,
        };
        let no_limits = Vec::new();
        let limits = RateLimits::build(
            inbound.map(|p| &p.rate_limits).unwrap_or(&no_limits),
            &self.limits.load(),
        )
        .map_err(|e| format!("inbound policy: {e}"))?;
        self.targets.store(Arc::new(targets));
        self.routes.store(Arc::new(routes));
        self.access.store(Arc::new(access));
        let bump = !faults.is_empty() || !self.faults.load().is_empty();
        self.faults.store(Arc::new(faults));
        if bump {
            self.faults_changed.send_modify(|n| *n += 1);
        }
        self.traffic_report_ms.store(
            inbound.map(|p| p.traffic_report_ms).unwrap_or(0),
            std::sync::atomic::Ordering::Relaxed,
        );
        let drills = inbound.map(|p| &p.gateway_drills[..]).unwrap_or(&[]);
        if !drills.is_empty() || !self.gateway_drills.borrow().is_empty() {
            self.gateway_drills
                .send_replace(Arc::new(crate::drill::GatewayDrills::build(drills)));
        }
        self.limits.store(Arc::new(limits));
        let origin = |traffic: Arc<crate::traffic::Traffic>| {
            move || {
                let (service, zone) = traffic.me();
                crate::otlp::Origin { service, zone }
            }
        };
        self.access_logs
            .apply(access_log, origin(self.traffic.clone()));
        self.tracer.apply(trace, origin(self.traffic.clone()));
        if self.health_check.load().as_deref() != check.as_deref() {
            self.health_check.store(check);
        }
        self.clusters.store(Arc::new(new));
        Ok(())
    }
}

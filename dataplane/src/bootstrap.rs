//! Standalone mode: a sidecar configured from a static bootstrap file
//! (`--bootstrap`) instead of a zone control plane, for benchmarks and
//! debugging. Its policy documents are compiled here as a zone-cp would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proto::v1 as pb;
use serde::Deserialize;

use crate::config::{early_data_needs_tcp, Config, Listeners};
use crate::protocol::Protocol;
use crate::resilience;
use crate::state::Shared;
use crate::Error;

/// Standalone bootstrap file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Bootstrap {
    pub identity: IdentityFiles,
    /// Callers must present a SPIFFE ID in this trust domain.
    pub trust_domain: String,
    #[serde(default)]
    pub inbound: Option<InboundSpec>,
    #[serde(default)]
    pub outbound: Vec<OutboundSpec>,
    #[serde(default)]
    pub clusters: Vec<ClusterSpec>,
    #[serde(default)]
    pub admin: Option<SocketAddr>,
    /// Policies compiled for this sidecar, as a zone control plane would.
    #[serde(default)]
    pub policies: Option<PoliciesSpec>,
}

/// Policy documents (AccessPolicy, MtlsPolicy, HttpRoute, TcpRoute, as
/// `ternctl apply` takes them) and what they see this sidecar as.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct PoliciesSpec {
    pub files: Vec<PathBuf>,
    pub service: String,
    #[serde(default = "local")]
    pub zone: String,
    #[serde(default = "local")]
    pub region: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn local() -> String {
    "local".into()
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub roots: PathBuf,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct InboundSpec {
    pub listen: SocketAddr,
    pub app: SocketAddr,
    #[serde(default = "http")]
    pub protocol: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct OutboundSpec {
    pub listen: SocketAddr,
    /// Fixed destination; absent routes HTTP by Host header.
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default = "http")]
    pub protocol: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    pub service: String,
    #[serde(default = "http")]
    pub protocol: String,
    pub endpoints: Vec<EndpointSpec>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub address: SocketAddr,
    pub identity: String,
}

fn http() -> String {
    "http".into()
}

/// Compile a standalone sidecar's policy files into its clusters' routes
/// and its inbound policy, as its zone control plane would.
fn compile_policies(
    p: &PoliciesSpec,
    mut clusters: Vec<pb::Cluster>,
) -> Result<(Vec<pb::Cluster>, Option<pb::InboundPolicy>), Error> {
    let mut docs = Vec::new();
    for f in &p.files {
        let text = read(f)?;
        match model::resource::parse_documents(&f.display().to_string(), &text) {
            Ok(rs) => docs.extend(rs),
            Err(es) => {
                return Err(Error::Config(
                    es.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("\n"),
                ))
            }
        }
    }
    let values: Vec<serde_json::Value> = docs
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    let set = common::policy::PolicySet::build(
        values.iter(),
        &[],
        [(p.zone.clone(), p.region.clone())].into(),
    );
    let facts = common::policy::ProxyFacts {
        service: p.service.clone(),
        zone: p.zone.clone(),
        region: p.region.clone(),
        labels: p.labels.clone(),
    };
    for c in &mut clusters {
        let (http, tcp, policies) = set.routes(&facts, &c.service);
        c.http_routes = http;
        c.tcp_route = tcp;
        c.policies = policies;
        let (resilience, more) = set.resilience(&facts, &c.service);
        if let Some(lb) = resilience.as_ref().and_then(|r| r.balancer.as_ref()) {
            common::resilience::apply_locality(lb, &facts, &mut c.endpoints);
        }
        c.resilience = resilience;
        c.policies.extend(more);
    }
    Ok((clusters, Some(set.inbound(&facts))))
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        what: format!("read {}", path.display()),
        source,
    })
}

/// A standalone sidecar from its bootstrap file: identity, trust, clusters
/// with their compiled policies, its listeners and its admin address.
pub(crate) fn load(
    path: &Path,
    cfg: &Config,
    defaults: resilience::Defaults,
) -> Result<(Arc<Shared>, Listeners, SocketAddr), Error> {
    let text = read(path)?;
    if let Some(line) = model::resource::too_deep(&text) {
        return Err(Error::Config(format!(
            "{}:{}: nested deeper than {} levels",
            path.display(),
            line + 1,
            model::resource::MAX_NESTING
        )));
    }
    let b: Bootstrap = serde_yaml::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let key_path = &b.identity.key;
    model::fsutil::check_private_file(key_path)?;
    let ident = common::tls::Identity::from_pem(&read(&b.identity.cert)?, &read(key_path)?)
        .map_err(Error::certificate(format!("{}: identity", path.display())))?;
    // Standalone: trust whatever the roots file holds; no zones here.
    let policy = common::trust::TrustPolicy::from_pem(
        &b.trust_domain,
        &read(&b.identity.roots)?,
        common::trust::ZoneCas::Any,
    )
    .map_err(Error::certificate(format!(
        "{}: identity.roots",
        path.display()
    )))?;
    let inbound_protocol = match &b.inbound {
        Some(i) => Protocol::parse(&i.protocol).map_err(Error::Config)?,
        None => Protocol::Http1,
    };
    early_data_needs_tcp(cfg.accept_early_data, inbound_protocol)?;
    let shared = Arc::new(
        Shared::new(inbound_protocol)
            .with_defaults(defaults)
            .with_early_data(cfg.accept_early_data)
            .with_access_log_dir(cfg.access_log_dir.clone()),
    );
    shared.set_trust(policy)?;
    shared.set_identity(ident)?;
    let clusters: Vec<pb::Cluster> = b
        .clusters
        .iter()
        .map(|c| pb::Cluster {
            service: c.service.clone(),
            protocol: c.protocol.clone(),
            endpoints: c
                .endpoints
                .iter()
                .map(|e| pb::Endpoint {
                    address: e.address.ip().to_string(),
                    port: e.address.port() as u32,
                    healthy: true,
                    identity: e.identity.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    let (clusters, inbound) = match &b.policies {
        None => (clusters, None),
        Some(p) => compile_policies(p, clusters).map_err(|e| Error::Policies {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?,
    };
    shared
        .apply(&clusters, inbound.as_ref(), 1)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let mut outbound = Vec::new();
    for o in &b.outbound {
        outbound.push((
            o.listen,
            o.service.clone(),
            Protocol::parse(&o.protocol).map_err(Error::Config)?,
        ));
    }
    let inbound = match &b.inbound {
        Some(i) => Some((
            i.listen,
            i.app,
            Protocol::parse(&i.protocol).map_err(Error::Config)?,
        )),
        None => None,
    };
    Ok((
        shared,
        Listeners { inbound, outbound },
        b.admin.unwrap_or(cfg.admin),
    ))
}

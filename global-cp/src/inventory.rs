//! What a zone reports about itself (its services, region and gateways),
//! judged before it becomes the zone's `ZoneIngress`, which every other
//! zone receives. No I/O here.
//!
//! A report is bounded (services, endpoints, gateways, and the resulting
//! resource's size) and may only speak for its own zone: endpoints of that
//! zone, identities under `spiffe://TD/zone/ZONE/`, gateway addresses no
//! other zone publishes. A report that breaks a rule is refused whole: the
//! zone keeps its last good `ZoneIngress`, its status shows why, and
//! nothing reaches other zones, so one zone cannot stop sync for the rest.
//! Since the zone reports deltas, the global then ignores its reports until
//! a full one arrives (the zone is told, and sends one on its next change).
//!
//! A large update comes in chunks (`proto::inventory`): an [`Assembler`]
//! per session joins them, within the same bounds, and the whole update is
//! judged as one message.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use model::ident::SpiffeId;
use model::policy::label_ok;
use model::resource::{
    self, Resource, ServiceSummary, SubsetSummary, ZoneIngressSpec, MAX_SUBSETS,
};
use proto::v1 as pb;

/// Services one zone may publish. With names of at most 63 characters this
/// keeps a `ZoneIngress` under the resource size limit.
pub const MAX_SERVICES: usize = 2000;
/// Endpoints one zone may report, over all its services.
pub const MAX_ENDPOINTS: usize = 50_000;
/// Gateway addresses one zone may publish.
pub const MAX_GATEWAYS: usize = 64;
const PROTOCOLS: &[&str] = &["", "http", "http1", "http2", "grpc", "tcp"];
/// The most one inventory update may take, all its chunks encoded: room
/// for MAX_ENDPOINTS endpoints of about 1.3 KB each (four times a typical
/// endpoint with a handful of labels). The global buffers no more than
/// this of an unfinished update.
pub const MAX_UPDATE_BYTES: usize = 64 * 1024 * 1024;

/// What the global holds of one zone's reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub services: BTreeMap<String, pb::ServiceInventory>,
    pub region: String,
    pub gateways: Vec<String>,
    /// Why the last report was refused; reports are ignored until a full
    /// one is accepted.
    pub refused: Option<String>,
}

/// What to do with one inventory message.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Accepted: the zone's new report and `ZoneIngress`.
    Accept(Box<Report>, Box<Resource>),
    /// A delta after a refusal: ignored until a full report arrives.
    Ignore,
    /// Refused, with the reason for the zone's status and log.
    Refuse(String),
}

/// Judge `inv` from `zone`, given what the global holds of it and the
/// gateway addresses other zones publish.
pub fn judge(
    trust_domain: &str,
    zone: &str,
    held: &Report,
    inv: &pb::Inventory,
    other_gateways: &BTreeSet<String>,
) -> Verdict {
    if held.refused.is_some() && !inv.full {
        return Verdict::Ignore;
    }
    match candidate(trust_domain, zone, held, inv, other_gateways) {
        Ok((report, ingress)) => Verdict::Accept(Box::new(report), Box::new(ingress)),
        Err(why) => Verdict::Refuse(why),
    }
}

/// Why an update was refused as its chunks came in, at the chunk that
/// crossed a bound: the global holds none of it from there on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TooLarge {
    #[error(
        "more than {MAX_SERVICES} services; a zone publishes at most {MAX_SERVICES} \
         (move some services to another zone)"
    )]
    Services,
    #[error(
        "more than {MAX_ENDPOINTS} endpoints; a zone reports at most {MAX_ENDPOINTS} \
         (move some services to another zone)"
    )]
    Endpoints,
    #[error(
        "an inventory update of more than {} MiB; a zone reports at most that \
         (register fewer or shorter labels per proxy, or move some services to another zone)",
        MAX_UPDATE_BYTES / (1024 * 1024)
    )]
    Bytes,
}

/// An update whose last chunk is in.
#[derive(Debug, PartialEq)]
pub enum Assembled {
    /// The whole update, to judge as one message.
    Whole(pb::Inventory),
    /// Refused before it was whole; the rest of its chunks are dropped.
    TooLarge {
        full: bool,
        connected_proxies: u32,
        why: TooLarge,
    },
}

impl Assembled {
    /// The proxy count the zone reported with the update.
    pub fn connected_proxies(&self) -> u32 {
        match self {
            Assembled::Whole(inv) => inv.connected_proxies,
            Assembled::TooLarge {
                connected_proxies, ..
            } => *connected_proxies,
        }
    }

    /// [`judge`] the whole update. One too large is refused like any bad
    /// report, or ignored if it is incremental and the zone's last report
    /// was refused (as `judge` ignores such a one). `other_gateways` is
    /// asked for only when the update is whole.
    pub fn judge(
        &self,
        trust_domain: &str,
        zone: &str,
        held: &Report,
        other_gateways: impl FnOnce() -> BTreeSet<String>,
    ) -> Verdict {
        match self {
            Assembled::Whole(inv) => judge(trust_domain, zone, held, inv, &other_gateways()),
            Assembled::TooLarge { full: false, .. } if held.refused.is_some() => Verdict::Ignore,
            Assembled::TooLarge { why, .. } => Verdict::Refuse(why.to_string()),
        }
    }
}

/// Joins the chunks of a zone's inventory updates, one sync session's
/// worth (a new session starts empty). Chunks of an update are added as
/// they come; a chunk with `full` starts a new update, dropping an
/// unfinished one; entries of the same service name are one service (its
/// endpoints concatenated in order). What it holds stays within
/// MAX_SERVICES, MAX_ENDPOINTS and MAX_UPDATE_BYTES: an update that would
/// exceed them is dropped at once and refused, and its remaining chunks
/// are dropped as they come.
#[derive(Debug, Default)]
pub struct Assembler {
    state: Assembly,
}

#[derive(Debug, Default)]
enum Assembly {
    #[default]
    Idle,
    Pending(Pending),
    /// The rest of an update already refused.
    Dropping,
}

#[derive(Debug, Default)]
struct Pending {
    update: pb::Inventory,
    /// Where each service is in `update.upserts`.
    index: HashMap<String, usize>,
    endpoints: usize,
    bytes: usize,
}

impl Assembler {
    /// Add one inventory message; the update once its last chunk is in.
    pub fn push(&mut self, chunk: pb::Inventory) -> Option<Assembled> {
        let last = chunk.last_chunk;
        let mut p = match std::mem::take(&mut self.state) {
            Assembly::Pending(p) if !chunk.full => p,
            Assembly::Dropping if !chunk.full => {
                if !last {
                    self.state = Assembly::Dropping;
                }
                return None;
            }
            _ => Pending {
                update: pb::Inventory {
                    full: chunk.full,
                    ..Default::default()
                },
                ..Default::default()
            },
        };
        if let Err(why) = p.add(chunk) {
            if !last {
                self.state = Assembly::Dropping;
            }
            return Some(Assembled::TooLarge {
                full: p.update.full,
                connected_proxies: p.update.connected_proxies,
                why,
            });
        }
        if last {
            p.update.last_chunk = true;
            Some(Assembled::Whole(p.update))
        } else {
            self.state = Assembly::Pending(p);
            None
        }
    }

    /// Whether an unfinished update is held (for tests and status).
    pub fn pending(&self) -> bool {
        matches!(self.state, Assembly::Pending(_))
    }
}

impl Pending {
    /// Add `chunk`, checking the bounds first: an update over them is not
    /// taken in.
    fn add(&mut self, chunk: pb::Inventory) -> Result<(), TooLarge> {
        use proto::Message;
        let bytes = self.bytes + chunk.encoded_len();
        if bytes > MAX_UPDATE_BYTES {
            return Err(TooLarge::Bytes);
        }
        let endpoints = self.endpoints
            + chunk
                .upserts
                .iter()
                .map(|s| s.endpoints.len())
                .sum::<usize>();
        if endpoints > MAX_ENDPOINTS {
            return Err(TooLarge::Endpoints);
        }
        let new: BTreeSet<&str> = chunk
            .upserts
            .iter()
            .map(|s| s.name.as_str())
            .filter(|n| !self.index.contains_key(*n))
            .collect();
        if self.index.len() + new.len() > MAX_SERVICES {
            return Err(TooLarge::Services);
        }
        let u = &mut self.update;
        (self.bytes, self.endpoints) = (bytes, endpoints);
        u.removed.extend(chunk.removed);
        for s in chunk.upserts {
            match self.index.get(&s.name) {
                Some(&i) => u.upserts[i].endpoints.extend(s.endpoints),
                None => {
                    self.index.insert(s.name.clone(), u.upserts.len());
                    u.upserts.push(s);
                }
            }
        }
        u.connected_proxies = chunk.connected_proxies;
        u.region = chunk.region;
        u.gateways = chunk.gateways;
        Ok(())
    }
}

fn candidate(
    td: &str,
    zone: &str,
    held: &Report,
    inv: &pb::Inventory,
    other_gateways: &BTreeSet<String>,
) -> Result<(Report, Resource), String> {
    let mut services = if inv.full {
        BTreeMap::new()
    } else {
        held.services.clone()
    };
    for name in &inv.removed {
        services.remove(name);
    }
    for s in &inv.upserts {
        if services.len() >= MAX_SERVICES && !services.contains_key(&s.name) {
            return Err(format!(
                "more than {MAX_SERVICES} services; a zone publishes at most {MAX_SERVICES}"
            ));
        }
        services.insert(s.name.clone(), s.clone());
    }
    let own = format!("{}/", SpiffeId::zone(td, zone));
    let mut endpoints = 0usize;
    for (name, s) in &services {
        resource::check_name("service", name).map_err(|e| format!("service {name:?}: {e}"))?;
        endpoints += s.endpoints.len();
        if endpoints > MAX_ENDPOINTS {
            return Err(format!(
                "more than {MAX_ENDPOINTS} endpoints; a zone reports at most {MAX_ENDPOINTS}"
            ));
        }
        for e in &s.endpoints {
            if !PROTOCOLS.contains(&e.protocol.as_str()) {
                return Err(format!("service {name}: unknown protocol {:?}", e.protocol));
            }
            if !e.zone.is_empty() && e.zone != zone {
                return Err(format!(
                    "service {name}: an endpoint claims zone {:?}; a zone reports only its own endpoints",
                    e.zone
                ));
            }
            if e.via_gateway {
                return Err(format!(
                    "service {name}: an endpoint through a gateway; a zone reports only its own endpoints"
                ));
            }
            let id = SpiffeId::parse(&e.identity)
                .map_err(|x| format!("service {name}: endpoint identity: {x}"))?;
            if !id.as_str().starts_with(&own) {
                return Err(format!(
                    "service {name}: identity {id} is not in zone {zone}"
                ));
            }
        }
    }
    if !inv.region.is_empty() {
        resource::check_name("region", &inv.region).map_err(|e| e.to_string())?;
    }
    if inv.gateways.len() > MAX_GATEWAYS {
        return Err(format!(
            "{} gateways; a zone publishes at most {MAX_GATEWAYS}",
            inv.gateways.len()
        ));
    }
    for g in &inv.gateways {
        check_gateway_address(g)?;
        if other_gateways.contains(g) {
            return Err(format!("gateway address {g} is published by another zone"));
        }
    }
    let mut spec = ZoneIngressSpec {
        region: inv.region.clone(),
        gateways: inv.gateways.clone(),
        services: services
            .values()
            .map(|s| (s.name.clone(), summary(s)))
            .collect(),
    };
    fit_subsets(&mut spec);
    let ingress = Resource {
        api_version: resource::API_VERSION.into(),
        kind: "ZoneIngress".into(),
        metadata: resource::Metadata {
            name: zone.to_string(),
            ..Default::default()
        },
        spec: serde_json::to_value(&spec).map_err(|e| e.to_string())?,
    };
    // Every zone validates what it receives: what would fail there is
    // refused here, for this zone alone.
    resource::validate(&ingress).map_err(|e| format!("its ZoneIngress: {e}"))?;
    Ok((
        Report {
            services,
            region: inv.region.clone(),
            gateways: inv.gateways.clone(),
            refused: None,
        },
        ingress,
    ))
}

/// A service's summary: protocol, healthy instances, and the label sets
/// of those (the ones with labels a policy can select; largest first).
fn summary(s: &pb::ServiceInventory) -> ServiceSummary {
    let mut sets: BTreeMap<BTreeMap<String, String>, u32> = BTreeMap::new();
    let mut healthy = 0;
    for e in s.endpoints.iter().filter(|e| e.healthy) {
        healthy += 1;
        let labels: BTreeMap<String, String> = e
            .labels
            .iter()
            .filter(|(k, v)| label_ok(k, v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !labels.is_empty() {
            *sets.entry(labels).or_default() += 1;
        }
    }
    let mut subsets: Vec<SubsetSummary> = sets
        .into_iter()
        .map(|(labels, healthy)| SubsetSummary { labels, healthy })
        .collect();
    // Stable: equal counts keep the label sets' order.
    subsets.sort_by_key(|s| std::cmp::Reverse(s.healthy));
    let subsets_truncated = subsets.len() > MAX_SUBSETS;
    subsets.truncate(MAX_SUBSETS);
    ServiceSummary {
        protocol: s
            .endpoints
            .first()
            .map(|e| e.protocol.clone())
            .unwrap_or_default(),
        healthy,
        subsets,
        subsets_truncated,
    }
}

/// Room kept below the resource size limit.
const SIZE_MARGIN: usize = 8 * 1024;

/// Keep the `ZoneIngress` under the resource size limit: services and
/// gateways always fit (their bounds see to that); label sets get what
/// room is left, one rank at a time (every service's largest set, then
/// every service's second, ...), and a service that lost some says so.
fn fit_subsets(spec: &mut ZoneIngressSpec) {
    // Measured with every service flagged, so that the flags fit too.
    let all: Vec<(Vec<SubsetSummary>, bool)> = spec
        .services
        .values_mut()
        .map(|s| {
            let was = std::mem::replace(&mut s.subsets_truncated, true);
            (std::mem::take(&mut s.subsets), was)
        })
        .collect();
    let base = serde_json::to_vec(spec)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    let mut room = resource::MAX_RESOURCE_BYTES
        .saturating_sub(SIZE_MARGIN)
        .saturating_sub(base);
    // An over-estimate of a subset's JSON (field names, quotes, commas,
    // a count of up to ten digits).
    let cost = |s: &SubsetSummary| {
        40 + s
            .labels
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>()
    };
    let mut kept: Vec<usize> = vec![0; all.len()];
    let mut full = false;
    for rank in 0..MAX_SUBSETS {
        for (i, (sets, _)) in all.iter().enumerate() {
            if let Some(s) = sets.get(rank) {
                if !full && cost(s) <= room {
                    room -= cost(s);
                    kept[i] += 1;
                } else {
                    full = true;
                }
            }
        }
    }
    for ((summary, (mut sets, was)), n) in spec.services.values_mut().zip(all).zip(kept) {
        summary.subsets_truncated = was || n < sets.len();
        sets.truncate(n);
        summary.subsets = sets;
    }
}

/// `host:port`, with a DNS name or an IP and a non-zero port.
fn check_gateway_address(g: &str) -> Result<(), String> {
    let bad = || format!("gateway address {g:?} is not host:port");
    if g.len() > 255 {
        return Err(bad());
    }
    if g.parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.port() != 0)
    {
        return Ok(());
    }
    let (host, port) = g.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests;

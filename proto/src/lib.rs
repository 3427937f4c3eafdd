//! Tern's wire contracts. The code under `src/gen/` is generated from
//! `proto/tern.proto` and checked in, so building Tern needs no `protoc`.
//! `tests/generated.rs` fails when it is stale; regenerate with
//! `TERN_REGEN=1 cargo test -p proto`.
#![forbid(unsafe_code)]

use std::sync::Arc;

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    include!("gen/tern.v1.rs");
    pub use crate::shared::ProxyConfig;
}

/// OTLP trace export (a subset of OpenTelemetry's published protocol; see
/// `proto/otlp.proto`).
#[allow(clippy::all, clippy::pedantic)]
pub mod otlp {
    include!("gen/opentelemetry.proto.collector.trace.v1.rs");
}

pub mod codec;
pub mod inventory;
mod shared;

/// What every message has: its encoded size (`encoded_len`), encoding and
/// decoding, for crates that use the messages without depending on prost.
pub use prost::Message;

/// Key of the inbound policy among a proxy's config items (never a
/// service name, which is a DNS label).
pub const INBOUND_KEY: &str = "@inbound";

/// One keyed item of a proxy's config, as the zone control plane diffs it
/// and the proxy applies it: a cluster (keyed by its service) or the
/// inbound policy (keyed [`INBOUND_KEY`]). Shared (`Arc`): a zone compiles
/// an item once and every proxy with the same view holds the same one, so
/// comparing is a pointer check first.
#[derive(Clone, Debug)]
pub enum ProxyItem {
    Cluster(Arc<v1::Cluster>),
    Inbound(Arc<v1::InboundPolicy>),
}

impl PartialEq for ProxyItem {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ProxyItem::Cluster(a), ProxyItem::Cluster(b)) => Arc::ptr_eq(a, b) || a == b,
            (ProxyItem::Inbound(a), ProxyItem::Inbound(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        }
    }
}

impl ProxyItem {
    /// Its size on the wire.
    pub fn encoded_len(&self) -> usize {
        use prost::Message;
        match self {
            ProxyItem::Cluster(c) => c.encoded_len(),
            ProxyItem::Inbound(p) => p.encoded_len(),
        }
    }

    pub fn key(&self) -> String {
        match self {
            ProxyItem::Cluster(c) => c.service.clone(),
            ProxyItem::Inbound(_) => INBOUND_KEY.to_string(),
        }
    }
}

/// A config message (one chunk of a version) from keyed items.
pub fn proxy_config(
    version: u64,
    full: bool,
    upserts: impl IntoIterator<Item = ProxyItem>,
    removed: Vec<String>,
    (chunk, last_chunk): (u32, bool),
) -> v1::ProxyConfig {
    let mut c = v1::ProxyConfig {
        version,
        full,
        removed,
        chunk,
        last_chunk,
        ..Default::default()
    };
    for item in upserts {
        match item {
            ProxyItem::Cluster(x) => c.upserts.push(x),
            ProxyItem::Inbound(x) => c.inbound = Some(x),
        }
    }
    c
}

/// The keyed items a config message carries.
pub fn proxy_items(c: v1::ProxyConfig) -> (Vec<(String, ProxyItem)>, Vec<String>) {
    let mut items: Vec<(String, ProxyItem)> = c
        .upserts
        .into_iter()
        .map(|x| (x.service.clone(), ProxyItem::Cluster(x)))
        .collect();
    if let Some(i) = c.inbound {
        items.push((INBOUND_KEY.to_string(), ProxyItem::Inbound(i)));
    }
    (items, c.removed)
}

//! What the zone reports to the global about itself: per service, the
//! endpoints and label sets of its healthy instances, plus its region,
//! gateways and proxy count. An update carries what changed since the
//! last one (or everything, after a reconnect), cut into chunks of about
//! [`INVENTORY_CHUNK_BYTES`] (`proto::inventory::split`) that the global
//! joins and judges as one.

use std::collections::BTreeMap;

use proto::v1::{self as pb, zone_message};

use crate::Zone;

/// Inventory updates are cut into messages of about this size, as the
/// global cuts its deltas: a zone of any size within the global's bounds
/// reports far below the message limit (one endpoint is the bounded unit).
pub const INVENTORY_CHUNK_BYTES: usize = 1024 * 1024;

/// The messages of one inventory update: what changed from `last` to
/// `now` (all of `now` when `full`), cut into chunks of
/// INVENTORY_CHUNK_BYTES (`proto::inventory::split`). `header` holds what
/// every chunk carries: region, gateways and the proxy count. The global
/// judges the chunks together once the last is in.
pub fn inventory_update(
    header: pb::Inventory,
    last: &BTreeMap<String, pb::ServiceInventory>,
    now: &BTreeMap<String, pb::ServiceInventory>,
    full: bool,
) -> Vec<pb::Inventory> {
    let update = pb::Inventory {
        full,
        upserts: now
            .iter()
            .filter(|(k, v)| full || last.get(*k) != Some(*v))
            .map(|(_, v)| v.clone())
            .collect(),
        removed: if full {
            vec![]
        } else {
            last.keys()
                .filter(|k| !now.contains_key(*k))
                .cloned()
                .collect()
        },
        last_chunk: true,
        ..header
    };
    proto::inventory::split(update, INVENTORY_CHUNK_BYTES)
}

pub(crate) fn inventory_diff(
    z: &Zone,
    last: &BTreeMap<String, pb::ServiceInventory>,
    now: &BTreeMap<String, pb::ServiceInventory>,
    full: bool,
) -> Vec<pb::Inventory> {
    let header = pb::Inventory {
        region: z.registry.region().to_string(),
        gateways: z
            .registry
            .gateways()
            .into_iter()
            // Connected or in their grace period: a zone-cp that restarts
            // before its gateways reconnect keeps them published.
            .map(|g| g.public_address)
            .collect(),
        connected_proxies: z.registry.connected(),
        ..Default::default()
    };
    inventory_update(header, last, now, full)
}

pub(crate) fn inv_msg(i: pb::Inventory) -> pb::ZoneMessage {
    pb::ZoneMessage {
        msg: Some(zone_message::Msg::Inventory(i)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::global_client::MAX_MESSAGE_BYTES;
    use crate::registration::MAX_LABELS;
    use proto::Message;

    /// An endpoint as the registry reports it, with six typical labels.
    fn typical(svc: &str, i: usize) -> pb::Endpoint {
        let labels = [
            ("app.kubernetes.io/name", svc.to_string()),
            ("app.kubernetes.io/version", "v1.42.0".into()),
            ("pod-template-hash", "7d9f8c6b5d".into()),
            ("topology.kubernetes.io/zone", "eu-west-1a".into()),
            ("team", "payments".into()),
            ("statefulset.kubernetes.io/pod-name", format!("{svc}-{i}")),
        ];
        pb::Endpoint {
            address: format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
            port: 15006,
            healthy: true,
            labels: labels
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            region: "eu".into(),
            zone: "z1".into(),
            identity: format!("spiffe://tern/zone/z1/svc/{svc}"),
            protocol: "http".into(),
            instance: format!("{svc}-7d9f8c6b5d-{i:05}"),
            weight: 1,
            ..Default::default()
        }
    }

    fn service(name: &str, endpoints: usize) -> (String, pb::ServiceInventory) {
        let s = pb::ServiceInventory {
            name: name.into(),
            endpoints: (0..endpoints).map(|i| typical(name, i)).collect(),
        };
        (name.to_string(), s)
    }

    fn header() -> pb::Inventory {
        pb::Inventory {
            region: "eu".into(),
            gateways: vec!["203.0.113.7:15444".into()],
            connected_proxies: 30_000,
            ..Default::default()
        }
    }

    /// A zone of 30,000 endpoints with six labels each (one service of
    /// 20,000, larger than a chunk, and 100 of 100): over the 8 MiB message
    /// limit as one message, the global reset the stream on every connect
    /// and the zone reconnected for ever. Cut, every message is within
    /// the chunk size; each carries region, gateways and proxy count, the
    /// first alone says full and the last alone says last, and together
    /// they hold every endpoint once, in order.
    #[test]
    fn a_large_inventory_goes_in_chunks_under_the_message_limit() {
        let mut now: BTreeMap<_, _> = [service("big", 20_000)].into();
        now.extend((0..100).map(|i| service(&format!("s{i}"), 100)));
        let whole = pb::Inventory {
            full: true,
            upserts: now.values().cloned().collect(),
            last_chunk: true,
            ..header()
        };
        assert!(
            whole.encoded_len() > MAX_MESSAGE_BYTES,
            "{} bytes",
            whole.encoded_len()
        );
        let chunks = inventory_update(header(), &BTreeMap::new(), &now, true);
        let n = chunks.len();
        assert!(n > 8, "{n} chunks");
        for (i, c) in chunks.iter().enumerate() {
            assert!(c.encoded_len() <= INVENTORY_CHUNK_BYTES, "chunk {i}");
            assert!(c.encoded_len() < MAX_MESSAGE_BYTES, "chunk {i}");
            assert_eq!((c.full, c.last_chunk), (i == 0, i + 1 == n), "chunk {i}");
            assert_eq!(
                (&c.region, &c.gateways, c.connected_proxies),
                (&whole.region, &whole.gateways, whole.connected_proxies)
            );
            assert!(c.removed.is_empty());
        }
        let mut joined: BTreeMap<String, Vec<pb::Endpoint>> = BTreeMap::new();
        for s in chunks.into_iter().flat_map(|c| c.upserts) {
            joined.entry(s.name).or_default().extend(s.endpoints);
        }
        assert_eq!(joined.len(), now.len());
        for (name, s) in &now {
            assert!(joined[name] == s.endpoints, "{name}");
        }
    }

    /// A change is reported as before: the changed services and the
    /// removed names, one message when it fits.
    #[test]
    fn a_small_change_is_one_message() {
        let last: BTreeMap<_, _> = [service("api", 2), service("web", 2), service("old", 1)].into();
        let mut now = last.clone();
        now.remove("old");
        now.insert("web".into(), service("web", 3).1);
        let got = inventory_update(header(), &last, &now, false);
        assert_eq!(
            got,
            vec![pb::Inventory {
                upserts: vec![now["web"].clone()],
                removed: vec!["old".into()],
                last_chunk: true,
                ..header()
            }]
        );
    }

    /// The largest endpoint registration allows is a small part of a
    /// chunk, so one service of such endpoints, however many, goes in
    /// parts within the chunk size (a chunk exceeds it only by an endpoint
    /// larger than a chunk, which registration does not allow).
    #[test]
    fn a_service_of_the_largest_endpoints_goes_in_parts_within_the_chunk_size() {
        let name = "s".repeat(63);
        let e = pb::Endpoint {
            address: "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".into(),
            port: 65535,
            healthy: true,
            labels: (0..MAX_LABELS)
                .map(|i| (format!("{i:0>128}"), "v".repeat(63)))
                .collect(),
            region: "r".repeat(63),
            zone: "z".repeat(63),
            identity: format!(
                "spiffe://{}/zone/{}/svc/{name}",
                "t".repeat(255),
                "z".repeat(63)
            ),
            protocol: "http2".into(),
            instance: "i".repeat(253),
            weight: u32::MAX,
            ..Default::default()
        };
        assert!(e.encoded_len() < 16 * 1024, "{}", e.encoded_len());
        let now: BTreeMap<_, _> = [(
            name.clone(),
            pb::ServiceInventory {
                name,
                endpoints: vec![e; 1000],
            },
        )]
        .into();
        let chunks = inventory_update(header(), &BTreeMap::new(), &now, true);
        assert!(chunks.len() > 2, "{} chunks", chunks.len());
        assert!(chunks
            .iter()
            .all(|c| c.encoded_len() <= INVENTORY_CHUNK_BYTES && c.upserts.len() == 1));
        let sent: usize = chunks.iter().map(|c| c.upserts[0].endpoints.len()).sum();
        assert_eq!(sent, 1000);
    }
}

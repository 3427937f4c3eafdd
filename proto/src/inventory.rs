//! A zone's inventory update cut into messages (`Inventory.last_chunk`),
//! so that a zone of any size within the global's bounds reports under the
//! gRPC message limit. The zone cuts with [`split`]; the global assembles
//! the chunks of an update and judges them as one message
//! (`global_cp::inventory::Assembler`).
//!
//! The rules, as `tern.proto` states them:
//! * the chunks of one update travel one after another (other kinds of
//!   messages may come between them); `last_chunk` is set on the last only;
//! * `full` is set on the first chunk of a full update only, so a chunk
//!   with `full` always starts a new update (an unfinished one is dropped);
//! * `region`, `gateways` and `connected_proxies` are on every chunk;
//! * removed names come first, then the upserts in order;
//! * a service too large for one chunk is sent in parts: entries of the
//!   same name, in consecutive chunks, whose endpoints the receiver
//!   concatenates in order. One endpoint is never cut.

use prost::Message;

use crate::v1::{Inventory, ServiceInventory};

/// Cut `update` into messages of at most `max_bytes` each (encoded), or of
/// one item more than that when a single item (an endpoint, a removed
/// name) is larger on its own. An update that fits is one message, exactly
/// as it was before chunking (with `last_chunk` set).
pub fn split(update: Inventory, max_bytes: usize) -> Vec<Inventory> {
    let Inventory {
        full,
        upserts,
        removed,
        connected_proxies,
        last_chunk: _,
        region,
        gateways,
    } = update;
    // What every chunk carries, measured with both flags set.
    let header = Inventory {
        full: true,
        last_chunk: true,
        connected_proxies,
        region,
        gateways,
        upserts: Vec::new(),
        removed: Vec::new(),
    };
    let mut cut = Cutter {
        room: max_bytes.saturating_sub(header.encoded_len()),
        cur: header.clone(),
        header,
        used: 0,
        done: Vec::new(),
    };
    for name in removed {
        let cost = field_len(name.len());
        cut.make_room(cost);
        cut.cur.removed.push(name);
        cut.used += cost;
    }
    for s in upserts {
        let cost = field_len(s.encoded_len());
        if cost <= cut.room {
            cut.make_room(cost);
            cut.cur.upserts.push(s);
            cut.used += cost;
        } else {
            cut.service_in_parts(s);
        }
    }
    let mut out = cut.done;
    out.push(cut.cur);
    let n = out.len();
    for (i, m) in out.iter_mut().enumerate() {
        m.full = full && i == 0;
        m.last_chunk = i + 1 == n;
    }
    out
}

/// The encoded size of a length-delimited field of `len` bytes (tags
/// below 16 take one byte).
fn field_len(len: usize) -> usize {
    1 + prost::length_delimiter_len(len) + len
}

struct Cutter {
    header: Inventory,
    /// Bytes each chunk has for removed names and upserts.
    room: usize,
    cur: Inventory,
    /// Bytes of `cur` taken so far.
    used: usize,
    done: Vec<Inventory>,
}

impl Cutter {
    /// Start a new chunk unless `cost` more bytes fit in this one (or it
    /// is empty: an item larger than a chunk goes alone).
    fn make_room(&mut self, cost: usize) {
        if self.used > 0 && self.used + cost > self.room {
            let next = self.header.clone();
            self.done.push(std::mem::replace(&mut self.cur, next));
            self.used = 0;
        }
    }

    /// A service larger than a chunk: its endpoints in parts that each
    /// fill a chunk, the last part sharing its chunk with what follows.
    fn service_in_parts(&mut self, s: ServiceInventory) {
        let name_len = field_len(s.name.len());
        let mut part: Vec<_> = Vec::new();
        let mut body = name_len;
        for e in s.endpoints {
            let cost = field_len(e.encoded_len());
            if self.used + field_len(body + cost) > self.room {
                if !part.is_empty() {
                    self.cur.upserts.push(ServiceInventory {
                        name: s.name.clone(),
                        endpoints: std::mem::take(&mut part),
                    });
                    self.used += field_len(body);
                    body = name_len;
                }
                self.make_room(field_len(body + cost));
            }
            part.push(e);
            body += cost;
        }
        // Even an empty service goes, so that the receiver sees its name.
        self.make_room(field_len(body));
        self.cur.upserts.push(ServiceInventory {
            name: s.name,
            endpoints: part,
        });
        self.used += field_len(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::Endpoint;

    fn service(name: &str, endpoints: usize) -> ServiceInventory {
        ServiceInventory {
            name: name.into(),
            endpoints: (0..endpoints)
                .map(|i| Endpoint {
                    address: format!("10.0.{}.{}", i / 250, i % 250),
                    port: 15006,
                    healthy: true,
                    identity: format!("spiffe://tern/zone/z1/svc/{name}"),
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn update(full: bool, upserts: Vec<ServiceInventory>, removed: &[&str]) -> Inventory {
        Inventory {
            full,
            upserts,
            removed: removed.iter().map(|s| s.to_string()).collect(),
            connected_proxies: 7,
            last_chunk: true,
            region: "eu".into(),
            gateways: vec!["10.1.0.1:15444".into()],
        }
    }

    /// Concatenate the chunks back (entries of one name joined).
    fn join(chunks: &[Inventory]) -> (Vec<ServiceInventory>, Vec<String>) {
        let mut services: Vec<ServiceInventory> = Vec::new();
        let mut removed = Vec::new();
        for c in chunks {
            removed.extend(c.removed.iter().cloned());
            for s in &c.upserts {
                match services.last_mut() {
                    Some(last) if last.name == s.name => {
                        last.endpoints.extend(s.endpoints.iter().cloned())
                    }
                    _ => services.push(s.clone()),
                }
            }
        }
        (services, removed)
    }

    /// An update that fits is one message, unchanged.
    #[test]
    fn a_small_update_is_one_message() {
        let u = update(true, vec![service("api", 3), service("web", 1)], &[]);
        assert_eq!(split(u.clone(), 1024 * 1024), vec![u]);
        let u = update(false, vec![], &["old"]);
        assert_eq!(split(u.clone(), 1024 * 1024), vec![u]);
    }

    /// Each chunk is within the bound, carries the header, and only the
    /// first says full and only the last says last; together they are the
    /// update, a service larger than a chunk in consecutive parts.
    #[test]
    fn a_large_update_is_cut_within_the_bound() {
        let max = 16 * 1024;
        let removed: Vec<String> = (0..500).map(|i| format!("gone-{i}")).collect();
        let removed_refs: Vec<&str> = removed.iter().map(String::as_str).collect();
        let services = vec![service("a", 10), service("big", 2000), service("c", 40)];
        let u = update(false, services.clone(), &removed_refs);
        let chunks = split(u.clone(), max);
        assert!(chunks.len() > 5, "{} chunks", chunks.len());
        for (i, c) in chunks.iter().enumerate() {
            assert!(c.encoded_len() <= max, "chunk {i}: {}", c.encoded_len());
            assert_eq!(c.last_chunk, i + 1 == chunks.len());
            assert!(!c.full);
            assert_eq!((c.region.as_str(), c.connected_proxies), ("eu", 7));
            assert_eq!(c.gateways, u.gateways);
        }
        assert_eq!(join(&chunks), (services, removed));
        let full = split(update(true, vec![service("big", 2000)], &[]), max);
        assert!(full[0].full && full[1..].iter().all(|c| !c.full));
    }
}

//! `ProxyConfig` with shared items.
//!
//! A zone compiles each cluster and inbound policy once and every proxy with
//! the same view holds the same `Arc` (see [`crate::ProxyItem`]). With the
//! generated struct, every message to every proxy would deep-copy its
//! clusters (every endpoint's strings) just to encode them; at a thousand
//! proxies that copy, not the config, was most of a zone control plane's
//! memory while it sent configs. This type holds the items by `Arc`, so a
//! message is a list of pointers until tonic encodes it. tonic-build maps
//! `tern.v1.ProxyConfig` here (`extern_path`), and the encoding below is the
//! one the `.proto` declares: `tests` check it field by field against a
//! derived twin.

use std::sync::Arc;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

use crate::v1::{Cluster, InboundPolicy};

/// `tern.v1.ProxyConfig`: one chunk of a config version (see the `.proto`).
#[derive(Clone, PartialEq, Debug, Default)]
pub struct ProxyConfig {
    pub version: u64,
    pub full: bool,
    pub upserts: Vec<Arc<Cluster>>,
    pub removed: Vec<String>,
    pub inbound: Option<Arc<InboundPolicy>>,
    pub chunk: u32,
    pub last_chunk: bool,
}

impl prost::Message for ProxyConfig {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if self.version != 0 {
            encoding::uint64::encode(1, &self.version, buf);
        }
        if self.full {
            encoding::bool::encode(2, &self.full, buf);
        }
        for c in &self.upserts {
            encoding::message::encode(3, &**c, buf);
        }
        encoding::string::encode_repeated(4, &self.removed, buf);
        if let Some(i) = &self.inbound {
            encoding::message::encode(5, &**i, buf);
        }
        if self.chunk != 0 {
            encoding::uint32::encode(6, &self.chunk, buf);
        }
        if self.last_chunk {
            encoding::bool::encode(7, &self.last_chunk, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        const NAME: &str = "ProxyConfig";
        match tag {
            1 => {
                encoding::uint64::merge(wire_type, &mut self.version, buf, ctx).map_err(|mut e| {
                    e.push(NAME, "version");
                    e
                })
            }
            2 => encoding::bool::merge(wire_type, &mut self.full, buf, ctx).map_err(|mut e| {
                e.push(NAME, "full");
                e
            }),
            3 => {
                let mut c = Cluster::default();
                encoding::message::merge(wire_type, &mut c, buf, ctx).map_err(|mut e| {
                    e.push(NAME, "upserts");
                    e
                })?;
                self.upserts.push(Arc::new(c));
                Ok(())
            }
            4 => encoding::string::merge_repeated(wire_type, &mut self.removed, buf, ctx).map_err(
                |mut e| {
                    e.push(NAME, "removed");
                    e
                },
            ),
            5 => {
                // A repeated singular message field merges into the one
                // before, as protobuf says.
                let mut i = self
                    .inbound
                    .take()
                    .map(Arc::unwrap_or_clone)
                    .unwrap_or_default();
                let r = encoding::message::merge(wire_type, &mut i, buf, ctx).map_err(|mut e| {
                    e.push(NAME, "inbound");
                    e
                });
                self.inbound = Some(Arc::new(i));
                r
            }
            6 => encoding::uint32::merge(wire_type, &mut self.chunk, buf, ctx).map_err(|mut e| {
                e.push(NAME, "chunk");
                e
            }),
            7 => {
                encoding::bool::merge(wire_type, &mut self.last_chunk, buf, ctx).map_err(|mut e| {
                    e.push(NAME, "last_chunk");
                    e
                })
            }
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        (if self.version != 0 {
            encoding::uint64::encoded_len(1, &self.version)
        } else {
            0
        }) + (if self.full {
            encoding::bool::encoded_len(2, &self.full)
        } else {
            0
        }) + self
            .upserts
            .iter()
            .map(|c| encoding::message::encoded_len(3, &**c))
            .sum::<usize>()
            + encoding::string::encoded_len_repeated(4, &self.removed)
            + self
                .inbound
                .as_ref()
                .map_or(0, |i| encoding::message::encoded_len(5, &**i))
            + (if self.chunk != 0 {
                encoding::uint32::encoded_len(6, &self.chunk)
            } else {
                0
            })
            + (if self.last_chunk {
                encoding::bool::encoded_len(7, &self.last_chunk)
            } else {
                0
            })
    }

    fn clear(&mut self) {
        *self = ProxyConfig::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{AccessRule, Endpoint};
    use prost::Message;

    /// What prost derives from the `.proto`'s `ProxyConfig`.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Derived {
        #[prost(uint64, tag = "1")]
        version: u64,
        #[prost(bool, tag = "2")]
        full: bool,
        #[prost(message, repeated, tag = "3")]
        upserts: Vec<Cluster>,
        #[prost(string, repeated, tag = "4")]
        removed: Vec<String>,
        #[prost(message, optional, tag = "5")]
        inbound: Option<InboundPolicy>,
        #[prost(uint32, tag = "6")]
        chunk: u32,
        #[prost(bool, tag = "7")]
        last_chunk: bool,
    }

    fn sample() -> Derived {
        let ep = |a: &str| Endpoint {
            address: a.into(),
            port: 8080,
            healthy: true,
            zone: "z".into(),
            ..Default::default()
        };
        Derived {
            version: 300,
            full: true,
            upserts: vec![
                Cluster {
                    service: "a".into(),
                    endpoints: vec![ep("127.0.0.1"), ep("127.0.0.2")],
                    ..Default::default()
                },
                Cluster {
                    service: "b".into(),
                    ..Default::default()
                },
            ],
            removed: vec!["c".into(), "d".into()],
            inbound: Some(InboundPolicy {
                rules: vec![AccessRule {
                    name: "r".into(),
                    ..Default::default()
                }],
                default_deny: true,
                ..Default::default()
            }),
            chunk: 2,
            last_chunk: true,
        }
    }

    fn shared(d: &Derived) -> ProxyConfig {
        ProxyConfig {
            version: d.version,
            full: d.full,
            upserts: d.upserts.iter().cloned().map(Arc::new).collect(),
            removed: d.removed.clone(),
            inbound: d.inbound.clone().map(Arc::new),
            chunk: d.chunk,
            last_chunk: d.last_chunk,
        }
    }

    #[test]
    fn encodes_byte_for_byte_as_the_derived_message() {
        for d in [sample(), Derived::default()] {
            let s = shared(&d);
            assert_eq!(s.encode_to_vec(), d.encode_to_vec());
            assert_eq!(s.encoded_len(), d.encoded_len());
        }
    }

    #[test]
    fn decodes_what_the_derived_message_encodes() {
        for d in [sample(), Derived::default()] {
            let back = ProxyConfig::decode(d.encode_to_vec().as_slice()).unwrap();
            assert_eq!(back, shared(&d));
        }
    }

    #[test]
    fn a_second_inbound_merges_into_the_first() {
        let a = Derived {
            inbound: Some(InboundPolicy {
                default_deny: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let b = Derived {
            inbound: Some(InboundPolicy {
                rules: vec![AccessRule::default()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut bytes = a.encode_to_vec();
        bytes.extend(b.encode_to_vec());
        let want = Derived::decode(bytes.as_slice()).unwrap();
        let got = ProxyConfig::decode(bytes.as_slice()).unwrap();
        assert_eq!(got, shared(&want));
    }

    #[test]
    fn a_truncated_cluster_names_the_field() {
        let mut bytes = sample().encode_to_vec();
        bytes.truncate(bytes.len() / 2);
        let e = ProxyConfig::decode(bytes.as_slice()).unwrap_err();
        assert!(e.to_string().contains("ProxyConfig"), "{e}");
    }
}

//! The header that opens every cross-zone flow, on both hops: sidecar ->
//! local gateway (inside mTLS) and gateway -> gateway (on a QUIC stream).
//! After it come the caller's own end-to-end mTLS bytes, which gateways
//! never decrypt.
//!
//! Wire format (all integers big-endian):
//!
//! ```text
//! magic "TF" | version u8 (1) | length u16 (of the fields) | fields
//! field: tag u8 | len u8 | value (len bytes)
//!   1 destination service (required)   2 destination zone (required)
//!   3 source zone (required)           4 destination port (u16, optional)
//!   5 W3C traceparent (optional)
//!   6 a label of the destination subset, `key=value` (optional,
//!     repeatable, keys ascending): only instances with every such label
//!     may serve the flow
//! ```
//!
//! The whole header is at most [`MAX_HEADER`] bytes. Unknown tags are
//! skipped, so fields can be added; a repeated known tag is an error.
//! Decoding is pure: no I/O, so it is tested (and fuzzable) on its own.

pub const MAGIC: &[u8; 2] = b"TF";
pub const VERSION: u8 = 1;
/// Upper bound of a whole encoded header.
pub const MAX_HEADER: usize = 1024;
const PREFIX: usize = 5;

/// QUIC application error codes a gateway resets a flow with.
pub mod code {
    pub const MALFORMED_HEADER: u32 = 0x10;
    pub const UNKNOWN_SERVICE: u32 = 0x11;
    pub const NO_HEALTHY_ENDPOINT: u32 = 0x12;
    pub const UPSTREAM_FAILED: u32 = 0x13;
    pub const UNKNOWN_ZONE: u32 = 0x14;
    /// Refused by a running drill (a partition or a blackhole).
    pub const DRILL_REFUSED: u32 = 0x15;
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FlowHeader {
    pub service: String,
    pub dest_zone: String,
    pub source_zone: String,
    pub port: Option<u16>,
    pub traceparent: Option<String>,
    /// Labels the serving instance must have (empty: any instance).
    pub subset: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("not a Tern flow (bad magic)")]
    BadMagic,
    #[error("unsupported flow header version {0}")]
    Version(u8),
    #[error("flow header of {0} bytes exceeds the {MAX_HEADER}-byte limit")]
    TooLong(usize),
    #[error("flow header is truncated")]
    Truncated,
    #[error("flow header lacks the {0}")]
    Missing(&'static str),
    #[error("flow header field {tag} is invalid: {why}")]
    Invalid { tag: u8, why: &'static str },
    #[error("flow header repeats field {0}")]
    Repeated(u8),
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Label keys and values as policies allow them (`=` appears in neither).
fn label_ok(k: &str, v: &str) -> bool {
    !k.is_empty()
        && k.len() <= 63
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn trace_ok(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

impl FlowHeader {
    /// Encode; refuses exactly what `decode` would refuse, so a header
    /// that encodes always decodes back to itself.
    pub fn encode(&self) -> Result<Vec<u8>, HeaderError> {
        for (tag, v) in [
            (1u8, &self.service),
            (2, &self.dest_zone),
            (3, &self.source_zone),
        ] {
            if !name_ok(v) {
                return Err(HeaderError::Invalid {
                    tag,
                    why: "not a DNS label",
                });
            }
        }
        if self.traceparent.as_deref().is_some_and(|t| !trace_ok(t)) {
            return Err(HeaderError::Invalid {
                tag: 5,
                why: "traceparent must be hex and dashes",
            });
        }
        for (i, (k, v)) in self.subset.iter().enumerate() {
            if !label_ok(k, v) {
                return Err(HeaderError::Invalid {
                    tag: 6,
                    why: "not a label key=value",
                });
            }
            if i > 0 && self.subset[i - 1].0 >= *k {
                return Err(HeaderError::Invalid {
                    tag: 6,
                    why: "label keys must ascend",
                });
            }
        }
        let mut fields = Vec::with_capacity(64);
        let mut put = |tag: u8, v: &[u8]| -> Result<(), HeaderError> {
            let len = u8::try_from(v.len()).map_err(|_| HeaderError::Invalid {
                tag,
                why: "longer than 255 bytes",
            })?;
            fields.push(tag);
            fields.push(len);
            fields.extend_from_slice(v);
            Ok(())
        };
        put(1, self.service.as_bytes())?;
        put(2, self.dest_zone.as_bytes())?;
        put(3, self.source_zone.as_bytes())?;
        if let Some(p) = self.port {
            put(4, &p.to_be_bytes())?;
        }
        if let Some(t) = &self.traceparent {
            put(5, t.as_bytes())?;
        }
        for (k, v) in &self.subset {
            put(6, format!("{k}={v}").as_bytes())?;
        }
        let total = PREFIX + fields.len();
        if total > MAX_HEADER {
            return Err(HeaderError::TooLong(total));
        }
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&(fields.len() as u16).to_be_bytes());
        out.extend_from_slice(&fields);
        Ok(out)
    }

    /// How many bytes the whole header takes, from its 5-byte prefix.
    pub fn total_len(prefix: &[u8; PREFIX]) -> Result<usize, HeaderError> {
        if &prefix[..2] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if prefix[2] != VERSION {
            return Err(HeaderError::Version(prefix[2]));
        }
        let total = PREFIX + u16::from_be_bytes([prefix[3], prefix[4]]) as usize;
        if total > MAX_HEADER {
            return Err(HeaderError::TooLong(total));
        }
        Ok(total)
    }

    /// Decode a complete header (prefix included).
    pub fn decode(buf: &[u8]) -> Result<Self, HeaderError> {
        let prefix: &[u8; PREFIX] = buf
            .get(..PREFIX)
            .and_then(|p| p.try_into().ok())
            .ok_or(HeaderError::Truncated)?;
        let total = Self::total_len(prefix)?;
        if buf.len() < total {
            return Err(HeaderError::Truncated);
        }
        let mut rest = &buf[PREFIX..total];
        let (mut service, mut dest, mut src, mut port, mut trace) = (None, None, None, None, None);
        let mut subset: Vec<(String, String)> = Vec::new();
        while !rest.is_empty() {
            let [tag, len, ..] = *rest else {
                return Err(HeaderError::Truncated);
            };
            let v = rest
                .get(2..2 + len as usize)
                .ok_or(HeaderError::Truncated)?;
            rest = &rest[2 + len as usize..];
            let text = || {
                std::str::from_utf8(v)
                    .map(str::to_string)
                    .map_err(|_| HeaderError::Invalid {
                        tag,
                        why: "not UTF-8",
                    })
            };
            match tag {
                1..=3 => {
                    let s = text()?;
                    if !name_ok(&s) {
                        return Err(HeaderError::Invalid {
                            tag,
                            why: "not a DNS label",
                        });
                    }
                    let slot = match tag {
                        1 => &mut service,
                        2 => &mut dest,
                        _ => &mut src,
                    };
                    set_once(slot, s, tag)?;
                }
                4 => {
                    let p: [u8; 2] = v.try_into().map_err(|_| HeaderError::Invalid {
                        tag,
                        why: "a port is 2 bytes",
                    })?;
                    set_once(&mut port, u16::from_be_bytes(p), tag)?;
                }
                5 => {
                    let s = text()?;
                    if !trace_ok(&s) {
                        return Err(HeaderError::Invalid {
                            tag,
                            why: "traceparent must be hex and dashes",
                        });
                    }
                    set_once(&mut trace, s, tag)?;
                }
                6 => {
                    let s = text()?;
                    let (k, v) = s.split_once('=').filter(|(k, v)| label_ok(k, v)).ok_or(
                        HeaderError::Invalid {
                            tag,
                            why: "not a label key=value",
                        },
                    )?;
                    if subset.last().is_some_and(|(last, _)| last.as_str() >= k) {
                        return Err(HeaderError::Invalid {
                            tag,
                            why: "label keys must ascend",
                        });
                    }
                    subset.push((k.to_string(), v.to_string()));
                }
                _ => {} // unknown: skipped, for forward compatibility
            }
        }
        Ok(Self {
            service: service.ok_or(HeaderError::Missing("destination service"))?,
            dest_zone: dest.ok_or(HeaderError::Missing("destination zone"))?,
            source_zone: src.ok_or(HeaderError::Missing("source zone"))?,
            port,
            traceparent: trace,
            subset,
        })
    }
}

fn set_once<T>(slot: &mut Option<T>, val: T, tag: u8) -> Result<(), HeaderError> {
    if slot.is_some() {
        return Err(HeaderError::Repeated(tag));
    }
    *slot = Some(val);
    Ok(())
}

/// Read one header from an async stream: the prefix, then exactly the rest.
/// Never reads past the header, so what follows stays in the stream.
pub async fn read<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<FlowHeader, ReadError> {
    use tokio::io::AsyncReadExt;
    let mut prefix = [0u8; PREFIX];
    r.read_exact(&mut prefix).await?;
    let total = FlowHeader::total_len(&prefix)?;
    let mut buf = vec![0u8; total];
    buf[..PREFIX].copy_from_slice(&prefix);
    r.read_exact(&mut buf[PREFIX..]).await?;
    Ok(FlowHeader::decode(&buf)?)
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the flow header: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Header(#[from] HeaderError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h() -> FlowHeader {
        FlowHeader {
            service: "api".into(),
            dest_zone: "us-east-1".into(),
            source_zone: "eu-west-1".into(),
            port: Some(8080),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            subset: vec![("team".into(), "a".into()), ("version".into(), "v2".into())],
        }
    }

    #[test]
    fn round_trip() {
        let b = h().encode().unwrap();
        assert_eq!(FlowHeader::decode(&b).unwrap(), h());
        let mut minimal = h();
        minimal.port = None;
        minimal.traceparent = None;
        minimal.subset.clear();
        assert_eq!(
            FlowHeader::decode(&minimal.encode().unwrap()).unwrap(),
            minimal
        );
    }

    #[test]
    fn malformed_headers_are_errors_not_panics() {
        let good = h().encode().unwrap();
        assert_eq!(
            FlowHeader::decode(b"XX\x01\x00\x00"),
            Err(HeaderError::BadMagic)
        );
        assert_eq!(
            FlowHeader::decode(b"TF\x02\x00\x00"),
            Err(HeaderError::Version(2))
        );
        assert_eq!(
            FlowHeader::decode(b"TF\x01\xff\xff"),
            Err(HeaderError::TooLong(65540))
        );
        assert_eq!(
            FlowHeader::decode(&good[..good.len() - 3]),
            Err(HeaderError::Truncated)
        );
        assert_eq!(
            FlowHeader::decode(b"TF\x01\x00\x00"),
            Err(HeaderError::Missing("destination service"))
        );
        // Every strict prefix is truncated (or, within the 5-byte prefix,
        // fails on the part it has); every single-byte corruption either
        // errors or decodes to a header that round-trips.
        for i in 0..good.len() {
            let r = FlowHeader::decode(&good[..i]);
            assert_eq!(r, Err(HeaderError::Truncated), "prefix of {i} bytes");
            for x in [0u8, 1, b'a', 0x7f, 0xff] {
                let mut b = good.clone();
                b[i] = x;
                if let Ok(d) = FlowHeader::decode(&b) {
                    let again = d.encode().expect("a decoded header encodes");
                    assert_eq!(FlowHeader::decode(&again), Ok(d), "byte {i} = {x}");
                }
            }
        }
        // A field that claims more bytes than there are.
        assert_eq!(
            FlowHeader::decode(b"TF\x01\x00\x03\x01\x09a"),
            Err(HeaderError::Truncated)
        );
        // Repeated and invalid fields.
        let mut rep = b"TF\x01\x00\x0a\x01\x03api\x01\x03api".to_vec();
        assert_eq!(FlowHeader::decode(&rep), Err(HeaderError::Repeated(1)));
        rep = b"TF\x01\x00\x05\x01\x03A/B".to_vec();
        assert!(matches!(
            FlowHeader::decode(&rep),
            Err(HeaderError::Invalid { tag: 1, .. })
        ));
        // Unknown tags are skipped.
        let mut ext = h();
        ext.port = None;
        ext.traceparent = None;
        let mut b = ext.encode().unwrap();
        b.extend_from_slice(&[9, 2, 0xaa, 0xbb]);
        let n = (b.len() - 5) as u16;
        b[3..5].copy_from_slice(&n.to_be_bytes());
        assert_eq!(FlowHeader::decode(&b).unwrap(), ext);
        // Encoding refuses exactly what decoding would refuse: a header
        // either fails to encode, or decodes back to itself.
        let cases: Vec<FlowHeader> = vec![
            FlowHeader {
                traceparent: Some("a".repeat(300)),
                ..h()
            },
            FlowHeader {
                service: "A/B".into(),
                ..h()
            },
            FlowHeader {
                service: "a".repeat(64),
                ..h()
            },
            FlowHeader {
                service: "a".repeat(63),
                ..h()
            },
            FlowHeader {
                dest_zone: String::new(),
                ..h()
            },
            FlowHeader {
                source_zone: "zone-\u{e9}".into(),
                ..h()
            },
            FlowHeader {
                traceparent: Some("zz".into()),
                ..h()
            },
            FlowHeader {
                traceparent: Some("00-ab-01".into()),
                ..h()
            },
            FlowHeader {
                port: None,
                traceparent: None,
                ..h()
            },
            FlowHeader {
                subset: vec![("b".into(), "1".into()), ("a".into(), "2".into())],
                ..h()
            },
            FlowHeader {
                subset: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
                ..h()
            },
            FlowHeader {
                subset: vec![("a=b".into(), "1".into())],
                ..h()
            },
            FlowHeader {
                subset: vec![("a".into(), "x y".into())],
                ..h()
            },
            FlowHeader {
                subset: vec![("app.kubernetes.io/version".into(), String::new())],
                ..h()
            },
            FlowHeader {
                subset: (0..32)
                    .map(|i| (format!("k{i:02}{}", "x".repeat(58)), "v".repeat(63)))
                    .collect(),
                ..h()
            },
        ];
        for c in cases {
            match c.encode() {
                Ok(b) => assert_eq!(FlowHeader::decode(&b), Ok(c)),
                // Not representable on the wire: nothing to decode.
                Err(HeaderError::Invalid {
                    why: "longer than 255 bytes",
                    ..
                }) => {}
                Err(_) => {
                    // What encode refused, decode refuses too.
                    let raw = encode_unchecked(&c);
                    assert!(FlowHeader::decode(&raw).is_err(), "{c:?}");
                }
            }
        }
        // Too long as a whole, though each field fits in 255 bytes.
        let big = raw_fields(&[
            (1, b"api"),
            (2, b"z2"),
            (3, b"z1"),
            (5, &[b'a'; 255]),
            (6, &[0; 255]),
            (7, &[0; 255]),
            (8, &[0; 255]),
        ]);
        assert!(matches!(
            FlowHeader::decode(&frame(&big)),
            Err(HeaderError::TooLong(_))
        ));
    }

    /// Properties over many seeded random cases: every valid header
    /// round-trips; arbitrary bytes and mutated headers never panic, and
    /// whatever decodes re-encodes to the same header.
    #[test]
    fn codec_properties_hold_for_random_inputs() {
        use model::testrand::Rng;
        const NAME: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-";
        const TRACE: &[u8] = b"0123456789abcdefABCDEF-";
        for seed in 0..3000u64 {
            let mut r = Rng::new(seed);
            let name = |r: &mut Rng| {
                let len = 1 + r.below(63);
                r.string(NAME, len)
            };
            let h = FlowHeader {
                service: name(&mut r),
                dest_zone: name(&mut r),
                source_zone: name(&mut r),
                port: r.bool().then(|| r.next_u64() as u16),
                traceparent: r.bool().then(|| {
                    let len = r.below(256);
                    r.string(TRACE, len)
                }),
                subset: {
                    let mut labels = std::collections::BTreeMap::new();
                    for _ in 0..r.below(4) {
                        let (kl, vl) = (1 + r.below(20), r.below(20));
                        labels.insert(r.string(NAME, kl), r.string(NAME, vl));
                    }
                    labels.into_iter().collect()
                },
            };
            let bytes = h.encode().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(FlowHeader::decode(&bytes), Ok(h.clone()), "seed {seed}");
            // Mutations of a valid header.
            let mut m = bytes.clone();
            for _ in 0..1 + r.below(4) {
                let i = r.below(m.len());
                m[i] = r.next_u64() as u8;
            }
            if let Ok(d) = FlowHeader::decode(&m) {
                let again = d.encode().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                assert_eq!(FlowHeader::decode(&again), Ok(d), "seed {seed}");
            }
            // Arbitrary bytes, sometimes behind a valid prefix.
            let len = r.below(1100);
            let mut junk = r.bytes(len);
            if r.bool() && junk.len() >= 5 {
                junk[..3].copy_from_slice(b"TF\x01");
            }
            if let Ok(d) = FlowHeader::decode(&junk) {
                let again = d.encode().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                assert_eq!(FlowHeader::decode(&again), Ok(d), "seed {seed}");
            }
        }
    }

    /// A header's bytes without the checks `encode` makes.
    fn encode_unchecked(h: &FlowHeader) -> Vec<u8> {
        let mut f: Vec<(u8, Vec<u8>)> = vec![
            (1, h.service.as_bytes().to_vec()),
            (2, h.dest_zone.as_bytes().to_vec()),
            (3, h.source_zone.as_bytes().to_vec()),
        ];
        if let Some(p) = h.port {
            f.push((4, p.to_be_bytes().to_vec()));
        }
        if let Some(t) = &h.traceparent {
            f.push((5, t.as_bytes().to_vec()));
        }
        for (k, v) in &h.subset {
            f.push((6, format!("{k}={v}").into_bytes()));
        }
        let refs: Vec<(u8, &[u8])> = f.iter().map(|(t, v)| (*t, v.as_slice())).collect();
        frame(&raw_fields(&refs))
    }

    fn raw_fields(f: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (t, v) in f {
            out.push(*t);
            out.push(v.len() as u8);
            out.extend_from_slice(v);
        }
        out
    }

    fn frame(fields: &[u8]) -> Vec<u8> {
        let mut out = b"TF\x01".to_vec();
        out.extend_from_slice(&(fields.len() as u16).to_be_bytes());
        out.extend_from_slice(fields);
        out
    }

    #[tokio::test]
    async fn read_stops_at_the_header() {
        let mut bytes = h().encode().unwrap();
        bytes.extend_from_slice(b"\x16\x03\x01inner-tls");
        let mut r = &bytes[..];
        assert_eq!(read(&mut r).await.unwrap(), h());
        assert_eq!(r, b"\x16\x03\x01inner-tls");
    }
}

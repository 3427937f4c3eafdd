//! Fuzz targets for every decoder of untrusted input.
//!
//! Each target takes raw bytes and drives them through the same code the
//! components run on what a peer or a file gives them, then checks what must
//! hold for anything accepted (a decoded header re-encodes to itself, an
//! accepted inventory speaks only for its zone, a config that was ACKed
//! applies). A panic, or a broken property, is a finding.
//!
//! The targets run under AFL++ (`cargo afl`, on the stable toolchain; see
//! `fuzz/README.md`), and the workspace's tests replay the checked-in corpus
//! (`fuzz/corpus/<target>/`) through them, so a finding once fixed stays
//! fixed.
//!
//! Stream targets read a sequence of messages, each framed as a big-endian
//! `u16` length and that many bytes of protobuf, so a run can walk a peer
//! through several steps (chunks, ACKs, a second hello).

pub mod material;
pub mod targets;

/// A fuzz target: bytes in, panic on a finding.
pub type Target = fn(&[u8]);

/// Every target, by the name its corpus folder and the AFL binary use.
pub const TARGETS: &[(&str, Target)] = &[
    ("flow_header", targets::flow_header),
    ("token", targets::token),
    ("resources", targets::resources),
    ("bootstrap", targets::bootstrap),
    ("proxy_state", targets::proxy_state),
    ("zone_to_global", targets::zone_to_global),
    ("global_to_zone", targets::global_to_zone),
    ("proxy_to_zone", targets::proxy_to_zone),
    ("zone_to_proxy", targets::zone_to_proxy),
];

/// The target named `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Split a stream target's input into its messages: `u16` big-endian length,
/// then that many bytes. A truncated last frame is passed as it is.
pub fn frames(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let n = u16::from_be_bytes([data[0], data[1]]) as usize;
        let rest = &data[2..];
        let take = n.min(rest.len());
        out.push(&rest[..take]);
        data = &rest[take..];
    }
    out
}

/// The inverse of [`frames`], for writing seeds.
pub fn frame(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        let n = u16::try_from(m.len()).expect("a seed message fits a frame");
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_tolerate_truncation() {
        let msgs = vec![b"abc".to_vec(), Vec::new(), vec![7u8; 300]];
        let data = frame(&msgs);
        let got: Vec<Vec<u8>> = frames(&data).into_iter().map(<[u8]>::to_vec).collect();
        assert_eq!(got, msgs);
        // A frame that claims more than is left yields what is left.
        assert_eq!(frames(&[0, 9, 1, 2]), vec![&[1u8, 2][..]]);
        // A lone length byte is no frame.
        assert!(frames(&[5]).is_empty());
    }
}

//! Tern end-to-end support: the WAN link emulators (a relay, and a
//! packet-level one between network namespaces), also used by benchmarks.
pub mod linkemu;
pub mod netemu;

//! Tern end-to-end support: the WAN link emulator (also used by benchmarks).
pub mod linkemu;

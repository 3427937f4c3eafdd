//! Tern's data model, apart from the TLS and server plumbing (`common`),
//! so that the CLI builds without the network stack:
//!
//! * `resource` — kubectl-style documents, the kinds and their validation;
//! * `policy` — the policy kinds, their targeting and precedence;
//! * `ident` — SPIFFE identities;
//! * `token` — zone, dataplane and gateway tokens;
//! * `text` — text from peers, cut to a bound before it is kept or logged;
//! * `fsutil` — private files (keys and credentials at rest).
#![forbid(unsafe_code)]

pub mod drill;
pub mod fsutil;
pub mod ident;
pub mod policy;
pub mod resource;
pub mod schedule;
#[doc(hidden)]
pub mod testrand;
pub mod text;
pub mod token;

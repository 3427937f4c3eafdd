//! Tern's wire contracts. The code under `src/gen/` is generated from
//! `proto/tern.proto` and checked in, so building Tern needs no `protoc`.
//! `tests/generated.rs` fails when it is stale; regenerate with
//! `TERN_REGEN=1 cargo test -p proto`.
#![forbid(unsafe_code)]

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    include!("gen/tern.v1.rs");
}

//! Code that Tern's components share.
#![forbid(unsafe_code)]

pub mod flow;
pub mod fsutil;
pub mod grpc;
pub mod ident;
pub mod pki;
pub mod resource;
pub mod splice;
pub mod sync;
pub mod telemetry;
#[cfg(test)]
pub(crate) mod testrand;
pub mod tls;
pub mod token;
pub mod trust;

pub use rustls;
pub use tokio_rustls;

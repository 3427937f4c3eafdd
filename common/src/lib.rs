//! Code that Tern's components share.
#![forbid(unsafe_code)]

pub mod bind;
pub mod flow;
pub mod grpc;
pub mod pki;
pub mod policy;
pub mod resilience;
pub mod splice;
pub mod sync;
pub mod telemetry;
pub mod tls;
pub mod traffic;
pub mod trust;

pub use rustls;
pub use tokio_rustls;

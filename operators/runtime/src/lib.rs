//! What every binary of the platform shares and that needs no Docker: the
//! operators and the coordinator alike load their config ([`app`],
//! [`config`]), log and export traces ([`trace`]), serve `/metrics`
//! ([`metrics`]) and gRPC reflection ([`grpc`]) through this crate. The
//! coordinator depends on it, not on the operators' library, so it links
//! no Docker client.

pub mod app;
pub mod config;
pub mod grpc;
pub mod metrics;
pub mod trace;

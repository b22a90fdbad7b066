//! The observability tier: Prometheus scrape targets from every host.
//!
//! The observability operator on the host that runs Prometheus keeps
//! Prometheus's file-based service discovery up to date: it lists every
//! scrape target on every host from the bus ([`targets`]): services that
//! declare a metrics port by label (`prometheus.io/scrape=true`,
//! `prometheus.io/port=N`, optional `prometheus.io/path`), every operator
//! (the `metrics` label of its heartbeats) and the coordinators named in
//! [`COORDINATORS_ENV`], and copies the result, `targets.json` in file_sd
//! format, into the running Prometheus container through the Docker API
//! ([`run`]). Prometheus notices the file change by itself (file_sd watches
//! the file and rereads it every `refresh_interval`): no reload is needed.

mod run;
pub mod targets;

use operator_core::{Extension, TierContext};

pub use run::{COORDINATORS_ENV, PROMETHEUS_SERVICE_ENV, TARGETS_DIR, TARGETS_FILE};

/// This tier's extensions: the scrape-target writer.
pub const EXTENSIONS: &[Extension] = &[scrape_targets];

/// The scrape-target writer (see the module documentation).
fn scrape_targets(ctx: TierContext) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(run::run(ctx))
}

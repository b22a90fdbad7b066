//! The observability tier: scrape targets for Prometheus from every host.

use operator_core::Extension;

/// This tier's extensions.
pub const EXTENSIONS: &[Extension] = &[];

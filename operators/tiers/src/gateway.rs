//! The gateway tier: routes from the services' Traefik labels, rendered for Traefik and Nginx.

use operator_core::Extension;

/// This tier's extensions.
pub const EXTENSIONS: &[Extension] = &[];

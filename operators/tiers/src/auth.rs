//! The auth tier: Keycloak and Vault brought to their declared state.

use operator_core::Extension;

/// This tier's extensions.
pub const EXTENSIONS: &[Extension] = &[];

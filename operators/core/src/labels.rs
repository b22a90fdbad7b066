//! Labels the operators put on what they own. A container, network or
//! volume without [`MANAGED_BY`] is never touched.

/// Marks a container, network or volume as created by an infra operator.
pub const MANAGED_BY: &str = "io.infra.managed-by";
/// Value of [`MANAGED_BY`].
pub const MANAGED_BY_VALUE: &str = "infra-operator";
/// Tier that owns a container.
pub const TIER: &str = "io.infra.tier";
/// Service a container belongs to.
pub const SERVICE: &str = "io.infra.service";
/// Replica index of a container, from 1.
pub const REPLICA: &str = "io.infra.replica";
/// Hash of the spec a container was created from; a different hash means
/// the container must be recreated.
pub const SPEC_HASH: &str = "io.infra.spec-hash";
/// Host id of the operator that created the container.
pub const HOST: &str = "io.infra.host";
/// Compose project the container belongs to.
pub const PROJECT: &str = "io.infra.project";

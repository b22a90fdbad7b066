//! The keys of the facts an operator publishes in its heartbeat labels
//! (beside the labels its configuration sets). Every reader and writer
//! takes them from here.

/// The host's private address: where ports published for other hosts
/// listen (`@addr`) and where other hosts reach it.
pub const ADDR: &str = "addr";
/// CPUs the host has (detected).
pub const CPUS: &str = "cpus";
/// Memory the host has, in bytes (detected).
pub const MEMORY_BYTES: &str = "memory_bytes";
/// GPUs the host has (the ai operator, from NVML; absent means none).
pub const GPUS: &str = "gpus";
/// Where this operator serves its Prometheus metrics (one per operator,
/// not per host).
pub const METRICS: &str = "metrics";
/// Prefix of a cluster member's status, `member.<service>` =
/// `<kind>: <role> <state> ...` (Patroni, Valkey), published by the
/// operator on the member's host.
pub const MEMBER_PREFIX: &str = "member.";

/// The key of `service`'s member status.
pub fn member(service: &str) -> String {
    format!("{MEMBER_PREFIX}{service}")
}

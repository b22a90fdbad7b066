//! The update order of a cluster whose own health check says all a roll
//! needs (`infra.update-order: one-at-a-time`): its members restart one at
//! a time, in the order they are listed, each only after the one before is
//! healthy on its new spec again. MariaDB Galera is the case: a node's
//! health check passes only once it is a synced member (`wsrep_ready`), so
//! one node at a time keeps two of three serving and the quorum whole,
//! where a deploy would otherwise restart galera-2 and galera-3 together
//! (they depend on galera-1 alike).
//!
//! It asks the members nothing: the health gate is the rollout's, and the
//! one-at-a-time turn is the member roll's lock.

use std::time::Duration;

use super::{HookError, HookFuture, Member, UpdateOrder};

/// The label value that chooses it.
pub const KIND: &str = "one-at-a-time";

/// See the module docs.
pub struct OneAtATime;

impl UpdateOrder for OneAtATime {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn default_port(&self) -> u16 {
        0
    }

    fn order<'a>(&'a self, members: &'a [Member]) -> HookFuture<'a, Vec<usize>> {
        Box::pin(async move { (0..members.len()).collect() })
    }

    fn before_restart<'a>(
        &'a self,
        _member: &'a Member,
        _members: &'a [Member],
    ) -> HookFuture<'a, Result<(), HookError>> {
        Box::pin(async { Ok(()) })
    }

    fn ready_for_next<'a>(
        &'a self,
        _member: &'a Member,
        _members: &'a [Member],
        _deadline: Duration,
    ) -> HookFuture<'a, Result<(), HookError>> {
        Box::pin(async { Ok(()) })
    }
}

//! What each tier adds to the shared operator (`operator-core`): its
//! extensions, tasks that run beside the reconcile loop (see
//! [`operator_core::Tier::extensions`]). A tier binary is one call:
//! `operator_core::main(tiers::GATEWAY.with(gateway::EXTENSIONS))`.

pub mod ai;
pub mod auth;
pub mod data;
pub mod gateway;
pub mod observability;
pub mod reach;

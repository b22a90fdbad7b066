//! What each tier adds to the shared operator (`operator-core`): its
//! extensions, tasks that run beside the reconcile loop (see
//! [`operator_core::Tier::extensions`]). A tier binary is one call:
//! `operator_core::main(tiers::GATEWAY.with(gateway::EXTENSIONS))`.

pub mod ai;
pub mod auth;
pub mod gateway;
pub mod member_facts;
pub mod observability;
pub mod patroni;
pub mod reach;
pub mod valkey;
pub mod valkey_status;

//! What each tier adds to the shared operator (`operator-core`): its
//! extensions, tasks that run beside the reconcile loop (see
//! [`operator_core::Tier::extensions`]). A tier binary is one call:
//! `operator_core::main(tiers::GATEWAY.with(gateway::EXTENSIONS))`.

pub mod ai;
pub mod auth;
pub mod data;
pub mod gateway;
pub mod hooks;
pub mod host;
pub mod join;
pub mod observability;
pub mod reach;

/// The tier called `name`, with its extensions (what `<name>-operator`
/// runs), or `None` for a name that is not a tier.
pub fn tier(name: &str) -> Option<operator_core::Tier> {
    use operator_core::tiers as t;
    Some(match name {
        "gateway" => t::GATEWAY.with(gateway::EXTENSIONS),
        "auth" => t::AUTH.with(auth::EXTENSIONS),
        "data" => t::DATA.with(data::EXTENSIONS),
        "messaging" => t::MESSAGING.with(hooks::MESSAGING_EXTENSIONS),
        "observability" => t::OBSERVABILITY.with(observability::EXTENSIONS),
        "workflow" => t::WORKFLOW,
        "ai" => t::AI.with(ai::EXTENSIONS),
        "tooling" => t::TOOLING,
        "communication" => t::COMMUNICATION,
        _ => return None,
    })
}

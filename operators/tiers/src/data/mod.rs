//! What the data operator adds, by product: it forms the Valkey clusters
//! declared by their members' labels ([`valkey`]) and reports each Valkey
//! member's role and link ([`valkey::status`]) and each Patroni member's
//! role, state, timeline and lag ([`patroni`]) as heartbeat facts. What the
//! platform knows of each product beyond this tier's tasks (protocols,
//! update orders) is `infra_products`'s folder of the same name.

use operator_core::Extension;

pub mod member_facts;
pub mod patroni;
pub mod valkey;

/// Every extension of the data tier.
pub const EXTENSIONS: &[Extension] = &[
    valkey::FORM_CLUSTERS,
    valkey::status::REPORT,
    patroni::REPORT,
    crate::hooks::answer_hooks,
];

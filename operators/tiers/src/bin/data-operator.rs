//! The data tier operator: runs the data tier's containers on this host,
//! creates the Valkey clusters declared by their members' labels
//! (`infra_operators::valkey`) and reports each Patroni member's role,
//! state, timeline and lag (`infra_operators::patroni`) and each Valkey
//! member's role and link (`infra_operators::valkey_status`).

/// Every extension of the data tier.
const EXTENSIONS: &[operator_core::Extension] = &[
    infra_operators::valkey::EXTENSIONS[0],
    infra_operators::patroni::EXTENSIONS[0],
    infra_operators::valkey_status::EXTENSIONS[0],
];

fn main() -> std::process::ExitCode {
    operator_core::main(operator_core::tiers::DATA.with(EXTENSIONS))
}

//! The data tier operator: runs the data tier's containers on this host,
//! and creates the Valkey clusters declared by their members' labels
//! (`infra_operators::valkey`).

fn main() -> std::process::ExitCode {
    operator_core::main(operator_core::tiers::DATA.with(infra_operators::valkey::EXTENSIONS))
}

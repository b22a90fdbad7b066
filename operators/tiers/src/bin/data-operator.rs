//! The data tier operator: runs the data tier's containers on this host,
//! forms the Valkey clusters and reports the Valkey and Patroni members'
//! roles (`infra_operators::data`).

fn main() -> std::process::ExitCode {
    operator_core::main(operator_core::tiers::DATA.with(infra_operators::data::EXTENSIONS))
}

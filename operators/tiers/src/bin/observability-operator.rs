//! The observability tier operator: runs the observability tier's containers on this host.

fn main() -> std::process::ExitCode {
    operator_core::main(operator_core::tiers::OBSERVABILITY.with(infra_operators::observability::EXTENSIONS))
}

//! The ai tier operator: runs the ai tier's containers on this host.

fn main() -> std::process::ExitCode {
    operator_core::main(operator_core::tiers::AI.with(infra_operators::ai::EXTENSIONS))
}

//! The gateway tier operator: runs the gateway tier's containers on this host.

fn main() -> std::process::ExitCode {
    operator_core::main(operator_core::tiers::GATEWAY.with(infra_operators::gateway::EXTENSIONS))
}

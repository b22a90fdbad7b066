//! The messaging tier operator: runs the messaging tier's containers on this host.

fn main() -> std::process::ExitCode {
    operator_core::main(operator_core::tiers::MESSAGING.with(infra_operators::hooks::MESSAGING_EXTENSIONS))
}

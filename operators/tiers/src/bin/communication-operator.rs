//! The communication tier operator: runs the communication tier's containers on this host.

fn main() -> std::process::ExitCode {
    operator_core::main(operator_core::tiers::COMMUNICATION)
}

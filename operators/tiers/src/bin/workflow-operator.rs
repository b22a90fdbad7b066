//! The workflow tier operator: runs the workflow tier's containers on this host.

fn main() -> std::process::ExitCode {
    operator_core::main(operator_core::tiers::WORKFLOW)
}

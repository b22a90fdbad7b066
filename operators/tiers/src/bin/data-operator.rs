//! The data tier operator: runs the data tier's containers on this host.

fn main() -> std::process::ExitCode {
    operator_core::main(operator_core::tiers::DATA)
}

//! The tooling tier operator: runs the tooling tier's containers on this host.

fn main() -> std::process::ExitCode {
    operator_core::main(operator_core::tiers::TOOLING)
}

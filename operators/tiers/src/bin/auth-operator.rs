//! The auth tier operator: runs the auth tier's containers on this host.

fn main() -> std::process::ExitCode {
    operator_core::main(operator_core::tiers::AUTH.with(infra_operators::auth::EXTENSIONS))
}

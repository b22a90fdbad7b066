//! Every tier operator and the host supervisor in one binary, for the
//! install image (`e2e/images/recipes/operators`).
//!
//! - Called as `<tier>-operator` (argv[0], as the supervisor starts it, or
//!   through a link of that name), it is that tier's operator, exactly as
//!   the separate `<tier>-operator` binary.
//! - Called by any other name, it is the host supervisor
//!   ([`infra_operators::host`]): one operator process per tier the host
//!   carries, restarted when it exits, all drained on SIGTERM.

fn main() -> std::process::ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let called = std::path::Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    match called.strip_suffix("-operator").and_then(infra_operators::tier) {
        Some(tier) => operator_core::main(tier),
        None => infra_operators::host::main(),
    }
}

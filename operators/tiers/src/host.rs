//! The host supervisor: what the install image runs. It starts one
//! operator process per tier the host carries (this same binary, called
//! `<tier>-operator`), so each tier is still its own process with its own
//! failures, and keeps them running:
//!
//! - an operator that exits is started again after a pause that doubles
//!   from 1 s to 30 s while it keeps failing (and starts again at 1 s once
//!   it ran for a minute);
//! - an operator that refuses its configuration (exit 64) is not restarted
//!   in a loop: the supervisor says so and keeps the other tiers running;
//! - SIGTERM or SIGINT (`docker stop`) is passed to every operator, which
//!   drains (the containers it manages keep running), and the supervisor
//!   exits once they all have, or after `--grace-secs` kills what is left.
//!
//! The operators inherit the supervisor's environment (`INFRA_*`, see
//! `operators/operator.example.toml`) and its standard streams, so
//! `docker logs` shows every tier's log lines, each naming its tier.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use operator_core::app;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// First pause before an operator that exited is started again.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause between restarts of an operator that keeps failing.
const LONGEST_PAUSE: Duration = Duration::from_secs(30);
/// An operator that ran this long before it exited starts again at once
/// (after [`FIRST_PAUSE`]): it was not failing at start.
const RAN_WELL: Duration = Duration::from_secs(60);

/// `infra-operator`: the host supervisor of the install image.
#[derive(Parser, Debug)]
#[command(
    name = "infra-operator",
    version,
    about = "Runs the operators of the tiers this host carries, one process each, restarting them when they exit."
)]
pub struct Cli {
    /// Tiers this host carries, comma-separated (gateway, auth, data,
    /// messaging, observability, workflow, ai, tooling, communication).
    #[arg(long, env = "INFRA_TIERS", value_delimiter = ',', required = true)]
    pub tiers: Vec<String>,
    /// Seconds the operators get to drain on SIGTERM before they are
    /// killed (give `docker run --stop-timeout` a little more).
    #[arg(long, env = "INFRA_GRACE_SECS", default_value_t = 20)]
    pub grace_secs: u64,
    /// Arguments passed to every operator (after `--`), e.g.
    /// `-- --config /etc/infra/operator.toml`.
    #[arg(last = true)]
    pub operator_args: Vec<String>,
}

/// The supervisor's `main`: exit 64 on a bad tier list. `infra-operator
/// join ...` joins the host first ([`crate::join`]).
pub fn main() -> ExitCode {
    match std::env::args_os().nth(1) {
        Some(a) if a == "join" => return crate::join::main(),
        Some(a) if a == "upgrade-self" => return operator_core::upgrade::helper_main(),
        _ => {}
    }
    let cli = Cli::parse();
    let tiers = match tiers(&cli.tiers) {
        Ok(t) => t,
        Err(e) => return app::config_exit("infra-operator", e),
    };
    run(&tiers, Duration::from_secs(cli.grace_secs), &cli.operator_args, &[])
}

/// Runs the operators of `tiers` until SIGTERM or SIGINT, each with
/// `args` and the supervisor's environment plus `env`.
pub fn run(tiers: &[String], grace: Duration, args: &[String], env: &[(String, String)]) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("infra-operator: cannot find its own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let log = operator_core::config::LogConfig::default();
    let instance = env
        .iter()
        .find(|(k, _)| k == "INFRA_HOST")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("INFRA_HOST").ok())
        .unwrap_or_default();
    let (rt, _telemetry) = match app::start("infra-operator", &log, "infra-host", &instance) {
        Ok(started) => started,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        app::cancel_on_signals(shutdown.clone());
        tracing::info!(tiers = %tiers.join(","), version = operator_core::VERSION, "starting the host's operators");
        supervise(&exe, tiers, args, env, grace, shutdown).await;
        tracing::info!("every operator stopped");
    });
    ExitCode::SUCCESS
}

/// The tier list, checked: known tiers, each once, at least one.
pub fn tiers(given: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for t in given.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
        if crate::tier(t).is_none() {
            return Err(format!(
                "tiers: {t:?} is not a tier (known: {})",
                infra_proto::tiers::NAMES.join(", ")
            ));
        }
        if !out.iter().any(|o| o == t) {
            out.push(t.to_owned());
        }
    }
    if out.is_empty() {
        return Err("tiers: name at least one tier this host carries".into());
    }
    Ok(out)
}

/// Runs one operator per tier until `shutdown`, then drains them all.
pub async fn supervise(
    exe: &std::path::Path,
    tiers: &[String],
    args: &[String],
    env: &[(String, String)],
    grace: Duration,
    shutdown: CancellationToken,
) {
    let mut running = tokio::task::JoinSet::new();
    for tier in tiers {
        let keep = Keep {
            exe: exe.to_owned(),
            tier: tier.clone(),
            args: args.to_vec(),
            env: env.to_vec(),
            grace,
        };
        running.spawn(keep.run(shutdown.clone()));
    }
    while running.join_next().await.is_some() {}
}

/// One tier's operator, kept running.
struct Keep {
    exe: PathBuf,
    tier: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    grace: Duration,
}

impl Keep {
    async fn run(self, shutdown: CancellationToken) {
        let tier = self.tier.as_str();
        let mut pause = FIRST_PAUSE;
        loop {
            let started = Instant::now();
            let mut child = match self.spawn() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(tier, error = %e, pause_secs = pause.as_secs(), "cannot start the operator");
                    if !wait_or_stop(pause, &shutdown).await {
                        return;
                    }
                    pause = (pause * 2).min(LONGEST_PAUSE);
                    continue;
                }
            };
            tracing::info!(tier, pid = child.id(), "operator started");
            let status = tokio::select! {
                s = child.wait() => s,
                () = shutdown.cancelled() => {
                    self.drain(&mut child).await;
                    return;
                }
            };
            let status = match status {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(tier, error = %e, "cannot wait for the operator");
                    return;
                }
            };
            if status.code() == Some(app::EXIT_CONFIG) {
                tracing::error!(
                    tier,
                    "the operator refused its configuration (exit 64; its log says which key): not restarted \
                     until the configuration is fixed and the supervisor restarted"
                );
                return;
            }
            if started.elapsed() >= RAN_WELL {
                pause = FIRST_PAUSE;
            }
            tracing::warn!(tier, %status, pause_secs = pause.as_secs(), "operator exited; starting it again");
            if !wait_or_stop(pause, &shutdown).await {
                return;
            }
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
    }

    fn spawn(&self) -> std::io::Result<Child> {
        // The supervisor's own settings are not the operators' (whose
        // configuration refuses keys it does not know).
        Command::new(&self.exe)
            .arg0(format!("{}-operator", self.tier))
            .args(&self.args)
            .env_remove("INFRA_TIERS")
            .env_remove("INFRA_GRACE_SECS")
            .env_remove("INFRA_JOIN_TOKEN")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true)
            .spawn()
    }

    /// SIGTERM, then up to `grace` for the operator to drain, then SIGKILL.
    async fn drain(&self, child: &mut Child) {
        let tier = self.tier.as_str();
        let pid = child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(i32::try_from(p).ok()?));
        if let Some(pid) = pid
            && let Err(e) = rustix::process::kill_process(pid, rustix::process::Signal::TERM)
        {
            tracing::warn!(tier, error = %e, "cannot send SIGTERM to the operator");
        }
        match tokio::time::timeout(self.grace, child.wait()).await {
            Ok(Ok(status)) => tracing::info!(tier, %status, "operator drained"),
            Ok(Err(e)) => tracing::error!(tier, error = %e, "cannot wait for the operator"),
            Err(_) => {
                tracing::warn!(
                    tier,
                    grace_secs = self.grace.as_secs(),
                    "operator did not drain in time; killed"
                );
                let _ = child.kill().await;
            }
        }
    }
}

/// Sleeps `pause` unless `shutdown` comes first; whether to go on.
async fn wait_or_stop(pause: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(pause) => true,
        () = shutdown.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tier_list_is_checked_and_deduplicated() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            tiers(&s(&["data", "gateway", "data"])).unwrap(),
            s(&["data", "gateway"])
        );
        let e = tiers(&s(&["data", "dta"])).unwrap_err();
        assert!(
            e.contains("\"dta\" is not a tier") && e.contains("observability"),
            "{e}"
        );
        assert!(tiers(&s(&[" ", ""])).unwrap_err().contains("at least one"));
    }

    /// With `sh -c SCRIPT` standing in for the operator binary (its `$0`
    /// is the argv[0] the supervisor gives, `<tier>-operator`): an operator
    /// that exits is started again, one that exits 64 is not, and shutdown
    /// stops what runs (SIGTERM reaches it).
    #[tokio::test]
    async fn exited_operators_restart_a_refused_configuration_does_not_and_shutdown_drains() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("starts");
        let script = format!(
            "echo \"$0\" >> {log}\ncase \"$0\" in\n  data-operator) exit 3 ;;\n  auth-operator) exit 64 ;;\n  \
             *) trap 'echo term >> {log}; exit 0' TERM; while :; do sleep 0.05; done ;;\nesac\n",
            log = log.display()
        );
        let shutdown = CancellationToken::new();
        let tiers = ["data", "auth", "gateway"].map(str::to_owned);
        let args = ["-c".to_owned(), script];
        let run = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                supervise(
                    std::path::Path::new("/bin/sh"),
                    &tiers,
                    &args,
                    &[],
                    Duration::from_secs(5),
                    shutdown,
                )
                .await
            }
        });
        let starts = || std::fs::read_to_string(&log).unwrap_or_default();
        infra_test_support::eventually("data-operator started twice", Duration::from_secs(10), || {
            let n = starts().lines().filter(|l| *l == "data-operator").count();
            async move { n >= 2 }
        })
        .await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap()
            .unwrap();
        let seen = starts();
        assert_eq!(seen.lines().filter(|l| *l == "auth-operator").count(), 1, "{seen}");
        assert_eq!(seen.lines().filter(|l| *l == "gateway-operator").count(), 1, "{seen}");
        assert!(seen.lines().any(|l| l == "term"), "gateway got SIGTERM: {seen}");
    }
}

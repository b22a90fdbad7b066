//! The coordinator binary: reads config, connects, serves gRPC.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use infra_coordinator::CoordinatorConfig;
use infra_runtime::app;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Flags override the file and the environment.
#[derive(Debug, Parser, Serialize)]
#[command(
    version,
    about = "Infra coordinator: sequences bring-up across tiers and hosts. Drive it with grpcurl."
)]
struct Cli {
    /// TOML config file (also INFRA_CONFIG).
    #[arg(long, env = "INFRA_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_listen: Option<String>,
    /// Compose project name (prefix of container, network and volume names).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    project: Option<String>,
    /// The catalog root.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    compose_dir: Option<PathBuf>,
    /// Override files (repeatable).
    #[arg(long = "override")]
    #[serde(skip_serializing_if = "Option::is_none")]
    overrides: Option<Vec<PathBuf>>,
    /// NATS URL(s).
    #[arg(long = "nats-url")]
    #[serde(skip)]
    nats_url: Option<String>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    #[serde(skip)]
    print_config: bool,
    /// Make the platform's NATS keys in this directory and exit:
    /// `authority.seeds` (for `join.authority_file`; a secret),
    /// `nats-auth.conf` (include it in every NATS server's configuration)
    /// and `coordinator.creds` (for `nats.creds_file`; a secret). Refuses
    /// to overwrite.
    #[arg(long, value_name = "DIR")]
    #[serde(skip)]
    init_auth: Option<PathBuf>,
}

/// `--init-auth DIR`: see [`Cli::init_auth`].
fn init_auth(dir: &std::path::Path) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let a = infra_bus::auth::Authority::generate();
    let files = [
        ("authority.seeds", a.seeds(), 0o600),
        ("nats-auth.conf", a.server_config("./jwt"), 0o644),
        ("coordinator.creds", a.user("coordinator", None).text, 0o600),
    ];
    for (name, _, _) in &files {
        if dir.join(name).exists() {
            return Err(format!(
                "{} exists; not overwriting the platform's keys",
                dir.join(name).display()
            ));
        }
    }
    for (name, text, mode) in files {
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        f.write_all(text.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(dir) = &cli.init_auth {
        return match init_auth(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => app::config_exit("coordinator", e),
        };
    }
    let mut cfg: CoordinatorConfig = match app::load_config(cli.config.as_deref(), &cli) {
        Ok(c) => c,
        Err(e) => return app::config_exit("coordinator", e),
    };
    if let Some(url) = &cli.nats_url {
        cfg.nats.url.clone_from(url);
    }
    let listen = match cfg.validate() {
        Ok(a) => a,
        Err(e) => return app::config_exit("coordinator", e),
    };
    let bus_cfg = match cfg.nats.bus_config(
        format!("coordinator@{}", cfg.id),
        Duration::from_secs(cfg.heartbeat_ttl_secs),
    ) {
        Ok(b) => b,
        Err(e) => return app::config_exit("coordinator", e),
    };
    let join = match cfg.join.settings(&cfg.nats) {
        Ok(j) => j.map(std::sync::Arc::new),
        Err(e) => return app::config_exit("coordinator", e),
    };
    let (tls, auth) = match cfg.security() {
        Ok(s) => s,
        Err(e) => return app::config_exit("coordinator", e),
    };
    let mut shown = cfg.clone();
    if shown.nats.token.is_some() {
        shown.nats.token = Some("<redacted>".into());
    }
    let shown = serde_json::to_string(&shown).unwrap_or_default();
    if cli.print_config {
        println!("{shown}");
        return ExitCode::SUCCESS;
    }
    let (rt, telemetry) = match app::start("coordinator", &cfg.log, "coordinator", &cfg.id) {
        Ok(started) => started,
        Err(code) => return code,
    };
    tracing::info!(config = %shown, grpc = %listen, security = auth.describe(), traces = telemetry.exporting(), "starting coordinator");
    let grace = Duration::from_secs(cfg.shutdown_grace_secs);
    let metrics_addr = cfg.metrics_addr().ok().flatten();
    let result: Result<(), String> = rt.block_on(async move {
        let shutdown = CancellationToken::new();
        app::cancel_on_signals(shutdown.clone());
        let bus = infra_bus::Bus::connect(&bus_cfg)
            .await
            .map_err(|e| e.to_string())?
            .with_trace_context(infra_runtime::trace::current);
        let listener = infra_runtime::grpc::bind(listen).await.map_err(|e| e.to_string())?;
        // A taken metrics port is a warning, not a failed start: several
        // coordinators may share a machine (tests, benches), and metrics
        // must never keep a coordinator from leading.
        let metrics = match metrics_addr {
            Some(a) => match infra_runtime::metrics::bind("metrics_listen", a).await {
                Ok(l) => {
                    tracing::info!(listen = %a, "metrics: serving /metrics");
                    Some(l)
                }
                Err(e) => {
                    tracing::error!(error = %e, "running without metrics");
                    None
                }
            },
            None => None,
        };
        let serving = infra_coordinator::Serving {
            lease: cfg.lease(),
            grace,
            tls,
            auth,
            metrics,
        };
        let mut settings = cfg.settings();
        settings.join = join;
        infra_coordinator::run(settings, bus, listener, shutdown, serving)
            .await
            .map_err(|e| e.to_string())
    });
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coordinator: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `infractl`: a small client for the coordinator that prints tables.
//! Everything it does is also one `grpcurl` call (see docs/api.md); this is
//! for the terminal and for the `just` recipes.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use infra_proto::coordinator::v1 as api;
use infra_proto::coordinator::v1::coordinator_service_client::CoordinatorServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

mod backup;
mod catalog;
mod events;
mod logs;
mod print;
use print::{print_hosts, print_plan, print_status};

#[derive(Parser)]
#[command(version, about = "Client for the infra coordinator.")]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    /// How long a write waits for a coordinator to lead (through a
    /// takeover: a leader that died holds its lease until it expires),
    /// seconds. 0: fail at once.
    #[arg(long, env = "INFRA_LEADER_WAIT", default_value_t = 60)]
    leader_wait: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

/// How to reach the coordinator.
#[derive(clap::Args)]
struct Conn {
    /// Coordinator address.
    #[arg(long, env = "INFRA_COORDINATOR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// PEM CA that signed the coordinator's certificate: talk TLS
    /// (`http://` in the address becomes `https://`).
    #[arg(long, env = "INFRA_CA")]
    ca: Option<std::path::PathBuf>,
    /// PEM client certificate, for a coordinator that verifies clients.
    #[arg(long, requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// PEM key of `--cert`.
    #[arg(long, requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// File holding the bearer token that writes need (the coordinator's
    /// `api_token_file`). Sent as `authorization: Bearer ...`; never printed.
    #[arg(long, env = "INFRA_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
}

/// Whether a refused write may pass once a leader is in place: nobody
/// leads yet, a takeover is pending, or the coordinator is not up yet.
fn leader_pending(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable
}

/// Runs a write, again while it is refused for want of a leader, for at
/// most `wait`; says once what it waits for.
async fn while_no_leader<T, F, Fut>(wait: Duration, mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + wait;
    let mut said = false;
    loop {
        match call().await {
            Err(s) if leader_pending(&s) && Instant::now() < deadline => {
                if !said {
                    eprintln!(
                        "infractl: {}; waiting up to {}s for a leader",
                        s.message(),
                        deadline.saturating_duration_since(Instant::now()).as_secs()
                    );
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

#[derive(Clone, Debug, clap::Args)]
struct Sel {
    /// A named selection from compose/selections.yml.
    #[arg(long)]
    named: Option<String>,
    /// Tiers.
    #[arg(long = "tier")]
    tiers: Vec<String>,
    /// Profiles.
    #[arg(long = "profile")]
    profiles: Vec<String>,
    /// Services.
    services: Vec<String>,
}

impl Sel {
    fn to_api(&self) -> api::Selection {
        api::Selection {
            named: self.named.clone().unwrap_or_default(),
            tiers: self.tiers.clone(),
            profiles: self.profiles.clone(),
            services: self.services.clone(),
            all: false,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Check the Compose catalog locally, without a coordinator: every file
    /// parses and interpolates, every reference resolves, no cycle, every
    /// `service_healthy` target has a health check, every service (in every
    /// profile) converts to a spec. Exits non-zero on the first error.
    Validate {
        /// The catalog root.
        #[arg(long, default_value = "compose")]
        compose_dir: std::path::PathBuf,
        /// Override files.
        #[arg(long = "override")]
        overrides: Vec<std::path::PathBuf>,
    },
    /// Lint the Compose catalog locally, without a coordinator, for the
    /// practices the seeds ask for. Prints one line per finding
    /// (`file:line: severity[rule] service: message (why)`) and a summary;
    /// exits 1 if any finding is an error.
    Lint {
        /// The catalog root.
        #[arg(long, default_value = "compose")]
        compose_dir: std::path::PathBuf,
        /// Override files.
        #[arg(long = "override")]
        overrides: Vec<std::path::PathBuf>,
        /// Leave out findings below this: error, warning or info.
        #[arg(long, default_value = "info")]
        min_severity: infra_compose::Severity,
    },
    /// Status of every deployed service.
    Status,
    /// Hosts and their operators; `hosts upgrade IMAGE` rolls a new
    /// operators image over them, one host at a time.
    Hosts {
        #[command(subcommand)]
        cmd: Option<HostsCmd>,
    },
    /// What a deploy would do.
    Plan(Sel),
    /// Deploy, printing progress; fails if any service failed.
    Deploy {
        #[command(flatten)]
        sel: Sel,
        /// Per-service deadline, seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u32,
        /// Also remove the deployed services the catalog no longer defines
        /// (volumes kept).
        #[arg(long)]
        prune: bool,
    },
    /// Set a deployed service's replica count, printing progress; fails if
    /// the new replicas do not become ready.
    Scale {
        /// The service.
        service: String,
        /// Replicas wanted in all.
        replicas: u32,
        /// Deadline for the new replicas, seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u32,
    },
    /// Roll a deployed service to the catalog's spec (optionally with a new
    /// image or environment), batch by batch as its update_config says.
    Rollout {
        /// The service.
        service: String,
        /// New image.
        #[arg(long)]
        image: Option<String>,
        /// KEY=VALUE laid over the environment (repeatable).
        #[arg(long = "env")]
        env: Vec<String>,
        /// Seconds one replica may take to become healthy.
        #[arg(long, default_value_t = 300)]
        timeout: u32,
    },
    /// Undo a rollout in progress or paused, or go back one revision.
    Rollback {
        /// The service.
        service: String,
        /// Seconds one replica may take to become healthy.
        #[arg(long, default_value_t = 300)]
        timeout: u32,
    },
    /// Drain a host (its stateless replicas start elsewhere first), or
    /// with --undo make it eligible again.
    Drain {
        /// The host.
        host: String,
        /// Make the host active again.
        #[arg(long)]
        undo: bool,
        /// Seconds moved replicas may take to become healthy.
        #[arg(long, default_value_t = 300)]
        timeout: u32,
    },
    /// Remove exactly the services named (their dependencies stay), the
    /// deployed services of --tier, or what --named/--profile deploys;
    /// --all removes everything. Volumes are kept unless --volumes.
    Remove {
        #[command(flatten)]
        sel: Sel,
        /// Remove everything deployed.
        #[arg(long, conflicts_with_all = ["named", "tiers", "profiles", "services"])]
        all: bool,
        /// Also remove the deployed services that need what is removed.
        #[arg(long)]
        cascade: bool,
        /// Remove it even though deployed services need it (they stay).
        #[arg(long, conflicts_with = "cascade")]
        force: bool,
        /// Also delete named volumes.
        #[arg(long)]
        volumes: bool,
    },
    /// The event history (`--since 10m`, `--from-seq N`) and what happens
    /// from now on, one line per event with its sequence number.
    Events(events::EventsArgs),
    /// The lines of every replica of the services on every host
    /// (`-f` to follow, `--tail N`, `--since 10m`, `-t` for times).
    Logs(logs::LogsArgs),
    /// Backups of a service (its `x-backup`): run one, list, restore.
    Backup {
        #[command(subcommand)]
        cmd: backup::BackupCmd,
    },
    /// The catalog on the bus: push a folder as a new revision, show them.
    Catalog {
        #[command(subcommand)]
        cmd: catalog::CatalogCmd,
    },
    /// Hosts joining and leaving the platform.
    Host {
        #[command(subcommand)]
        cmd: HostCmd,
    },
    /// Wait until the coordinator answers and `operators` operators heartbeat.
    Wait {
        /// How many operators to wait for.
        #[arg(long, default_value_t = 9)]
        operators: usize,
        /// Seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum HostsCmd {
    /// Roll a new operators image over the hosts installed with the
    /// install image, one at a time; stops at a host that does not come
    /// back.
    Upgrade {
        /// The new image.
        image: String,
        /// Only these hosts, in this order (comma-separated).
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Seconds one host may take to heartbeat from the new image.
        #[arg(long, default_value_t = 120)]
        timeout: u32,
    },
}

#[derive(Subcommand)]
enum HostCmd {
    /// Make a one-time token with which a new host joins; prints the
    /// command to run on it.
    Add {
        /// The new host's name.
        host: String,
        /// A label (repeatable): KEY=VALUE, e.g. --label zone=a.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// The tiers it carries, comma-separated (default: every tier).
        #[arg(long, value_delimiter = ',')]
        tiers: Vec<String>,
        /// How long the token may be used, seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u32,
    },
    /// Take a host out: drain it, revoke its credential (NATS closes its
    /// connections) and delete its keys.
    Remove {
        /// The host.
        host: String,
        /// Remove it even though services that cannot move run there.
        #[arg(long)]
        force: bool,
        /// Seconds moved replicas may take to become healthy.
        #[arg(long, default_value_t = 300)]
        timeout: u32,
    },
}

/// Prints a Deploy or Scale progress stream; true when nothing failed.
async fn progress(stream: &mut tonic::Streaming<api::DeployProgress>) -> Result<bool, Box<dyn std::error::Error>> {
    let start = Instant::now();
    let mut ok = true;
    while let Some(p) = stream.message().await? {
        let phase = api::Phase::try_from(p.phase).map_or("?".into(), |a| {
            a.as_str_name().trim_start_matches("PHASE_").to_lowercase()
        });
        if p.phase == api::Phase::Done as i32 {
            ok = p.failed == 0 && p.blocked == 0;
            println!("[{:>6.1}s] done: {}", start.elapsed().as_secs_f64(), p.message);
            continue;
        }
        if p.phase == api::Phase::Planned as i32 {
            continue;
        }
        let blocks = if p.blocks.is_empty() {
            String::new()
        } else {
            format!(" (blocks: {})", p.blocks.join("; "))
        };
        println!(
            "[{:>6.1}s] {:<18} {:<11} {}{}",
            start.elapsed().as_secs_f64(),
            p.service,
            phase,
            p.message,
            blocks
        );
    }
    Ok(ok)
}

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Clone)]
struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Client = CoordinatorServiceClient<InterceptedService<Channel, Bearer>>;

fn read(what: &str, p: &std::path::Path) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    std::fs::read(p).map_err(|e| format!("{what}: cannot read {}: {e}", p.display()).into())
}

/// A call that streams progress, retried while no coordinator leads, its
/// progress printed; whether it ended well.
async fn streamed<R, F, Fut>(wait: Duration, c: &Client, req: R, call: F) -> Result<bool, Box<dyn std::error::Error>>
where
    R: Clone,
    F: Fn(Client, R) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<tonic::Streaming<api::DeployProgress>>, tonic::Status>>,
{
    let mut stream = while_no_leader(wait, || call(c.clone(), req.clone()))
        .await?
        .into_inner();
    progress(&mut stream).await
}

/// Waits until the coordinator answers and `operators` operators
/// heartbeat, at most `timeout` seconds.
async fn wait_up<F, Fut>(connect: F, operators: usize, timeout: u64) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Client, Box<dyn std::error::Error>>>,
{
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        if let Ok(mut c) = connect().await
            && let Ok(r) = c.list_hosts(api::ListHostsRequest {}).await
        {
            let n: usize = r.into_inner().hosts.iter().map(|h| h.operators.len()).sum();
            if n >= operators {
                println!("coordinator up; {n} operators heartbeating");
                return true;
            }
        }
        if Instant::now() > deadline {
            eprintln!("timed out after {timeout}s waiting for the coordinator and {operators} operators");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The `Authorization` header from `--token-file`, if given.
fn bearer(cli: &Conn) -> Result<Bearer, Box<dyn std::error::Error>> {
    let Some(f) = &cli.token_file else {
        return Ok(Bearer(None));
    };
    let token = String::from_utf8(read("--token-file", f)?).map_err(|_| "--token-file: not UTF-8")?;
    let v = format!("Bearer {}", token.trim_end_matches(['\n', '\r']))
        .parse()
        .map_err(|_| "--token-file: the token is not a valid header value")?;
    Ok(Bearer(Some(v)))
}

/// A client of the coordinator at `--addr`, over TLS when `--ca` is given
/// (with a client certificate when `--cert` and `--key` are).
async fn dial(cli: &Conn, bearer: Bearer) -> Result<Client, Box<dyn std::error::Error>> {
    let mut addr = cli.addr.clone();
    let mut endpoint;
    if let Some(ca) = &cli.ca {
        if let Some(rest) = addr.strip_prefix("http://") {
            addr = format!("https://{rest}");
        }
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--ca", ca)?));
        if let (Some(cert), Some(key)) = (&cli.cert, &cli.key) {
            tls = tls.identity(Identity::from_pem(read("--cert", cert)?, read("--key", key)?));
        }
        endpoint = Channel::from_shared(addr)?;
        endpoint = endpoint.tls_config(tls)?;
    } else {
        endpoint = Channel::from_shared(addr)?;
    }
    let ch = endpoint.connect().await?;
    Ok(CoordinatorServiceClient::with_interceptor(ch, bearer))
}

/// Remove, retried while no coordinator leads; prints what went.
async fn remove(wait: Duration, c: &Client, req: api::RemoveRequest) -> Result<bool, Box<dyn std::error::Error>> {
    let r = while_no_leader(wait, || {
        let (mut c, req) = (c.clone(), req.clone());
        async move { c.remove(req).await }
    })
    .await?
    .into_inner();
    let volumes = if r.volumes_removed {
        " (and their volumes)"
    } else {
        " (volumes kept)"
    };
    println!("removed: {}{volumes}", r.removed.join(", "));
    Ok(true)
}

async fn run(cli: Cli) -> Result<bool, Box<dyn std::error::Error>> {
    let wait = Duration::from_secs(cli.leader_wait);
    let bearer = bearer(&cli.conn)?;
    let connect = || dial(&cli.conn, bearer.clone());
    match cli.cmd {
        Cmd::Validate { compose_dir, overrides } => validate(compose_dir, overrides),
        Cmd::Lint {
            compose_dir,
            overrides,
            min_severity,
        } => lint(compose_dir, overrides, min_severity),
        Cmd::Wait { operators, timeout } => Ok(wait_up(connect, operators, timeout).await),
        Cmd::Status => {
            let mut c = connect().await?;
            let r = c
                .get_status(api::GetStatusRequest { selection: None })
                .await?
                .into_inner();
            Ok(print_status(r))
        }
        Cmd::Host {
            cmd:
                HostCmd::Add {
                    host,
                    labels,
                    tiers,
                    ttl,
                },
        } => {
            let mut map = std::collections::BTreeMap::new();
            for kv in labels {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("--label {kv:?}: expected KEY=VALUE"))?;
                map.insert(k.to_owned(), v.to_owned());
            }
            let mut c = connect().await?;
            let r = c
                .add_host(api::AddHostRequest {
                    host: host.clone(),
                    labels: map,
                    tiers,
                    ttl_seconds: ttl,
                })
                .await?
                .into_inner();
            let left = r
                .expires_at
                .map_or(0, |t| t.seconds - infra_proto::now().seconds)
                .max(0);
            println!(
                "join token for {host} (valid {}m, usable once; a secret: whoever holds it joins as {host}):",
                left / 60
            );
            println!();
            println!("  {}", r.token);
            println!();
            println!("on {host}, run:");
            println!();
            println!("  {}", r.command);
            Ok(true)
        }
        Cmd::Hosts {
            cmd: Some(HostsCmd::Upgrade { image, hosts, timeout }),
        } => {
            let req = api::UpgradeOperatorsRequest {
                image,
                hosts,
                timeout_seconds: timeout,
            };
            streamed(wait, &connect().await?, req, |mut c, r| async move {
                c.upgrade_operators(r).await
            })
            .await
        }
        Cmd::Backup { cmd } => backup::run(cmd, connect().await?).await,
        Cmd::Catalog { cmd } => catalog::run(cmd, connect().await?).await,
        Cmd::Events(args) => events::run(args, connect().await?).await,
        Cmd::Logs(args) => logs::run(args, connect().await?).await,
        Cmd::Hosts { cmd: None } => {
            let mut c = connect().await?;
            let r = c.list_hosts(api::ListHostsRequest {}).await?.into_inner();
            print_hosts(r);
            Ok(true)
        }
        Cmd::Plan(sel) => {
            let mut c = connect().await?;
            let r = c
                .plan(api::PlanRequest {
                    selection: Some(sel.to_api()),
                })
                .await?
                .into_inner();
            print_plan(r);
            Ok(true)
        }
        Cmd::Deploy { sel, timeout, prune } => {
            let req = api::DeployRequest {
                selection: Some(sel.to_api()),
                timeout_seconds: timeout,
                prune,
            };
            streamed(
                wait,
                &connect().await?,
                req,
                |mut c, r| async move { c.deploy(r).await },
            )
            .await
        }
        Cmd::Rollout {
            service,
            image,
            env,
            timeout,
        } => {
            let mut environment = std::collections::BTreeMap::new();
            for kv in env {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("--env {kv:?}: expected KEY=VALUE"))?;
                environment.insert(k.to_owned(), v.to_owned());
            }
            let req = api::RolloutRequest {
                service,
                image: image.unwrap_or_default(),
                environment,
                timeout_seconds: timeout,
            };
            streamed(
                wait,
                &connect().await?,
                req,
                |mut c, r| async move { c.rollout(r).await },
            )
            .await
        }
        Cmd::Rollback { service, timeout } => {
            let req = api::RollbackRequest {
                service,
                timeout_seconds: timeout,
            };
            streamed(
                wait,
                &connect().await?,
                req,
                |mut c, r| async move { c.rollback(r).await },
            )
            .await
        }
        Cmd::Host {
            cmd: HostCmd::Remove { host, force, timeout },
        } => {
            let req = api::RemoveHostRequest {
                host,
                force,
                timeout_seconds: timeout,
            };
            streamed(wait, &connect().await?, req, |mut c, r| async move {
                c.remove_host(r).await
            })
            .await
        }
        Cmd::Drain { host, undo, timeout } => {
            let req = api::DrainRequest {
                host,
                undo,
                timeout_seconds: timeout,
            };
            streamed(wait, &connect().await?, req, |mut c, r| async move { c.drain(r).await }).await
        }
        Cmd::Scale {
            service,
            replicas,
            timeout,
        } => {
            let req = api::ScaleRequest {
                service,
                replicas,
                timeout_seconds: timeout,
            };
            streamed(wait, &connect().await?, req, |mut c, r| async move { c.scale(r).await }).await
        }
        Cmd::Remove {
            sel,
            all,
            cascade,
            force,
            volumes,
        } => {
            let mut selection = sel.to_api();
            selection.all = all;
            if selection == api::Selection::default() {
                eprintln!(
                    "infractl remove: name the services to remove (or --tier, --profile, --named); --all removes \
                     everything deployed"
                );
                return Ok(false);
            }
            let req = api::RemoveRequest {
                selection: Some(selection),
                remove_volumes: volumes,
                force,
                cascade,
            };
            remove(wait, &connect().await?, req).await
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            if let Some(s) = e.downcast_ref::<tonic::Status>() {
                eprintln!("infractl: {:?}: {}", s.code(), s.message());
            } else {
                eprintln!("infractl: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `infractl validate`: the whole catalog checked without a coordinator.
fn validate(
    compose_dir: std::path::PathBuf,
    overrides: Vec<std::path::PathBuf>,
) -> Result<bool, Box<dyn std::error::Error>> {
    let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    let opts = infra_compose::LoadOptions {
        env_file: None,
        env: env.clone(),
        overrides,
        secret_dirs: Vec::new(),
    };
    let catalog = infra_compose::load_catalog(&compose_dir, &opts)?;
    let profiles: Vec<String> = catalog.profiles().into_iter().collect();
    let sel = infra_compose::Selection {
        all: true,
        tiers: vec![],
        profiles,
        services: vec![],
    };
    let names = catalog.select(&sel)?;
    let graph = catalog.graph(&names)?;
    for name in graph.order() {
        infra_coordinator::convert::to_spec(&catalog, "infra", &catalog.services[name], &env)?;
    }
    println!(
        "{}: {} services in {} files, {} profiles, {} start levels: ok",
        compose_dir.display(),
        names.len(),
        catalog.files.len(),
        catalog.profiles().len(),
        graph.levels().len()
    );
    Ok(true)
}

/// `infractl lint`: the catalog's lint findings, without a coordinator.
fn lint(
    compose_dir: std::path::PathBuf,
    overrides: Vec<std::path::PathBuf>,
    min_severity: infra_compose::Severity,
) -> Result<bool, Box<dyn std::error::Error>> {
    let opts = infra_compose::LoadOptions {
        env_file: None,
        env: std::env::vars().collect(),
        overrides,
        secret_dirs: Vec::new(),
    };
    let catalog = infra_compose::load_catalog(&compose_dir, &opts)?;
    let findings: Vec<infra_compose::Finding> = infra_compose::lint(&catalog)
        .into_iter()
        .filter(|f| f.severity.is_at_least(min_severity))
        .collect();
    for f in &findings {
        println!("{f}");
    }
    let count = |s: infra_compose::Severity| findings.iter().filter(|f| f.severity == s).count();
    let errors = count(infra_compose::Severity::Error);
    println!(
        "{}: {} services linted: {errors} errors, {} warnings, {} info",
        compose_dir.display(),
        catalog.services.len(),
        count(infra_compose::Severity::Warning),
        count(infra_compose::Severity::Info),
    );
    Ok(errors == 0)
}

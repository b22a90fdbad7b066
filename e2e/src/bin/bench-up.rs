//! Bring-up benchmark: the platform (coordinator + nine operators, release
//! build) against docker-compose 1.29 bringing up the same services, with
//! the same images and `depends_on` conditions, from nothing, several
//! rounds; plus the critical-path bound of the platform's runs and the idle
//! memory of its processes. `just bench-up [ROUNDS]`; see e2e/BENCH.md.

#[path = "../bench/mod.rs"]
mod bench;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bench::compose::{self, Svc};
use bench::timeline::{Analysis, Recorder, now_ns};
use bench::{median, rss_kib};
use bollard::Docker;
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::{ListContainersOptions, ListVolumesOptions};
use clap::Parser;
use infra_e2e::{Options, Platform, TIERS, purge_project};
use infra_proto::coordinator::v1 as api;
use infra_proto::coordinator::v1::coordinator_service_client::CoordinatorServiceClient;
use tonic::transport::Channel;

/// Bring-up benchmark: the platform against docker-compose 1.29.
#[derive(Parser, Debug, Clone)]
#[command(name = "bench-up")]
struct Args {
    /// Rounds per system.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Named selection (compose/selections.yml).
    #[arg(long, default_value = "core")]
    selection: String,
    /// Limit for one bring-up, in seconds.
    #[arg(long, default_value_t = 300)]
    round_timeout: u64,
    /// How long the stack idles before the memory is read, in seconds.
    #[arg(long, default_value_t = 5)]
    idle: u64,
    /// Binaries of this profile (`release` or `debug`).
    #[arg(long, default_value = "release")]
    profile: String,
    /// docker-compose binary (1.29).
    #[arg(long, default_value = "/usr/bin/docker-compose")]
    docker_compose: PathBuf,
    /// Only the platform's rounds.
    #[arg(long)]
    skip_compose: bool,
    /// Print every service's timeline of every round (default: the last).
    #[arg(long)]
    verbose: bool,
    /// Create the project's Docker networks before the first platform
    /// round instead of leaving them to the operators (for comparison only;
    /// by default every round starts from nothing but the images).
    #[arg(long)]
    precreate_network: bool,
}

/// One bring-up.
struct RoundResult {
    /// Wall time until everything was ready, seconds.
    secs: f64,
    analysis: Analysis,
    /// Wall time of the take-down (containers and volumes), seconds.
    down_secs: f64,
    /// Extra detail for the table.
    note: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Ours,
    Compose,
}

impl System {
    fn label(self) -> &'static str {
        match self {
            Self::Ours => "platform",
            Self::Compose => "docker-compose",
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // nginx publishes ${NGINX_HTTP_PORT:-8080} on the host: pick a free port
    // so the run clashes with no one, the same for both systems. The
    // coordinator interpolates from its environment, which it inherits; the
    // environment can only be set for a child (no `unsafe` set_var), so run
    // this program again with it.
    if std::env::var_os("NGINX_HTTP_PORT").is_none() {
        return rerun_with_port();
    }

    let mut opts = Options::local("bench");
    opts.profile.clone_from(&args.profile);
    let project = opts.project.clone();
    println!(
        "bench-up: {} round(s) of selection {:?}, {} binaries, project {project}, nginx on host port {}, {} CPU(s)",
        args.rounds,
        args.selection,
        args.profile,
        std::env::var("NGINX_HTTP_PORT").unwrap_or_default(),
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
    );
    let t = Instant::now();
    let platform = Platform::start(opts.clone());
    println!(
        "platform: NATS, coordinator and {} operators up in {:.1}s",
        opts.tiers.len(),
        t.elapsed().as_secs_f64()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ctx = Ctx {
        args: args.clone(),
        grpc: platform.grpc.clone(),
        opts,
        pids: platform.pids(),
        compose_project: format!("benchdc{}", std::process::id()),
        nats_url: platform.nats.url(),
    };
    // Ctrl-C ends the run early; the cleanup below still happens.
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(&ctx) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
        }
    });
    let code = match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nbench-up FAILED: {e}");
            let mut problems = Vec::new();
            for name in platform.pids().keys() {
                for line in platform.log(name).lines() {
                    if line.contains("reconcile_failed")
                        || line.contains(r#""level":"ERROR""#)
                        || line.contains(r#""level":"WARN""#)
                    {
                        problems.push(format!("{name}: {line}"));
                    }
                }
            }
            let skip = problems.len().saturating_sub(30);
            eprintln!(
                "platform warnings and errors (last {} of {}; logs in {}):",
                problems.len() - skip,
                problems.len(),
                platform.dir.path().display()
            );
            for p in &problems[skip..] {
                eprintln!("  {p}");
            }
            ExitCode::FAILURE
        }
    };
    drop(rt);
    // Whatever an interrupted or failed round left of docker-compose's project.
    purge_compose(&ctx.compose_project);
    drop(platform); // stops the processes and purges the platform's project
    code
}

/// Runs this program again with `NGINX_HTTP_PORT` set to a free port, and
/// waits for it (on Ctrl-C the child cleans up, so this one waits).
fn rerun_with_port() -> ExitCode {
    let port = infra_bus::testing::free_port();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let exe = std::env::current_exe().expect("own path");
        let mut child = match tokio::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("NGINX_HTTP_PORT", port.to_string())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("bench-up: cannot re-run itself: {e}");
                return ExitCode::FAILURE;
            }
        };
        loop {
            tokio::select! {
                st = child.wait() => {
                    let code = st.ok().and_then(|s| s.code()).unwrap_or(1);
                    return ExitCode::from(u8::try_from(code).unwrap_or(1));
                }
                // Passed on (a terminal sends it to both; `timeout` or
                // `kill` only to this one).
                _ = tokio::signal::ctrl_c() => {
                    if let Some(pid) = child.id() {
                        let _ = std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status();
                    }
                }
            }
        }
    })
}

/// Removes whatever Docker has of the docker-compose project.
fn purge_compose(project: &str) {
    infra_e2e::purge_labelled("com.docker.compose.project", project);
}

struct Ctx {
    args: Args,
    grpc: String,
    opts: Options,
    pids: HashMap<String, u32>,
    compose_project: String,
    nats_url: String,
}

/// The merged Compose file on disk.
struct ComposeSetup {
    _dir: tempfile::TempDir,
    file: PathBuf,
    env_file: PathBuf,
}

async fn run(ctx: &Ctx) -> Result<(), String> {
    let args = &ctx.args;
    let docker = Docker::connect_with_local_defaults().map_err(|e| format!("docker: {e}"))?;
    let mut client = CoordinatorServiceClient::connect(format!("http://{}", ctx.grpc))
        .await
        .map_err(|e| format!("coordinator: {e}"))?;
    let selection = api::Selection {
        named: args.selection.clone(),
        ..Default::default()
    };

    // The services the coordinator deploys for this selection.
    let plan = client
        .plan(api::PlanRequest {
            selection: Some(selection.clone()),
        })
        .await
        .map_err(|e| format!("Plan: {e}"))?
        .into_inner();
    let wanted: BTreeSet<String> = plan.steps.iter().map(|s| s.service.clone()).collect();
    println!(
        "selection {:?}: {} services: {}",
        args.selection,
        wanted.len(),
        wanted.iter().cloned().collect::<Vec<_>>().join(", ")
    );
    let merged = compose::merge(&ctx.opts.compose_dir, &ctx.opts.overrides, &wanted)?;
    let graph = merged.services.clone();
    for (name, svc) in &graph {
        let deps: Vec<String> = svc.deps.iter().map(|(d, c)| format!("{d} ({c:?})")).collect();
        println!(
            "  {name:<16} {}{}",
            if svc.healthcheck {
                "healthcheck"
            } else {
                "no healthcheck"
            },
            if deps.is_empty() {
                String::new()
            } else {
                format!(", after {}", deps.join(", "))
            }
        );
    }

    if args.precreate_network {
        precreate_networks(&docker, &mut client, &wanted).await?;
    }

    let setup = if args.skip_compose {
        None
    } else {
        Some(write_compose(ctx, &merged).await?)
    };

    let mut results: BTreeMap<(usize, &'static str), RoundResult> = BTreeMap::new();
    let mut rss: Vec<BTreeMap<String, u64>> = Vec::new();
    let mut failure = None;
    'rounds: for round in 1..=args.rounds {
        // Alternate which goes first, so drift in the machine's load (other
        // users of this engine) falls on both.
        let order = if round % 2 == 1 {
            [System::Ours, System::Compose]
        } else {
            [System::Compose, System::Ours]
        };
        for sys in order {
            let r = match (sys, &setup) {
                (System::Ours, _) => ours_round(ctx, &docker, &mut client, &selection, &graph, &mut rss).await,
                (System::Compose, Some(setup)) => compose_round(ctx, &docker, setup, &graph).await,
                (System::Compose, None) => continue,
            };
            match r {
                Ok(r) => {
                    println!(
                        "round {round} {:<15} ready in {:>6.2}s  (critical-path bound {:.2}s{}), down in {:.1}s",
                        sys.label(),
                        r.secs,
                        r.analysis.bound,
                        r.note,
                        r.down_secs
                    );
                    if args.verbose {
                        print_timeline(&format!("round {round}, {}", sys.label()), &r.analysis);
                    }
                    results.insert((round, sys.label()), r);
                }
                Err(e) => {
                    failure = Some(format!("round {round}, {}: {e}", sys.label()));
                    break 'rounds;
                }
            }
        }
    }
    if let Some(setup) = &setup {
        compose_down(ctx, setup).await;
    }
    report(ctx, &results, &rss);
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn write_compose(ctx: &Ctx, merged: &compose::Merged) -> Result<ComposeSetup, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("docker-compose.yml");
    let text = serde_norway::to_string(&merged.doc).map_err(|e| e.to_string())?;
    let header = format!(
        "# Generated by bench-up from {}\n# with {}\n",
        merged
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        ctx.opts
            .overrides
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    std::fs::write(&file, format!("{header}{text}")).map_err(|e| e.to_string())?;
    let env_file = [".env", ".env.example"]
        .iter()
        .map(|n| ctx.opts.compose_dir.join(n))
        .find(|p| p.exists())
        .ok_or("compose/.env or compose/.env.example missing")?;
    let setup = ComposeSetup {
        _dir: dir,
        file,
        env_file,
    };
    let out = dc(ctx, &setup, &["config", "-q"], Duration::from_secs(60)).await?;
    if !out.status.success() {
        return Err(format!(
            "docker-compose config rejects {}: {}",
            setup.file.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    println!(
        "docker-compose: {} (env file {}, project {})",
        setup.file.display(),
        setup.env_file.display(),
        ctx.compose_project
    );
    Ok(setup)
}

/// Creates the Docker networks the selection's specs name, unless they
/// exist (`--precreate-network`).
async fn precreate_networks(
    docker: &Docker,
    client: &mut CoordinatorServiceClient<Channel>,
    services: &BTreeSet<String>,
) -> Result<(), String> {
    let mut names = BTreeSet::new();
    for s in services {
        let d = client
            .describe_service(api::DescribeServiceRequest { name: s.clone() })
            .await
            .map_err(|e| format!("DescribeService {s}: {e}"))?
            .into_inner();
        names.extend(d.spec.into_iter().flat_map(|sp| sp.networks).map(|n| n.name));
    }
    for n in names {
        if docker.inspect_network(&n, None).await.is_ok() {
            continue;
        }
        let req = NetworkCreateRequest {
            name: n.clone(),
            driver: Some("bridge".into()),
            labels: Some(HashMap::from([(
                "io.infra.managed-by".to_string(),
                "infra-operator".to_string(),
            )])),
            ..Default::default()
        };
        docker
            .create_network(req)
            .await
            .map_err(|e| format!("create network {n}: {e}"))?;
        println!("created network {n} before the rounds");
    }
    Ok(())
}

/// Runs docker-compose on the merged file, bounded in time.
async fn dc(ctx: &Ctx, setup: &ComposeSetup, args: &[&str], limit: Duration) -> Result<std::process::Output, String> {
    let mut cmd = tokio::process::Command::new(&ctx.args.docker_compose);
    cmd.arg("-p")
        .arg(&ctx.compose_project)
        .arg("-f")
        .arg(&setup.file)
        .arg("--env-file")
        .arg(&setup.env_file)
        .args(args)
        .kill_on_drop(true);
    match tokio::time::timeout(limit, cmd.output()).await {
        Ok(Ok(o)) => Ok(o),
        Ok(Err(e)) => Err(format!("{}: {e}", ctx.args.docker_compose.display())),
        Err(_) => Err(format!(
            "docker-compose {} took over {}s",
            args.join(" "),
            limit.as_secs()
        )),
    }
}

async fn compose_down(ctx: &Ctx, setup: &ComposeSetup) {
    let _ = dc(
        ctx,
        setup,
        &["down", "-v", "--remove-orphans"],
        Duration::from_secs(180),
    )
    .await;
}

/// Containers with `label=value`: service -> (state, health).
async fn containers(docker: &Docker, label: &str, value: &str, service_label: &str) -> Vec<(String, String, String)> {
    let opts = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([("label".to_string(), vec![format!("{label}={value}")])])),
        ..Default::default()
    };
    let Ok(list) = docker.list_containers(Some(opts)).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for c in list {
        let Some(id) = c.id else { continue };
        let Ok(info) = docker.inspect_container(&id, None).await else {
            continue;
        };
        let service = info
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(service_label).cloned())
            .unwrap_or_default();
        let state = info.state.unwrap_or_default();
        out.push((
            service,
            state.status.map(|s| s.to_string()).unwrap_or_default(),
            state
                .health
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .unwrap_or_default(),
        ));
    }
    out
}

async fn volumes_with_prefix(docker: &Docker, prefix: &str) -> Vec<String> {
    let opts = ListVolumesOptions {
        filters: Some(HashMap::from([("name".to_string(), vec![prefix.to_string()])])),
    };
    docker
        .list_volumes(Some(opts))
        .await
        .ok()
        .and_then(|r| r.volumes)
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.name)
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Waits until the platform's project has no container and no volume left.
async fn wait_clean(docker: &Docker, project: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let left = containers(docker, "io.infra.project", project, "io.infra.service").await;
        let vols = volumes_with_prefix(docker, &format!("{project}_")).await;
        if left.is_empty() && vols.is_empty() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn ours_round(
    ctx: &Ctx,
    docker: &Docker,
    client: &mut CoordinatorServiceClient<Channel>,
    selection: &api::Selection,
    graph: &BTreeMap<String, Svc>,
    rss: &mut Vec<BTreeMap<String, u64>>,
) -> Result<RoundResult, String> {
    let project = &ctx.opts.project;
    if !wait_clean(docker, project, Duration::from_secs(1)).await {
        return Err(format!("project {project} is not empty before the round"));
    }
    let rec = Recorder::start(docker, "io.infra.project", project, "io.infra.service").await;
    // The platform counts a service healthy when its operator does (early
    // probes), often before Docker's own first check: take its events too.
    rec.record_bus(&ctx.nats_url, &ctx.opts.host).await?;
    let limit = Duration::from_secs(ctx.args.round_timeout);
    let t0_ns = now_ns();
    let t0 = Instant::now();
    let req = api::DeployRequest {
        selection: Some(selection.clone()),
        timeout_seconds: u32::try_from(ctx.args.round_timeout).unwrap_or(300),
        prune: false,
    };
    let deploy = async {
        let mut stream = client
            .deploy(req)
            .await
            .map_err(|e| format!("Deploy: {e}"))?
            .into_inner();
        let mut problems = Vec::new();
        while let Some(p) = stream.message().await.map_err(|e| format!("Deploy stream: {e}"))? {
            match p.phase() {
                api::Phase::Done => return Ok((t0.elapsed(), p, problems)),
                api::Phase::Failed | api::Phase::Blocked => problems.push(format!("{}: {}", p.service, p.message)),
                _ => {}
            }
        }
        Err("Deploy stream ended without DONE".to_string())
    };
    let outcome = tokio::time::timeout(limit + Duration::from_secs(30), deploy).await;
    let (elapsed, done, problems) = match outcome {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(format!("no DONE within {}s", limit.as_secs() + 30)),
    };
    if done.failed > 0 || done.blocked > 0 || (done.ready as usize) < graph.len() {
        return Err(format!(
            "deploy finished with {}: {}",
            done.message,
            problems.join("; ")
        ));
    }
    // Let the last engine events arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let analysis = rec.finish(t0_ns).analyse(graph)?;

    // Idle memory of every platform process.
    tokio::time::sleep(Duration::from_secs(ctx.args.idle)).await;
    rss.push(
        ctx.pids
            .iter()
            .filter_map(|(n, p)| rss_kib(*p).map(|k| (n.clone(), k)))
            .collect(),
    );

    // Take everything down, volumes too.
    let t = Instant::now();
    client
        .remove(api::RemoveRequest {
            selection: Some(selection.clone()),
            remove_volumes: true,
            force: true,
            cascade: false,
        })
        .await
        .map_err(|e| format!("Remove: {e}"))?;
    let mut note = String::new();
    if !wait_clean(docker, project, Duration::from_secs(120)).await {
        note = ", Remove left containers/volumes: purged".into();
        purge_project(project);
    }
    Ok(RoundResult {
        secs: elapsed.as_secs_f64(),
        analysis,
        down_secs: t.elapsed().as_secs_f64(),
        note,
    })
}

async fn compose_round(
    ctx: &Ctx,
    docker: &Docker,
    setup: &ComposeSetup,
    graph: &BTreeMap<String, Svc>,
) -> Result<RoundResult, String> {
    const LABEL: &str = "com.docker.compose.project";
    const SERVICE: &str = "com.docker.compose.service";
    let project = &ctx.compose_project;
    if !containers(docker, LABEL, project, SERVICE).await.is_empty()
        || !volumes_with_prefix(docker, &format!("{project}_")).await.is_empty()
    {
        compose_down(ctx, setup).await;
    }
    let rec = Recorder::start(docker, LABEL, project, SERVICE).await;
    let limit = Duration::from_secs(ctx.args.round_timeout);
    let t0_ns = now_ns();
    let t0 = Instant::now();
    let out = dc(ctx, setup, &["up", "-d"], limit).await;
    let up_exit = t0.elapsed().as_secs_f64();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            compose_down(ctx, setup).await;
            return Err(e);
        }
    };
    if !out.status.success() {
        compose_down(ctx, setup).await;
        return Err(format!(
            "docker-compose up -d failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // `up -d` has started everything (gating on service_healthy); wait for
    // the last services to become healthy.
    loop {
        let cs = containers(docker, LABEL, project, SERVICE).await;
        let ready = graph.iter().all(|(name, svc)| {
            cs.iter()
                .any(|(s, state, health)| s == name && state == "running" && (!svc.healthcheck || health == "healthy"))
        });
        if ready {
            break;
        }
        if t0.elapsed() > limit {
            let seen: Vec<String> = cs.iter().map(|(s, st, h)| format!("{s}={st}/{h}")).collect();
            compose_down(ctx, setup).await;
            return Err(format!("not ready within {}s: {}", limit.as_secs(), seen.join(" ")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let analysis = rec.finish(t0_ns).analyse(graph)?;
    // The moment the last service became ready, from the engine's own
    // timestamps (not the polling), unless `up -d` returned later.
    let secs = up_exit.max(analysis.last_ready);
    let t = Instant::now();
    compose_down(ctx, setup).await;
    Ok(RoundResult {
        secs,
        note: format!(", up -d returned at {up_exit:.2}s"),
        analysis,
        down_secs: t.elapsed().as_secs_f64(),
    })
}

fn print_timeline(title: &str, a: &Analysis) {
    println!("\n  {title}: per service, seconds after the request (engine events)");
    println!(
        "  {:<16} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "service", "gate", "start", "lag", "ready", "own ready"
    );
    for r in &a.rows {
        println!(
            "  {:<16} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>10.2}{}",
            r.service,
            r.gate,
            r.start,
            r.lag,
            r.ready,
            r.own,
            if r.died > 0 {
                format!("  ({} restart(s))", r.died)
            } else {
                String::new()
            }
        );
    }
    println!("  critical path {:.2}s: {}", a.bound, a.path.join(" -> "));
    println!("  (gate: when its depends_on conditions were met; lag: start - gate, for roots start - request)");
}

fn report(ctx: &Ctx, results: &BTreeMap<(usize, &'static str), RoundResult>, rss: &[BTreeMap<String, u64>]) {
    let ours = System::Ours.label();
    let dc = System::Compose.label();
    let rounds: BTreeSet<usize> = results.keys().map(|(r, _)| *r).collect();
    println!(
        "\n=== bring-up of {:?}, from nothing (no containers, no volumes) ===",
        ctx.args.selection
    );
    println!(
        "{:<8} {:>12} {:>16} {:>14} {:>18}",
        "round", "platform s", "docker-compose s", "ratio dc/ours", "platform bound s"
    );
    let get = |r: usize, s: &'static str| results.get(&(r, s));
    for r in &rounds {
        let o = get(*r, ours);
        let d = get(*r, dc);
        println!(
            "{:<8} {:>12} {:>16} {:>14} {:>18}",
            r,
            o.map_or("-".into(), |x| format!("{:.2}", x.secs)),
            d.map_or("-".into(), |x| format!("{:.2}", x.secs)),
            match (o, d) {
                (Some(o), Some(d)) => format!("{:.2}", d.secs / o.secs),
                _ => "-".into(),
            },
            o.map_or("-".into(), |x| format!("{:.2}", x.analysis.bound)),
        );
    }
    let col = |s: &str, f: &dyn Fn(&RoundResult) -> f64| -> Vec<f64> {
        results
            .iter()
            .filter(|((_, k), _)| *k == s)
            .map(|(_, v)| f(v))
            .collect()
    };
    let m_ours = median(&col(ours, &|r| r.secs));
    let m_dc = median(&col(dc, &|r| r.secs));
    let m_bound = median(&col(ours, &|r| r.analysis.bound));
    let m_dc_bound = median(&col(dc, &|r| r.analysis.bound));
    let fmt = |x: f64| if x.is_finite() { format!("{x:.2}") } else { "-".into() };
    println!(
        "{:<8} {:>12} {:>16} {:>14} {:>18}",
        "median",
        fmt(m_ours),
        fmt(m_dc),
        fmt(m_dc / m_ours),
        fmt(m_bound)
    );
    println!();
    println!(
        "ratio docker-compose / platform (medians): {}  (> 1: the platform is faster)",
        fmt(m_dc / m_ours)
    );
    println!(
        "critical-path bound of the platform's runs (median): {}s; platform median is {} above it (aim: within 15%)",
        fmt(m_bound),
        if m_bound > 0.0 && m_ours.is_finite() {
            format!("{:+.1}%", (m_ours / m_bound - 1.0) * 100.0)
        } else {
            "-".into()
        }
    );
    if m_dc_bound.is_finite() {
        println!(
            "critical-path bound of the docker-compose runs (median): {}s; docker-compose median is {:+.1}% above it",
            fmt(m_dc_bound),
            (m_dc / m_dc_bound - 1.0) * 100.0
        );
    }
    println!(
        "take-down with volumes (median): platform {}s, docker-compose {}s",
        fmt(median(&col(ours, &|r| r.down_secs))),
        fmt(median(&col(dc, &|r| r.down_secs)))
    );
    // The critical path and timelines of the last round of each.
    if !ctx.args.verbose {
        for s in [ours, dc] {
            if let Some(((r, _), res)) = results.iter().rev().find(|((_, k), _)| *k == s) {
                print_timeline(&format!("round {r}, {s}"), &res.analysis);
            }
        }
    }

    if let Some(last) = rss.last() {
        println!(
            "\n=== idle memory (VmRSS after {}s idle with the stack up; last round, max over rounds) ===",
            ctx.args.idle
        );
        println!(
            "{:<24} {:>10} {:>10} {:>8}",
            "process", "last MiB", "max MiB", "< 20 MB"
        );
        let mut names = vec!["coordinator".to_string()];
        names.extend(TIERS.iter().map(|t| format!("{t}-operator")));
        let mut total = 0;
        for n in names {
            let Some(kib) = last.get(&n) else { continue };
            let max = rss.iter().filter_map(|m| m.get(&n)).max().copied().unwrap_or(*kib);
            total += kib;
            println!(
                "{:<24} {:>10.1} {:>10.1} {:>8}",
                n,
                *kib as f64 / 1024.0,
                max as f64 / 1024.0,
                if max * 1024 < 20_000_000 { "yes" } else { "NO" }
            );
        }
        println!("{:<24} {:>10.1}", "total", total as f64 / 1024.0);
    }
}

//! The simulated-hosts test bed by hand: `just hosts-up 3` starts a
//! [`Cluster`] (NATS cluster, N Docker-in-Docker hosts with every tier's
//! operator, one coordinator), prints how to reach it and waits for Ctrl-C;
//! `just hosts-down` removes what `hosts-up` left behind (after a crash, or
//! with `E2E_KEEP` set, which keeps the containers on exit).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use infra_e2e::hosts::{self, Cluster, ClusterOptions};

/// Simulated hosts (Docker-in-Docker) for trying the platform across hosts.
#[derive(Parser, Debug)]
#[command(name = "hosts")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a cluster and keep it until Ctrl-C.
    Up {
        /// Number of hosts.
        #[arg(default_value_t = 3)]
        hosts: usize,
        /// Tiers on every host (comma-separated; default every tier).
        #[arg(long, value_delimiter = ',')]
        tiers: Vec<String>,
        /// Images loaded into every host's engine (repeatable).
        #[arg(long = "image")]
        images: Vec<String>,
        /// The coordinator's catalog (default: compose/ with the local override).
        #[arg(long)]
        compose_dir: Option<std::path::PathBuf>,
    },
    /// Remove clusters: the one named, else every one `up` started
    /// (`--all`: also those of tests kept with E2E_KEEP).
    Down {
        /// Cluster id (as `up` printed it).
        id: Option<String>,
        /// Every cluster, whoever started it.
        #[arg(long)]
        all: bool,
    },
    /// List the clusters present.
    Ls,
}

fn main() -> ExitCode {
    match Args::parse().cmd {
        Cmd::Up {
            hosts: n,
            tiers,
            images,
            compose_dir,
        } => up(n, tiers, images, compose_dir),
        Cmd::Down { id, all } => {
            let ids = match id {
                Some(id) => std::iter::once(id).collect(),
                None => hosts::list_clusters(if all { None } else { Some("cli") }),
            };
            for id in &ids {
                hosts::remove_cluster(id);
                println!("removed cluster {id}");
            }
            if ids.is_empty() {
                println!("no cluster to remove");
            }
            ExitCode::SUCCESS
        }
        Cmd::Ls => {
            for id in hosts::list_clusters(None) {
                println!("{id}");
            }
            ExitCode::SUCCESS
        }
    }
}

fn up(n: usize, tiers: Vec<String>, images: Vec<String>, compose_dir: Option<std::path::PathBuf>) -> ExitCode {
    let mut opts = ClusterOptions::new(n);
    opts.origin = "cli".into();
    if !tiers.is_empty() {
        opts.tiers = tiers;
    }
    opts.images = images;
    if let Some(d) = compose_dir {
        opts = opts.catalog(d);
    }
    let id = format!("hosts{}", std::process::id());
    let cluster = Cluster::start_named(&id, opts);
    println!("cluster {id} is up");
    for h in cluster.hosts() {
        println!(
            "  {h:<6} {:<15} container {}  tiers {}",
            cluster.host_ip(&h),
            cluster.container(&h),
            cluster.tiers_of(&h).join(",")
        );
    }
    println!(
        "  NATS   {} (TLS only, CA {}; credential {}; each host's operators hold one that reaches only that host)",
        cluster.nats_url(),
        cluster.nats_ca().display(),
        cluster.coordinator_creds_file().display()
    );
    println!("  logs   {}", cluster.dir.path().display());
    println!();
    println!(
        "  grpcurl -plaintext {} infra.coordinator.v1.CoordinatorService/ListHosts",
        cluster.grpc()
    );
    println!(
        "  docker exec {} docker ps     # host1's own engine",
        cluster.container("host1")
    );
    println!();
    println!("Ctrl-C to take it down");
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hosts: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = rt.block_on(tokio::signal::ctrl_c());
    println!("taking cluster {id} down");
    drop(cluster);
    ExitCode::SUCCESS
}

//! Upgrading a host's operators in place: the install container
//! (`infra-operators`, docs/operating.md) replaced by one of a new image,
//! while the containers the operators manage keep running (the new
//! operators adopt them by their labels).
//!
//! A container cannot replace itself, so an operator asked to upgrade
//! ([`answer_upgrades`]) starts a *helper* from the new image
//! (`infra-operator upgrade-self`, [`helper_main`]) which, from outside the
//! install container:
//!
//! 1. renames it `<name>-previous` and stops it (its operators drain);
//! 2. creates `<name>` with the same configuration (environment, command,
//!    mounts, network, restart policy) on the new image, the
//!    `INFRA_LABELS__OPERATOR_IMAGE` label naming it, and starts it;
//! 3. watches it for a settling time: running, never restarted. Then the
//!    previous one is removed; otherwise the new one is removed and the
//!    previous one renamed back and started, and the helper exits 1.
//!
//! The coordinator (`UpgradeOperators`) asks one host at a time and goes on
//! once every tier there heartbeats from the new image.

use std::sync::Arc;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use infra_proto::bus::v1::{OperatorsUpgrade, OperatorsUpgradeReply};
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::docker::DockerClient;
use crate::reconcile::Ctx;

/// The install container's name when the request names none.
pub const DEFAULT_CONTAINER: &str = "infra-operators";
/// The environment variable that makes the image a host label.
const IMAGE_LABEL_ENV: &str = "INFRA_LABELS__OPERATOR_IMAGE";

/// Serves upgrade requests for this operator's host and tier until
/// `shutdown`.
pub async fn answer_upgrades(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    crate::images::serve(
        ctx,
        shutdown,
        "upgrade requests",
        |ctx| async move { ctx.bus.upgrade_requests(&ctx.host, &ctx.tier).await },
        |ctx, payload| async move {
            Some(match OperatorsUpgrade::decode(payload) {
                Ok(ask) => match start_helper(&ctx, &ask).await {
                    Ok(helper) => OperatorsUpgradeReply {
                        helper,
                        ..Default::default()
                    },
                    Err(error) => OperatorsUpgradeReply {
                        error,
                        ..Default::default()
                    },
                },
                Err(_) => OperatorsUpgradeReply {
                    error: "the upgrade request does not decode".into(),
                    ..Default::default()
                },
            })
        },
    )
    .await;
}

/// Starts the helper that replaces the install container; its id.
async fn start_helper(ctx: &Ctx, ask: &OperatorsUpgrade) -> Result<String, String> {
    let name = if ask.container.is_empty() {
        DEFAULT_CONTAINER
    } else {
        ask.container.as_str()
    };
    let docker = &ctx.docker;
    if !matches!(docker.inspect(name).await, Ok(Some(_))) {
        return Err(format!(
            "no container {name} on {}: its operators were not installed from the install image; upgrade them the \
             way they were installed",
            ctx.host
        ));
    }
    let login = ctx.registry_login(infra_proto::image::registry(&ask.image)).await;
    docker
        .ensure_image(
            &ask.image,
            crate::docker::Pull::IfMissing,
            login.as_ref().map(crate::reconcile::credentials),
            Duration::from_secs(300),
        )
        .await
        .map_err(|e| e.to_string())?;
    let helper = format!("{name}-upgrade");
    force_remove(docker, &helper).await;
    let body = ContainerCreateBody {
        image: Some(ask.image.clone()),
        cmd: Some(vec![
            "upgrade-self".into(),
            "--container".into(),
            name.into(),
            "--image".into(),
            ask.image.clone(),
        ]),
        host_config: Some(HostConfig {
            binds: Some(vec!["/var/run/docker.sock:/var/run/docker.sock".into()]),
            auto_remove: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = docker
        .create(&helper, body, &[])
        .await
        .map_err(|e| format!("create the upgrade helper: {e}"))?;
    docker
        .start(&created)
        .await
        .map_err(|e| format!("start the upgrade helper: {e}"))?;
    tracing::info!(image = %ask.image, helper = %created, "upgrading this host's operators");
    Ok(created)
}

/// `infra-operator upgrade-self --container NAME --image IMAGE`: the
/// helper (see the module docs). Exit 0: replaced; 1: put back as it was.
pub fn helper_main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let arg = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let (Some(name), Some(image)) = (arg("--container"), arg("--image")) else {
        eprintln!("infra-operator upgrade-self: usage: upgrade-self --container NAME --image IMAGE");
        return std::process::ExitCode::from(64);
    };
    let settle = arg("--settle-secs")
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_secs);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("infra-operator upgrade-self: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let docker = DockerClient::connect().await.map_err(|e| e.to_string())?;
        replace(&docker, &name, &image, settle).await
    });
    match result {
        Ok(id) => {
            eprintln!("infra-operator upgrade-self: {name} runs {image} ({id})");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("infra-operator upgrade-self: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Replaces container `name` with one of `image` (see the module docs).
pub async fn replace(docker: &DockerClient, name: &str, image: &str, settle: Duration) -> Result<String, String> {
    let old = docker
        .inspect_full(name)
        .await
        .map_err(|e| format!("inspect {name}: {e}"))?
        .ok_or_else(|| format!("no container {name}"))?;
    let config = old.config.clone().unwrap_or_default();
    let mut env: Vec<String> = config
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !e.starts_with(&format!("{IMAGE_LABEL_ENV}=")))
        .collect();
    env.push(format!("{IMAGE_LABEL_ENV}={image}"));
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        env: Some(env),
        cmd: config.cmd.clone(),
        labels: config.labels.clone(),
        user: config.user.clone(),
        working_dir: config.working_dir.clone(),
        stop_signal: config.stop_signal.clone(),
        stop_timeout: config.stop_timeout,
        host_config: old.host_config.clone(),
        ..Default::default()
    };
    let previous = format!("{name}-previous");
    force_remove(docker, &previous).await;
    docker
        .rename(name, &previous)
        .await
        .map_err(|e| format!("rename {name}: {e}"))?;
    let grace = Duration::from_secs(config.stop_timeout.and_then(|t| u64::try_from(t).ok()).unwrap_or(30));
    if let Err(e) = docker.stop(&previous, grace).await {
        put_back(docker, name, &previous, None).await;
        return Err(format!("stop {name}: {e}"));
    }
    let created = match docker.create(name, body, &[]).await {
        Ok(id) => id,
        Err(e) => {
            put_back(docker, name, &previous, None).await;
            return Err(format!("create {name} from {image}: {e}"));
        }
    };
    if let Err(e) = docker.start(&created).await {
        put_back(docker, name, &previous, Some(&created)).await;
        return Err(format!("start {name} from {image}: {e}"));
    }
    // Settles: running the whole time, never restarted.
    let until = tokio::time::Instant::now() + settle;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let info = docker
            .inspect_full(&created)
            .await
            .map_err(|e| format!("inspect the new {name}: {e}"))?
            .unwrap_or_default();
        let running = info.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        let restarts = info.restart_count.unwrap_or(0);
        if !running || restarts > 0 {
            put_back(docker, name, &previous, Some(&created)).await;
            return Err(format!(
                "the new {name} on {image} did not keep running (running {running}, restarts {restarts}); the \
                 previous one runs again"
            ));
        }
    }
    force_remove(docker, &previous).await;
    Ok(created)
}

/// Undoes a replacement: removes the new container (if made), renames the
/// previous one back and starts it.
async fn put_back(docker: &DockerClient, name: &str, previous: &str, new: Option<&str>) {
    if let Some(id) = new {
        force_remove(docker, id).await;
    }
    if let Err(e) = docker.rename(previous, name).await {
        tracing::warn!(error = %e, previous, "cannot rename the previous operators container back");
    }
    if let Err(e) = docker.start(name).await {
        tracing::warn!(error = %e, name, "cannot start the previous operators container again");
    }
}

/// Removes a container, running or not; gone already is fine.
async fn force_remove(docker: &DockerClient, id: &str) {
    if let Err(e) = docker.remove_stopped(id).await {
        tracing::warn!(error = %e, id, "cannot remove a container of the upgrade");
    }
}

//! Backups where the data is: the coordinator asks the operator of a host
//! that runs a service (`infra.rpc.<host>.<tier>.backup`) to take one, list
//! them, or restore one. A backup is the output of the service's dump
//! command run in its own running container (`pg_dumpall`, `valkey-cli
//! --rdb`, `mariadb-dump`: the container has the tools and the
//! credentials), spooled to a file of this operator's and stored in an
//! S3 bucket; a restore feeds a stored object to the restore command on
//! stdin.
//!
//! # Guarantees
//! - A dump that exits non-zero, or does not finish in time, is never
//!   stored; what it wrote to stderr (its end) is the error.
//! - Memory stays flat: the dump streams to a file and the file to the
//!   store (in parts past the target's part size: S3 takes 5 GB in one
//!   PUT at most); the spool file (root's alone, under the state directory) is
//!   deleted whatever happens.
//! - Retention (`keep`) deletes only objects under the service's prefix,
//!   only after the new one is stored, oldest first.
//! - The store's keys arrive in the request and go into signed URLs only:
//!   never into a log line, an error or the command line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use infra_proto::bus::v1::{BackupCall, BackupObject, BackupReply};
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::decide::ContainerState;
use crate::reconcile::Ctx;
use crate::s3::Store;

/// Serves backup calls for this operator's host and tier until `shutdown`.
pub async fn answer_calls(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    crate::images::serve(
        ctx,
        shutdown,
        "backup calls",
        |ctx| async move { ctx.bus.backup_calls(&ctx.host, &ctx.tier).await },
        |ctx, payload| async move {
            let call = BackupCall::decode(payload).ok()?;
            let mut reply = answer(&ctx, &call).await.unwrap_or_else(|error| BackupReply {
                error,
                ..Default::default()
            });
            reply.host.clone_from(&ctx.host);
            Some(reply)
        },
    )
    .await;
}

/// The target with its endpoint reachable from here: a store that is a
/// service of the catalog is reached through its container on this host.
async fn reachable(ctx: &Ctx, call: &BackupCall) -> Result<infra_proto::bus::v1::BackupTarget, String> {
    let mut target = call.target.clone().ok_or("no target")?;
    if target.service.is_empty() {
        return Ok(target);
    }
    let label = format!("{}={}", crate::labels::SERVICE, target.service);
    let found = ctx
        .docker
        .endpoints(&ctx.host, &target.service_tier, &label, false)
        .await
        .map_err(|e| e.to_string())?;
    let mut url: url::Url = target
        .endpoint
        .parse()
        .map_err(|e| format!("endpoint {:?}: {e}", target.endpoint))?;
    let bad = |e: String| format!("endpoint {:?}: {e}", target.endpoint);
    if let Some(ep) = found.first() {
        url.set_host(Some(&ep.ip)).map_err(|e| bad(e.to_string()))?;
    } else if let Some((addr, port)) = target.remote.rsplit_once(':') {
        // On another host: its private address, where the port is published.
        url.set_host(Some(addr)).map_err(|e| bad(e.to_string()))?;
        url.set_port(port.parse().ok())
            .map_err(|()| bad(format!("port {port:?}")))?;
    } else {
        return Err(format!(
            "the backup store {} runs neither on {} nor on a host with a private address (infractl host add \
             --label addr=...)",
            target.service, ctx.host
        ));
    }
    target.endpoint = url.to_string().trim_end_matches('/').to_owned();
    Ok(target)
}

/// A reply that says this host is not the one to ask, and why.
fn passed_over(why: String) -> BackupReply {
    BackupReply {
        error: why,
        passed_over: true,
        ..Default::default()
    }
}

async fn answer(ctx: &Ctx, call: &BackupCall) -> Result<BackupReply, String> {
    let op = call.op.as_str();
    if !matches!(op, "list" | "run" | "restore") {
        return Err(format!("unknown backup operation {op:?}"));
    }
    // The member first (a replica passes over before it reaches the store),
    // then the store as this host reaches it (another host may).
    let id = if op == "list" {
        String::new()
    } else {
        match chosen_container(ctx, call).await {
            Ok(id) => id,
            Err(why) => return Ok(passed_over(why)),
        }
    };
    let target = match reachable(ctx, call).await {
        Ok(t) => t,
        Err(why) => return Ok(passed_over(format!("on {}: {why}", ctx.host))),
    };
    let store = Store::new(&target)?;
    if op == "list" {
        return Ok(BackupReply {
            objects: store.list(&call.prefix).await?,
            ..Default::default()
        });
    }
    if op == "run" {
        run(ctx, call, &id, &store).await
    } else {
        restore(ctx, call, &id, &store).await
    }
}

/// How long a member check may take.
const MEMBER_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// The running container of the call's service on this host, if it is the
/// one to use: its member check (when the call has one) exits 0 in it.
async fn chosen_container(ctx: &Ctx, call: &BackupCall) -> Result<String, String> {
    let id = running_container(ctx, &call.service).await?;
    if call.member_check.is_empty() {
        return Ok(id);
    }
    let out = ctx
        .docker
        .exec_output(&id, call.member_check.clone(), MEMBER_CHECK_TIMEOUT)
        .await
        .map_err(|e| format!("{} on {}: the member check could not run: {e}", call.service, ctx.host))?;
    match out.exit_code {
        Some(0) => Ok(id),
        code => {
            let said = out.output.trim();
            let said = said.char_indices().rev().nth(299).map_or(said, |(i, _)| &said[i..]);
            Err(format!(
                "{} on {}: not the member to use (its member check {}{})",
                call.service,
                ctx.host,
                code.map_or_else(
                    || format!("did not finish within {}s", MEMBER_CHECK_TIMEOUT.as_secs()),
                    |c| format!("exited with {c}")
                ),
                if said.is_empty() {
                    String::new()
                } else {
                    format!(": {said}")
                }
            ))
        }
    }
}

/// The running container of `service` on this host (the first replica).
async fn running_container(ctx: &Ctx, service: &str) -> Result<String, String> {
    let mut containers = ctx
        .docker
        .list_owned(&ctx.host, &ctx.tier, Some(service))
        .await
        .map_err(|e| e.to_string())?;
    containers.retain(|c| c.state == ContainerState::Running);
    containers.sort_by_key(|c| c.replica);
    containers
        .first()
        .map(|c| c.id.clone())
        .ok_or_else(|| format!("no running container of {service} on {}", ctx.host))
}

/// A spool file of this operator's for one call, deleted on drop.
struct Spool(std::path::PathBuf);

impl Spool {
    fn new(ctx: &Ctx, service: &str) -> Result<Self, String> {
        crate::reconcile::root_only_tree(&ctx.state_dir, "backups", service)?;
        let name = format!("{}.spool", nuid_like());
        Ok(Self(ctx.state_dir.join("backups").join(service).join(name)))
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A name no other call of this process uses.
fn nuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

fn timeout_of(call: &BackupCall) -> Duration {
    Duration::from_secs(u64::from(call.timeout_secs.max(60)))
}

fn failed(what: &str, exit: Option<i64>, stderr: &[u8], timeout: Duration) -> String {
    let said = String::from_utf8_lossy(stderr);
    let said = said.trim();
    match exit {
        None => format!("{what} did not finish within {}s", timeout.as_secs()),
        Some(code) if said.is_empty() => format!("{what} exited with {code}"),
        Some(code) => format!("{what} exited with {code}: {said}"),
    }
}

async fn run(ctx: &Ctx, call: &BackupCall, id: &str, store: &Store) -> Result<BackupReply, String> {
    let started = Instant::now();
    let spool = Spool::new(ctx, &call.service)?;
    let timeout = timeout_of(call);
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&spool.0)
        .await
        .map_err(|e| format!("{}: {e}", spool.0.display()))?;
    let done = ctx
        .docker
        .exec_streams(id, call.command.clone(), None, &mut file, timeout)
        .await
        .map_err(|e| e.to_string())?;
    drop(file);
    if done.exit_code != Some(0) {
        return Err(failed("the dump command", done.exit_code, &done.stderr, timeout));
    }
    if done.written == 0 {
        return Err("the dump command wrote nothing".into());
    }
    let sha256 = file_sha256(&spool.0).await?;
    store.ensure_bucket().await?;
    let parts = store.put_file(&call.key, &spool.0).await?;
    let mut deleted = Vec::new();
    if call.keep > 0 {
        let all = store.list(&call.prefix).await?;
        let excess = all.len().saturating_sub(call.keep as usize);
        for old in all.iter().take(excess).filter(|o| o.key != call.key) {
            store.delete(&old.key).await?;
            deleted.push(old.key.clone());
        }
    }
    tracing::info!(
        service = %call.service,
        key = %call.key,
        bytes = done.written,
        parts,
        seconds = started.elapsed().as_secs_f64(),
        deleted = deleted.len(),
        "backup stored"
    );
    Ok(BackupReply {
        objects: vec![BackupObject {
            key: call.key.clone(),
            size: done.written,
            last_modified: String::new(),
        }],
        size: done.written,
        seconds: started.elapsed().as_secs_f64(),
        sha256,
        deleted,
        container: id.to_owned(),
        ..Default::default()
    })
}

async fn restore(ctx: &Ctx, call: &BackupCall, id: &str, store: &Store) -> Result<BackupReply, String> {
    let started = Instant::now();
    let spool = Spool::new(ctx, &call.service)?;
    let size = store.get_file(&call.key, &spool.0).await?;
    let input = tokio::fs::File::open(&spool.0)
        .await
        .map_err(|e| format!("{}: {e}", spool.0.display()))?;
    let out_path = spool.0.with_extension("out");
    let _out = Spool(out_path.clone());
    let mut out = tokio::fs::File::create(&out_path)
        .await
        .map_err(|e| format!("{}: {e}", out_path.display()))?;
    let timeout = timeout_of(call);
    let done = ctx
        .docker
        .exec_streams(id, call.command.clone(), Some(input), &mut out, timeout)
        .await
        .map_err(|e| e.to_string())?;
    if done.exit_code != Some(0) {
        return Err(failed("the restore command", done.exit_code, &done.stderr, timeout));
    }
    tracing::info!(service = %call.service, key = %call.key, bytes = size, "backup restored");
    Ok(BackupReply {
        size,
        seconds: started.elapsed().as_secs_f64(),
        container: id.to_owned(),
        ..Default::default()
    })
}

async fn file_sha256(path: &std::path::Path) -> Result<String, String> {
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).await.map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

//! Secret files on the host: written before create in a tree only root
//! may enter, given to the container's user after create, deleted once no
//! container may need them.

use std::collections::HashSet;

use infra_proto::bus::v1::{DesiredService, ServiceSpec};

use crate::decide::Container;
use crate::docker::DockerError;
use crate::spec;

use super::*;

/// Writes the service's secret files, `<state_dir>/secrets/<service>/<name>`,
/// before its container is created (Docker wants a bind source to exist).
/// The tree is root's alone (0700), so no other user of the host reaches
/// a secret; a new file is root's, mode 0400, until [`own_secrets`] gives
/// it to the container's user.
pub(crate) async fn write_secrets(ctx: &Ctx, spec: &ServiceSpec) -> Result<(), DockerError> {
    use std::os::unix::fs::OpenOptionsExt;
    if spec.secrets.is_empty() {
        return Ok(());
    }
    root_only_tree(&ctx.state_dir, "secrets", &spec.name).map_err(|e| secret_error(&spec.name, "", e))?;
    for s in &spec.secrets {
        // A name is a file name here: never a path that leaves the tree.
        infra_bus::Token::new("secret", &s.name).map_err(|e| secret_error(&spec.name, &s.name, e.to_string()))?;
        let path = spec::secret_path(&ctx.state_dir, &spec.name, &s.name);
        let content = match ctx.bus.get_secret(&ctx.host, &s.key).await {
            Ok(Some(c)) => c,
            // NATS away or the secret gone: a file written before still serves.
            Ok(None) | Err(_) if path.exists() => continue,
            Ok(None) => {
                return Err(secret_error(
                    &spec.name,
                    &s.name,
                    "it is not in the secrets bucket".into(),
                ));
            }
            Err(e) => return Err(secret_error(&spec.name, &s.name, e.to_string())),
        };
        if std::fs::read(&path).ok().as_deref() != Some(content.as_ref()) {
            let tmp = path.with_extension("tmp");
            let _ = std::fs::remove_file(&tmp);
            let write = || -> std::io::Result<()> {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o400)
                    .open(&tmp)?;
                f.write_all(&content)?;
                f.sync_all()
            };
            write().map_err(|e| secret_error(&spec.name, &s.name, format!("{}: {e}", tmp.display())))?;
            std::fs::rename(&tmp, &path).map_err(|e| secret_error(&spec.name, &s.name, e.to_string()))?;
        }
    }
    Ok(())
}

/// Gives the service's secret files to the user container `id` runs as
/// (or to the `uid`/`gid` the Compose long syntax names), mode 0400 unless
/// the spec says otherwise: readable by that user only. A container that
/// runs as root gets 0444 (Docker's own default for secrets), because its
/// entrypoint commonly hands over to a service user that reads them too;
/// on the host, the 0700 tree keeps every other user out either way. Done
/// after create, before start, because the user is looked up in the
/// container's own `/etc/passwd`.
pub(crate) async fn own_secrets(ctx: &Ctx, spec: &ServiceSpec, id: &str) -> Result<(), DockerError> {
    use std::os::unix::fs::PermissionsExt;
    if spec.secrets.is_empty() {
        return Ok(());
    }
    let container_user = if spec.secrets.iter().any(|s| s.uid.is_none() || s.gid.is_none()) {
        ctx.docker.user_ids(id).await?
    } else {
        (0, 0)
    };
    for s in &spec.secrets {
        let path = spec::secret_path(&ctx.state_dir, &spec.name, &s.name);
        let (uid, gid) = (s.uid.unwrap_or(container_user.0), s.gid.unwrap_or(container_user.1));
        let mode = match s.mode {
            // A container that starts as root commonly steps down to a
            // service user of its own (postgres, mysql) that must read it
            // too: readable inside it, as Docker's own secrets are (0444).
            // The host tree stays root's alone.
            0 if uid == 0 => 0o444,
            0 => 0o400,
            m => m & 0o7777,
        };
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| {
            secret_error(
                &spec.name,
                &s.name,
                format!(
                    "cannot give {} to uid {uid} gid {gid}: {e} (the operator must run as root to hand secrets to a \
                     container's user)",
                    path.display()
                ),
            )
        })?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| secret_error(&spec.name, &s.name, e.to_string()))?;
    }
    Ok(())
}

/// Deletes the secret files of this service that no container may need
/// any more: those that neither the desired spec nor the previous one of a
/// rollout in progress mounts, once every container runs one of those two.
/// A service no longer desired loses its whole directory when its last
/// container is gone.
pub(crate) fn prune_secrets(ctx: &Ctx, service: &str, desired: Option<&DesiredService>, containers: &[Container]) {
    let dir = ctx.state_dir.join("secrets").join(service);
    let specs: Vec<&ServiceSpec> = desired
        .filter(|d| !d.absent)
        .into_iter()
        .flat_map(|d| d.spec.iter().chain(d.previous.iter()))
        .collect();
    if specs.is_empty() {
        if containers.is_empty()
            && dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!(service, error = %e, "could not delete the secret files of a removed service");
        }
        return;
    }
    let hashes: Vec<String> = specs.iter().map(|s| infra_proto::spec::spec_hash(s)).collect();
    if containers.iter().any(|c| !hashes.contains(&c.spec_hash)) {
        return;
    }
    let keep: HashSet<&str> = specs
        .iter()
        .flat_map(|s| s.secrets.iter().map(|m| m.name.as_str()))
        .collect();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep.contains(name.as_str()) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => tracing::info!(service, secret = %name, "deleted a secret file no container uses"),
                Err(err) => tracing::warn!(service, secret = %name, error = %err, "could not delete a secret file"),
            }
        }
    }
}

/// Makes `<state_dir>/<kind>/<service>` with both folders root's alone
/// (0700): no other user of the host reaches what the operator writes
/// there; a container sees only what is bind-mounted into it.
pub(crate) fn root_only_tree(state_dir: &std::path::Path, kind: &str, service: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let root = state_dir.join(kind);
    let dir = root.join(service);
    for d in [&root, &dir] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", d.display()))?;
    }
    Ok(())
}

pub(crate) fn secret_error(service: &str, secret: &str, reason: String) -> DockerError {
    DockerError::Prepare(format!("service {service}: secret {secret}: {reason}"))
}

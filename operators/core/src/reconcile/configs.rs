//! Catalog files on the host: the config mounts of a spec (bind-mounted
//! catalog files and folders, `configs:`), written from the host's copies
//! in the secrets bucket before create, and deleted once no container may
//! need them. Each mount is written once under a name of its content
//! ([`spec::config_path`]), whole or not at all (a temporary name, then a
//! rename), so a rollout's old container keeps its files while the new one
//! gets the new.

use std::collections::HashSet;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use infra_proto::bus::v1::{ConfigFile, ConfigMount, DesiredService, ServiceSpec};
use sha2::{Digest, Sha256};

use crate::decide::Container;
use crate::docker::DockerError;
use crate::spec;

use super::*;

/// Writes every config mount of `spec` that is not on the host yet.
pub(crate) async fn write_configs(ctx: &Ctx, spec: &ServiceSpec) -> Result<(), DockerError> {
    if spec.configs.is_empty() {
        return Ok(());
    }
    root_only_tree(&ctx.state_dir, "configs", &spec.name).map_err(|e| config_error(&spec.name, "", e))?;
    for m in &spec.configs {
        let path = spec::config_path(&ctx.state_dir, &spec.name, m);
        if path.exists() {
            continue;
        }
        let fail = |reason: String| config_error(&spec.name, &m.source, reason);
        let tmp = path.with_extension("tmp");
        remove_any(&tmp).map_err(|e| fail(format!("{}: {e}", tmp.display())))?;
        if m.directory {
            std::fs::create_dir(&tmp).map_err(|e| fail(format!("{}: {e}", tmp.display())))?;
            own(&tmp, m, 0o755).map_err(|e| fail(format!("{}: {e}", tmp.display())))?;
        }
        for f in &m.files {
            let content = fetch(ctx, f).await.map_err(&fail)?;
            let file = if m.directory {
                let rel = safe_relative(&f.path).map_err(&fail)?;
                let file = tmp.join(rel);
                let mut made = tmp.clone();
                for part in rel.parent().into_iter().flat_map(Path::components) {
                    made.push(part);
                    if !made.exists() {
                        std::fs::create_dir(&made).map_err(|e| fail(format!("{}: {e}", made.display())))?;
                        own(&made, m, 0o755).map_err(|e| fail(format!("{}: {e}", made.display())))?;
                    }
                }
                file
            } else {
                tmp.clone()
            };
            write_file(&file, &content, f.mode, m).map_err(|e| fail(format!("{}: {e}", file.display())))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// The host's copy of one file's content, checked against its digest.
async fn fetch(ctx: &Ctx, f: &ConfigFile) -> Result<bytes::Bytes, String> {
    let what = if f.path.is_empty() {
        String::new()
    } else {
        format!("{}: ", f.path)
    };
    match ctx.bus.get_secret(&ctx.host, &f.key).await {
        Ok(Some(c)) if hex::encode(Sha256::digest(&c)) == f.sha256 => Ok(c),
        Ok(Some(_)) => Err(format!(
            "{what}the copy in the secrets bucket does not match its digest"
        )),
        Ok(None) => Err(format!("{what}it is not in the secrets bucket (key {})", f.key)),
        Err(e) => Err(format!("{what}{e}")),
    }
}

/// A relative path of a mounted folder, refused if it would leave it.
fn safe_relative(p: &str) -> Result<&Path, String> {
    let path = Path::new(p);
    let ok = !p.is_empty() && path.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    if ok {
        Ok(path)
    } else {
        Err(format!("{p:?} is not a path inside the folder"))
    }
}

fn write_file(path: &Path, content: &[u8], mode: u32, m: &ConfigMount) -> std::io::Result<()> {
    use std::io::Write;
    let mode = if mode == 0 { 0o444 } else { mode & 0o7777 };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content)?;
    f.sync_all()?;
    own(path, m, mode)
}

/// Gives a written file or folder its owner (the long syntax's, else the
/// operator's own: root in production) and mode.
fn own(path: &Path, m: &ConfigMount, mode: u32) -> std::io::Result<()> {
    if m.uid.is_some() || m.gid.is_some() {
        std::os::unix::fs::chown(path, m.uid, m.gid)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes the config mounts of this service that no container may need
/// any more, by the rule of [`prune_secrets`]: those neither the desired
/// spec nor a rollout's previous one has, once every container runs one of
/// those two; the whole folder once a removed service has no container.
pub(crate) fn prune_configs(ctx: &Ctx, service: &str, desired: Option<&DesiredService>, containers: &[Container]) {
    let dir = ctx.state_dir.join("configs").join(service);
    if !dir.exists() {
        return;
    }
    let specs: Vec<&ServiceSpec> = desired
        .filter(|d| !d.absent)
        .into_iter()
        .flat_map(|d| d.spec.iter().chain(d.previous.iter()))
        .collect();
    if specs.is_empty() {
        if containers.is_empty()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!(service, error = %e, "could not delete the config files of a removed service");
        }
        return;
    }
    let hashes: Vec<String> = specs.iter().map(|s| infra_proto::spec::spec_hash(s)).collect();
    if containers.iter().any(|c| !hashes.contains(&c.spec_hash)) {
        return;
    }
    let keep: HashSet<String> = specs
        .iter()
        .flat_map(|s| s.configs.iter().map(infra_proto::spec::config_mount_id))
        .collect();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            match remove_any(&e.path()) {
                Ok(()) => tracing::debug!(service, config = %name, "deleted config files no container uses"),
                Err(err) => tracing::warn!(service, config = %name, error = %err, "could not delete config files"),
            }
        }
    }
}

fn config_error(service: &str, source: &str, reason: String) -> DockerError {
    DockerError::Prepare(format!("service {service}: config {source}: {reason}"))
}

//! Catalog files a service mounts: bind-mount sources inside the catalog
//! (a file or a folder) and top-level `configs:`. They travel to the
//! service's host through the bus (the secrets bucket, under a key named by
//! their content), so a host needs no copy of the catalog; the operator
//! writes them under its state directory and mounts them from there.
//!
//! Bind sources outside the catalog (`/var/run/docker.sock`, `/proc`, a
//! data folder of the host) stay host-local: they must exist on every host
//! the service runs on, and the lint says so (`host-path`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use infra_compose::{Catalog, MountKind, SecretSource, Service};
use infra_proto::bus::v1::{ConfigFile, ConfigMount};
use sha2::{Digest, Sha256};

use super::{ConvertError, SecretContent, err};

/// The most files one mounted catalog folder may hold.
pub const MAX_FOLDER_FILES: usize = 256;

/// Whether a bind source lies inside the catalog (and so travels).
pub fn in_catalog(catalog: &Catalog, source: &str) -> bool {
    Path::new(source).starts_with(&catalog.root)
}

/// The service's catalog files as config mounts, and their contents.
pub fn configs(
    catalog: &Catalog,
    svc: &Service,
    env: &BTreeMap<String, String>,
) -> Result<(Vec<ConfigMount>, Vec<SecretContent>), ConvertError> {
    let mut mounts = Vec::new();
    let mut contents: BTreeMap<String, SecretContent> = BTreeMap::new();
    for (i, m) in svc.volumes.iter().enumerate() {
        let Some(source) = m
            .source
            .as_deref()
            .filter(|s| m.kind == MountKind::Bind && in_catalog(catalog, s))
        else {
            continue;
        };
        let field = format!("volumes[{i}]");
        let fail = |message: String| {
            let mut e = err(svc, &field, message);
            e.line = catalog.key_line(&svc.name, &field).unwrap_or(svc.line);
            e
        };
        let shown = Path::new(source)
            .strip_prefix(&catalog.root)
            .map_or_else(|_| source.to_owned(), |p| p.display().to_string());
        let path = resolve(catalog, source).map_err(|e| fail(format!("{shown}: {e}")))?;
        let meta = std::fs::metadata(&path).map_err(|e| fail(format!("{shown}: {e}")))?;
        let files = if meta.is_dir() {
            folder_files(&path).map_err(|e| fail(format!("{shown}: {e}")))?
        } else {
            vec![(String::new(), path.clone())]
        };
        let mut out = Vec::new();
        for (rel, file) in files {
            let (f, content) = read_file(&rel, &file, None).map_err(|e| fail(format!("{shown}: {e}")))?;
            contents.entry(f.key.clone()).or_insert(content);
            out.push(f);
        }
        mounts.push(ConfigMount {
            source: shown,
            target: m.target.clone(),
            directory: meta.is_dir(),
            files: out,
            uid: None,
            gid: None,
            read_only: m.read_only,
        });
    }
    for c in &svc.configs {
        let fail = |message: String| err(svc, "configs", format!("config {:?}: {message}", c.source));
        let def = catalog
            .configs
            .get(&c.source)
            .ok_or_else(|| fail("is not declared at top level".into()))?;
        let bytes: Vec<u8> = match &def.source {
            SecretSource::File(path) => {
                let path = resolve(catalog, &path.to_string_lossy()).map_err(|e| fail(e.to_string()))?;
                read_limited(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?
            }
            SecretSource::Environment(var) => env
                .get(var)
                .ok_or_else(|| fail(format!("environment variable {var} is not set")))?
                .clone()
                .into_bytes(),
            SecretSource::Content(s) => s.clone().into_bytes(),
            SecretSource::External => return Err(fail("is external, which needs Swarm".into())),
        };
        let parse_id = |v: &Option<String>, what: &str| -> Result<Option<u32>, ConvertError> {
            v.as_deref()
                .map(|x| x.parse().map_err(|_| fail(format!("{what} {x:?} is not a number"))))
                .transpose()
        };
        // Compose: a config's default target is `/<name>`, read-only,
        // mode 0444.
        let target = match c.target.as_deref() {
            Some(t) if t.starts_with('/') => t.to_owned(),
            Some(t) => format!("/{t}"),
            None => format!("/{}", c.source),
        };
        let (f, content) = content_file(String::new(), bytes, c.mode.unwrap_or(0o444));
        contents.entry(f.key.clone()).or_insert(content);
        mounts.push(ConfigMount {
            source: format!("config {}", c.source),
            target,
            directory: false,
            files: vec![f],
            uid: parse_id(&c.uid, "uid")?,
            gid: parse_id(&c.gid, "gid")?,
            read_only: true,
        });
    }
    Ok((mounts, contents.into_values().collect()))
}

/// The real path of `source`, refused when a link takes it out of the
/// catalog (a catalog must not read the coordinator's `/etc` into the bus).
fn resolve(catalog: &Catalog, source: &str) -> std::io::Result<PathBuf> {
    let real = std::fs::canonicalize(source)?;
    let root = std::fs::canonicalize(&catalog.root)?;
    if real.starts_with(&root) || !Path::new(source).starts_with(&catalog.root) {
        Ok(real)
    } else {
        Err(std::io::Error::other(format!(
            "it leads to {}, outside the catalog",
            real.display()
        )))
    }
}

/// Every regular file under `dir`, by `/`-separated relative path, in
/// order. Links to files inside are followed; links leaving the folder and
/// anything but files and folders are refused.
fn folder_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((prefix, d)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let real = std::fs::canonicalize(e.path())?;
            if !real.starts_with(dir) {
                return Err(std::io::Error::other(format!("{rel} leads outside the folder")));
            }
            let meta = std::fs::metadata(&real)?;
            if meta.is_dir() {
                stack.push((rel, real));
            } else if meta.is_file() {
                out.push((rel, real));
            } else {
                return Err(std::io::Error::other(format!("{rel} is not a file or a folder")));
            }
            if out.len() > MAX_FOLDER_FILES {
                return Err(std::io::Error::other(format!(
                    "the folder holds more than {MAX_FOLDER_FILES} files; mount a smaller one"
                )));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    let len = std::fs::metadata(path)?.len();
    if len > infra_compose::MAX_SECRET_BYTES {
        return Err(std::io::Error::other(format!(
            "it is {len} bytes; a file the catalog mounts may have at most {} (it travels in one message)",
            infra_compose::MAX_SECRET_BYTES
        )));
    }
    std::fs::read(path)
}

/// One file of a mount: its content, and its mode made readable by all
/// (the owner on the host is root, not the catalog's author), execute bits
/// kept (`galera-start.sh`).
fn read_file(rel: &str, path: &Path, mode: Option<u32>) -> std::io::Result<(ConfigFile, SecretContent)> {
    use std::os::unix::fs::PermissionsExt;
    let bytes = read_limited(path)?;
    let mode = mode.unwrap_or_else(|| {
        let m = std::fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o777);
        m | 0o444
    });
    Ok(content_file(rel.to_owned(), bytes, mode))
}

fn content_file(path: String, bytes: Vec<u8>, mode: u32) -> (ConfigFile, SecretContent) {
    let sha = hex::encode(Sha256::digest(&bytes));
    let key = infra_proto::spec::config_key(&sha);
    (
        ConfigFile {
            path,
            key: key.clone(),
            sha256: sha,
            mode,
        },
        SecretContent {
            key,
            content: bytes.into(),
        },
    )
}

//! The catalog revision a coordinator works from: the bus's current one
//! (`infra_bus::catalog`), unpacked into a folder of this process and read
//! by the same loader as ever. Publishing packs a folder (every file,
//! overrides and the dotenv file apart), loads it as a deploy would (so a
//! bad catalog is refused with the file, line and service, and the current
//! revision stays), and stores it as the next number.
//!
//! A coordinator started with `compose_dir` publishes that folder when it
//! starts (unless it is the current revision already) and again whenever
//! its files change (one machine, or a folder kept in step by other
//! means); a revision pushed meanwhile stays current until then. Without
//! it, a coordinator only reads what `infractl catalog push` published.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use infra_bus::catalog::CatalogStore;
use infra_compose::LoadOptions;
use infra_proto::bus::v1::{CatalogFile, CatalogHead, CatalogRevision};

use crate::coordinator::{Coordinator, unavailable};
use crate::error::Error;
use crate::selections;

/// The most files a catalog may hold.
pub const MAX_FILES: usize = 20_000;

/// A revision unpacked on this coordinator's disk, as the loader reads it.
#[derive(Clone, Debug)]
pub struct Unpacked {
    /// What it is.
    pub head: CatalogHead,
    /// The catalog root.
    pub root: PathBuf,
    /// The override files, in order.
    pub overrides: Vec<PathBuf>,
    /// The dotenv file given apart, if any.
    pub env_file: Option<PathBuf>,
}

/// The revisions this coordinator unpacked, by digest, under a folder of
/// its own that goes with the process.
pub struct Revisions {
    store: tokio::sync::OnceCell<CatalogStore>,
    dir: tempfile::TempDir,
    unpacked: tokio::sync::Mutex<BTreeMap<String, Unpacked>>,
    replicas: usize,
    /// The digest of `compose_dir` when this process last published it
    /// (or found it current): it is published again only once it changes,
    /// so a catalog pushed meanwhile stays current.
    published_dir: tokio::sync::Mutex<Option<String>>,
    /// [`stat_fingerprint`] of `compose_dir` when its digest was last
    /// taken: while it holds, the folder is not read again.
    published_stat: std::sync::Mutex<Option<u64>>,
}

impl std::fmt::Debug for Revisions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revisions")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Revisions {
    /// An empty cache; the store is opened on first use with `replicas`.
    pub fn new(replicas: usize) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            store: tokio::sync::OnceCell::new(),
            dir: tempfile::Builder::new().prefix("infra-catalog-").tempdir()?,
            unpacked: tokio::sync::Mutex::new(BTreeMap::new()),
            replicas,
            published_dir: tokio::sync::Mutex::new(None),
            published_stat: std::sync::Mutex::new(None),
        }))
    }
}

/// A cheap fingerprint of what [`pack`] would read: every path under `dir`
/// (`.git` left out) with its size and modification time, and the same of
/// the override and dotenv files, without reading any content. A change
/// to any file (an edit, a `git pull`, a file added or removed) changes
/// it; `None` when a file cannot be examined (then the folder is read).
pub fn stat_fingerprint(dir: &Path, overrides: &[PathBuf], env_file: Option<&Path>) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let stat = |p: &Path, h: &mut std::collections::hash_map::DefaultHasher| -> Option<bool> {
        // Links followed, as `pack` reads what they lead to.
        let m = std::fs::metadata(p).ok()?;
        p.hash(h);
        m.len().hash(h);
        m.modified().ok()?.hash(h);
        Some(m.is_dir())
    };
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&d)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().is_some_and(|n| n != ".git"))
            .collect();
        entries.sort();
        for p in entries {
            if stat(&p, &mut h)? {
                stack.push(p);
            }
        }
    }
    for f in overrides.iter().map(PathBuf::as_path).chain(env_file) {
        stat(f, &mut h)?;
    }
    Some(h.finish())
}

/// How many unpacked revisions stay on disk.
const KEEP_UNPACKED: usize = 4;

/// Reads `dir` into a revision: every regular file under it (`.git`
/// left out), links followed only when they stay inside it, plus the
/// override and dotenv files. Blocking.
pub fn pack(dir: &Path, overrides: &[PathBuf], env_file: Option<&Path>) -> Result<CatalogRevision, String> {
    let root = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !root.is_dir() {
        return Err(format!("{} is not a folder", dir.display()));
    }
    let mut files = Vec::new();
    let mut total: u64 = 0;
    let mut stack = vec![(String::new(), root.clone())];
    while let Some((prefix, d)) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        for e in entries {
            let e = e.map_err(|e| format!("{}: {e}", d.display()))?;
            let name = e
                .file_name()
                .into_string()
                .map_err(|n| format!("{}: {n:?} is not UTF-8", d.display()))?;
            if name == ".git" {
                continue;
            }
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let shown = dir.join(&rel);
            let real = std::fs::canonicalize(e.path()).map_err(|e| format!("{}: {e}", shown.display()))?;
            if !real.starts_with(&root) {
                return Err(format!(
                    "{}: it leads to {}, outside the catalog; copy the file in instead",
                    shown.display(),
                    real.display()
                ));
            }
            let meta = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", shown.display()))?;
            if meta.is_dir() {
                stack.push((rel, real));
            } else if meta.is_file() {
                total += meta.len();
                if total > infra_bus::catalog::MAX_BYTES || files.len() >= MAX_FILES {
                    return Err(format!(
                        "{} holds more than {} bytes or {MAX_FILES} files; a catalog is configuration, not data",
                        dir.display(),
                        infra_bus::catalog::MAX_BYTES
                    ));
                }
                files.push(read(&real, rel)?);
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let named = |p: &Path| -> Result<CatalogFile, String> {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{}: not a file name", p.display()))?;
        read(p, name.to_owned())
    };
    Ok(CatalogRevision {
        head: Some(CatalogHead {
            source: dir.display().to_string(),
            git_commit: git_commit(dir),
            ..Default::default()
        }),
        files,
        overrides: overrides.iter().map(|p| named(p)).collect::<Result<_, _>>()?,
        env_file: env_file.map(named).transpose()?,
    })
}

fn read(path: &Path, rel: String) -> Result<CatalogFile, String> {
    use std::os::unix::fs::PermissionsExt;
    let content = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = std::fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o7777);
    Ok(CatalogFile {
        path: rel,
        content,
        mode,
    })
}

/// The commit of the git checkout `dir` is in (`+dirty` when it has
/// changes); empty when it is none or git is not installed.
pub fn git_commit(dir: &Path) -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "HEAD"]).filter(|c| !c.is_empty()) else {
        return String::new();
    };
    match git(&["status", "--porcelain", "--", "."]) {
        Some(s) if !s.is_empty() => format!("{commit}+dirty"),
        _ => commit,
    }
}

/// A relative path of a revision, refused if it would leave its folder.
fn inside(base: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!("{rel:?} is not a path inside the catalog"));
    }
    Ok(base.join(p))
}

/// Writes `rev` under `into` (whole, or not at all). Blocking.
pub fn unpack(rev: &CatalogRevision, into: &Path) -> Result<Unpacked, String> {
    use std::os::unix::fs::PermissionsExt;
    let head = rev.head.clone().unwrap_or_default();
    let tmp = into.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let write = |path: &Path, f: &CatalogFile| -> Result<(), String> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(path, &f.content).map_err(|e| format!("{}: {e}", path.display()))?;
        let mode = if f.mode == 0 { 0o644 } else { f.mode & 0o777 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let root = tmp.join("catalog");
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    for f in &rev.files {
        write(&inside(&root, &f.path)?, f)?;
    }
    let mut overrides = Vec::new();
    for (i, f) in rev.overrides.iter().enumerate() {
        let name = format!("{:02}-{}", i + 1, f.path);
        write(&inside(&tmp.join("overrides"), &name)?, f)?;
        overrides.push(into.join("overrides").join(name));
    }
    let mut env_file = None;
    if let Some(f) = &rev.env_file {
        write(&inside(&tmp.join("env"), &f.path)?, f)?;
        env_file = Some(into.join("env").join(&f.path));
    }
    std::fs::rename(&tmp, into).map_err(|e| format!("{}: {e}", into.display()))?;
    Ok(Unpacked {
        head,
        root: into.join("catalog"),
        overrides,
        env_file,
    })
}

/// Replaces the unpacked folder `from` in `text` with `shown` (the folder
/// the pusher named), so messages name the user's files.
pub fn rename_paths(text: &str, from: &Path, shown: &str) -> String {
    text.replace(&from.display().to_string(), shown.trim_end_matches('/'))
}

impl Coordinator {
    async fn catalog_store(&self) -> Result<&CatalogStore, Error> {
        let r = &self.revisions;
        r.store
            .get_or_try_init(|| CatalogStore::open(&self.bus, r.replicas))
            .await
            .map_err(|e| unavailable(format!("the catalog store: {e}")))
    }

    /// Loads an unpacked revision as a deploy would: the catalog, then its
    /// named selections. `Err` carries the loader's message.
    pub(crate) async fn check(
        &self,
        root: PathBuf,
        overrides: Vec<PathBuf>,
        env_file: Option<PathBuf>,
    ) -> Result<(), String> {
        let opts = LoadOptions {
            env_file,
            env: Self::env(),
            overrides,
            secret_dirs: self.settings.secret_dirs.clone(),
        };
        tokio::task::spawn_blocking(move || {
            let catalog = infra_compose::load_catalog(&root, &opts).map_err(|e| e.to_string())?;
            selections::load(&catalog.root).map_err(|e| e.to_string())?;
            Ok(())
        })
        .await
        .map_err(|e| format!("loading the catalog stopped: {e}"))?
    }

    /// Publishes this coordinator's `compose_dir` when its files changed
    /// since this process last published it (or at first, when they are
    /// not the current revision's), after checking it loads.
    async fn publish_dir(&self, dir: &Path) -> Result<(), Error> {
        let store = self.catalog_store().await?;
        let (d, o, e) = (
            dir.to_owned(),
            self.settings.overrides.clone(),
            self.settings.env_file.clone(),
        );
        // Unchanged since it was last read: nothing to read again (this runs
        // before every plan and deploy).
        let (sd, so, se) = (d.clone(), o.clone(), e.clone());
        let stat = tokio::task::spawn_blocking(move || stat_fingerprint(&sd, &so, se.as_deref()))
            .await
            .ok()
            .flatten();
        let stat_seen = || {
            *self
                .revisions
                .published_stat
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if stat.is_some() && stat == stat_seen() {
            return Ok(());
        }
        let mut rev = tokio::task::spawn_blocking(move || pack(&d, &o, e.as_deref()))
            .await
            .map_err(|e| Error::internal(format!("reading the catalog stopped: {e}")))?
            .map_err(Error::invalid)?;
        let digest = infra_bus::catalog::digest(&rev);
        let mut last = self.revisions.published_dir.lock().await;
        let remember = |stat: Option<u64>| {
            *self
                .revisions
                .published_stat
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = stat;
        };
        if last.as_deref() == Some(digest.as_str()) {
            remember(stat);
            return Ok(());
        }
        let current = store.current().await.map_err(unavailable)?;
        if current.is_some_and(|h| h.digest == digest) {
            *last = Some(digest);
            remember(stat);
            return Ok(());
        }
        // Checked where the user's files are, so messages name them.
        self.check(
            dir.to_owned(),
            self.settings.overrides.clone(),
            self.settings.env_file.clone(),
        )
        .await
        .map_err(Error::invalid)?;
        if let Some(h) = rev.head.as_mut() {
            h.pushed_by.clone_from(&self.settings.id);
        }
        let (head, new) = store.publish(rev).await.map_err(unavailable)?;
        *last = Some(digest);
        remember(stat);
        if new {
            tracing::info!(revision = head.number, source = %head.source, "published the catalog folder as a new revision");
            self.event(
                infra_proto::bus::v1::EventKind::CatalogPublished,
                "",
                "",
                "",
                format!("revision {} from {} ({} files)", head.number, head.source, head.files),
            )
            .await;
        }
        Ok(())
    }

    /// Publishes a pushed catalog (`PushCatalog`) after checking it loads;
    /// messages name files under the pusher's `source`.
    pub async fn push_catalog(
        &self,
        req: infra_proto::coordinator::v1::PushCatalogRequest,
    ) -> Result<(CatalogHead, bool), Error> {
        let store = self.catalog_store().await?;
        let source = if req.source.is_empty() {
            "catalog".to_owned()
        } else {
            req.source.clone()
        };
        let rev = CatalogRevision {
            head: Some(CatalogHead {
                source: source.clone(),
                git_commit: req.git_commit,
                pushed_by: "infractl".into(),
                ..Default::default()
            }),
            files: req.files,
            overrides: req.overrides,
            env_file: req.env_file,
        };
        if rev.files.len() > MAX_FILES {
            return Err(Error::invalid(format!("the catalog holds more than {MAX_FILES} files")));
        }
        let digest = infra_bus::catalog::digest(&rev);
        if let Some(h) = store
            .current()
            .await
            .map_err(unavailable)?
            .filter(|h| h.digest == digest)
        {
            return Ok((h, false));
        }
        let scratch = tempfile::Builder::new()
            .prefix("infra-push-")
            .tempdir()
            .map_err(|e| Error::internal(format!("a folder to check the catalog in: {e}")))?;
        let into = scratch.path().join("rev");
        let (r, i) = (rev.clone(), into.clone());
        let u = tokio::task::spawn_blocking(move || unpack(&r, &i))
            .await
            .map_err(|e| Error::internal(format!("unpacking the catalog stopped: {e}")))?
            .map_err(Error::invalid)?;
        self.check(u.root.clone(), u.overrides.clone(), u.env_file.clone())
            .await
            .map_err(|e| Error::invalid(rename_paths(&e, &u.root, &source)))?;
        let (head, new) = store.publish(rev).await.map_err(unavailable)?;
        if new {
            self.event(
                infra_proto::bus::v1::EventKind::CatalogPublished,
                "",
                "",
                "",
                format!("revision {} from {} ({} files)", head.number, head.source, head.files),
            )
            .await;
        }
        Ok((head, new))
    }

    /// The current revision and those kept before it, newest first.
    pub async fn catalog_history(&self) -> Result<(Option<CatalogHead>, Vec<CatalogHead>), Error> {
        let store = self.catalog_store().await?;
        let current = store.current().await.map_err(unavailable)?;
        let history = store.history().await.map_err(unavailable)?;
        Ok((current, history))
    }

    /// The current revision, unpacked here (publishing `compose_dir`
    /// first when this coordinator has one).
    pub async fn current_revision(&self) -> Result<Unpacked, Error> {
        if let Some(dir) = self.settings.compose_dir.clone() {
            self.publish_dir(&dir).await?;
        }
        let store = self.catalog_store().await?;
        let head = store.current().await.map_err(unavailable)?.ok_or_else(|| {
            Error::precondition(
                "no catalog on the bus yet: push one with `infractl catalog push DIR` (or start a coordinator with \
                 compose_dir set)",
            )
        })?;
        let mut cache = self.revisions.unpacked.lock().await;
        if let Some(u) = cache.get(&head.digest) {
            return Ok(u.clone());
        }
        let rev = store.get(&head).await.map_err(unavailable)?;
        let into = self.revisions.dir.path().join(format!(
            "rev-{}-{}",
            head.number,
            &head.digest[..head.digest.len().min(8)]
        ));
        let u = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&into);
            unpack(&rev, &into)
        })
        .await
        .map_err(|e| Error::internal(format!("unpacking the catalog stopped: {e}")))?
        .map_err(Error::internal)?;
        // The oldest unpacked ones go.
        while cache.len() >= KEEP_UNPACKED {
            let oldest = cache.iter().min_by_key(|(_, u)| u.head.number).map(|(k, _)| k.clone());
            if let Some(u) = oldest.and_then(|k| cache.remove(&k))
                && let Some(dir) = u.root.parent()
            {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        cache.insert(head.digest.clone(), u.clone());
        Ok(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stat_fingerprint_changes_with_any_file_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let stack = dir.path().join("04-data/app/docker-compose.yml");
        std::fs::create_dir_all(stack.parent().unwrap()).unwrap();
        std::fs::write(&stack, "services: {}\n").unwrap();
        let over = dir.path().join("over.yml");
        std::fs::write(&over, "services: {}\n").unwrap();
        let fp = || stat_fingerprint(dir.path(), std::slice::from_ref(&over), None).expect("a fingerprint");
        let first = fp();
        assert_eq!(fp(), first, "nothing changed");
        std::fs::write(&stack, "services: {a: {image: x:1}}\n").unwrap();
        let edited = fp();
        assert_ne!(edited, first, "a stack edited");
        std::fs::write(dir.path().join("04-data/app/extra.conf"), "x").unwrap();
        let added = fp();
        assert_ne!(added, edited, "a file added");
        std::fs::write(&over, "services: {b: {image: y:1}}\n").unwrap();
        assert_ne!(fp(), added, "an override edited");
        // .git is not the catalog.
        let now = fp();
        std::fs::create_dir_all(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join(".git/HEAD"), "ref").unwrap();
        assert_eq!(fp(), now);
        assert_eq!(stat_fingerprint(&dir.path().join("missing"), &[], None), None);
    }
}

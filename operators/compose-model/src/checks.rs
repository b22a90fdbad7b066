//! Checks that need the whole catalog once it is built: the references
//! services make, and where secret and config files live.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{LoadError, LoadErrorKind};
use crate::keypath::KeyPath;
use crate::load::{Catalog, Doc, LoadOptions, MAX_SECRET_BYTES, RawService};
use crate::model::MountKind;
use crate::values::suggest;

/// Secret and config files must be regular files inside the catalog, the
/// override files' directories or `opts.secret_dirs` (symlinks resolved),
/// and no larger than [`MAX_SECRET_BYTES`]. The error names the file and
/// line of the definition and the services that use it.
pub(crate) fn check_sources(cat: &Catalog, opts: &LoadOptions) -> Result<(), LoadError> {
    let mut allowed: Vec<PathBuf> = vec![cat.root.clone()];
    allowed.extend(opts.overrides.iter().filter_map(|o| o.parent().map(Path::to_path_buf)));
    allowed.extend(opts.secret_dirs.iter().cloned());
    let allowed: Vec<PathBuf> = allowed.iter().filter_map(|d| d.canonicalize().ok()).collect();
    for (kind, defs) in [("secret", &cat.secrets), ("config", &cat.configs)] {
        for (name, def) in defs {
            let crate::model::SecretSource::File(path) = &def.source else {
                continue;
            };
            let users: Vec<&str> = cat
                .services
                .values()
                .filter(|s| {
                    let refs = if kind == "secret" { &s.secrets } else { &s.configs };
                    refs.iter().any(|r| &r.source == name)
                })
                .map(|s| s.name.as_str())
                .collect();
            let fail = |kind_: LoadErrorKind, why: String| {
                let used = if users.is_empty() {
                    "no service uses it".to_owned()
                } else {
                    format!("used by service {}", users.join(", "))
                };
                let mut e = LoadError::new(kind_, &def.file, format!("{kind} {name:?}: {why} ({used})"))
                    .at(Some(def.line))
                    .key(format!("{kind}s.{name}.file"));
                if let Some(s) = users.first() {
                    e = e.service(s);
                }
                e
            };
            let real = path.canonicalize().map_err(|e| {
                fail(
                    LoadErrorKind::MissingFile,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            if !allowed.iter().any(|a| real.starts_with(a)) {
                let via = if &real == path {
                    String::new()
                } else {
                    format!(" (it resolves to {})", real.display())
                };
                return Err(fail(
                    LoadErrorKind::OutsideCatalog,
                    format!(
                        "file {}{via} is outside the catalog ({}); secret and config files must live in it, \
                         beside an override file, or in a directory named by the coordinator's secret_dirs",
                        path.display(),
                        cat.root.display()
                    ),
                ));
            }
            let meta = std::fs::metadata(&real)
                .map_err(|e| fail(LoadErrorKind::Io, format!("cannot read {}: {e}", path.display())))?;
            if !meta.is_file() {
                return Err(fail(
                    LoadErrorKind::InvalidValue,
                    format!("{} is not a regular file", path.display()),
                ));
            }
            if meta.len() > MAX_SECRET_BYTES {
                return Err(fail(
                    LoadErrorKind::TooLarge,
                    format!(
                        "file {} is {} bytes; a {kind} may be at most {MAX_SECRET_BYTES} bytes",
                        path.display(),
                        meta.len()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Cross-file checks that need the whole catalog: dependency targets and
/// the volumes, networks, secrets and configs services use.
pub(crate) fn check_references(
    cat: &Catalog,
    raw: &BTreeMap<String, RawService>,
    docs: &[Doc],
) -> Result<(), LoadError> {
    for (name, svc) in &cat.services {
        let Some(rs) = raw.get(name) else { continue };
        let d = &docs[rs.doc];
        let base = KeyPath::root().key("services").key(name);
        let at = |rel: KeyPath| {
            let mut full = base.clone();
            full.0.extend(rel.0);
            (d.lines.line(&full), full)
        };
        let undeclared = |rel: KeyPath, msg: String| {
            let (line, full) = at(rel);
            LoadError::new(LoadErrorKind::UndeclaredReference, &d.path, msg)
                .at(line)
                .service(name)
                .key(&full)
        };
        for (i, dep) in svc.depends_on.iter().enumerate() {
            // An optional dependency may name a service this catalog does
            // not have (Compose only warns): it is simply not waited for.
            if cat.services.contains_key(&dep.service) || !dep.required {
                continue;
            }
            let dp = KeyPath::root().key("depends_on");
            let rel = if d
                .lines
                .exact(&{
                    let mut f = base.clone();
                    f.0.extend(dp.key(&dep.service).0);
                    f
                })
                .is_some()
            {
                dp.key(&dep.service)
            } else {
                dp.index(i)
            };
            let (line, full) = at(rel);
            let hint = suggest(&dep.service, cat.services.keys().map(String::as_str))
                .map(|s| format!("; did you mean {s:?}?"))
                .unwrap_or_default();
            return Err(LoadError::new(
                LoadErrorKind::UnknownDependency,
                &d.path,
                format!("depends on unknown service {:?}{hint}", dep.service),
            )
            .at(line)
            .service(name)
            .key(&full));
        }
        for (i, m) in svc.volumes.iter().enumerate() {
            let undeclared_src = match (m.kind, &m.source) {
                (MountKind::Volume, Some(src)) if !cat.volumes.contains_key(src) => Some(src),
                _ => None,
            };
            if let Some(src) = undeclared_src {
                return Err(undeclared(
                    KeyPath::root().key("volumes").index(i),
                    format!("named volume {src:?} is not declared in the top-level `volumes`"),
                ));
            }
        }
        for n in &svc.networks {
            if n.name != "default" && !cat.networks.contains_key(&n.name) {
                return Err(undeclared(
                    KeyPath::root().key("networks").key(&n.name),
                    format!("network {:?} is not declared in the top-level `networks`", n.name),
                ));
            }
        }
        for (kind, refs, defs) in [
            ("secrets", &svc.secrets, &cat.secrets),
            ("configs", &svc.configs, &cat.configs),
        ] {
            for (i, r) in refs.iter().enumerate() {
                if !defs.contains_key(&r.source) {
                    return Err(undeclared(
                        KeyPath::root().key(kind).index(i),
                        format!(
                            "{} {:?} is not declared in the top-level `{kind}`",
                            &kind[..kind.len() - 1],
                            r.source
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

//! One merged Compose file for docker-compose 1.29 with exactly the services
//! the coordinator deploys: the stack files' definitions of those services,
//! the local override's images applied, relative paths made absolute against
//! the file they came from, top-level networks, volumes and secrets merged
//! and made project-scoped (no fixed `name`, not `external`), so that the
//! run shares nothing with other projects on this Docker engine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// A `depends_on` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    /// `service_started`.
    Started,
    /// `service_healthy`.
    Healthy,
    /// `service_completed_successfully`.
    Completed,
}

/// What the benchmark needs to know of one service.
#[derive(Clone, Debug)]
pub struct Svc {
    /// Dependencies inside the selection, with their condition.
    pub deps: Vec<(String, Cond)>,
    /// Whether it has a health check (ready = healthy, else ready = running).
    pub healthcheck: bool,
}

/// The merged file and the services' graph.
pub struct Merged {
    /// The merged Compose document.
    pub doc: Value,
    /// Per service: dependencies and health check.
    pub services: BTreeMap<String, Svc>,
    /// The stack files used.
    pub files: Vec<PathBuf>,
}

fn read_yaml(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Every `docker-compose.yml` / `compose.yml` under `compose_dir`
/// (`NN-tier/stack/docker-compose.yml`), sorted.
fn stack_files(compose_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![compose_dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(
                p.file_name().and_then(|n| n.to_str()),
                Some("docker-compose.yml" | "docker-compose.yaml" | "compose.yml" | "compose.yaml")
            ) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn absolute(base: &Path, p: &str) -> String {
    if let Some(rest) = p.strip_prefix("~/") {
        return format!("{}/{rest}", std::env::var("HOME").unwrap_or_default());
    }
    let path = Path::new(p);
    if path.is_absolute() {
        return p.to_owned();
    }
    // Lexical normalisation, so the file reads well (`a/b/../../c` -> `c`).
    let mut out = base.to_path_buf();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out.display().to_string()
}

/// A short-syntax volume source is a path when it starts with `.`, `/` or `~`.
fn is_path(src: &str) -> bool {
    src.starts_with('.') || src.starts_with('/') || src.starts_with('~')
}

fn fix_service(svc: &mut Map<String, Value>, base: &Path) {
    // Selected explicitly: profiles would only hide it.
    svc.remove("profiles");
    if let Some(Value::Array(vols)) = svc.get_mut("volumes") {
        for v in vols {
            match v {
                Value::String(s) => {
                    let (src, rest) = s.split_once(':').unwrap_or((s.as_str(), ""));
                    if is_path(src) && !rest.is_empty() {
                        *s = format!("{}:{rest}", absolute(base, src));
                    }
                }
                Value::Object(m) => {
                    let bind = m.get("type").and_then(Value::as_str) == Some("bind");
                    if let Some(Value::String(src)) = m.get_mut("source")
                        && (bind || is_path(src))
                    {
                        *src = absolute(base, src);
                    }
                }
                _ => {}
            }
        }
    }
    match svc.get_mut("env_file") {
        Some(Value::String(s)) => *s = absolute(base, s),
        Some(Value::Array(list)) => {
            for e in list {
                match e {
                    Value::String(s) => *s = absolute(base, s),
                    Value::Object(m) => {
                        if let Some(Value::String(p)) = m.get_mut("path") {
                            *p = absolute(base, p);
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    if let Some(Value::Object(build)) = svc.get_mut("build")
        && let Some(Value::String(ctx)) = build.get_mut("context")
    {
        *ctx = absolute(base, ctx);
    }
}

fn deps_of(svc: &Map<String, Value>) -> Vec<(String, Cond)> {
    match svc.get("depends_on") {
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .map(|s| (s.to_owned(), Cond::Started))
            .collect(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                let c = match v.get("condition").and_then(Value::as_str) {
                    Some("service_healthy") => Cond::Healthy,
                    Some("service_completed_successfully") => Cond::Completed,
                    _ => Cond::Started,
                };
                (k.clone(), c)
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn has_healthcheck(svc: &Map<String, Value>) -> bool {
    match svc.get("healthcheck") {
        Some(Value::Object(h)) => {
            let disabled = h.get("disable").and_then(Value::as_bool) == Some(true)
                || h.get("test")
                    .and_then(Value::as_array)
                    .and_then(|t| t.first())
                    .and_then(Value::as_str)
                    == Some("NONE");
            !disabled && h.contains_key("test")
        }
        _ => false,
    }
}

/// Builds the merged file of `wanted` from the stack files under
/// `compose_dir`, with the `image` (and any other top-level key) of each
/// service in the `overrides` applied.
pub fn merge(compose_dir: &Path, overrides: &[PathBuf], wanted: &BTreeSet<String>) -> Result<Merged, String> {
    let mut services = Map::new();
    let mut top: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    let mut files = Vec::new();
    for file in stack_files(compose_dir) {
        let doc = read_yaml(&file)?;
        let base = file.parent().unwrap_or(compose_dir).to_owned();
        let Some(Value::Object(svcs)) = doc.get("services") else {
            continue;
        };
        let mut used = false;
        for (name, def) in svcs {
            if !wanted.contains(name) {
                continue;
            }
            if services.contains_key(name) {
                return Err(format!("{name} is defined twice (again in {})", file.display()));
            }
            let mut def = def.as_object().cloned().unwrap_or_default();
            fix_service(&mut def, &base);
            services.insert(name.clone(), Value::Object(def));
            used = true;
        }
        if !used {
            continue;
        }
        files.push(file.clone());
        for section in ["networks", "volumes", "secrets"] {
            let Some(Value::Object(entries)) = doc.get(section) else {
                continue;
            };
            let merged = top.entry(section).or_default();
            for (k, v) in entries {
                let mut v = v.as_object().cloned().unwrap_or_default();
                if section == "secrets" {
                    if let Some(Value::String(f)) = v.get_mut("file") {
                        *f = absolute(&base, f);
                    }
                } else {
                    // Project-scoped: `<project>_<key>`, created and removed
                    // by this run only.
                    v.remove("name");
                    v.remove("external");
                }
                merged.insert(k.clone(), Value::Object(v));
            }
        }
    }
    let missing: Vec<&String> = wanted.iter().filter(|w| !services.contains_key(*w)).collect();
    if !missing.is_empty() {
        return Err(format!("no stack file defines {missing:?}"));
    }
    for o in overrides {
        let doc = read_yaml(o)?;
        let Some(Value::Object(svcs)) = doc.get("services") else {
            continue;
        };
        for (name, patch) in svcs {
            let (Some(Value::Object(def)), Some(patch)) = (services.get_mut(name), patch.as_object()) else {
                continue;
            };
            for (k, v) in patch {
                def.insert(k.clone(), v.clone());
            }
        }
    }
    let mut graph = BTreeMap::new();
    for (name, def) in &services {
        let def = def.as_object().cloned().unwrap_or_default();
        graph.insert(
            name.clone(),
            Svc {
                deps: deps_of(&def).into_iter().filter(|(d, _)| wanted.contains(d)).collect(),
                healthcheck: has_healthcheck(&def),
            },
        );
    }
    let mut doc = Map::new();
    doc.insert("services".into(), Value::Object(services));
    for (section, entries) in top {
        doc.insert(section.into(), Value::Object(entries));
    }
    Ok(Merged {
        doc: Value::Object(doc),
        services: graph,
        files,
    })
}

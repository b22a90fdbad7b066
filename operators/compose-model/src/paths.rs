//! Relative paths resolve against the directory of the file they are
//! written in, as in Compose, and become absolute so that operators on other
//! hosts (and override files elsewhere) never guess a working directory.

use std::path::{Component, Path, PathBuf};

use serde_norway::Value;

use crate::convert::is_host_path;

/// Lexically removes `.` and resolves `..` (no filesystem access, so paths
/// that do not exist yet still work).
pub(crate) fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Absolute form of a directory path, without touching the filesystem.
pub(crate) fn absolute_dir(p: &Path) -> PathBuf {
    normalize(&std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
}

/// Resolves `path` as written in a file located in `dir` (absolute);
/// `~` expands to `HOME` from the interpolation environment.
pub(crate) fn resolve(dir: &Path, path: &str, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    let home = (path == "~" || path.starts_with("~/")).then(|| env("HOME")).flatten();
    if let Some(home) = home {
        return normalize(&Path::new(&home).join(path.trim_start_matches('~').trim_start_matches('/')));
    }
    normalize(&dir.join(path))
}

/// Makes the paths of a raw service absolute before it is merged onto a
/// service from another directory (override files): short and long
/// volume sources, `env_file` entries and the build context.
pub(crate) fn absolutize_service(v: &mut Value, dir: &Path, env: &dyn Fn(&str) -> Option<String>) {
    let Some(m) = v.as_mapping_mut() else {
        return;
    };
    let fix = |s: &str| resolve(dir, s, env).display().to_string();
    if let Some(Value::Sequence(items)) = m.get_mut("volumes") {
        for it in items {
            match it {
                Value::String(s) => {
                    let fixed = s
                        .split_once(':')
                        .filter(|(src, _)| is_host_path(src))
                        .map(|(src, rest)| format!("{}:{rest}", fix(src)));
                    if let Some(f) = fixed {
                        *s = f;
                    }
                }
                Value::Mapping(vm) => {
                    let is_bind = vm.get("type").and_then(Value::as_str) == Some("bind");
                    match vm.get_mut("source") {
                        Some(Value::String(src)) if is_bind => *src = fix(src),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }
    match m.get_mut("env_file") {
        Some(Value::String(s)) => *s = fix(s),
        Some(Value::Sequence(items)) => {
            for it in items {
                match it {
                    Value::String(s) => *s = fix(s),
                    Value::Mapping(em) => {
                        if let Some(Value::String(s)) = em.get_mut("path") {
                            *s = fix(s);
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    let is_url = |s: &str| s.contains("://") || s.starts_with("git@");
    match m.get_mut("build") {
        Some(Value::String(s)) if !is_url(s) => *s = fix(s),
        Some(Value::Mapping(bm)) => match bm.get_mut("context") {
            Some(Value::String(s)) if !is_url(s) => *s = fix(s),
            _ => {}
        },
        _ => {}
    }
}

/// Same for a top-level secret or config entry (`file`).
pub(crate) fn absolutize_file_entry(v: &mut Value, dir: &Path, env: &dyn Fn(&str) -> Option<String>) {
    if let Some(Value::String(s)) = v.as_mapping_mut().and_then(|m| m.get_mut("file")) {
        *s = resolve(dir, s, env).display().to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_become_absolute_and_normalised() {
        let none = |_: &str| None;
        assert_eq!(
            resolve(Path::new("/c/04-data/db"), "./init/../sql", &none),
            PathBuf::from("/c/04-data/db/sql")
        );
        assert_eq!(resolve(Path::new("/c/x"), "/abs/p", &none), PathBuf::from("/abs/p"));
        assert_eq!(
            resolve(Path::new("/c/x"), "../shared", &none),
            PathBuf::from("/c/shared")
        );
        let home = |k: &str| (k == "HOME").then(|| "/home/me".to_string());
        assert_eq!(
            resolve(Path::new("/c/x"), "~/data", &home),
            PathBuf::from("/home/me/data")
        );
    }
}

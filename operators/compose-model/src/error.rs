//! Errors of loading, selecting and ordering services.

use std::fmt;
use std::path::{Path, PathBuf};

/// What went wrong while loading, as a small `Copy` value callers can match
/// (e.g. the coordinator maps `Io` to a retry and the rest to a bad request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoadErrorKind {
    /// A file or directory could not be read.
    Io,
    /// The text is not valid YAML (line and column come from the parser).
    Yaml,
    /// A variable is unset without a default, or an expression is malformed.
    Interpolation,
    /// A value has the wrong type or an impossible value (a malformed or
    /// cyclic `include` too).
    InvalidValue,
    /// A key we act on is misspelled (`depend_on`); the message suggests the fix.
    UnknownKey,
    /// A `depends_on` names a service that no file defines.
    UnknownDependency,
    /// A service uses a volume, network, secret or config that is not declared.
    UndeclaredReference,
    /// A service name is defined twice across the catalog, or a file and a
    /// file it includes define one name differently.
    Duplicate,
    /// A file the catalog points at (secret, `env_file`, an included file)
    /// does not exist.
    MissingFile,
    /// A catalog folder does not name a tier.
    UnknownTier,
    /// An override file names a service that does not exist, is malformed,
    /// or has an `include`.
    Override,
    /// A `.env` or `env_file` line is malformed.
    EnvFile,
    /// A file is larger than the catalog allows (see [`crate::MAX_FILE_BYTES`]).
    TooLarge,
    /// A secret or config `file:` is outside the catalog and the
    /// directories the coordinator allows.
    OutsideCatalog,
}

/// A catalog that cannot be loaded, located as precisely as we can: file,
/// line (and column for YAML syntax errors), service and key path.
///
/// Its `Display` is one line, `file:line: service "x": key: message`, so
/// operators can log it and people can jump to it.
///
/// Boxed so that `Result<_, LoadError>` stays small on the happy path.
#[derive(Debug)]
pub struct LoadError(Box<Inner>);

#[derive(Debug)]
struct Inner {
    kind: LoadErrorKind,
    file: PathBuf,
    line: Option<usize>,
    column: Option<usize>,
    service: Option<String>,
    key: Option<String>,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl LoadError {
    pub(crate) fn new(kind: LoadErrorKind, file: &Path, message: impl Into<String>) -> Self {
        LoadError(Box::new(Inner {
            kind,
            file: file.to_path_buf(),
            line: None,
            column: None,
            service: None,
            key: None,
            message: message.into(),
            source: None,
        }))
    }
    pub(crate) fn at(mut self, line: Option<usize>) -> Self {
        self.0.line = line;
        self
    }
    pub(crate) fn col(mut self, column: Option<usize>) -> Self {
        self.0.column = column;
        self
    }
    pub(crate) fn service(mut self, service: &str) -> Self {
        self.0.service = Some(service.to_string());
        self
    }
    pub(crate) fn key(mut self, key: impl fmt::Display) -> Self {
        let k = key.to_string();
        self.0.key = (!k.is_empty()).then_some(k);
        self
    }
    pub(crate) fn source(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.0.source = Some(Box::new(e));
        self
    }

    /// The kind, for callers that branch.
    pub fn kind(&self) -> LoadErrorKind {
        self.0.kind
    }
    /// The file at fault (the catalog root for errors about the layout).
    pub fn file(&self) -> &Path {
        &self.0.file
    }
    /// 1-based line, when known.
    pub fn line(&self) -> Option<usize> {
        self.0.line
    }
    /// 1-based column, for YAML syntax errors.
    pub fn column(&self) -> Option<usize> {
        self.0.column
    }
    /// The service at fault, when there is one.
    pub fn service_name(&self) -> Option<&str> {
        self.0.service.as_deref()
    }
    /// The full key path from the document root, e.g.
    /// `services.mng-pg.environment.POSTGRES_DB`.
    pub fn key_path(&self) -> Option<&str> {
        self.0.key.as_deref()
    }
    /// The message without location.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    fn render(&self) -> String {
        let mut out = self.0.file.display().to_string();
        if let Some(l) = self.0.line {
            out.push_str(&format!(":{l}"));
            if let Some(c) = self.0.column {
                out.push_str(&format!(":{c}"));
            }
        }
        out.push_str(": ");
        if let Some(s) = &self.0.service {
            out.push_str(&format!("service {s:?}: "));
        }
        if let Some(k) = &self.0.key {
            // Inside a service, the path relative to it reads better.
            let rel = self
                .0
                .service
                .as_ref()
                .and_then(|s| k.strip_prefix(&format!("services.{s}.")))
                .unwrap_or(k);
            out.push_str(rel);
            out.push_str(": ");
        }
        out.push_str(&self.0.message);
        out
    }
}

fn did_you_mean(s: &Option<String>) -> String {
    match s {
        Some(s) => format!("; did you mean {s:?}?"),
        None => String::new(),
    }
}

/// A selection that names something the catalog does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// A named service does not exist.
    #[error("unknown service {name:?}{}", did_you_mean(suggestion))]
    UnknownService {
        /// The name given.
        name: String,
        /// The closest existing service name, if any is close.
        suggestion: Option<String>,
    },
    /// No service carries this profile.
    #[error("unknown profile {name:?}{}; known profiles: {}", did_you_mean(suggestion), known.join(", "))]
    UnknownProfile {
        /// The profile given.
        name: String,
        /// The closest existing profile, if any is close.
        suggestion: Option<String>,
        /// Every profile in the catalog.
        known: Vec<String>,
    },
    /// A selected service depends on a service the catalog lacks (only
    /// possible for a catalog built by hand; loading rejects it).
    #[error("service {service:?} depends on unknown service {dependency:?}")]
    UnknownDependency {
        /// The dependent.
        service: String,
        /// The missing target.
        dependency: String,
    },
}

/// A set of services that cannot be ordered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// `depends_on` edges form a loop; `path` starts and ends with the same
    /// service and `files[i]` is the file of `path[i]`.
    #[error("{}", render_cycle(path, files))]
    Cycle {
        /// `a, b, c, a`.
        path: Vec<String>,
        /// The file of each service in `path`.
        files: Vec<PathBuf>,
    },
    /// `condition: service_healthy` on a service that has no healthcheck, so
    /// bring-up would wait forever.
    #[error(
        "{}: service {service:?} waits for {dependency:?} to be healthy, but {dependency:?} has no healthcheck (defined in {})",
        file.display(),
        dependency_file.display()
    )]
    NoHealthcheck {
        /// The dependent.
        service: String,
        /// The target without a healthcheck.
        dependency: String,
        /// The dependent's file.
        file: PathBuf,
        /// The target's file.
        dependency_file: PathBuf,
    },
    /// A `depends_on` target that the catalog lacks.
    #[error("{}:{line}: service {service:?} depends on unknown service {dependency:?}", file.display())]
    UnknownDependency {
        /// The dependent.
        service: String,
        /// The missing target.
        dependency: String,
        /// The dependent's file.
        file: PathBuf,
        /// The line of the dependent's service key.
        line: usize,
    },
    /// A name in the set is not a service of the catalog.
    #[error("unknown service {name:?}")]
    UnknownService {
        /// The name given.
        name: String,
    },
}

fn render_cycle(path: &[String], files: &[PathBuf]) -> String {
    let mut out = format!("dependency cycle: {}", path.join(" -> "));
    let n = path.len().saturating_sub(1);
    let located: Vec<String> = path
        .iter()
        .zip(files)
        .take(n)
        .map(|(s, f)| format!("{s} in {}", f.display()))
        .collect();
    if !located.is_empty() {
        out.push_str(&format!(" ({})", located.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_error_renders_on_one_line_with_relative_key() {
        let e = LoadError::new(
            LoadErrorKind::InvalidValue,
            Path::new("compose/04-data/mng-db/docker-compose.yml"),
            "invalid type: string \"x\", expected an integer",
        )
        .at(Some(12))
        .service("mng-pg")
        .key("services.mng-pg.deploy.replicas");
        assert_eq!(
            e.to_string(),
            "compose/04-data/mng-db/docker-compose.yml:12: service \"mng-pg\": deploy.replicas: invalid type: string \"x\", expected an integer"
        );
        assert_eq!(e.key_path(), Some("services.mng-pg.deploy.replicas"));
        assert_eq!(e.kind(), LoadErrorKind::InvalidValue);
    }

    #[test]
    fn cycle_error_names_the_whole_path() {
        let e = GraphError::Cycle {
            path: vec!["a".into(), "b".into(), "a".into()],
            files: vec!["x.yml".into(), "y.yml".into(), "x.yml".into()],
        };
        assert_eq!(e.to_string(), "dependency cycle: a -> b -> a (a in x.yml, b in y.yml)");
    }
}

//! The catalog: loading it (afresh on every request, off the async
//! runtime), resolving a selection, and the lint.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::Error;
use infra_compose::{Catalog, Graph, LoadOptions, SelectError, Selection, Severity, Tier};
use infra_proto::coordinator::v1 as api;

use crate::coordinator::*;
use crate::selections;

pub mod revision;

/// `min_severity` of a lint request: empty means every finding.
pub fn parse_min_severity(s: &str) -> Result<Severity, Error> {
    if s.is_empty() {
        return Ok(Severity::Info);
    }
    s.parse().map_err(|e| invalid(format!("min_severity: {e}")))
}

/// The lint findings of `names` (all services when `None`) at `min` or
/// worse, as the API returns them.
pub fn lint_response(catalog: &Catalog, names: Option<&BTreeSet<String>>, min: Severity) -> api::LintResponse {
    let findings: Vec<api::LintFinding> = infra_compose::lint(catalog)
        .into_iter()
        .filter(|f| f.severity.is_at_least(min))
        .filter(|f| match (names, &f.service) {
            (Some(n), Some(s)) => n.contains(s),
            _ => true,
        })
        .map(|f| api::LintFinding {
            rule: f.rule.id().to_owned(),
            severity: f.severity.as_str().to_owned(),
            file: f.file.display().to_string(),
            line: u32::try_from(f.line).unwrap_or(u32::MAX),
            service: f.service.unwrap_or_default(),
            message: f.message,
            why: f.why.to_owned(),
        })
        .collect();
    let count = |sev: Severity| findings.iter().filter(|f| f.severity == sev.as_str()).count() as u32;
    api::LintResponse {
        errors: count(Severity::Error),
        warnings: count(Severity::Warning),
        findings,
    }
}

/// The line of `profile` in the named selection `named` of selections.yml.
pub(crate) fn selections_line(file: &std::path::Path, named: &str, profile: &str) -> Option<usize> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut inside = false;
    let mut header = None;
    for (i, line) in text.lines().enumerate() {
        if !line.starts_with([' ', '\t', '#']) && !line.trim().is_empty() {
            inside = line.trim_end().strip_suffix(':') == Some(named);
            if inside {
                header = Some(i + 1);
            }
            continue;
        }
        if inside && line.contains(profile) && !line.trim_start().starts_with('#') {
            return Some(i + 1);
        }
    }
    header
}

impl Coordinator {
    pub(crate) fn env() -> BTreeMap<String, String> {
        std::env::vars().collect()
    }

    /// Loads the current catalog revision (see [`revision`]): a new push,
    /// or a change to this coordinator's `compose_dir`, takes effect on
    /// the next call.
    ///
    /// Reading and parsing files blocks, so it runs on the blocking pool:
    /// a large catalog never stalls the other calls on the runtime.
    pub async fn load(&self) -> Result<Catalog, Error> {
        Ok(self.load_revision().await?.0)
    }

    /// [`Coordinator::load`], and which revision it is.
    pub async fn load_revision(&self) -> Result<(Catalog, infra_proto::bus::v1::CatalogHead), Error> {
        // Boxed: publishing and unpacking are rare, deep paths that should
        // not grow every caller's future.
        let u = Box::pin(self.current_revision()).await?;
        let opts = LoadOptions {
            env_file: u.env_file.clone(),
            env: Self::env(),
            overrides: u.overrides.clone(),
            secret_dirs: self.settings.secret_dirs.clone(),
        };
        let root = u.root.clone();
        let catalog = tokio::task::spawn_blocking(move || infra_compose::load_catalog(&root, &opts).map_err(invalid))
            .await
            .map_err(|e| Error::internal(format!("loading the catalog stopped: {e}")))??;
        Ok((catalog, u.head))
    }

    /// The selected services (with their dependencies) and their graph.
    pub fn resolve(&self, catalog: &Catalog, sel: Option<&api::Selection>) -> Result<(BTreeSet<String>, Graph), Error> {
        let names = self.select(catalog, sel)?;
        let graph = catalog.graph(&names).map_err(invalid)?;
        Ok((names, graph))
    }

    /// The selected services with their dependencies, without ordering
    /// them (the lint reports what the graph would reject).
    pub fn select(&self, catalog: &Catalog, sel: Option<&api::Selection>) -> Result<BTreeSet<String>, Error> {
        let sel = sel.cloned().unwrap_or_default();
        let mut exclude: Vec<String> = Vec::new();
        let mut s = Selection {
            all: sel.all,
            tiers: Vec::new(),
            profiles: sel.profiles.clone(),
            services: sel.services.clone(),
        };
        for t in &sel.tiers {
            s.tiers.push(
                t.parse::<Tier>()
                    .map_err(|e| invalid(format!("selection.tiers: {e}")))?,
            );
        }
        if !sel.named.is_empty() {
            let named = selections::load(&catalog.root).map_err(invalid)?;
            let n = named.get(&sel.named).ok_or_else(|| {
                invalid(format!(
                    "selection.named: {:?} is not defined in {}/{}; defined: {}",
                    sel.named,
                    catalog.root.display(),
                    selections::FILE,
                    named.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?;
            s.all |= n.all;
            for t in &n.tiers {
                s.tiers.push(
                    t.parse::<Tier>()
                        .map_err(|e| invalid(format!("selections.{}.tiers: {e}", sel.named)))?,
                );
            }
            s.profiles.extend(n.profiles.iter().cloned());
            s.services.extend(n.services.iter().cloned());
            exclude.clone_from(&n.exclude);
        }
        let mut names = catalog.select(&s).map_err(|e| {
            // A profile of a named selection is located in selections.yml.
            if let SelectError::UnknownProfile { name, .. } = &e
                && !sel.named.is_empty()
                && !sel.profiles.contains(name)
            {
                let file = catalog.root.join(selections::FILE);
                let line = selections_line(&file, &sel.named, name).map_or(String::new(), |l| format!(":{l}"));
                return invalid(format!("{}{line}: {}.profiles: {e}", file.display(), sel.named));
            }
            invalid(format!("selection: {e}"))
        })?;
        for x in &exclude {
            names.remove(x);
        }
        if !exclude.is_empty() {
            for n in &names {
                if let Some(svc) = catalog.services.get(n)
                    && let Some(d) = svc
                        .depends_on
                        .iter()
                        .find(|d| d.required && exclude.contains(&d.service))
                {
                    return Err(invalid(format!(
                        "selection {:?} excludes {:?}, which {:?} needs",
                        sel.named, d.service, n
                    )));
                }
            }
        }
        Ok(names)
    }

    /// Lints the selection (an empty one: the whole catalog, every profile).
    pub async fn lint(&self, req: &api::LintRequest) -> Result<api::LintResponse, Error> {
        let min = parse_min_severity(&req.min_severity)?;
        let catalog = self.load().await?;
        let names = match req.selection.as_ref() {
            Some(s) if *s != api::Selection::default() => Some(self.select(&catalog, Some(s))?),
            _ => None,
        };
        Ok(lint_response(&catalog, names.as_ref(), min))
    }
}

//! Which services a command acts on, with Compose's profile rules.

use std::collections::{BTreeSet, VecDeque};

use crate::error::SelectError;
use crate::values::suggest;
use crate::{Catalog, Tier};

/// What a command names: everything, some tiers, some profiles, some services.
///
/// The parts add up (a union). A selection with nothing set selects the
/// same as `all`, like `docker compose up` without arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Every active service.
    pub all: bool,
    /// Active services of these tiers.
    pub tiers: Vec<Tier>,
    /// Profiles to enable; given alone, selects the default-active services
    /// plus those in the profiles.
    pub profiles: Vec<String>,
    /// Services named explicitly (active whatever their profiles).
    pub services: Vec<String>,
}

impl Selection {
    /// Every active service.
    pub fn all() -> Self {
        Selection {
            all: true,
            ..Selection::default()
        }
    }
    /// These services and their dependencies.
    pub fn services<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        Selection {
            services: names.into_iter().map(Into::into).collect(),
            ..Selection::default()
        }
    }
    /// Active services of these tiers and their dependencies.
    pub fn tiers(tiers: impl IntoIterator<Item = Tier>) -> Self {
        Selection {
            tiers: tiers.into_iter().collect(),
            ..Selection::default()
        }
    }
}

impl Catalog {
    /// Every profile some service carries.
    pub fn profiles(&self) -> BTreeSet<String> {
        self.services
            .values()
            .flat_map(|s| s.profiles.iter().cloned())
            .collect()
    }

    /// Resolves a selection to service names, dependencies included.
    ///
    /// A service without `profiles` is active by default; one with profiles
    /// only when one of them is selected or when it is named. Dependencies
    /// are added transitively (whatever their profiles, since the dependent
    /// cannot start without them), except `required: false` ones, which are
    /// only kept when selected for another reason.
    pub fn select(&self, sel: &Selection) -> Result<BTreeSet<String>, SelectError> {
        let known = self.profiles();
        for p in &sel.profiles {
            if !known.contains(p) {
                return Err(SelectError::UnknownProfile {
                    name: p.clone(),
                    suggestion: suggest(p, known.iter().map(String::as_str)),
                    known: known.iter().cloned().collect(),
                });
            }
        }
        for name in &sel.services {
            if !self.services.contains_key(name) {
                return Err(SelectError::UnknownService {
                    name: name.clone(),
                    suggestion: suggest(name, self.services.keys().map(String::as_str)),
                });
            }
        }
        let active = |profiles: &[String]| profiles.is_empty() || profiles.iter().any(|p| sel.profiles.contains(p));
        let everything = sel.all || (sel.tiers.is_empty() && sel.services.is_empty());
        let mut chosen: BTreeSet<String> = self
            .services
            .values()
            .filter(|s| active(&s.profiles) && (everything || sel.tiers.contains(&s.tier)))
            .map(|s| s.name.clone())
            .collect();
        chosen.extend(sel.services.iter().cloned());

        let mut queue: VecDeque<String> = chosen.iter().cloned().collect();
        while let Some(name) = queue.pop_front() {
            let Some(svc) = self.services.get(&name) else { continue };
            for dep in svc.depends_on.iter().filter(|d| d.required) {
                if !self.services.contains_key(&dep.service) {
                    return Err(SelectError::UnknownDependency {
                        service: name.clone(),
                        dependency: dep.service.clone(),
                    });
                }
                if chosen.insert(dep.service.clone()) {
                    queue.push_back(dep.service.clone());
                }
            }
        }
        Ok(chosen)
    }
}

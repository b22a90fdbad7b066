//! Remove: exactly what a selection names, dependents first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::error::Error;
use infra_compose::{Catalog, Tier};
use infra_proto::bus::v1::{DesiredService, EventKind, ServiceRecord, ServiceSpec};
use infra_proto::coordinator::v1 as api;

use crate::coordinator::*;

/// How long Remove waits for the operators to take one service down
/// before it goes on to that service's dependencies.
const TAKE_DOWN: Duration = Duration::from_secs(120);

/// What runs (or is held) now, by name, with the spec it runs.
type Deployed<'a> = BTreeMap<String, &'a ServiceSpec>;

impl Coordinator {
    /// Stops and removes the selection's containers, dependents first.
    /// Volumes stay unless `remove_volumes`.
    pub async fn remove(&self, req: api::RemoveRequest) -> Result<api::RemoveResponse, Error> {
        let sel = req.selection.clone().unwrap_or_default();
        if sel == api::Selection::default() {
            return Err(invalid(
                "selection: name what to remove (services, tiers, profiles or a named selection), or set \
                 selection.all to remove everything deployed",
            ));
        }
        let desired = self.bus.list_desired(None).await.map_err(unavailable)?;
        let records = self.bus.list_records().await.map_err(unavailable)?;
        let deployed = deployed(&desired);
        let mut set = self.selected(&sel, &deployed, &records).await?;
        with_dependents(&mut set, &deployed, req.cascade, req.force)?;
        let removed = self
            .take_down_all(set, &deployed, &desired, &records, req.remove_volumes)
            .await?;
        Ok(api::RemoveResponse {
            removed,
            volumes_removed: req.remove_volumes,
        })
    }

    /// The deployed (or recorded) services the selection names. A service
    /// of the catalog that is not deployed has nothing to remove (so Remove
    /// may be repeated); a name the catalog does not know either is a
    /// mistake.
    async fn selected(
        &self,
        sel: &api::Selection,
        deployed: &Deployed<'_>,
        records: &[ServiceRecord],
    ) -> Result<BTreeSet<String>, Error> {
        let known = |n: &str| deployed.contains_key(n) || records.iter().any(|r| r.service == n);
        let mut set: BTreeSet<String> = BTreeSet::new();
        if sel.all {
            set.extend(deployed.keys().cloned());
            set.extend(records.iter().map(|r| r.service.clone()));
        }
        let mut catalog: Option<Catalog> = None;
        for n in &sel.services {
            if known(n) {
                set.insert(n.clone());
                continue;
            }
            if catalog.is_none() {
                catalog = Some(self.load().await?);
            }
            if !catalog.as_ref().is_some_and(|c| c.services.contains_key(n)) {
                return Err(invalid(format!(
                    "selection.services: {n:?} is neither deployed nor in the catalog; nothing was removed"
                )));
            }
        }
        for t in &sel.tiers {
            t.parse::<Tier>()
                .map_err(|e| invalid(format!("selection.tiers: {e}")))?;
            set.extend(deployed.values().filter(|s| &s.tier == t).map(|s| s.name.clone()));
        }
        if !sel.named.is_empty() || !sel.profiles.is_empty() {
            let catalog = match catalog {
                Some(c) => c,
                None => self.load().await?,
            };
            let like_deploy = api::Selection {
                named: sel.named.clone(),
                profiles: sel.profiles.clone(),
                ..Default::default()
            };
            set.extend(
                self.select(&catalog, Some(&like_deploy))?
                    .into_iter()
                    .filter(|n| known(n)),
            );
        }
        Ok(set)
    }

    /// Marks every placement of `name` absent, waits for the operators to
    /// take it down, and forgets its record. False when there was nothing
    /// to remove.
    async fn take_down(
        &self,
        name: &str,
        desired: &[DesiredService],
        records: &[ServiceRecord],
        remove_volumes: bool,
    ) -> Result<bool, Error> {
        let here: Vec<&DesiredService> = desired
            .iter()
            .filter(|d| d.spec.as_ref().is_some_and(|s| s.name == name))
            .collect();
        let Some(tier) = here.first().and_then(|d| d.spec.as_ref()).map(|s| s.tier.clone()) else {
            // Never deployed, or only pending: forget the record.
            let Some(r) = records.iter().find(|r| r.service == name) else {
                return Ok(false);
            };
            self.bus.delete_record(&r.tier, name).await.map_err(unavailable)?;
            return Ok(true);
        };
        for d in &here {
            let mut d = (*d).clone();
            d.absent = true;
            d.remove_volumes = remove_volumes;
            d.generation += 1;
            self.bus.put_desired(&d).await.map_err(unavailable)?;
        }
        self.event(EventKind::ServiceRemoveRequested, name, &tier, "", String::new())
            .await;
        // Taken down before its dependencies: done once the operator has
        // deleted its observed state (its containers are gone); the entry
        // is deleted then (by the operator where its credential may, else
        // here).
        let start = Instant::now();
        for d in &here {
            while start.elapsed() < TAKE_DOWN {
                if self
                    .bus
                    .get_desired(&d.host, &tier, name)
                    .await
                    .map_err(unavailable)?
                    .is_none()
                {
                    break;
                }
                if self.cache.get(&d.host, &tier, name).await.is_none() {
                    self.bus
                        .delete_desired(&d.host, &tier, name)
                        .await
                        .map_err(unavailable)?;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        self.bus.delete_record(&tier, name).await.map_err(unavailable)?;
        Ok(true)
    }
}

/// Adds the deployed services outside `set` that need one in it (with
/// `cascade`), or refuses (without `cascade` or `force`).
fn with_dependents(
    set: &mut BTreeSet<String>,
    deployed: &Deployed<'_>,
    cascade: bool,
    force: bool,
) -> Result<(), Error> {
    let needs = |outside: &BTreeSet<String>| -> Vec<(String, String)> {
        deployed
            .iter()
            .filter(|(n, _)| !outside.contains(*n))
            .flat_map(|(n, s)| {
                s.depends_on
                    .iter()
                    .filter(|d| d.required && outside.contains(&d.service))
                    .map(|d| (n.clone(), d.service.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    loop {
        let dependents = needs(set);
        if dependents.is_empty() || force {
            return Ok(());
        }
        if !cascade {
            let names: Vec<String> = dependents.iter().map(|(n, d)| format!("{n} needs {d}")).collect();
            return Err(Error::precondition(format!(
                "other deployed services need what would be removed ({}): remove them too with cascade, or \
                 leave them without it with force; nothing was removed",
                names.join(", ")
            )));
        }
        set.extend(dependents.into_iter().map(|(n, _)| n));
    }
}

/// What runs (or is held) now: the desired state that is not absent.
fn deployed(desired: &[DesiredService]) -> Deployed<'_> {
    desired
        .iter()
        .filter(|d| !d.absent)
        .filter_map(|d| d.spec.as_ref().map(|s| (s.name.clone(), s)))
        .collect()
}

/// `set` in removal order: a service goes once nothing left in the set
/// needs it.
fn dependents_first(set: BTreeSet<String>, deployed: &Deployed<'_>) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut left = set;
    while !left.is_empty() {
        let needed = |n: &String| {
            left.iter().any(|o| {
                o != n
                    && deployed
                        .get(o)
                        .is_some_and(|s| s.depends_on.iter().any(|d| &d.service == n))
            })
        };
        let ready: Vec<String> = left.iter().filter(|n| !needed(n)).cloned().collect();
        // A cycle (the catalog refuses them; desired state from an old
        // coordinator might not): take the rest in name order.
        let ready = if ready.is_empty() {
            left.iter().cloned().collect()
        } else {
            ready
        };
        for n in ready {
            left.remove(&n);
            order.push(n);
        }
    }
    order
}

impl Coordinator {
    /// Deletes the desired entries of removed replicas (`absent`) whose
    /// host reports them gone (no observed state): what a host's operator
    /// does itself where its credential may write desired state, and
    /// cannot on a scoped one. Returns how many went.
    pub async fn reap_removed(&self) -> Result<usize, Error> {
        let desired = self.bus.list_desired(None).await.map_err(unavailable)?;
        let mut n = 0;
        for d in desired.iter().filter(|d| d.absent) {
            let Some(s) = d.spec.as_ref() else { continue };
            if self.cache.get(&d.host, &s.tier, &s.name).await.is_none() {
                self.bus
                    .delete_desired(&d.host, &s.tier, &s.name)
                    .await
                    .map_err(unavailable)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

impl Coordinator {
    /// Deletes the stored contents of catalog files that no desired state
    /// and no service record uses (applied, previous, or a rollout's from
    /// and target: what a rollback goes back to), once older than `floor`
    /// ([`CONFIG_SOURCE_FLOOR`] when the leader does it). Returns the keys
    /// deleted.
    pub async fn prune_config_sources(&self, floor: Duration) -> Result<Vec<String>, Error> {
        let desired = self.bus.list_desired(None).await.map_err(unavailable)?;
        let records = self.bus.list_records().await.map_err(unavailable)?;
        let specs = desired
            .iter()
            .flat_map(|d| d.spec.iter().chain(d.previous.iter()))
            .chain(records.iter().flat_map(|r| {
                r.spec
                    .iter()
                    .chain(r.previous_spec.iter())
                    .chain(r.rollout.iter().flat_map(|o| o.target.iter().chain(o.from.iter())))
            }));
        let keep: std::collections::HashSet<String> = specs
            .flat_map(|s| {
                infra_proto::spec::content_keys(s)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        self.bus.prune_config_sources(&keep, floor).await.map_err(unavailable)
    }
}

/// A catalog file's stored content younger than this stays even when
/// nothing names it yet (a deploy stores it before its desired state).
pub const CONFIG_SOURCE_FLOOR: Duration = Duration::from_secs(3600);

/// How many reaping rounds (3 s each) between two prunings of catalog
/// file contents.
const PRUNE_EVERY: u32 = 200;

/// Runs [`Coordinator::reap_removed`] every few seconds, and
/// [`Coordinator::prune_config_sources`] every ten minutes, while this
/// coordinator leads, until `shutdown`.
pub async fn reap(c: Coordinator, shutdown: tokio_util::sync::CancellationToken) {
    let mut round: u32 = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
        if !c.is_leader() {
            continue;
        }
        match c.reap_removed().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(entries = n, "deleted the desired entries of removed replicas"),
            Err(e) => tracing::debug!(error = %e, "cannot reap removed desired entries; retrying"),
        }
        round = round.wrapping_add(1);
        if round.is_multiple_of(PRUNE_EVERY) {
            match c.prune_config_sources(CONFIG_SOURCE_FLOOR).await {
                Ok(gone) if gone.is_empty() => {}
                Ok(gone) => tracing::info!(
                    files = gone.len(),
                    "deleted catalog file contents nothing uses any more"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot prune catalog file contents; trying again later"),
            }
        }
    }
}

/// A deployed service (desired on some host, not absent) that the catalog
/// no longer defines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Orphan {
    pub(crate) name: String,
    pub(crate) tier: String,
    /// Host -> replicas there.
    pub(crate) hosts: BTreeMap<String, u32>,
}

impl Coordinator {
    /// The deployed services `catalog` does not define, by name.
    pub(crate) async fn orphans(&self, catalog: &Catalog) -> Result<Vec<Orphan>, Error> {
        let desired = self.bus.list_desired(None).await.map_err(unavailable)?;
        let mut out: BTreeMap<String, Orphan> = BTreeMap::new();
        for d in desired.iter().filter(|d| !d.absent) {
            let Some(s) = d.spec.as_ref().filter(|s| !catalog.services.contains_key(&s.name)) else {
                continue;
            };
            let o = out.entry(s.name.clone()).or_insert_with(|| Orphan {
                name: s.name.clone(),
                tier: s.tier.clone(),
                hosts: BTreeMap::new(),
            });
            o.hosts.insert(d.host.clone(), s.replicas.max(1));
        }
        Ok(out.into_values().collect())
    }

    /// Removes `orphans` (dependents first, volumes kept) as Remove does;
    /// returns those removed, in order.
    pub(crate) async fn prune(&self, orphans: &[Orphan]) -> Result<Vec<String>, Error> {
        let desired = self.bus.list_desired(None).await.map_err(unavailable)?;
        let records = self.bus.list_records().await.map_err(unavailable)?;
        let deployed = deployed(&desired);
        let set: BTreeSet<String> = orphans.iter().map(|o| o.name.clone()).collect();
        self.take_down_all(set, &deployed, &desired, &records, false).await
    }

    /// Takes down `set`, dependents first; the names taken down, in order.
    async fn take_down_all(
        &self,
        set: BTreeSet<String>,
        deployed: &Deployed<'_>,
        desired: &[DesiredService],
        records: &[ServiceRecord],
        remove_volumes: bool,
    ) -> Result<Vec<String>, Error> {
        let mut removed = Vec::new();
        for name in dependents_first(set, deployed) {
            if self.take_down(&name, desired, records, remove_volumes).await? {
                removed.push(name);
            }
        }
        Ok(removed)
    }
}

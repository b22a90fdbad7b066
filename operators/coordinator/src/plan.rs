//! Plan: what a deploy would do, and the preparation a deploy shares
//! with it (specs, placement, secrets, the images each host lacks).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::error::Error;
use infra_compose::{Catalog, DependencyCondition, Graph};
use infra_proto::bus::v1::{
    DesiredService, Heartbeat, ImageCheck, PlacementSpec, RegistryLogin, ServiceSpec, UpdatePolicy,
};
use infra_proto::coordinator::v1 as api;

use crate::convert::{self, SecretContent};
use crate::coordinator::*;
use crate::diff::diff;
use crate::placement::{self, Outcome, Rules};
use crate::reach::cross_host_reach;

/// The largest spec one service may have once built (encoded). Twice it
/// (a rolling update's old and new spec) must fit in one bus message.
pub(crate) const MAX_SPEC_BYTES: usize = 384 * 1024;

/// What a deploy and a plan share: the services ready to dispatch, the
/// contents to put in the secrets bucket, the catalog's registry logins,
/// and why an image could not be pinned (by service).
pub(crate) struct Preparation {
    pub(crate) services: Vec<(String, Prepared)>,
    pub(crate) secrets: Vec<SecretContent>,
    pub(crate) logins: Vec<RegistryLogin>,
    pub(crate) pin_notes: Vec<(String, String)>,
}

/// A service ready to dispatch: its spec (`replicas` is the total), its
/// placement rules, where its replicas go, and what the store holds for it
/// now on every host.
#[derive(Clone, Debug)]
pub(crate) struct Prepared {
    pub(crate) spec: ServiceSpec,
    pub(crate) rules: PlacementSpec,
    pub(crate) outcome: Outcome,
    pub(crate) existing: Vec<DesiredService>,
    pub(crate) update: UpdatePolicy,
    pub(crate) back: UpdatePolicy,
}

impl Prepared {
    /// The desired state now on `host`, removed or not.
    pub(crate) fn on(&self, host: &str) -> Option<&DesiredService> {
        self.existing.iter().find(|d| d.host == host)
    }

    /// Whether any host runs (or holds) it now.
    pub(crate) fn deployed(&self) -> bool {
        self.existing.iter().any(|d| !d.absent)
    }

    /// The spec one host gets: its share of the replicas.
    pub(crate) fn spec_for(&self, replicas: u32) -> ServiceSpec {
        let mut s = self.spec.clone();
        s.replicas = replicas;
        s
    }

    /// `h1, h2 (2)`: where the replicas go, for messages.
    pub(crate) fn hosts_label(&self) -> String {
        self.outcome
            .hosts
            .iter()
            .map(|(h, n)| if *n == 1 { h.clone() } else { format!("{h} ({n})") })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Host -> replicas there now.
    pub(crate) fn current(&self) -> BTreeMap<String, u32> {
        self.existing
            .iter()
            .filter(|d| !d.absent)
            .filter_map(|d| d.spec.as_ref().map(|s| (d.host.clone(), s.replicas.max(1))))
            .collect()
    }
}

pub(crate) fn cond_name(c: DependencyCondition) -> &'static str {
    match c {
        DependencyCondition::ServiceStarted => "service_started",
        DependencyCondition::ServiceHealthy => "service_healthy",
        DependencyCondition::ServiceCompletedSuccessfully => "service_completed_successfully",
    }
}

impl Coordinator {
    /// Operators alive now, from their heartbeats.
    pub async fn heartbeats(&self) -> Result<Vec<Heartbeat>, Error> {
        self.bus.list_heartbeats().await.map_err(unavailable)
    }

    pub(crate) async fn prepare(&self, catalog: &Catalog, graph: &Graph) -> Result<Preparation, Error> {
        let env = Self::env();
        let hosts = self.eligible_hosts().await?;
        let desired = self.bus.list_desired(None).await.map_err(unavailable)?;
        let records = self.bus.list_records().await.map_err(unavailable)?;
        // What every service takes where, kept current as this deploy
        // places its services.
        let mut ledger = placement::Ledger::from_state(&desired, &records);
        let mut out = Vec::new();
        let mut secrets: BTreeMap<String, SecretContent> = BTreeMap::new();
        for name in graph.order() {
            let svc = &catalog.services[name];
            let (spec, contents) = convert::to_spec(catalog, &self.settings.project, svc, &env).map_err(invalid)?;
            let size = prost::Message::encoded_len(&spec);
            if size > MAX_SPEC_BYTES {
                return Err(invalid(format!(
                    "{}:{}: service {name:?}: its spec is {} KiB once built ({} environment entries, {} labels); a \
                     service's spec may be at most {} KiB, because its desired state carries two specs during a \
                     rolling update and the bus carries at most 1 MiB in one message",
                    svc.file.display(),
                    svc.line,
                    size / 1024,
                    spec.environment.len(),
                    spec.labels.len(),
                    MAX_SPEC_BYTES / 1024
                )));
            }
            let rules = convert::placement_spec(svc).map_err(invalid)?;
            if !rules.global && spec.replicas > self.settings.max_replicas {
                let line = catalog
                    .key_line(name, "deploy.replicas")
                    .map_or(String::new(), |l| format!(":{l}"));
                return Err(invalid(format!(
                    "{}{line}: service {name:?}: deploy.replicas {} is more than one service may have here \
                     (max_replicas = {} in the coordinator's configuration)",
                    svc.file.display(),
                    spec.replicas,
                    self.settings.max_replicas
                )));
            }
            for c in contents {
                secrets.insert(c.key.clone(), c);
            }
            let existing: Vec<DesiredService> = desired
                .iter()
                .filter(|d| d.spec.as_ref().is_some_and(|s| s.name == *name))
                .cloned()
                .collect();
            let usage = ledger.usage_for(&spec.tier, name, &rules.group);
            let mut p = Prepared {
                spec,
                rules,
                outcome: Outcome::default(),
                existing,
                update: convert::update_policy(svc, false),
                back: convert::update_policy(svc, true),
            };
            let reserve = placement::Reservation::of(&p.spec);
            let parsed = Rules::from_spec(&p.spec.tier, p.spec.replicas.max(1), &p.rules)
                .map_err(invalid)?
                .reserving(reserve);
            p.outcome = placement::place(&parsed, &hosts, &p.current(), &usage);
            ledger.set(
                name,
                (&p.spec.tier, &p.rules.group),
                p.rules.gpus,
                reserve,
                &p.outcome.hosts,
            );
            out.push((name.clone(), p));
        }
        cross_host_reach(catalog, &hosts, &mut out);
        let logins = convert::registry::logins(catalog, &env).map_err(invalid)?;
        // Backups are declared whole or not at all (a group's members agree).
        convert::backup::subjects(catalog).map_err(invalid)?;
        let pin_notes = self.pin_images(&mut out, &logins).await;
        Ok(Preparation {
            services: out,
            secrets: secrets.into_values().collect(),
            logins,
            pin_notes,
        })
    }

    /// What a deploy would do. No side effects.
    pub async fn plan(&self, sel: Option<&api::Selection>) -> Result<api::PlanResponse, Error> {
        let (catalog, head) = self.load_revision().await?;
        let (_, graph) = self.resolve(&catalog, sel)?;
        let Preparation {
            services: prepared,
            logins,
            pin_notes,
            ..
        } = self.prepare(&catalog, &graph).await?;
        let level_of: HashMap<&str, usize> = graph
            .levels()
            .iter()
            .enumerate()
            .flat_map(|(i, l)| l.iter().map(move |n| (n.as_str(), i)))
            .collect();
        let mut warnings = Vec::new();
        let mut steps = Vec::new();
        for (name, p) in &prepared {
            let svc = &catalog.services[name];
            let old = p
                .existing
                .iter()
                .filter(|d| !d.absent)
                .find_map(|d| d.spec.as_ref())
                .map(|s| {
                    let mut s = s.clone();
                    s.replicas = p.current().values().sum();
                    s
                });
            let (action, changes) = match old {
                None => (api::Action::Create, vec![]),
                Some(old) => {
                    let mut changes = diff(&old, &p.spec);
                    if p.existing.iter().any(|d| d.hold && !d.absent) {
                        changes.push("start (created and held by an earlier deploy)".into());
                    }
                    if p.current() != p.outcome.hosts && !changes.iter().any(|c| c == "deploy.replicas") {
                        changes.push("placement".into());
                    }
                    if changes.is_empty() {
                        (api::Action::Unchanged, changes)
                    } else {
                        (api::Action::Update, changes)
                    }
                }
            };
            if p.outcome.pending > 0 {
                warnings.push(format!(
                    "{name}: {} replica{} would stay pending: {}",
                    p.outcome.pending,
                    if p.outcome.pending == 1 { "" } else { "s" },
                    p.outcome.reason
                ));
            }
            steps.push(api::PlanStep {
                service: name.clone(),
                tier: p.spec.tier.clone(),
                host: p.outcome.hosts.keys().cloned().collect::<Vec<_>>().join(","),
                placement: p.outcome.hosts.clone().into_iter().collect(),
                pending_replicas: p.outcome.pending,
                pending_reason: p.outcome.reason.clone(),
                action: action as i32,
                level: level_of.get(name.as_str()).copied().unwrap_or(0) as u32,
                waits_for: svc
                    .depends_on
                    .iter()
                    .filter(|d| graph.contains(&d.service))
                    .map(|d| format!("{} ({})", d.service, cond_name(d.condition)))
                    .collect(),
                image: p.spec.image.clone(),
                replicas: p.spec.replicas,
                changes,
                unsupported_keys: convert::unsupported_keys(svc),
            });
        }
        steps.sort_by(|a, b| (a.level, &a.service).cmp(&(b.level, &b.service)));
        let orphans = self.orphans(&catalog).await?;
        if !orphans.is_empty() {
            warnings.push(format!(
                "deployed but no longer in the catalog: {}; a Deploy with prune: true removes them (volumes kept)",
                orphans.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        for o in orphans {
            steps.push(api::PlanStep {
                service: o.name,
                tier: o.tier,
                host: o.hosts.keys().cloned().collect::<Vec<_>>().join(","),
                replicas: o.hosts.values().sum(),
                placement: o.hosts.into_iter().collect(),
                action: api::Action::Remove as i32,
                changes: vec!["not in the catalog any more".into()],
                ..Default::default()
            });
        }
        warnings.extend(pin_notes.into_iter().map(|(name, note)| format!("{name}: {note}")));
        warnings.extend(self.image_warnings(&prepared, &logins).await);
        Ok(api::PlanResponse {
            steps,
            warnings,
            catalog: Some(head),
        })
    }

    /// What the target hosts say of the images the plan needs: one warning
    /// per image a host neither has nor can pull (with the reason), and one
    /// per operator that did not answer.
    pub(crate) async fn image_warnings(
        &self,
        prepared: &[(String, Prepared)],
        logins: &[RegistryLogin],
    ) -> Vec<String> {
        // (host, tier) -> image -> services using it
        let mut asks: BTreeMap<(String, String), BTreeMap<String, Vec<String>>> = BTreeMap::new();
        for (name, p) in prepared {
            for h in p.outcome.hosts.keys() {
                asks.entry((h.clone(), p.spec.tier.clone()))
                    .or_default()
                    .entry(p.spec.image.clone())
                    .or_default()
                    .push(name.clone());
            }
        }
        let wait = infra_bus::IMAGE_CHECK_TIMEOUT + Duration::from_secs(1);
        let answers = futures::future::join_all(asks.into_iter().map(|((host, tier), images)| async move {
            let ask = ImageCheck {
                images: images.keys().cloned().collect(),
                logins: logins.to_vec(),
                resolve: false,
            };
            let answer = self.bus.check_images(&host, &tier, ask, wait).await;
            (host, tier, images, answer)
        }))
        .await;
        let mut out = Vec::new();
        for (host, tier, images, answer) in answers {
            match answer {
                Ok(reply) => {
                    for st in reply.images.iter().filter(|s| !s.present && !s.pullable) {
                        let users = images.get(&st.image).map(|u| u.join(", ")).unwrap_or_default();
                        out.push(format!(
                            "{users}: image {} is not on host {host} and cannot be pulled there: {}",
                            st.image, st.reason
                        ));
                    }
                }
                Err(e) => out.push(format!(
                    "could not check the images of the {tier} services on host {host} ({e}); the deploy will \
                     find out whether it has them"
                )),
            }
        }
        out
    }
}

//! Reads: status, the services of the catalog, one service described,
//! the hosts.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::error::Error;
use infra_proto::bus::v1::{Health, ObservedService, ServiceRecord};
use infra_proto::coordinator::v1 as api;

use crate::convert::{self};
use crate::coordinator::*;

impl Coordinator {
    /// State of every deployed service (or of the selection).
    pub async fn status(&self, sel: Option<&api::Selection>) -> Result<api::GetStatusResponse, Error> {
        let filter: Option<BTreeSet<String>> = match sel {
            Some(s) if *s != api::Selection::default() => {
                let catalog = self.load().await?;
                Some(self.resolve(&catalog, Some(s))?.0)
            }
            _ => None,
        };
        let desired = self.bus.list_desired(None).await.map_err(unavailable)?;
        // What the members' operators report of cluster members (Patroni's
        // role, state, timeline, lag), from their heartbeats.
        let beats = self.bus.list_heartbeats().await.unwrap_or_default();
        let member_state = |host: &str, tier: &str, name: &str| {
            let key = format!("{}{name}", infra_bus::facts::MEMBER_PREFIX);
            beats
                .iter()
                .find(|b| b.host == host && b.tier == tier)
                .and_then(|b| b.labels.get(&key).cloned())
        };
        let mut out = Vec::new();
        for d in desired {
            let Some(spec) = d.spec.as_ref() else { continue };
            if filter.as_ref().is_some_and(|f| !f.contains(&spec.name)) {
                continue;
            }
            let o = self
                .cache
                .get(&d.host, &spec.tier, &spec.name)
                .await
                .unwrap_or_default();
            let mut message = if d.absent { "removing".into() } else { o.message.clone() };
            if let Some(m) = member_state(&d.host, &spec.tier, &spec.name).filter(|_| !d.absent) {
                message = if message.is_empty() {
                    m
                } else {
                    format!("{message}; {m}")
                };
            }
            out.push(api::ServiceStatus {
                service: spec.name.clone(),
                tier: spec.tier.clone(),
                host: d.host.clone(),
                desired_replicas: if d.absent { 0 } else { spec.replicas.max(1) },
                running_replicas: o.running_replicas,
                healthy_replicas: o.healthy_replicas,
                health: if o.service.is_empty() {
                    Health::Starting as i32
                } else {
                    o.health
                },
                container_ids: o.containers.iter().map(|c| c.id.chars().take(12).collect()).collect(),
                since: o.since,
                message,
                ..Default::default()
            });
        }
        // Replicas no host could take: one row without a host, with why.
        for r in self.bus.list_records().await.map_err(unavailable)? {
            if r.pending_replicas == 0 || filter.as_ref().is_some_and(|f| !f.contains(&r.service)) {
                continue;
            }
            out.push(api::ServiceStatus {
                service: r.service.clone(),
                tier: r.tier.clone(),
                desired_replicas: r.pending_replicas,
                health: Health::Unspecified as i32,
                since: r.updated_at,
                message: format!("pending: {}", r.pending_reason),
                pending_replicas: r.pending_replicas,
                pending_reason: r.pending_reason.clone(),
                ..Default::default()
            });
        }
        out.sort_by(|a, b| (&a.tier, &a.service, &a.host).cmp(&(&b.tier, &b.service, &b.host)));
        Ok(api::GetStatusResponse { services: out })
    }

    /// Hosts and their operators.
    pub async fn hosts(&self) -> Result<api::ListHostsResponse, Error> {
        let mut by_host: BTreeMap<String, api::HostInfo> = BTreeMap::new();
        for hb in self.heartbeats().await? {
            let h = by_host.entry(hb.host.clone()).or_insert_with(|| api::HostInfo {
                host: hb.host.clone(),
                ..Default::default()
            });
            let mut labels = hb.labels.clone();
            let metrics_addr = labels.remove(infra_bus::facts::METRICS).unwrap_or_default();
            h.labels.extend(labels);
            h.operators.push(api::OperatorInfo {
                tier: hb.tier.clone(),
                version: hb.version.clone(),
                last_heartbeat: hb.sent_at,
                started_at: hb.started_at,
                grpc_addr: hb.grpc_addr.clone(),
                services: hb.services,
                metrics_addr,
                version_skew: version_skew(&hb.version),
            });
        }
        for st in self.host_states().await.into_values() {
            let h = by_host.entry(st.host.clone()).or_insert_with(|| api::HostInfo {
                host: st.host.clone(),
                ..Default::default()
            });
            h.state = if st.lost { "lost" } else { "drained" }.into();
        }
        for h in by_host.values_mut() {
            h.operators.sort_by(|a, b| a.tier.cmp(&b.tier));
            if h.state.is_empty() {
                h.state = "active".into();
            }
        }
        Ok(api::ListHostsResponse {
            hosts: by_host.into_values().collect(),
            coordinator_version: crate::VERSION.to_owned(),
        })
    }

    /// Services of the catalog (every one, when the selection is empty),
    /// with where they run.
    pub async fn list(&self, sel: Option<&api::Selection>) -> Result<api::ListServicesResponse, Error> {
        let catalog = self.load().await?;
        let names: BTreeSet<String> = match sel {
            Some(s) if *s != api::Selection::default() => self.resolve(&catalog, Some(s))?.0,
            _ => catalog.services.keys().cloned().collect(),
        };
        let observed = self.cache.all().await;
        let records: HashMap<String, ServiceRecord> = self
            .bus
            .list_records()
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(|r| (r.service.clone(), r))
            .collect();
        let mut out = Vec::new();
        for n in names {
            let rec = records.get(&n);
            let svc = &catalog.services[&n];
            let here: Vec<&ObservedService> = observed.iter().filter(|o| o.service == n).collect();
            out.push(api::ServiceSummary {
                name: n.clone(),
                tier: svc.tier.as_str().to_owned(),
                image: svc.image.clone().unwrap_or_default(),
                depends_on: svc.depends_on.iter().map(|d| d.service.clone()).collect(),
                profiles: svc.profiles.clone(),
                hosts: here.iter().map(|o| o.host.clone()).collect(),
                health: here.first().map_or(Health::Unspecified as i32, |o| o.health),
                replicas: rec.map_or(svc.replicas(), |r| r.replicas),
                revision: rec.map_or(0, |r| r.revision),
                rollout: rec
                    .and_then(|r| r.rollout.as_ref())
                    .map(|r| r.phase.clone())
                    .unwrap_or_default(),
            });
        }
        Ok(api::ListServicesResponse { services: out })
    }

    /// One service in full.
    pub async fn describe(&self, name: &str) -> Result<api::DescribeServiceResponse, Error> {
        if name.is_empty() {
            return Err(invalid("name: must name a service"));
        }
        let catalog = self.load().await?;
        let svc = catalog.services.get(name).ok_or_else(|| {
            Error::not_found(format!(
                "name: no service {name:?} in the catalog at {}",
                catalog.root.display()
            ))
        })?;
        let summary = self
            .list(Some(&api::Selection {
                services: vec![name.to_owned()],
                ..Default::default()
            }))
            .await?;
        let summary = summary.services.into_iter().find(|s| s.name == name);
        let dependents = catalog
            .services
            .values()
            .filter(|s| s.depends_on.iter().any(|d| d.service == name))
            .map(|s| s.name.clone())
            .collect();
        let (spec, _) = convert::to_spec(&catalog, &self.settings.project, svc, &Self::env()).map_err(invalid)?;
        Ok(api::DescribeServiceResponse {
            summary,
            dependencies: spec
                .depends_on
                .iter()
                .map(|d| api::Dependency {
                    service: d.service.clone(),
                    tier: d.tier.clone(),
                    condition: d.condition,
                    required: d.required,
                })
                .collect(),
            dependents,
            source_file: svc.file.display().to_string(),
            source_line: svc.line as u32,
            unsupported_keys: convert::unsupported_keys(svc),
            // From the heartbeats: the gRPC layer fills them (service.rs).
            members: Vec::new(),
            spec: Some(spec),
            observed: self
                .cache
                .all()
                .await
                .into_iter()
                .filter(|o| o.service == name)
                .collect(),
        })
    }
}

/// How an operator's `version` differs from this coordinator's, or empty
/// when it does not.
pub fn version_skew(version: &str) -> String {
    if version == crate::VERSION {
        String::new()
    } else {
        format!("operator {version}, coordinator {}", crate::VERSION)
    }
}

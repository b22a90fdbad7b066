//! Backups: on demand (`Backup`, `ListBackups`, `Restore`) and on each
//! service's schedule (the leader). The coordinator reaches no store and
//! no database itself: it asks the operator of a host that runs the
//! service, which dumps in the service's own container and talks to the
//! store on the hosts' private network. Every backup and restore, done or
//! failed, is an event with its object, size and duration.
//!
//! Objects are `<project>/<service>/<UTC time>.dump` in the target's
//! bucket, so a listing is in time order and retention deletes the oldest.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use infra_compose::Catalog;
use infra_proto::bus::v1::{BackupCall, BackupReply, EventKind};
use infra_proto::coordinator::v1 as api;
use tokio_util::sync::CancellationToken;

use crate::convert::backup::{self, BackupPlan};
use crate::coordinator::{Coordinator, invalid, unavailable};
use crate::error::Error;

/// How often the leader looks for a backup that is due.
const SCHEDULE_TICK: Duration = Duration::from_secs(30);

/// How long a scheduled backup that failed waits before the next try (or
/// its schedule, when shorter): one failure event per try, not per tick.
const RETRY_AFTER: Duration = Duration::from_secs(300);

/// A service's backup settings and where it runs.
struct Subject {
    tier: String,
    plan: BackupPlan,
    target: infra_proto::bus::v1::BackupTarget,
    hosts: Vec<String>,
    prefix: String,
}

/// `20261203T193012.123Z`: a key part that sorts by time.
fn stamp(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The time a key made by [`stamp`] names.
fn stamped(key: &str) -> Option<SystemTime> {
    let s = key.rsplit('/').next()?.get(..15)?;
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    let month = time::Month::try_from(num(4..6)? as u8).ok()?;
    let date = time::Date::from_calendar_date(num(0..4)? as i32, month, num(6..8)? as u8).ok()?;
    let at = date
        .with_hms(num(9..11)? as u8, num(11..13)? as u8, num(13..15)? as u8)
        .ok()?
        .assume_utc();
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(at.unix_timestamp()).ok()?))
}

/// The host part of an `http://host:port/...` endpoint.
fn url_host(endpoint: &str) -> Option<&str> {
    let rest = endpoint.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    Some(authority.rsplit_once(':').map_or(authority, |(h, _)| h))
}

impl Coordinator {
    /// What backing up `service` needs: its plan and target from the
    /// catalog, and the hosts that run it now (the ones with a running
    /// replica first).
    async fn subject(&self, catalog: &Catalog, service: &str) -> Result<Subject, Error> {
        let svc = catalog
            .services
            .get(service)
            .ok_or_else(|| Error::not_found(format!("service: no service {service:?} in the catalog")))?;
        let plan = backup::plan(catalog, svc).map_err(invalid)?.ok_or_else(|| {
            Error::precondition(format!(
                "service {service:?} declares no backups (an `x-backup` block in {}:{})",
                svc.file.display(),
                svc.line
            ))
        })?;
        let mut target = backup::target(catalog, &plan.target, &Self::env()).map_err(invalid)?;
        // An endpoint that names a service of the catalog (`http://minio:9000`).
        if let Some(store) = url_host(&target.endpoint).and_then(|h| catalog.services.get(h)) {
            target.service.clone_from(&store.name);
            target.service_tier = store.tier.as_str().to_owned();
        }
        let tier = svc.tier.as_str().to_owned();
        let mut hosts: Vec<(bool, String)> = Vec::new();
        for d in self.bus.list_desired(None).await.map_err(unavailable)? {
            if d.absent || d.spec.as_ref().is_none_or(|s| s.name != service) {
                continue;
            }
            let running = self
                .cache
                .get(&d.host, &tier, service)
                .await
                .is_some_and(|o| o.running_replicas > 0);
            hosts.push((!running, d.host.clone()));
        }
        hosts.sort();
        if hosts.is_empty() {
            return Err(Error::precondition(format!(
                "service {service:?} is not deployed: nothing to back up or restore into"
            )));
        }
        Ok(Subject {
            tier,
            prefix: format!("{}/{service}/", self.settings.project),
            plan,
            target,
            hosts: hosts.into_iter().map(|(_, h)| h).collect(),
        })
    }

    /// Asks the hosts of `s` in turn (the first that answers without a
    /// "no running container" wins).
    async fn ask_backup(&self, s: &Subject, mut call: BackupCall) -> Result<BackupReply, String> {
        call.target = Some(s.target.clone());
        call.timeout_secs = s.plan.timeout.as_secs().min(u64::from(u32::MAX)) as u32;
        let wait = s.plan.timeout + Duration::from_secs(30);
        let mut last = String::new();
        for h in &s.hosts {
            match self.bus.backup_call(h, &s.tier, &call, wait).await {
                Ok(r) if r.error.is_empty() => return Ok(r),
                Ok(r) if r.error.starts_with("no running container") => last = r.error,
                Ok(r) => return Err(format!("on {h}: {}", r.error)),
                Err(e) => last = format!("on {h}: {e}"),
            }
        }
        Err(last)
    }

    /// Takes a backup of `service` now.
    pub async fn backup(&self, req: api::BackupRequest) -> Result<api::BackupResponse, Error> {
        let (catalog, _) = self.load_revision().await?;
        let s = self.subject(&catalog, &req.service).await?;
        self.backup_of(&req.service, &s).await
    }

    async fn backup_of(&self, service: &str, s: &Subject) -> Result<api::BackupResponse, Error> {
        let key = format!("{}{}.dump", s.prefix, stamp(SystemTime::now()));
        let call = BackupCall {
            op: "run".into(),
            service: service.to_owned(),
            key: key.clone(),
            command: s.plan.dump.clone(),
            keep: s.plan.keep,
            prefix: s.prefix.clone(),
            ..Default::default()
        };
        match self.ask_backup(s, call).await {
            Ok(r) => {
                self.event(
                    EventKind::BackupTaken,
                    service,
                    &s.tier,
                    "",
                    format!(
                        "{}/{key}: {} bytes in {:.1}s on {}{}",
                        s.target.bucket,
                        r.size,
                        r.seconds,
                        r.host,
                        if r.deleted.is_empty() {
                            String::new()
                        } else {
                            format!("; {} older deleted (keep {})", r.deleted.len(), s.plan.keep)
                        }
                    ),
                )
                .await;
                Ok(api::BackupResponse {
                    service: service.to_owned(),
                    host: r.host,
                    key,
                    size: r.size,
                    seconds: r.seconds,
                    sha256: r.sha256,
                    deleted: r.deleted,
                    bucket: s.target.bucket.clone(),
                })
            }
            Err(e) => {
                self.event(EventKind::BackupFailed, service, &s.tier, "", e.clone())
                    .await;
                Err(Error::unavailable(format!("backup of {service}: {e}")))
            }
        }
    }

    /// The backups of `service` in its target, oldest first.
    pub async fn list_backups(&self, req: api::ListBackupsRequest) -> Result<api::ListBackupsResponse, Error> {
        let (catalog, _) = self.load_revision().await?;
        let s = self.subject(&catalog, &req.service).await?;
        let call = BackupCall {
            op: "list".into(),
            service: req.service.clone(),
            prefix: s.prefix.clone(),
            ..Default::default()
        };
        let r = self
            .ask_backup(&s, call)
            .await
            .map_err(|e| Error::unavailable(format!("backups of {}: {e}", req.service)))?;
        Ok(api::ListBackupsResponse {
            service: req.service,
            bucket: s.target.bucket.clone(),
            backups: r.objects,
        })
    }

    /// Restores `service` from a backup (the newest unless `key` names one).
    pub async fn restore(&self, req: api::RestoreRequest) -> Result<api::RestoreResponse, Error> {
        let (catalog, _) = self.load_revision().await?;
        let s = self.subject(&catalog, &req.service).await?;
        if s.plan.restore.is_empty() {
            return Err(Error::precondition(format!(
                "service {:?}: its x-backup names no restore command",
                req.service
            )));
        }
        let key = if req.key.is_empty() {
            self.list_backups(api::ListBackupsRequest {
                service: req.service.clone(),
            })
            .await?
            .backups
            .pop()
            .map(|o| o.key)
            .ok_or_else(|| Error::not_found(format!("no backup of {} in {}", req.service, s.target.bucket)))?
        } else if req.key.starts_with(&s.prefix) {
            req.key.clone()
        } else {
            return Err(invalid(format!(
                "key: {:?} is not a backup of {} (those start with {:?})",
                req.key, req.service, s.prefix
            )));
        };
        let call = BackupCall {
            op: "restore".into(),
            service: req.service.clone(),
            key: key.clone(),
            command: s.plan.restore.clone(),
            prefix: s.prefix.clone(),
            ..Default::default()
        };
        match self.ask_backup(&s, call).await {
            Ok(r) => {
                self.event(
                    EventKind::BackupRestored,
                    &req.service,
                    &s.tier,
                    "",
                    format!(
                        "{}/{key}: {} bytes in {:.1}s on {}",
                        s.target.bucket, r.size, r.seconds, r.host
                    ),
                )
                .await;
                Ok(api::RestoreResponse {
                    service: req.service,
                    host: r.host,
                    key,
                    size: r.size,
                    seconds: r.seconds,
                })
            }
            Err(e) => {
                self.event(EventKind::RestoreFailed, &req.service, &s.tier, "", e.clone())
                    .await;
                Err(Error::unavailable(format!("restore of {}: {e}", req.service)))
            }
        }
    }

    /// While this coordinator leads, takes each scheduled backup that is
    /// due: one whose newest stored backup is older than its schedule (or
    /// that has none), and whose store answers a listing (a store not
    /// deployed is skipped quietly). A failed one is tried again after
    /// [`RETRY_AFTER`].
    pub async fn backup_schedule(self, shutdown: CancellationToken) {
        let mut newest: HashMap<String, SystemTime> = HashMap::new();
        let mut failed: HashMap<String, std::time::Instant> = HashMap::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(SCHEDULE_TICK) => {}
            }
            if !self.is_leader() {
                newest.clear();
                continue;
            }
            let Ok((catalog, _)) = self.load_revision().await else {
                continue;
            };
            for (name, svc) in &catalog.services {
                let Ok(Some(plan)) = backup::plan(&catalog, svc) else {
                    continue;
                };
                let Some(every) = plan.every else { continue };
                if failed.get(name).is_some_and(|t| t.elapsed() < RETRY_AFTER.min(every)) {
                    continue;
                }
                let Ok(s) = self.subject(&catalog, name).await else {
                    continue;
                };
                let last = match newest.get(name) {
                    Some(t) => Some(*t),
                    None => {
                        let call = BackupCall {
                            op: "list".into(),
                            service: name.clone(),
                            prefix: s.prefix.clone(),
                            ..Default::default()
                        };
                        match self.ask_backup(&s, call).await {
                            Ok(r) => r.objects.last().and_then(|o| stamped(&o.key)),
                            Err(_) => continue,
                        }
                    }
                };
                if last.is_some_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() < every) {
                    if let Some(t) = last {
                        newest.insert(name.clone(), t);
                    }
                    continue;
                }
                let now = SystemTime::now();
                if self.backup_of(name, &s).await.is_ok() {
                    newest.insert(name.clone(), now);
                    failed.remove(name);
                } else {
                    tracing::warn!(
                        service = %name,
                        "scheduled backup failed (an event says why); trying again in {}s",
                        RETRY_AFTER.min(every).as_secs()
                    );
                    failed.insert(name.clone(), std::time::Instant::now());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_time_and_name_it_back() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_325_012);
        let k = format!("infra/mng-pg/{}.dump", stamp(t));
        assert_eq!(k, "infra/mng-pg/20261203T191012.000Z.dump");
        assert_eq!(stamped(&k), Some(t));
        assert!(stamp(t) < stamp(t + Duration::from_millis(1)));
        assert_eq!(stamped("infra/mng-pg/garbage"), None);
        assert_eq!(url_host("http://minio:9000"), Some("minio"));
        assert_eq!(url_host("http://10.0.0.5:9000/x"), Some("10.0.0.5"));
    }
}

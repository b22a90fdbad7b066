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

/// A service's (or a group's) backup settings and where it runs.
struct Subject {
    tier: String,
    plan: BackupPlan,
    target: infra_proto::bus::v1::BackupTarget,
    /// (member service, host) pairs to ask, the ones with a running
    /// replica first.
    places: Vec<(String, String)>,
    prefix: String,
}

/// What a host's operator answered, and which member it ran in.
struct Answer {
    reply: BackupReply,
    member: String,
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

/// ` (member pg-1)` when a group's member did it.
fn of_member(subject: &str, member: &str) -> String {
    if member == subject {
        String::new()
    } else {
        format!(" (member {member})")
    }
}

/// The port of an `http://host:port/...` endpoint (80 or 443 when it
/// names none).
fn url_port(endpoint: &str) -> u16 {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("http", endpoint));
    let authority = rest.split('/').next().unwrap_or_default();
    authority
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(if scheme == "https" { 443 } else { 80 })
}

/// The host part of an `http://host:port/...` endpoint.
fn url_host(endpoint: &str) -> Option<&str> {
    let rest = endpoint.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    Some(authority.rsplit_once(':').map_or(authority, |(h, _)| h))
}

impl Coordinator {
    /// What backing up `name` needs: its plan and target from the
    /// catalog, and where its members run now (the ones with a running
    /// replica first). `name` is a service with an `x-backup` block, or
    /// the group its members name.
    async fn subject(&self, catalog: &Catalog, name: &str) -> Result<Subject, Error> {
        let all = backup::subjects(catalog).map_err(invalid)?;
        let Some(found) = all.get(name) else {
            return Err(match catalog.services.get(name) {
                None => Error::not_found(format!(
                    "service: no service or backup group {name:?} in the catalog (backed up: {})",
                    all.keys().cloned().collect::<Vec<_>>().join(", ")
                )),
                Some(svc) => match backup::plan(catalog, svc).ok().flatten().and_then(|p| p.group) {
                    Some(group) => Error::precondition(format!(
                        "service {name:?} is backed up with its group: name {group:?} (x-backup.group in {}:{})",
                        svc.file.display(),
                        svc.line
                    )),
                    None => Error::precondition(format!(
                        "service {name:?} declares no backups (an `x-backup` block in {}:{})",
                        svc.file.display(),
                        svc.line
                    )),
                },
            });
        };
        let plan = found.plan.clone();
        let mut target = backup::target(catalog, &plan.target, &Self::env()).map_err(invalid)?;
        // An endpoint that names a service of the catalog (`http://minio:9000`).
        if let Some(store) = url_host(&target.endpoint).and_then(|h| catalog.services.get(h)) {
            if target.endpoint.starts_with("https://") {
                return Err(invalid(format!(
                    "{}.{:?}.endpoint: {} is a service of the catalog, reached through its container on the \
                     private network over http://; https:// is for stores outside the catalog",
                    backup::TARGETS_KEY,
                    plan.target,
                    store.name
                )));
            }
            target.service.clone_from(&store.name);
            target.service_tier = store.tier.as_str().to_owned();
        }
        let tier = catalog.services[&found.members[0]].tier.as_str().to_owned();
        let mut places: Vec<(bool, String, String)> = Vec::new();
        let desired = self.bus.list_desired(None).await.map_err(unavailable)?;
        if !target.service.is_empty() {
            target.remote = self.store_remote(&target, &desired).await;
        }
        for d in desired {
            let Some(member) = d.spec.as_ref().map(|s| &s.name).filter(|n| found.members.contains(n)) else {
                continue;
            };
            if d.absent {
                continue;
            }
            let running = self
                .cache
                .get(&d.host, &tier, member)
                .await
                .is_some_and(|o| o.running_replicas > 0);
            places.push((!running, member.clone(), d.host.clone()));
        }
        places.sort();
        if places.is_empty() {
            return Err(Error::precondition(format!(
                "{name:?} is not deployed ({}): nothing to back up or restore into",
                found.members.join(", ")
            )));
        }
        Ok(Subject {
            tier,
            prefix: format!("{}/{name}/", self.settings.project),
            plan,
            target,
            places: places.into_iter().map(|(_, m, h)| (m, h)).collect(),
        })
    }

    /// The private address and port of a host that runs the store service
    /// of `target` (for the operators of the other hosts); empty when no
    /// such host says its address.
    async fn store_remote(
        &self,
        target: &infra_proto::bus::v1::BackupTarget,
        desired: &[infra_proto::bus::v1::DesiredService],
    ) -> String {
        let port = url_port(&target.endpoint);
        let Ok(beats) = self.heartbeats().await else {
            return String::new();
        };
        let hosts = crate::placement::hosts_from(&beats);
        desired
            .iter()
            .filter(|d| !d.absent && d.spec.as_ref().is_some_and(|s| s.name == target.service))
            .find_map(|d| {
                hosts
                    .iter()
                    .find(|h| h.name == d.host)
                    .and_then(|h| h.labels.get(crate::coordinator::ADDR_LABEL))
                    .filter(|a| !a.is_empty())
            })
            .map(|addr| format!("{addr}:{port}"))
            .unwrap_or_default()
    }

    /// Asks the members of `s` on their hosts in turn; the first that
    /// is not passed over (no running container, or its member check
    /// failed) answers.
    async fn ask_backup(&self, s: &Subject, mut call: BackupCall) -> Result<Answer, String> {
        call.target = Some(s.target.clone());
        call.timeout_secs = s.plan.timeout.as_secs().min(u64::from(u32::MAX)) as u32;
        call.member_check = s.plan.member_check(&call.op).to_vec();
        let wait = s.plan.timeout + Duration::from_secs(30);
        let mut passed = Vec::new();
        for (member, h) in &s.places {
            call.service.clone_from(member);
            match self.bus.backup_call(h, &s.tier, &call, wait).await {
                Ok(r) if r.error.is_empty() => {
                    return Ok(Answer {
                        reply: r,
                        member: member.clone(),
                    });
                }
                Ok(r) if r.passed_over || r.error.starts_with("no running container") => passed.push(r.error),
                Ok(r) => return Err(format!("{member} on {h}: {}", r.error)),
                Err(e) => passed.push(format!("{member} on {h}: {e}")),
            }
        }
        Err(match passed.as_slice() {
            [one] => one.clone(),
            all => format!("no member could take it: {}", all.join("; ")),
        })
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
            key: key.clone(),
            command: s.plan.dump.clone(),
            keep: s.plan.keep,
            prefix: s.prefix.clone(),
            ..Default::default()
        };
        match self.ask_backup(s, call).await {
            Ok(Answer { reply: r, member }) => {
                self.event(
                    EventKind::BackupTaken,
                    service,
                    &s.tier,
                    "",
                    format!(
                        "{}/{key}: {} bytes in {:.1}s on {}{}{}",
                        s.target.bucket,
                        r.size,
                        r.seconds,
                        r.host,
                        of_member(service, &member),
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
                    member,
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
            prefix: s.prefix.clone(),
            ..Default::default()
        };
        let r = self
            .ask_backup(&s, call)
            .await
            .map_err(|e| Error::unavailable(format!("backups of {}: {e}", req.service)))?
            .reply;
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
            key: key.clone(),
            command: s.plan.restore.clone(),
            prefix: s.prefix.clone(),
            ..Default::default()
        };
        match self.ask_backup(&s, call).await {
            Ok(Answer { reply: r, member }) => {
                self.event(
                    EventKind::BackupRestored,
                    &req.service,
                    &s.tier,
                    "",
                    format!(
                        "{}/{key}: {} bytes in {:.1}s on {}{}",
                        s.target.bucket,
                        r.size,
                        r.seconds,
                        r.host,
                        of_member(&req.service, &member)
                    ),
                )
                .await;
                Ok(api::RestoreResponse {
                    service: req.service,
                    host: r.host,
                    key,
                    size: r.size,
                    seconds: r.seconds,
                    member,
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
            let Ok(subjects) = backup::subjects(&catalog) else {
                continue;
            };
            for (name, subject) in &subjects {
                let Some(every) = subject.plan.every else { continue };
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
                            prefix: s.prefix.clone(),
                            ..Default::default()
                        };
                        match self.ask_backup(&s, call).await {
                            Ok(a) => a.reply.objects.last().and_then(|o| stamped(&o.key)),
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
        assert_eq!(url_port("http://minio:9000"), 9000);
        assert_eq!(url_port("https://s3.example.com/b"), 443);
    }
}

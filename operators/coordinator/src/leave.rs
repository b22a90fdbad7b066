//! A host leaving the platform (`RemoveHost`, `infractl host remove`):
//! drained, its credential revoked, its keys deleted, in that order, so
//! that what can move starts elsewhere while the host's operators still
//! stop what they run, and the host cannot write its keys back once they
//! are gone.

use std::time::{Duration, Instant};

use infra_proto::bus::v1::EventKind;
use infra_proto::coordinator::v1 as api;

use crate::Coordinator;
use crate::coordinator::{ProgressTx, unavailable};
use crate::error::Error;
use crate::hosts::Progress;

impl Coordinator {
    /// Drains `req.host`, revokes every credential issued to it and
    /// deletes its keys. Refused (after the drain, which `Drain undo`
    /// reverts) while services that cannot move run there, unless
    /// `req.force`.
    pub async fn remove_host(&self, req: api::RemoveHostRequest, tx: ProgressTx) -> Result<(), Error> {
        infra_bus::Token::new("host", &req.host).map_err(|e| Error::invalid(format!("host: {e}")))?;
        let js = self.settings.join.clone().ok_or_else(|| {
            Error::precondition(
                "removing a host revokes its credential, which needs join.authority_file in the coordinator's \
                 configuration",
            )
        })?;
        let host = req.host.clone();
        let progress = Progress {
            tx,
            deployment: nuid::next().to_string(),
            host: host.clone(),
        };
        // 1. Drain: what can move starts elsewhere first.
        self.mark_drained(&progress).await?;
        let deadline = Duration::from_secs(if req.timeout_seconds > 0 {
            u64::from(req.timeout_seconds)
        } else {
            300
        });
        let ev = self.evacuate(&host, true, deadline, &progress.deployment).await;
        for m in &ev.moved {
            progress.send(api::Phase::Ready, m, "moved".into()).await;
        }
        let stuck: Vec<&String> = ev.stranded.iter().chain(&ev.pending).collect();
        if !stuck.is_empty() && !req.force {
            return Err(Error::precondition(format!(
                "host {host} still runs services that cannot move: {}; move or remove them first, or remove the \
                 host with force (they keep running there, unmanaged). The host stays drained (Drain with undo \
                 takes it back)",
                stuck.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; ")
            )));
        }
        // 2. Revoke every credential issued to it.
        let t0 = Instant::now();
        let revoked = self.revoke_host(&host, &js).await?;
        if revoked == 0 {
            progress
                .send(
                    api::Phase::Blocked,
                    "",
                    format!("no credential of {host} is on record (it did not join by token): none revoked"),
                )
                .await;
        }
        let revoke_took = t0.elapsed();
        // 3. Delete its keys.
        let deleted = self.bus.forget_host(&host).await.map_err(unavailable)?;
        let summary = format!(
            "host {host} removed: moved {}; {} credential(s) revoked in {:.1}s; {deleted} keys deleted{}",
            if ev.moved.is_empty() {
                "nothing".to_owned()
            } else {
                ev.moved.join(", ")
            },
            revoked,
            revoke_took.as_secs_f64(),
            if stuck.is_empty() {
                String::new()
            } else {
                format!(
                    "; left running there, unmanaged: {}",
                    stuck.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; ")
                )
            }
        );
        self.event(EventKind::HostRemoved, "", "", &progress.deployment, summary.clone())
            .await;
        progress.send(api::Phase::Done, "", summary).await;
        Ok(())
    }

    /// Revokes the credentials issued to `host` (its own and its join
    /// token's): the platform account's JWT, naming every user revoked so
    /// far, pushed to the servers' resolver. How many were revoked.
    async fn revoke_host(&self, host: &str, js: &crate::join::JoinSettings) -> Result<usize, Error> {
        let users: Vec<String> = match self.bus.get_join_ticket(host).await.map_err(unavailable)? {
            Some((t, _)) => [t.host_user, t.join_user]
                .into_iter()
                .filter(|u| !u.is_empty())
                .collect(),
            None => Vec::new(),
        };
        if users.is_empty() {
            return Ok(0);
        }
        let revoked = self.bus.add_revoked_users(&users).await.map_err(unavailable)?;
        let jwt = js.authority.account_jwt(&revoked);
        infra_bus::auth::push_account_jwt(&js.nats_url, &js.ca_file, &js.authority.system_user(), &jwt)
            .await
            .map_err(Error::unavailable)?;
        Ok(users.len())
    }
}

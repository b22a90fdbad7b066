//! A new leader resumes every rollout the store says was in progress, from
//! the last batch the hosts' desired state shows done.

use super::*;
use crate::coordinator::Coordinator;

impl Coordinator {
    /// Resumes every rollout the store says was in progress (`rolling` or
    /// `rolling_back`) when its coordinator stopped, from the last batch the
    /// hosts' desired state shows done. Called by a coordinator that has
    /// just taken the lead. Progress goes to the bus (events); returns the
    /// services it resumed, with how each ended.
    pub async fn resume_rollouts(&self) -> Vec<(String, Result<(), String>)> {
        let mut out = Vec::new();
        let Ok(records) = self.bus().list_records().await else {
            return out;
        };
        for rec in records {
            let Some(st) = rec.rollout.clone() else { continue };
            if !matches!(st.phase.as_str(), "rolling" | "rolling_back") {
                continue;
            }
            let (Some(target), Some(from)) = (st.target.clone(), st.from.clone()) else {
                continue;
            };
            let existing: Vec<DesiredService> = self
                .bus()
                .list_desired(None)
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|d| !d.absent && d.spec.as_ref().is_some_and(|s| s.name == rec.service))
                .collect();
            let counts: BTreeMap<String, u32> = existing
                .iter()
                .map(|d| (d.host.clone(), d.spec.as_ref().map_or(1, |s| s.replicas.max(1))))
                .collect();
            let updated: BTreeMap<String, u32> = existing
                .iter()
                .map(|d| (d.host.clone(), if d.previous.is_some() { d.updated } else { 0 }))
                .collect();
            let order = slots(&counts);
            // A host whose desired state already carries the target
            // without a previous spec finished (settle ran part way).
            let settled = existing.iter().all(|d| {
                d.previous.is_none()
                    && d.spec.as_ref().map(infra_proto::spec::spec_hash) == Some(infra_proto::spec::spec_hash(&target))
            });
            let at = if settled {
                order.len()
            } else {
                done_from(&order, &updated)
            };
            let (tx, mut rx) = mpsc::channel(64);
            tokio::spawn(async move { while rx.recv().await.is_some() {} });
            let r = Reporter {
                name: &rec.service,
                tier: &rec.tier,
                deployment: &st.id,
                tx: &tx,
            };
            let (update, back) = (
                rec.update.clone().unwrap_or_default(),
                rec.rollback.clone().unwrap_or_default(),
            );
            tracing::info!(service = %rec.service, at, total = order.len(), "resuming an interrupted rollout");
            let deadline = self.settings().deploy_timeout;
            let end = self
                .rollout(&r, &from, &target, &counts, at, &update, &back, deadline, st.rollback)
                .await;
            out.push((rec.service.clone(), end));
        }
        out
    }
}

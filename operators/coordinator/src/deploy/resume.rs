//! A new leader runs again the deploys a former leader recorded and did
//! not finish (`infra_deployments`), newest first, and ends every record.

use infra_proto::bus::v1::DeploymentInProgress;
use infra_proto::coordinator::v1 as api;
use prost::Message;
use tokio::sync::watch;

use crate::coordinator::Coordinator;
use crate::error::Error;
use crate::service::while_leading;

/// Runs again every deploy a former leader recorded and did not finish,
/// then forgets it. Deploy is idempotent (unchanged services are skipped),
/// so what the former leader did is not done twice; its progress stream
/// is gone with it and is discarded here. Called by a new leader; stops
/// when it stops leading, leaving the records for the next one.
///
/// # Guarantees
/// - Every record ends: run to its end (done or failed), superseded by a
///   newer record whose services include all of its own (a deploy is
///   made from the catalog as it is now, so the newer one does all the
///   older one would), or dropped when it no longer resolves against the
///   catalog. Each ending is a `deploy_finished` event naming why.
/// - The newest runs first: an older deploy never holds up the one the
///   person ran last. Each run ends by its own deadlines.
pub async fn resume_deploys(
    coordinator: &Coordinator,
    leading: watch::Receiver<bool>,
) -> Vec<(String, Result<(), String>)> {
    let mut out = Vec::new();
    let mut records = match coordinator.bus().list_deployments().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the deploys in progress");
            return out;
        }
    };
    let started = |r: &DeploymentInProgress| r.started_at.map_or((0, 0), |t| (t.seconds, t.nanos));
    records.sort_by_key(|r| std::cmp::Reverse(started(r)));
    let catalog = coordinator.load().await;
    let mut covered: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut newest: Option<String> = None;
    let mut runs = Vec::new();
    for rec in records {
        let ended = |why: String| {
            let id = rec.id.clone();
            async move {
                tracing::warn!(deployment = %id, %why, "deploy record ended without running it again");
                coordinator
                    .event(
                        infra_proto::bus::v1::EventKind::DeployFinished,
                        "",
                        "",
                        &id,
                        why.clone(),
                    )
                    .await;
                if let Err(e) = coordinator.bus().delete_deployment(&id).await {
                    tracing::warn!(deployment = %id, error = %e, "cannot forget a deploy record");
                }
                (id, Err(why))
            }
        };
        let req = match api::DeployRequest::decode(rec.request.as_slice()) {
            Ok(r) => r,
            Err(e) => {
                out.push(ended(format!("dropped: its record does not decode ({e})")).await);
                continue;
            }
        };
        let names = match catalog.as_ref().map_err(|s| s.message().to_owned()).and_then(|c| {
            coordinator
                .resolve(c, req.selection.as_ref())
                .map_err(|s| s.message().to_owned())
        }) {
            Ok((names, _)) => names,
            Err(e) => {
                out.push(ended(format!("dropped: its selection no longer resolves: {e}")).await);
                continue;
            }
        };
        if !names.is_empty() && names.is_subset(&covered) {
            let by = newest.clone().unwrap_or_default();
            out.push(ended(format!("superseded by deploy {by}, which covers all its services")).await);
            continue;
        }
        covered.extend(names);
        newest.get_or_insert_with(|| rec.id.clone());
        runs.push((rec, req));
    }
    for (rec, req) in runs {
        tracing::info!(deployment = %rec.id, from = %rec.holder, "running again a deploy its leader did not finish");
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<api::DeployProgress, Error>>(256);
        let drain = tokio::spawn(async move {
            let mut failure = None;
            while let Some(p) = rx.recv().await {
                if let Err(status) = p {
                    failure = Some(status.message().to_owned());
                }
            }
            failure
        });
        let c = coordinator.clone();
        let id = rec.id.clone();
        let Some(result) = while_leading(Some(leading.clone()), async move { c.deploy_as(id, req, tx).await }).await
        else {
            return out;
        };
        let failure = drain.await.ok().flatten();
        let end = match (result, failure) {
            (Err(status), _) => Err(status.message().to_owned()),
            (Ok(()), Some(m)) => Err(m),
            (Ok(()), None) => Ok(()),
        };
        if let Err(e) = coordinator.bus().delete_deployment(&rec.id).await {
            tracing::warn!(deployment = %rec.id, error = %e, "cannot forget a resumed deploy");
        }
        out.push((rec.id, end));
    }
    out
}

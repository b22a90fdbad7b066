//! `UpgradeOperators` (`infractl hosts upgrade`): a new operators image
//! rolled over the hosts one at a time. The coordinator only sequences:
//! it asks one operator of a host over the bus, and that host replaces
//! its own install container (`operator_core::upgrade`); the roll goes on
//! once every tier of the host heartbeats again, from the new image, and
//! stops at the first host that does not.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use infra_proto::bus::v1::{EventKind, Heartbeat, OperatorsUpgrade};
use infra_proto::coordinator::v1 as api;

use crate::Coordinator;
use crate::coordinator::ProgressTx;
use crate::error::Error;

/// The host label that names the image a host's operators run from.
const IMAGE_LABEL: &str = "operator_image";
/// How long the asked operator may take to start the helper (it may pull
/// the image first).
const ASK_TIMEOUT: Duration = Duration::from_secs(330);

fn started(hb: &Heartbeat) -> (i64, i32) {
    hb.started_at.as_ref().map_or((0, 0), |t| (t.seconds, t.nanos))
}

/// Progress lines of one roll.
struct Lines {
    tx: ProgressTx,
    deployment: String,
}

impl Lines {
    async fn send(&self, host: &str, phase: api::Phase, message: String) {
        let line = api::DeployProgress {
            deployment_id: self.deployment.clone(),
            host: host.to_owned(),
            phase: phase as i32,
            message,
            time: Some(infra_proto::now()),
            ..Default::default()
        };
        // A client that went away does not stop the roll.
        let _ = self.tx.send(Ok(line)).await;
    }
}

impl Coordinator {
    /// Rolls `req.image` over the hosts (see the module docs).
    pub async fn upgrade_operators(&self, req: api::UpgradeOperatorsRequest, tx: ProgressTx) -> Result<(), Error> {
        if req.image.trim().is_empty() {
            return Err(Error::invalid("image: name the new operators image"));
        }
        let lines = Lines {
            tx,
            deployment: nuid::next().to_string(),
        };
        let beats = self.heartbeats().await?;
        let hosts = hosts_to_roll(&beats, &req.hosts)?;
        let limit = Duration::from_secs(if req.timeout_seconds > 0 {
            u64::from(req.timeout_seconds)
        } else {
            120
        });
        let mut done: Vec<String> = Vec::new();
        for host in &hosts {
            let on: Vec<&Heartbeat> = beats.iter().filter(|b| &b.host == host).collect();
            if on.iter().all(|b| b.labels.get(IMAGE_LABEL) == Some(&req.image)) {
                lines
                    .send(host, api::Phase::Ready, format!("already on {}", req.image))
                    .await;
                continue;
            }
            match self.upgrade_host(host, &on, &req.image, limit, &lines).await {
                Ok(took) => done.push(format!("{host} {:.1}s", took.as_secs_f64())),
                Err(why) => {
                    lines.send(host, api::Phase::Failed, why.clone()).await;
                    let upgraded = if done.is_empty() {
                        "none".to_owned()
                    } else {
                        done.join(", ")
                    };
                    return Err(Error::precondition(format!(
                        "host {host}: {why}; the roll stops here (upgraded: {upgraded}; not asked: the hosts after \
                         {host})"
                    )));
                }
            }
        }
        let summary = format!(
            "operators on {}: {}",
            req.image,
            if done.is_empty() {
                "nothing to do".to_owned()
            } else {
                done.join(", ")
            }
        );
        self.event(EventKind::OperatorsUpgraded, "", "", &lines.deployment, summary.clone())
            .await;
        lines.send("", api::Phase::Done, summary).await;
        Ok(())
    }

    /// One host: asks its first operator, then waits until every tier
    /// heartbeats from a new process on `image`. How long it took, or why
    /// it did not.
    async fn upgrade_host(
        &self,
        host: &str,
        on: &[&Heartbeat],
        image: &str,
        limit: Duration,
        lines: &Lines,
    ) -> Result<Duration, String> {
        let before: BTreeMap<String, (i64, i32)> = on.iter().map(|b| (b.tier.clone(), started(b))).collect();
        let want: BTreeSet<String> = before.keys().cloned().collect();
        let ask_tier = on[0].tier.clone();
        let t0 = Instant::now();
        lines
            .send(
                host,
                api::Phase::Updating,
                format!("the {ask_tier} operator restarts the operators on {image}"),
            )
            .await;
        let ask = OperatorsUpgrade {
            image: image.to_owned(),
            container: String::new(),
        };
        let reply = self
            .bus
            .upgrade_operators(host, &ask_tier, &ask, ASK_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        if !reply.error.is_empty() {
            return Err(reply.error);
        }
        loop {
            let now = self.heartbeats().await.unwrap_or_default();
            let fresh: BTreeSet<String> = now
                .iter()
                .filter(|b| b.host == host && b.labels.get(IMAGE_LABEL).is_some_and(|i| i == image))
                .filter(|b| before.get(&b.tier).is_none_or(|s| started(b) > *s))
                .map(|b| b.tier.clone())
                .collect();
            if fresh.is_superset(&want) {
                break;
            }
            if t0.elapsed() > limit {
                return Err(format!(
                    "its operators did not heartbeat from {image} within {}s (the host's helper puts the previous \
                     ones back when the new ones do not keep running)",
                    limit.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let took = t0.elapsed();
        lines
            .send(
                host,
                api::Phase::Ready,
                format!(
                    "on {image} in {:.1}s ({})",
                    took.as_secs_f64(),
                    want.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
            .await;
        Ok(took)
    }
}

/// The hosts to roll, in order: those asked (each must heartbeat), or
/// every host with a heartbeat, by name.
fn hosts_to_roll(beats: &[Heartbeat], asked: &[String]) -> Result<Vec<String>, Error> {
    let known: BTreeSet<&str> = beats.iter().map(|b| b.host.as_str()).collect();
    if asked.is_empty() {
        return Ok(known.iter().map(|h| (*h).to_owned()).collect());
    }
    if let Some(h) = asked.iter().find(|h| !known.contains(h.as_str())) {
        return Err(Error::not_found(format!("hosts: no operator of {h:?} heartbeats")));
    }
    Ok(asked.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(host: &str, tier: &str) -> Heartbeat {
        Heartbeat {
            host: host.into(),
            tier: tier.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_roll_takes_the_hosts_asked_in_their_order_or_every_host_by_name() {
        let beats = [beat("b", "data"), beat("a", "data"), beat("a", "gateway")];
        assert_eq!(hosts_to_roll(&beats, &[]).unwrap(), ["a", "b"]);
        assert_eq!(hosts_to_roll(&beats, &["b".into(), "a".into()]).unwrap(), ["b", "a"]);
        let e = hosts_to_roll(&beats, &["c".into()]).unwrap_err();
        assert!(e.message().contains("\"c\""), "{e:?}");
    }
}

//! Logs: the lines of a service's replicas on every host, pulled from the
//! operators over the bus (`LogsPull`) and streamed to the caller as they
//! come, each with its host and replica.
//!
//! # Guarantees
//! - The coordinator dials no host: each host's operator answers pulls.
//! - Flow control end to end: a host is pulled again only once its last
//!   answer went into the caller's stream (a bounded channel), so a slow
//!   client slows the reads on the hosts and nothing piles up here.
//! - A caller that goes away stops every host's pulls at once; the
//!   operators close the reads (and their engine streams) once nobody
//!   pulls.
//! - A host that does not answer is a line of its own (stream `infra`),
//!   not the end of the others.

use std::collections::BTreeSet;
use std::time::Duration;

use infra_proto::bus::v1::{LogLine, LogsPull};
use infra_proto::coordinator::v1 as api;
use tokio::sync::mpsc;

use crate::coordinator::*;
use crate::error::Error;

/// How long one pull may take (an operator answers within about a second).
const PULL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a read goes: (host, tier, service).
pub type Targets = BTreeSet<(String, String, String)>;

/// The lines sent to a caller.
pub type LinesTx = mpsc::Sender<Result<LogLine, Error>>;

fn infra_line(host: &str, service: &str, text: String) -> LogLine {
    LogLine {
        host: host.to_owned(),
        service: service.to_owned(),
        stream: "infra".into(),
        time: Some(infra_proto::now()),
        text,
        ..Default::default()
    }
}

impl Coordinator {
    /// Where each of `services` runs: (host, tier, service), or which one
    /// runs nowhere.
    pub async fn log_targets(&self, services: &[String]) -> Result<Targets, Error> {
        if services.is_empty() {
            return Err(invalid("services: name at least one service"));
        }
        let desired = self.bus.list_desired(None).await.map_err(unavailable)?;
        let mut out = BTreeSet::new();
        for s in services {
            let here: Vec<_> = desired
                .iter()
                .filter(|d| !d.absent)
                .filter_map(|d| {
                    d.spec
                        .as_ref()
                        .filter(|sp| sp.name == *s)
                        .map(|sp| (d.host.clone(), sp.tier.clone()))
                })
                .collect();
            if here.is_empty() {
                return Err(Error::not_found(format!("{s}: not deployed on any host")));
            }
            out.extend(here.into_iter().map(|(h, t)| (h, t, s.clone())));
        }
        Ok(out)
    }

    /// Streams `req`'s lines from `targets` ([`Coordinator::log_targets`])
    /// to `tx` until every read ended (not following) or the caller went
    /// away.
    pub async fn logs(&self, targets: Targets, req: api::LogsRequest, tx: LinesTx) {
        let base = nuid::next().to_string();
        let mut tasks = tokio::task::JoinSet::new();
        for (host, tier, service) in targets {
            let (bus, tx) = (self.bus.clone(), tx.clone());
            let mut pull = LogsPull {
                session: format!("{base}-{service}"),
                service: service.clone(),
                follow: req.follow,
                since: req.since,
                tail: req.tail,
                pull: 0,
            };
            tasks.spawn(async move {
                loop {
                    let answer = tokio::select! {
                        () = tx.closed() => return,
                        a = bus.pull_logs(&host, &tier, &pull, PULL_TIMEOUT) => a,
                    };
                    pull.pull += 1;
                    let batch = match answer {
                        Ok(b) => b,
                        Err(e) => {
                            let text = format!("{e}");
                            if tx.send(Ok(infra_line(&host, &service, text))).await.is_err() || !pull.follow {
                                return;
                            }
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            continue;
                        }
                    };
                    for l in batch.lines {
                        if tx.send(Ok(l)).await.is_err() {
                            return;
                        }
                    }
                    if !batch.error.is_empty() {
                        let _ = tx.send(Ok(infra_line(&host, &service, batch.error))).await;
                    }
                    if batch.done {
                        return;
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}

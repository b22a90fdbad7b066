//! Patroni's update order (what Zalando's and CloudNativePG's operators do):
//! replicas first, one at a time, each back to streaming with lag under a
//! threshold before the next; then a planned switchover (`POST
//! /switchover`, not a failover) to the healthiest replica with the least
//! lag; then the old leader, last.
//!
//! Everything goes through Patroni's REST API on each member (`GET
//! /cluster`, `GET /patroni`, `POST /switchover`), at the member host's
//! private address and the port it publishes there.

use std::time::Duration;

use serde::Deserialize;

use super::{HookError, HookFuture, Member, UpdateOrder, http};

/// Lag, in bytes, under which a replica counts as caught up (1 MiB).
pub const DEFAULT_MAX_LAG: u64 = 1 << 20;
/// How long one REST call may take.
const CALL: Duration = Duration::from_secs(3);
/// How often to ask again while waiting.
const POLL: Duration = Duration::from_millis(300);
/// How long a switchover may take to show a new leader.
const SWITCHOVER: Duration = Duration::from_secs(60);

/// The Patroni hook; see the module docs.
#[derive(Clone, Debug)]
pub struct Patroni {
    /// Largest lag (bytes) that counts as caught up.
    pub max_lag: u64,
}

/// One member as `GET /cluster` lists it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ClusterMember {
    /// Patroni's member name (the hostname).
    pub name: String,
    /// `leader`, `replica`, `sync_standby`, `standby_leader`.
    pub role: String,
    /// `running`, `streaming`, `stopped`, `starting`, ...
    pub state: String,
    /// Bytes behind the leader; a string (`unknown`) when not replicating.
    #[serde(default)]
    pub lag: Option<serde_json::Value>,
    /// PostgreSQL timeline.
    #[serde(default)]
    pub timeline: Option<u64>,
}

impl ClusterMember {
    /// Whether this member leads the cluster.
    pub fn is_leader(&self) -> bool {
        matches!(self.role.as_str(), "leader" | "master" | "standby_leader")
    }

    /// Lag in bytes, when Patroni knows it.
    pub fn lag_bytes(&self) -> Option<u64> {
        self.lag.as_ref().and_then(serde_json::Value::as_u64)
    }

    fn serving(&self) -> bool {
        matches!(self.state.as_str(), "running" | "streaming")
    }
}

#[derive(Deserialize)]
struct ClusterDoc {
    #[serde(default)]
    members: Vec<ClusterMember>,
}

#[derive(Deserialize)]
struct Replication {
    #[serde(default)]
    application_name: String,
    #[serde(default)]
    state: String,
}

#[derive(Deserialize)]
struct PatroniDoc {
    #[serde(default)]
    replication: Vec<Replication>,
}

/// `GET /cluster` from the first member that answers, with what each one
/// that did not answer said.
pub async fn cluster(members: &[Member]) -> Result<Vec<ClusterMember>, HookError> {
    let mut errors = Vec::new();
    for m in members {
        match http(&m.addr, m.port, "GET", "/cluster", None, CALL).await {
            Ok((200, body)) => match serde_json::from_str::<ClusterDoc>(&body) {
                Ok(doc) => return Ok(doc.members),
                Err(e) => errors.push(format!("{}: /cluster is not Patroni's JSON ({e})", m.name)),
            },
            Ok((code, body)) => errors.push(format!("{}: /cluster answered {code} {}", m.name, body.trim())),
            Err(e) => errors.push(format!("{}: {e}", m.name)),
        }
    }
    Err(HookError(format!(
        "no Patroni member answered GET /cluster: {}",
        errors.join("; ")
    )))
}

impl Patroni {
    /// The replica to hand leadership to: serving, lag known and under the
    /// threshold, the least lag (ties: the first in `members`' order). In
    /// synchronous mode only a synchronous standby may take over (Patroni
    /// refuses any other with 412), so one is chosen when there is one.
    pub(crate) fn candidate<'a>(
        &self,
        view: &'a [ClusterMember],
        leader: &str,
    ) -> Result<&'a ClusterMember, HookError> {
        let mut best: Option<(&ClusterMember, (bool, u64))> = None;
        let mut why = Vec::new();
        for m in view.iter().filter(|m| m.name != leader) {
            match m.lag_bytes() {
                Some(lag) if m.serving() && !m.is_leader() && lag <= self.max_lag => {
                    // A synchronous standby first, then the least lag.
                    let rank = (m.role != "sync_standby", lag);
                    if best.is_none_or(|(_, b)| rank < b) {
                        best = Some((m, rank));
                    }
                }
                _ => why.push(format!("{} is {} {} with lag {}", m.name, m.role, m.state, lag_text(m))),
            }
        }
        best.map(|(m, _)| m).ok_or_else(|| {
            HookError(format!(
                "no healthy replica to switch {leader} over to (lag at most {} bytes): {}",
                self.max_lag,
                if why.is_empty() {
                    "it is the only member".to_string()
                } else {
                    why.join("; ")
                }
            ))
        })
    }

    async fn switchover(&self, leader: &Member, members: &[Member], view: &[ClusterMember]) -> Result<(), HookError> {
        let cand = self.candidate(view, &leader.name)?.name.clone();
        let body = serde_json::json!({ "leader": leader.name, "candidate": cand }).to_string();
        let (code, text) = http(&leader.addr, leader.port, "POST", "/switchover", Some(&body), CALL * 10).await?;
        if code != 200 {
            return Err(HookError(format!(
                "switchover from {} to {cand} refused: {code} {}",
                leader.name,
                text.trim()
            )));
        }
        let what = format!("switchover from {} to {cand}: {cand} did not lead", leader.name);
        let cand = cand.as_str();
        super::poll_until(&what, SWITCHOVER, POLL, || async move {
            let v = cluster(members).await.map_err(|e| e.0)?;
            match v.iter().find(|m| m.is_leader()) {
                Some(m) if m.name == cand && m.serving() => Ok(()),
                Some(m) => Err(format!("the leader is {} ({})", m.name, m.state)),
                None => Err("no leader".into()),
            }
        })
        .await
    }

    /// Whether `name` is caught up in `view`, and if not, why.
    async fn caught_up(&self, name: &str, members: &[Member], view: &[ClusterMember]) -> Result<(), String> {
        let Some(me) = view.iter().find(|m| m.name == name) else {
            return Err(format!("{name} is not in the cluster"));
        };
        let Some(leader) = view.iter().find(|m| m.is_leader() && m.serving()) else {
            return Err("the cluster has no running leader".into());
        };
        if me.name == leader.name {
            return Ok(());
        }
        match me.lag_bytes() {
            Some(lag) if me.serving() && lag <= self.max_lag => {}
            _ => return Err(format!("{name} is {} {} with lag {}", me.role, me.state, lag_text(me))),
        }
        // The leader must see it streaming (lag alone can be stale).
        let Some(lm) = members.iter().find(|m| m.name == leader.name) else {
            return Ok(());
        };
        match http(&lm.addr, lm.port, "GET", "/patroni", None, CALL).await {
            Ok((200, body)) => {
                let doc: PatroniDoc = serde_json::from_str(&body)
                    .map_err(|e| format!("{}: /patroni is not Patroni's JSON ({e})", lm.name))?;
                if doc
                    .replication
                    .iter()
                    .any(|r| r.application_name == name && r.state == "streaming")
                {
                    Ok(())
                } else {
                    Err(format!("leader {} does not see {name} streaming", leader.name))
                }
            }
            Ok((code, _)) => Err(format!("leader {}: /patroni answered {code}", leader.name)),
            Err(e) => Err(e.0),
        }
    }
}

fn lag_text(m: &ClusterMember) -> String {
    match &m.lag {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "unknown".into(),
    }
}

impl UpdateOrder for Patroni {
    fn kind(&self) -> &'static str {
        "patroni"
    }

    fn default_port(&self) -> u16 {
        8008
    }

    fn order<'a>(&'a self, members: &'a [Member]) -> HookFuture<'a, Vec<usize>> {
        Box::pin(async move {
            let view = cluster(members).await.unwrap_or_default();
            let leads = |m: &Member| view.iter().any(|v| v.name == m.name && v.is_leader());
            let mut idx: Vec<usize> = (0..members.len()).collect();
            // Stable: replicas keep their order, the leader goes last.
            idx.sort_by_key(|&i| leads(&members[i]));
            idx
        })
    }

    fn before_restart<'a>(
        &'a self,
        member: &'a Member,
        members: &'a [Member],
    ) -> HookFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            let view = cluster(members).await?;
            let leads = view.iter().any(|v| v.name == member.name && v.is_leader());
            if !leads {
                return Ok(());
            }
            self.switchover(member, members, &view).await
        })
    }

    fn ready_for_next<'a>(
        &'a self,
        member: &'a Member,
        members: &'a [Member],
        deadline: Duration,
    ) -> HookFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            let what = format!("{} did not catch up", member.name);
            super::poll_until(&what, deadline, POLL, || async move {
                let view = cluster(members).await.map_err(|e| e.0)?;
                self.caught_up(&member.name, members, &view).await
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests;

//! Update orders run where the members are: the coordinator sequences a
//! member-aware roll, and each call of the hook ([`UpdateOrder`]) is asked
//! of the operator on a member's host over the bus
//! (`infra.rpc.<host>.<tier>.hook`), which runs the real hook there
//! ([`answer`]) against the members' private addresses. The coordinator
//! needs a path to the NATS servers only.
//!
//! [`Remote`] is the coordinator's side: an [`UpdateOrder`] that forwards.
//! `order` asks the host of the first member that answers (a member that
//! cannot be asked keeps its place, as with a local hook);
//! `before_restart` and `ready_for_next` ask the member's own host, whose
//! operator holds a copy of the secrets its members use.

use std::collections::BTreeMap;
use std::time::Duration;

use infra_proto::bus::v1::{HookCall, HookMember, HookReply};

use super::{HookError, HookFuture, Member, Secrets, UpdateOrder, for_labels};

/// How long an `order` or `before_restart` call may take on the operator,
/// beyond which the coordinator stops waiting (a switchover takes up to a
/// minute).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A hook run by the operators of the members' hosts.
pub struct Remote {
    bus: infra_bus::Bus,
    tier: String,
    labels: BTreeMap<String, String>,
    kind: &'static str,
    default_port: u16,
}

impl Remote {
    /// The hook `labels` choose for a service of `tier`, run remotely;
    /// `None` for a plain rollout, an error for an unknown kind.
    pub fn for_labels(
        bus: infra_bus::Bus,
        tier: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<Self>, HookError> {
        // Built here only to check the labels and learn the kind.
        let Some(local) = for_labels(labels, &Secrets::default())? else {
            return Ok(None);
        };
        Ok(Some(Self {
            bus,
            tier: tier.to_owned(),
            labels: labels.clone(),
            kind: local.kind(),
            default_port: local.default_port(),
        }))
    }

    async fn ask(&self, host: &str, call: HookCall, timeout: Duration) -> Result<HookReply, HookError> {
        self.bus.ask_hook(host, &self.tier, &call, timeout).await.map_err(|e| {
            HookError(format!(
                "{}: asking the {} operator on {host}: {e}",
                self.kind, self.tier
            ))
        })
    }

    fn call(&self, call: &str, members: &[Member], member: Option<&Member>, deadline: Option<Duration>) -> HookCall {
        HookCall {
            call: call.to_owned(),
            labels: self.labels.clone().into_iter().collect(),
            members: members.iter().map(HookMember::from).collect(),
            member: member.map(HookMember::from),
            deadline: deadline.map(|d| prost_types::Duration {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: 0,
            }),
        }
    }

    async fn checked(&self, host: &str, call: HookCall, timeout: Duration) -> Result<HookReply, HookError> {
        let reply = self.ask(host, call, timeout).await?;
        if reply.error.is_empty() {
            Ok(reply)
        } else {
            Err(HookError(reply.error))
        }
    }
}

impl UpdateOrder for Remote {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn default_port(&self) -> u16 {
        self.default_port
    }

    fn order<'a>(&'a self, members: &'a [Member]) -> HookFuture<'a, Vec<usize>> {
        Box::pin(async move {
            let identity: Vec<usize> = (0..members.len()).collect();
            let mut hosts: Vec<&str> = Vec::new();
            for m in members {
                if !hosts.contains(&m.host.as_str()) {
                    hosts.push(&m.host);
                }
            }
            for host in hosts {
                match self
                    .checked(host, self.call("order", members, None, None), CALL_TIMEOUT)
                    .await
                {
                    Ok(r) => {
                        let order: Vec<usize> = r.order.iter().map(|&i| i as usize).collect();
                        let mut seen = order.clone();
                        seen.sort_unstable();
                        if seen == identity {
                            return order;
                        }
                        tracing::warn!(
                            host,
                            kind = self.kind,
                            "an update order answered no permutation; asking another host"
                        );
                    }
                    Err(e) => tracing::debug!(host, error = %e, "no update order from this host"),
                }
            }
            identity
        })
    }

    fn before_restart<'a>(
        &'a self,
        member: &'a Member,
        members: &'a [Member],
    ) -> HookFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            let call = self.call("before_restart", members, Some(member), None);
            self.checked(&member.host, call, CALL_TIMEOUT).await.map(|_| ())
        })
    }

    fn ready_for_next<'a>(
        &'a self,
        member: &'a Member,
        members: &'a [Member],
        deadline: Duration,
    ) -> HookFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            let call = self.call("ready_for_next", members, Some(member), Some(deadline));
            self.checked(&member.host, call, deadline.saturating_add(Duration::from_secs(15)))
                .await
                .map(|_| ())
        })
    }
}

/// Runs one call on this host (the operator's side): the hook the call's
/// labels choose, reading secrets from `secrets` (the host's copies).
pub async fn answer(call: HookCall, secrets: &Secrets) -> HookReply {
    let fail = |error: String| HookReply {
        error,
        ..Default::default()
    };
    let labels: BTreeMap<String, String> = call.labels.into_iter().collect();
    let hook = match for_labels(&labels, secrets) {
        Ok(Some(h)) => h,
        Ok(None) => return fail("the labels name no update order".into()),
        Err(e) => return fail(e.0),
    };
    let members: Vec<Member> = call.members.iter().map(Member::from).collect();
    let member = call.member.as_ref().map(Member::from);
    match (call.call.as_str(), member) {
        ("order", _) => HookReply {
            order: hook
                .order(&members)
                .await
                .into_iter()
                .map(|i| u32::try_from(i).unwrap_or(u32::MAX))
                .collect(),
            ..Default::default()
        },
        ("before_restart", Some(m)) => match hook.before_restart(&m, &members).await {
            Ok(()) => HookReply::default(),
            Err(e) => fail(e.0),
        },
        ("ready_for_next", Some(m)) => {
            let deadline = call.deadline.map_or(Duration::from_secs(300), |d| {
                Duration::from_secs(u64::try_from(d.seconds).unwrap_or(0))
            });
            match hook.ready_for_next(&m, &members, deadline).await {
                Ok(()) => HookReply::default(),
                Err(e) => fail(e.0),
            }
        }
        (other, _) => fail(format!("unknown update-order call {other:?} (or no member named)")),
    }
}

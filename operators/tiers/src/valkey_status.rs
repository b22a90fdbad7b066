//! The data tier's Valkey member status: every few seconds the data
//! operator asks each Valkey member on its host (`INFO` over the member's
//! client port, at this host's private address and the port published
//! there, with the password from the secrets bucket) for its role and the
//! state of its link, and publishes them as the heartbeat fact
//! `member.<service>` = `valkey: <role> <state>`
//! ([`members::STATE_FACT_PREFIX`]): `primary running`, `replica
//! streaming`, `replica syncing` or `replica down`. The coordinator's
//! `DescribeService` shows it in the member's row, as it does Patroni's.
//!
//! Members are the services on this host whose spec carries the label
//! `infra.update-order: valkey` (the label the member-aware rollout reads),
//! in or out of cluster mode. Without an `addr` label (one host) the port
//! is not published and nothing is reported.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use operator_core::members::{self, valkey};
use operator_core::{Extension, TierContext};

/// How often the members are asked.
const EVERY: Duration = Duration::from_secs(2);

/// This tier's Valkey status extension.
pub const EXTENSIONS: &[Extension] = &[status];

fn status(ctx: TierContext) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(run(ctx))
}

async fn run(ctx: TierContext) {
    let secrets = members::Secrets::from(Arc::new(ctx.bus.clone()));
    let mut shown: BTreeSet<String> = BTreeSet::new();
    loop {
        let mut now = BTreeSet::new();
        let addr = ctx.labels.get("addr").filter(|a| !a.is_empty()).cloned();
        let desired = ctx
            .bus
            .list_desired(Some((&ctx.host, ctx.tier)))
            .await
            .unwrap_or_default();
        for d in desired.iter().filter(|d| !d.absent) {
            let Some(s) = &d.spec else { continue };
            if s.labels.get(members::ORDER_LABEL).map(String::as_str) != Some("valkey") {
                continue;
            }
            let Some(addr) = &addr else { continue };
            let target = members::port_from(&s.labels, 6379);
            let Some(port) = s
                .ports
                .iter()
                .find(|p| p.target == u32::from(target) && p.published != 0)
                .and_then(|p| u16::try_from(p.published).ok())
            else {
                continue;
            };
            let line = match valkey::Valkey::from_labels(&s.labels, &secrets) {
                Ok(hook) => match hook.member_line(addr, port).await {
                    Ok(line) => line,
                    Err(e) => format!("unreachable: {}", e.0),
                },
                Err(e) => format!("unreachable: {}", e.0),
            };
            let key = format!("{}{}", members::STATE_FACT_PREFIX, s.name);
            ctx.facts.set(&key, format!("valkey: {line}"));
            now.insert(key);
        }
        for gone in shown.difference(&now) {
            ctx.facts.remove(gone);
        }
        shown = now;
        tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}

//! The data tier's Valkey member status: every few seconds the data
//! operator asks each Valkey member on its host (`INFO` over the member's
//! client port, at this host's private address and the port published
//! there, with the password from the secrets bucket) for its role and the
//! state of its link, and publishes them as the heartbeat fact
//! `member.<service>` = `valkey: <role> <state>`
//! ([`infra_bus::facts::MEMBER_PREFIX`]): `primary running`, `replica
//! streaming`, `replica syncing` or `replica down`. The coordinator's
//! `DescribeService` shows it in the member's row, as it does Patroni's.
//!
//! Members are the services on this host whose spec carries the label
//! `infra.update-order: valkey` (the label the member-aware rollout reads),
//! in or out of cluster mode. Without an `addr` label (one host) the port
//! is not published and nothing is reported.

use std::sync::Arc;
use std::time::Duration;

use infra_products::valkey;
use operator_core::{Extension, TierContext};

use crate::data::member_facts;

/// How often the members are asked.
const EVERY: Duration = Duration::from_secs(2);

/// This tier's Valkey status extension.
pub const REPORT: Extension = status;

fn status(ctx: TierContext) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(run(ctx))
}

async fn run(ctx: TierContext) {
    let secrets = infra_products::Secrets::from(Arc::new(infra_products::HostSecrets {
        bus: ctx.bus.clone(),
        host: ctx.host.clone(),
    }));
    let mut shown = member_facts::Shown::default();
    loop {
        let mut lines = Vec::new();
        for (labels, me) in member_facts::local(&ctx, "valkey", 6379).await {
            let line = match valkey::Valkey::from_labels(&labels, &secrets) {
                Ok(hook) => match hook.member_line(&me.addr, me.port).await {
                    Ok(line) => line,
                    Err(e) => format!("unreachable: {}", e.0),
                },
                Err(e) => format!("unreachable: {}", e.0),
            };
            lines.push((me.name, line));
        }
        shown.publish(&ctx.facts, "valkey", lines);
        tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}

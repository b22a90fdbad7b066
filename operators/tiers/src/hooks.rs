//! Member-aware update orders run on the members' hosts: the coordinator
//! asks this operator (`infra.rpc.<host>.<tier>.hook`) to run one call of
//! the hook a service's labels choose (`infra_products::remote`), and it
//! runs it here, reading passwords from this host's copies of the secrets.
//! The tiers with stateful clusters (data: Patroni, Valkey; messaging:
//! RabbitMQ, Kafka) carry it.

use std::sync::Arc;

use infra_products::{HostSecrets, Secrets};
use infra_proto::bus::v1::{HookCall, HookReply};
use operator_core::TierContext;
use prost::Message;

/// The messaging tier's extensions: RabbitMQ's and Kafka's update orders
/// run here.
pub const MESSAGING_EXTENSIONS: &[operator_core::Extension] = &[answer_hooks];

/// The extension: answers update-order calls until shutdown.
pub fn answer_hooks(cx: TierContext) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        let secrets = Secrets::from(Arc::new(HostSecrets {
            bus: cx.bus.clone(),
            host: cx.host.clone(),
        }));
        operator_core::images::serve(
            cx.reconcile.clone(),
            cx.shutdown.clone(),
            "update-order calls",
            |ctx| async move { ctx.bus.hook_requests(&ctx.host, &ctx.tier).await },
            move |_ctx, payload| {
                let secrets = secrets.clone();
                async move {
                    Some(match HookCall::decode(payload) {
                        Ok(call) => {
                            tracing::debug!(call = %call.call, "running an update-order call");
                            infra_products::remote::answer(call, &secrets).await
                        }
                        Err(_) => HookReply {
                            error: "the update-order call does not decode".into(),
                            ..Default::default()
                        },
                    })
                }
            },
        )
        .await;
    })
}

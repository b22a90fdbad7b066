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
            move |ctx, payload| {
                let secrets = secrets.clone();
                async move {
                    Some(match HookCall::decode(payload) {
                        Ok(mut call) => {
                            tracing::debug!(call = %call.call, "running an update-order call");
                            reach_locally(&ctx, &mut call).await;
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

/// Points the members that run on this host at their containers' own
/// addresses and the port the hook talks to: this operator reaches them on
/// the Docker network, published or not (one host publishes nothing). The
/// members elsewhere keep their host's private address and published port.
async fn reach_locally(ctx: &operator_core::reconcile::Ctx, call: &mut HookCall) {
    let labels: std::collections::BTreeMap<String, String> =
        call.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let Ok(Some(hook)) = infra_products::for_labels(&labels, &Secrets::default()) else {
        return;
    };
    let port = infra_products::port_from(&labels, hook.default_port());
    let Ok(local) = ctx
        .docker
        .endpoints(&ctx.host, &ctx.tier, infra_products::ORDER_LABEL, false)
        .await
    else {
        return;
    };
    let here = |m: &mut infra_proto::bus::v1::HookMember| {
        if m.host != ctx.host {
            return;
        }
        let replica = m.replica.to_string();
        if let Some(e) = local.iter().find(|e| {
            e.service == m.name
                && e.labels
                    .get(operator_core::labels::REPLICA)
                    .is_some_and(|r| *r == replica)
        }) {
            m.addr.clone_from(&e.ip);
            m.port = u32::from(port);
        }
    };
    call.members.iter_mut().for_each(here);
    if let Some(m) = call.member.as_mut() {
        here(m);
    }
}

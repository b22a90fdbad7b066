//! Answers the coordinator's image checks: which of the images a plan
//! needs are on this host, and whether the others could be pulled, so a
//! plan can say so before a deploy fails on them.
//!
//! # Guarantees
//! - Nothing is pulled: a missing image is checked with the registry's
//!   distribution endpoint only.
//! - Every answer comes within [`CHECK_TIMEOUT`] per image (checked
//!   together), so a plan never waits on an unreachable registry for long.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use infra_proto::bus::v1::{ImageCheck, ImageCheckReply, ImageStatus};
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::reconcile::{Ctx, credentials};

/// How long one registry may take to answer for an image.
pub use infra_bus::IMAGE_CHECK_TIMEOUT as CHECK_TIMEOUT;

/// At most this many images are checked in one request.
const MAX_IMAGES: usize = 256;

/// The requests asked of this operator on one subject, answered until
/// `shutdown`: `subscribe` opens the subscription (again when it ends or
/// fails, after a pause), `answer` turns each request's payload into its
/// answer (each in a task of its own), sent to the request's reply subject.
pub async fn serve<S, SF, A, AF, R>(ctx: Arc<Ctx>, shutdown: CancellationToken, what: &str, subscribe: S, answer: A)
where
    S: Fn(Arc<Ctx>) -> SF,
    SF: std::future::Future<Output = infra_bus::Result<infra_bus::Subscriber>>,
    A: Fn(Arc<Ctx>, bytes::Bytes) -> AF,
    AF: std::future::Future<Output = Option<R>> + Send + 'static,
    R: Message + Send + 'static,
{
    loop {
        let mut sub = match subscribe(ctx.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot answer {what}; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(2)) => continue,
                }
            }
        };
        loop {
            let msg = tokio::select! {
                () = shutdown.cancelled() => return,
                m = sub.next() => m,
            };
            let Some(msg) = msg else { break };
            let Some(reply_to) = msg.reply else { continue };
            let answering = answer(ctx.clone(), msg.payload);
            let ctx = ctx.clone();
            tokio::spawn(async move {
                if let Some(reply) = answering.await
                    && let Err(e) = ctx.bus.reply(reply_to, &reply).await
                {
                    tracing::debug!(error = %e, "could not answer a request");
                }
            });
        }
    }
}

/// Serves image checks for this operator's host and tier until `shutdown`.
pub async fn answer_checks(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    serve(
        ctx,
        shutdown,
        "image checks",
        |ctx| async move { ctx.bus.image_checks(&ctx.host, &ctx.tier).await },
        |ctx, payload| async move {
            let ask = ImageCheck::decode(payload).ok()?;
            let images: Vec<String> = ask.images.into_iter().take(MAX_IMAGES).collect();
            let (logins, resolve) = (&ask.logins, ask.resolve);
            let statuses = futures::future::join_all(images.into_iter().map(|image| {
                let ctx = ctx.clone();
                async move {
                    let mut st = ImageStatus {
                        image: image.clone(),
                        ..Default::default()
                    };
                    // The asker's credentials for this registry, else this
                    // host's own copy.
                    let registry = infra_proto::image::registry(&image);
                    let login = match logins.iter().find(|l| l.registry == registry) {
                        Some(l) => Some(l.clone()),
                        None => ctx.registry_login(registry).await,
                    };
                    let found = ctx
                        .docker
                        .image_availability(&image, login.as_ref().map(credentials), resolve, CHECK_TIMEOUT)
                        .await;
                    st.present = found.present;
                    match found.registry {
                        Some(Ok(digest)) => {
                            st.pullable = !found.present;
                            st.digest = digest;
                        }
                        Some(Err(why)) => st.reason = why,
                        None => {}
                    }
                    st
                }
            }))
            .await;
            Some(ImageCheckReply {
                host: ctx.host.clone(),
                images: statuses,
            })
        },
    )
    .await;
}

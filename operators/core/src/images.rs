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

use crate::docker::ImageAvailability;
use crate::reconcile::Ctx;

/// How long one registry may take to answer for an image.
pub use infra_bus::IMAGE_CHECK_TIMEOUT as CHECK_TIMEOUT;

/// At most this many images are checked in one request.
const MAX_IMAGES: usize = 256;

/// Serves image checks for this operator's host and tier until `shutdown`;
/// subscribes again when the subscription ends.
pub async fn answer_checks(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    loop {
        let mut sub = match ctx.bus.image_checks(&ctx.host, &ctx.tier).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot answer image checks; retrying");
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
            let Ok(ask) = ImageCheck::decode(msg.payload) else {
                continue;
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let images: Vec<String> = ask.images.into_iter().take(MAX_IMAGES).collect();
                let statuses = futures::future::join_all(images.into_iter().map(|image| {
                    let docker = ctx.docker.clone();
                    async move {
                        let mut st = ImageStatus {
                            image: image.clone(),
                            ..Default::default()
                        };
                        match docker.image_availability(&image, CHECK_TIMEOUT).await {
                            ImageAvailability::Present => st.present = true,
                            ImageAvailability::Pullable => st.pullable = true,
                            ImageAvailability::Unavailable(why) => st.reason = why,
                        }
                        st
                    }
                }))
                .await;
                let reply = ImageCheckReply {
                    host: ctx.host.clone(),
                    images: statuses,
                };
                if let Err(e) = ctx.bus.reply(reply_to, &reply).await {
                    tracing::debug!(error = %e, "could not answer an image check");
                }
            });
        }
    }
}

//! Pinning images to their registry digests at deploy time, for services
//! whose `pull_policy` is `always`, `daily`, `weekly` or
//! `every_<duration>`: a tag pushed again becomes a new spec, rolled out
//! by the service's update order, and every replica runs the same image
//! whatever the tag says meanwhile (Swarm's `--resolve-image always`).
//!
//! The coordinator dials no registry: a host that will run the service
//! asks its engine (`ImageCheck` with `resolve`), with the catalog's
//! credentials for that registry.

use std::time::{Duration, SystemTime};

use infra_proto::bus::v1::{ImageCheck, RegistryLogin, ServiceSpec};

use crate::convert::registry::pull_interval;
use crate::coordinator::Coordinator;
use crate::plan::Prepared;

/// What pinning `spec` needs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pin {
    /// Its policy pins nothing (or the image names a digest itself).
    None,
    /// The previous spec's digest still holds (an interval not passed).
    Keep,
    /// Ask the registry.
    Ask,
}

/// Whether `spec` must be pinned afresh, given the spec deployed now.
pub(crate) fn pin_needed(spec: &ServiceSpec, previous: Option<&ServiceSpec>, now: SystemTime) -> Pin {
    if infra_proto::image::is_pinned(&spec.image) {
        return Pin::None;
    }
    let interval = match spec.pull_policy.as_str() {
        "always" => None,
        p => match pull_interval(p) {
            Some(i) => Some(i),
            None => return Pin::None,
        },
    };
    let Some(prev) = previous.filter(|p| p.image == spec.image && !p.image_digest.is_empty()) else {
        return Pin::Ask;
    };
    let resolved = prev
        .image_resolved_at
        .and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    match interval {
        Some(i) if now.duration_since(resolved).unwrap_or(Duration::ZERO) < i => Pin::Keep,
        _ => Pin::Ask,
    }
}

/// Takes the previous pin over: digest and when it was resolved.
fn keep(spec: &mut ServiceSpec, prev: &ServiceSpec) {
    spec.image_digest.clone_from(&prev.image_digest);
    spec.image_resolved_at = prev.image_resolved_at;
}

impl Coordinator {
    /// Pins every prepared spec whose policy asks for it, asking one of
    /// its target hosts. Why a spec could not be pinned is returned, by
    /// service.
    pub(crate) async fn pin_images(
        &self,
        prepared: &mut [(String, Prepared)],
        logins: &[RegistryLogin],
    ) -> Vec<(String, String)> {
        let pins = prepared.iter_mut().map(|(name, p)| {
            let previous = p.existing.iter().filter(|d| !d.absent).find_map(|d| d.spec.clone());
            let host = p
                .outcome
                .hosts
                .keys()
                .next()
                .cloned()
                .or_else(|| p.current().keys().next().cloned());
            async move {
                let note = match host {
                    Some(h) => self.pin_image(&mut p.spec, previous.as_ref(), &h, logins).await,
                    None => None,
                };
                note.map(|n| (name.clone(), n))
            }
        });
        futures::future::join_all(pins).await.into_iter().flatten().collect()
    }

    /// Pins `spec` to its registry digest if its policy asks for it, asking
    /// the engine of `host` (which runs or will run it). A registry that
    /// cannot answer leaves the previous pin (or none: the operator then
    /// pulls the tag and reports the registry's reason); why is returned.
    pub(crate) async fn pin_image(
        &self,
        spec: &mut ServiceSpec,
        previous: Option<&ServiceSpec>,
        host: &str,
        logins: &[RegistryLogin],
    ) -> Option<String> {
        match pin_needed(spec, previous, SystemTime::now()) {
            Pin::None => return None,
            Pin::Keep => {
                keep(spec, previous.expect("kept from it"));
                return None;
            }
            Pin::Ask => {}
        }
        let ask = ImageCheck {
            images: vec![spec.image.clone()],
            logins: logins.to_vec(),
            resolve: true,
        };
        let wait = infra_bus::IMAGE_CHECK_TIMEOUT + Duration::from_secs(1);
        let found = match self.bus.check_images(host, &spec.tier, ask, wait).await {
            Ok(reply) => reply.images.into_iter().find(|s| s.image == spec.image).map_or_else(
                || Err("the host gave no answer for it".to_owned()),
                |s| {
                    if s.digest.is_empty() {
                        Err(s.reason)
                    } else {
                        Ok(s.digest)
                    }
                },
            ),
            Err(e) => Err(e.to_string()),
        };
        let same_image = previous.filter(|prev| prev.image == spec.image && !prev.image_digest.is_empty());
        match found {
            // `always` keeps the time of the first pin, so an unchanged
            // digest rewrites nothing.
            Ok(digest) if spec.pull_policy == "always" && same_image.is_some_and(|p| p.image_digest == digest) => {
                keep(spec, same_image.expect("checked"));
                None
            }
            Ok(digest) => {
                spec.image_digest = digest;
                spec.image_resolved_at = Some(infra_proto::now());
                None
            }
            Err(why) => {
                if let Some(prev) = same_image {
                    keep(spec, prev);
                }
                Some(format!(
                    "could not resolve image {} on host {host} (pull_policy {}): {why}; {}",
                    spec.image,
                    spec.pull_policy,
                    if same_image.is_some() {
                        "it keeps the digest it runs"
                    } else {
                        "the host will pull the tag"
                    }
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(policy: &str, image: &str, digest: &str, at: Option<SystemTime>) -> ServiceSpec {
        ServiceSpec {
            image: image.into(),
            pull_policy: policy.into(),
            image_digest: digest.into(),
            image_resolved_at: at.map(infra_proto::timestamp),
            ..Default::default()
        }
    }

    #[test]
    fn always_asks_every_deploy_and_intervals_only_once_they_passed() {
        let now = SystemTime::now();
        let hour_ago = now - Duration::from_secs(3600);
        let new = |p: &str| spec(p, "r:5000/a:1", "", None);
        let prev = spec("", "r:5000/a:1", "sha256:1", Some(hour_ago));
        assert_eq!(pin_needed(&new(""), Some(&prev), now), Pin::None);
        assert_eq!(pin_needed(&new("never"), Some(&prev), now), Pin::None);
        assert_eq!(pin_needed(&new("always"), Some(&prev), now), Pin::Ask);
        assert_eq!(pin_needed(&new("always"), None, now), Pin::Ask);
        assert_eq!(pin_needed(&new("every 86400"), Some(&prev), now), Pin::Keep);
        assert_eq!(pin_needed(&new("every 1800"), Some(&prev), now), Pin::Ask);
        // Another image, or no pin before: ask.
        let other = spec("", "r:5000/a:2", "sha256:1", Some(hour_ago));
        assert_eq!(pin_needed(&new("every 86400"), Some(&other), now), Pin::Ask);
        assert_eq!(pin_needed(&new("every 86400"), None, now), Pin::Ask);
        // An image that names its digest is never resolved.
        assert_eq!(
            pin_needed(&spec("always", "r/a@sha256:9", "", None), None, now),
            Pin::None
        );
    }
}

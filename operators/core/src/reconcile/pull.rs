//! Getting a spec's image onto this host as its `pull_policy` says, with
//! the pull credentials of its registry.
//!
//! # Guarantees
//! - Credentials come from this host's copy in the secrets bucket (the
//!   coordinator puts them there for the hosts whose services need them)
//!   and go to the engine in the request's `X-Registry-Auth` header only:
//!   never into a container's configuration, a log line, an event or an
//!   error (the registry's refusal is reported in its own words, which
//!   never hold them).
//! - A spec pinned to a digest runs that digest: the image is pulled by it
//!   when the host lacks it, so a tag moved in between changes nothing.

use infra_proto::bus::v1::{RegistryLogin, ServiceSpec};
use prost::Message;

use crate::docker::{DockerCredentials, DockerError, Pull};

use super::Ctx;

/// How `spec`'s image is pulled: `never`; every time for `always` unless
/// the coordinator pinned a digest (the digest is then pulled once);
/// otherwise only when missing.
pub(crate) fn pull_mode(spec: &ServiceSpec) -> Pull {
    match spec.pull_policy.as_str() {
        "never" => Pull::Never,
        "always" if spec.image_digest.is_empty() && !infra_proto::image::is_pinned(&spec.image) => Pull::Always,
        _ => Pull::IfMissing,
    }
}

/// Docker's credentials from a login (a `serveraddress` as the engine
/// expects it for Docker Hub).
pub(crate) fn credentials(login: &RegistryLogin) -> DockerCredentials {
    let server = if login.registry == infra_proto::image::DOCKER_HUB {
        "https://index.docker.io/v1/".to_owned()
    } else {
        login.registry.clone()
    };
    DockerCredentials {
        username: Some(login.username.clone()),
        password: Some(login.password.clone()),
        serveraddress: Some(server),
        ..Default::default()
    }
}

impl Ctx {
    /// This host's copy of the pull credentials for `registry`, if the
    /// catalog names some and the coordinator put them here.
    pub(crate) async fn registry_login(&self, registry: &str) -> Option<RegistryLogin> {
        let key = infra_proto::image::auth_key(registry);
        match self.bus.get_secret(&self.host, &key).await {
            Ok(Some(bytes)) => match RegistryLogin::decode(bytes) {
                Ok(l) if l.registry == registry => Some(l),
                Ok(_) | Err(_) => {
                    tracing::warn!(registry, "the stored pull credentials do not read as a registry login");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(registry, error = %e, "cannot read the pull credentials");
                None
            }
        }
    }

    /// Makes sure the image `spec`'s replicas are made from is here, as
    /// its `pull_policy` says.
    pub(crate) async fn ensure_image(&self, spec: &ServiceSpec) -> Result<(), DockerError> {
        let image = infra_proto::spec::image_ref(spec);
        let mode = pull_mode(spec);
        let login = if mode == Pull::Never {
            None
        } else {
            self.registry_login(infra_proto::image::registry(&spec.image)).await
        };
        self.docker
            .ensure_image(&image, mode, login.as_ref().map(credentials), self.pull_timeout)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_modes_follow_the_policy_and_the_pin() {
        let spec = |policy: &str, image: &str, digest: &str| ServiceSpec {
            image: image.into(),
            pull_policy: policy.into(),
            image_digest: digest.into(),
            ..Default::default()
        };
        assert_eq!(pull_mode(&spec("", "a:1", "")), Pull::IfMissing);
        assert_eq!(pull_mode(&spec("never", "a:1", "sha256:0")), Pull::Never);
        assert_eq!(pull_mode(&spec("always", "a:1", "")), Pull::Always);
        assert_eq!(pull_mode(&spec("always", "a:1", "sha256:0")), Pull::IfMissing);
        assert_eq!(pull_mode(&spec("always", "a@sha256:0", "")), Pull::IfMissing);
        assert_eq!(pull_mode(&spec("every 86400", "a:1", "")), Pull::IfMissing);
        let hub = credentials(&RegistryLogin {
            registry: "docker.io".into(),
            username: "u".into(),
            password: "p".into(),
        });
        assert_eq!(hub.serveraddress.as_deref(), Some("https://index.docker.io/v1/"));
    }
}

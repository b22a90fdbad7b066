//! The Docker driver: bollard wrapped in one client that speaks the
//! operator's own types. Only containers, networks and volumes carrying the
//! [`labels::MANAGED_BY`] label are listed, changed or removed.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
pub use bollard::auth::DockerCredentials;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, NetworkConnectRequest, NetworkCreateRequest, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, DownloadFromContainerOptions, EventsOptions, InspectContainerOptions,
    ListContainersOptions, ListNetworksOptions, RemoveContainerOptions, RemoveVolumeOptions, RenameContainerOptions,
    RestartContainerOptions, StartContainerOptions, StopContainerOptions,
};
use futures::{Stream, StreamExt};

use crate::decide::Container;
use crate::labels;

mod exec;
mod logs;
pub use exec::{EXEC_OUTPUT_LIMIT, ExecOutput, StreamedExec};
pub use logs::RawLine;

/// What went wrong talking to Docker.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The engine could not be reached.
    #[error("cannot reach the Docker engine: {0}")]
    Connect(#[source] bollard::errors::Error),
    /// The image is not on this host and could not be pulled (or, for
    /// `pull_policy: always`, the pull failed).
    #[error("image {image:?}: {reason}")]
    ImageUnavailable {
        /// The image reference.
        image: String,
        /// Why the pull failed.
        reason: String,
    },
    /// Something the container needs could not be prepared (a secret file).
    #[error("{0}")]
    Prepare(String),
    /// A call to the engine failed.
    #[error("docker {op} {target}: {source}")]
    Api {
        /// What was being done.
        op: &'static str,
        /// On what.
        target: String,
        /// The engine's error.
        #[source]
        source: bollard::errors::Error,
    },
}

/// A healthy container that carries a label, and where to reach it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Compose service.
    pub service: String,
    /// Container name.
    pub container: String,
    /// IP on its first network (reachable from the host on a bridge).
    pub ip: String,
    /// The container's labels (the spec's labels and the operator's).
    pub labels: HashMap<String, String>,
}

/// When an image is pulled ([`DockerClient::ensure_image`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pull {
    /// Only when the host lacks it (Compose's `missing`, the default).
    IfMissing,
    /// Every time (Compose's `always`).
    Always,
    /// Never: a missing image is an error.
    Never,
}

/// The registry's own words for a failed call (`unauthorized: ...`,
/// `manifest unknown`), without the client's wrapping.
fn registry_reason(e: bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
        bollard::errors::Error::DockerStreamError { error } => error,
        other => other.to_string(),
    }
}

/// What a host knows of an image ([`DockerClient::image_availability`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageAvailability {
    /// It is on this host.
    pub present: bool,
    /// What its registry answered, when asked: the digest, or why it
    /// cannot be pulled (the registry's or Docker's words).
    pub registry: Option<Result<String, String>>,
}

/// One Docker event about an owned container.
#[derive(Clone, Debug)]
pub struct DockerEvent {
    /// Container id.
    pub id: String,
    /// Service label.
    pub service: String,
    /// Docker's action (`start`, `die`, `health_status: unhealthy`, ...).
    pub action: String,
}

/// A cheap, cloneable Docker client.
#[derive(Clone, Debug)]
pub struct DockerClient {
    inner: Docker,
}

fn api(op: &'static str, target: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DockerError {
    let target = target.into();
    move |source| DockerError::Api { op, target, source }
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }
    )
}

fn conflict_or_not_modified(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 304 | 409,
            ..
        }
    )
}

impl DockerClient {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket)
    /// and negotiates the API version (the engines here speak 1.41).
    pub async fn connect() -> Result<Self, DockerError> {
        let docker = Docker::connect_with_local_defaults().map_err(DockerError::Connect)?;
        let docker = docker.negotiate_version().await.map_err(DockerError::Connect)?;
        docker.ping().await.map_err(DockerError::Connect)?;
        Ok(Self { inner: docker })
    }

    /// The raw bollard client, for tests only: production code uses the
    /// methods here.
    #[doc(hidden)]
    pub fn raw(&self) -> &Docker {
        &self.inner
    }

    /// Every container this operator (host id and tier) owns, inspected.
    pub async fn list_owned(
        &self,
        host: &str,
        tier: &str,
        service: Option<&str>,
    ) -> Result<Vec<Container>, DockerError> {
        let mut label = vec![
            format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
            format!("{}={host}", labels::HOST),
            format!("{}={tier}", labels::TIER),
        ];
        if let Some(s) = service {
            label.push(format!("{}={s}", labels::SERVICE));
        }
        let opts = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), label)])),
            ..Default::default()
        };
        let list = self
            .inner
            .list_containers(Some(opts))
            .await
            .map_err(api("list containers of tier", tier))?;
        let mut out = Vec::with_capacity(list.len());
        for summary in list {
            let Some(id) = summary.id else { continue };
            match self.inspect(&id).await {
                Ok(Some(c)) => out.push(c),
                Ok(None) => {} // removed in between
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Inspects one container; `None` if it does not exist.
    pub async fn inspect(&self, id: &str) -> Result<Option<Container>, DockerError> {
        let info = match self.inner.inspect_container(id, None::<InspectContainerOptions>).await {
            Ok(i) => i,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(api("inspect container", id)(e)),
        };
        let labels = info.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
        let state = info.state.clone().unwrap_or_default();
        let started_at = state
            .started_at
            .as_deref()
            .filter(|s| !s.starts_with("0001-"))
            .and_then(|s| s.parse::<prost_types::Timestamp>().ok());
        Ok(Some(Container {
            id: info.id.clone().unwrap_or_else(|| id.to_owned()),
            name: info.name.clone().unwrap_or_default().trim_start_matches('/').to_owned(),
            service: labels.get(labels::SERVICE).cloned().unwrap_or_default(),
            replica: labels.get(labels::REPLICA).and_then(|r| r.parse().ok()).unwrap_or(0),
            spec_hash: labels.get(labels::SPEC_HASH).cloned().unwrap_or_default(),
            state: state.status.map_or(crate::decide::ContainerState::Unknown, |s| {
                crate::decide::ContainerState::parse(s.as_ref())
            }),
            health: state
                .health
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .filter(|s| s != "none" && !s.is_empty()),
            exit_code: state.exit_code.unwrap_or(0),
            started_at,
            image: info.config.and_then(|c| c.image).unwrap_or_default(),
        }))
    }

    /// The engine's whole record of a container, its configuration
    /// included (what copying it onto a new image needs); `None` if it
    /// does not exist.
    pub async fn inspect_full(&self, name: &str) -> Result<Option<ContainerInspectResponse>, DockerError> {
        match self
            .inner
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(i) => Ok(Some(i)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(api("inspect container", name)(e)),
        }
    }

    /// Renames a container.
    pub async fn rename(&self, name: &str, to: &str) -> Result<(), DockerError> {
        self.inner
            .rename_container(name, RenameContainerOptions { name: to.to_owned() })
            .await
            .map_err(api("rename container", name))
    }

    /// The uid and gid container `id` runs as: its `user` (the spec's, else
    /// the image's; Docker's syntax, `name|uid[:group|gid]`) looked up in
    /// the container's own `/etc/passwd` and `/etc/group`. Root for no user.
    pub async fn user_ids(&self, id: &str) -> Result<(u32, u32), DockerError> {
        let info = self
            .inner
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(api("inspect container", id))?;
        let user = info.config.and_then(|c| c.user).unwrap_or_default();
        let (u, g) = user
            .split_once(':')
            .map_or((user.as_str(), None), |(u, g)| (u, Some(g)));
        if u.is_empty() && g.is_none() {
            return Ok((0, 0));
        }
        let numeric = |s: &str| s.parse::<u32>().ok();
        let passwd = if numeric(u).is_some() && g.is_some_and(|g| numeric(g).is_some()) {
            String::new()
        } else {
            self.read_file(id, "/etc/passwd").await?
        };
        let entry = |name_or_id: &str| {
            passwd.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && (f[0] == name_or_id || f[2] == name_or_id))
                    .then(|| (f[2].parse::<u32>().ok(), f[3].parse::<u32>().ok()))
            })
        };
        let (uid, primary) = match numeric(u) {
            Some(n) => (n, entry(u).and_then(|(_, g)| g).unwrap_or(0)),
            None if u.is_empty() => (0, 0),
            None => match entry(u) {
                Some((Some(uid), gid)) => (uid, gid.unwrap_or(0)),
                _ => {
                    return Err(DockerError::Prepare(format!(
                        "user {u:?} of container {} is not in its /etc/passwd",
                        short_id(id)
                    )));
                }
            },
        };
        let gid = match g {
            None => primary,
            Some(g) => match numeric(g) {
                Some(n) => n,
                None => {
                    let group = self.read_file(id, "/etc/group").await?;
                    group
                        .lines()
                        .find_map(|l| {
                            let f: Vec<&str> = l.split(':').collect();
                            (f.len() >= 3 && f[0] == g).then(|| f[2].parse::<u32>().ok()).flatten()
                        })
                        .ok_or_else(|| {
                            DockerError::Prepare(format!(
                                "group {g:?} of container {} is not in its /etc/group",
                                short_id(id)
                            ))
                        })?
                }
            },
        };
        Ok((uid, gid))
    }

    /// A small text file from a container's filesystem (created or
    /// running), through Docker's archive API; empty when it has none.
    async fn read_file(&self, id: &str, path: &str) -> Result<String, DockerError> {
        use std::io::Read;
        const LIMIT: usize = 1024 * 1024;
        let opts = DownloadFromContainerOptions { path: path.to_owned() };
        let mut stream = Box::pin(self.inner.download_from_container(id, Some(opts)));
        let mut tarball = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => tarball.extend_from_slice(&b),
                Err(e) if not_found(&e) => return Ok(String::new()),
                Err(e) => return Err(api("read a file from container", id)(e)),
            }
            if tarball.len() > LIMIT {
                return Err(DockerError::Prepare(format!(
                    "{path} of container {} is larger than {LIMIT} bytes",
                    short_id(id)
                )));
            }
        }
        let mut archive = tar::Archive::new(tarball.as_slice());
        let bad = |e: std::io::Error| DockerError::Prepare(format!("{path} of container {}: {e}", short_id(id)));
        let mut text = String::new();
        if let Some(entry) = archive.entries().map_err(bad)?.next() {
            entry.map_err(bad)?.read_to_string(&mut text).map_err(bad)?;
        }
        Ok(text)
    }

    /// Whether `image` is on this host; when it is not (or `resolve` asks
    /// it anyway), what its registry answers for it, asked within
    /// `timeout` with `credentials`: its digest, or why not. Nothing is
    /// pulled.
    pub async fn image_availability(
        &self,
        image: &str,
        credentials: Option<DockerCredentials>,
        resolve: bool,
        timeout: Duration,
    ) -> ImageAvailability {
        let present = match self.inner.inspect_image(image).await {
            Ok(_) => true,
            Err(e) if not_found(&e) => false,
            Err(e) => {
                return ImageAvailability {
                    present: false,
                    registry: Some(Err(format!("cannot inspect it: {e}"))),
                };
            }
        };
        if present && !resolve {
            return ImageAvailability {
                present,
                registry: None,
            };
        }
        let asked = tokio::time::timeout(timeout, self.inner.inspect_registry_image(image, credentials)).await;
        let registry = match asked {
            Ok(Ok(d)) => Ok(d.descriptor.digest.unwrap_or_default()),
            Ok(Err(e)) => Err(registry_reason(e)),
            Err(_) => Err(format!("its registry did not answer within {}s", timeout.as_secs())),
        };
        ImageAvailability {
            present,
            registry: Some(registry),
        }
    }

    /// Makes sure `image` is on this host as `pull` says: pulled when it
    /// is missing ([`Pull::IfMissing`]), every time ([`Pull::Always`]), or
    /// never ([`Pull::Never`]: a missing image is an error). The pull uses
    /// `credentials` (never logged) and gives up after `timeout`.
    #[tracing::instrument(name = "docker.ensure_image", skip(self, credentials, timeout))]
    pub async fn ensure_image(
        &self,
        image: &str,
        pull: Pull,
        credentials: Option<DockerCredentials>,
        timeout: Duration,
    ) -> Result<(), DockerError> {
        let unavailable = |reason: String| DockerError::ImageUnavailable {
            image: image.to_owned(),
            reason,
        };
        if pull != Pull::Always {
            match self.inner.inspect_image(image).await {
                Ok(_) => return Ok(()),
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(api("inspect image", image)(e)),
            }
        }
        if pull == Pull::Never {
            return Err(unavailable(
                "it is not on this host and the service's pull_policy is never".into(),
            ));
        }
        let opts = CreateImageOptions {
            from_image: Some(image.to_owned()),
            ..Default::default()
        };
        let pulling = async {
            let mut stream = self.inner.create_image(Some(opts), None, credentials);
            while let Some(item) = stream.next().await {
                item.map_err(registry_reason)?;
            }
            Ok::<(), String>(())
        };
        let reason = match tokio::time::timeout(timeout, pulling).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(reason)) => reason,
            Err(_) => format!("the pull did not finish within {}s", timeout.as_secs()),
        };
        let what = if pull == Pull::Always {
            "the pull (pull_policy always) failed"
        } else {
            "it is not on this host and the pull failed"
        };
        Err(unavailable(format!("{what}: {reason}")))
    }

    /// Makes sure a bridge network `name` exists and returns the id to use.
    ///
    /// The engine does not refuse a second network of the same name, and
    /// the operators of several tiers may create one at the same moment. So
    /// every caller lists the networks of that name afterwards and uses the
    /// **oldest** (a later duplicate is always newer, so the choice never
    /// changes), and removes the newer ones it can (one with containers
    /// attached is left alone). Containers are attached by id, so a
    /// duplicate never makes a name ambiguous for them.
    pub async fn ensure_network(&self, name: &str) -> Result<String, DockerError> {
        for _ in 0..3 {
            let mut found = self.networks_named(name).await?;
            if found.is_empty() {
                let req = NetworkCreateRequest {
                    name: name.to_owned(),
                    driver: Some("bridge".into()),
                    labels: Some(HashMap::from([(
                        labels::MANAGED_BY.to_string(),
                        labels::MANAGED_BY_VALUE.to_string(),
                    )])),
                    ..Default::default()
                };
                match self.inner.create_network(req).await {
                    Ok(_) => {}
                    Err(e) if conflict_or_not_modified(&e) => {}
                    Err(e) => return Err(api("create network", name)(e)),
                }
                continue;
            }
            found.sort();
            for (_, extra) in &found[1..] {
                let _ = self.inner.remove_network(extra).await;
            }
            return Ok(found.swap_remove(0).1);
        }
        Err(DockerError::Prepare(format!("network {name}: could not create it")))
    }

    /// The id of the oldest network named `name`, if there is one.
    pub async fn network_id(&self, name: &str) -> Result<Option<String>, DockerError> {
        let mut found = self.networks_named(name).await?;
        found.sort();
        Ok(found.into_iter().next().map(|(_, id)| id))
    }

    /// `(created, id)` of every network named exactly `name`.
    async fn networks_named(&self, name: &str) -> Result<Vec<(String, String)>, DockerError> {
        let opts = ListNetworksOptions {
            filters: Some(HashMap::from([("name".to_string(), vec![name.to_owned()])])),
        };
        let list = self
            .inner
            .list_networks(Some(opts))
            .await
            .map_err(api("list networks", name))?;
        // The name filter matches substrings: keep exact matches.
        Ok(list
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| Some((n.created.unwrap_or_default(), n.id?)))
            .collect())
    }

    /// Creates the named volume if it does not exist. Idempotent.
    pub async fn ensure_volume(&self, name: &str) -> Result<(), DockerError> {
        let req = VolumeCreateRequest {
            name: Some(name.to_owned()),
            labels: Some(HashMap::from([(
                labels::MANAGED_BY.to_string(),
                labels::MANAGED_BY_VALUE.to_string(),
            )])),
            ..Default::default()
        };
        self.inner
            .create_volume(req)
            .await
            .map(|_| ())
            .map_err(api("create volume", name))
    }

    /// Removes a named volume. Only ever called on an explicit request.
    pub async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        match self.inner.remove_volume(name, None::<RemoveVolumeOptions>).await {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(api("remove volume", name)(e)),
        }
    }

    /// Creates a container, connects its extra networks, and returns its id.
    #[tracing::instrument(name = "docker.create", skip(self, body, extra_networks))]
    pub async fn create(
        &self,
        name: &str,
        body: ContainerCreateBody,
        extra_networks: &[(String, Vec<String>)],
    ) -> Result<String, DockerError> {
        let opts = CreateContainerOptions {
            name: Some(name.to_owned()),
            ..Default::default()
        };
        let created = self
            .inner
            .create_container(Some(opts), body)
            .await
            .map_err(api("create container", name))?;
        for (net, aliases) in extra_networks {
            let req = NetworkConnectRequest {
                container: created.id.clone(),
                endpoint_config: Some(bollard::models::EndpointSettings {
                    aliases: Some(aliases.clone()),
                    ..Default::default()
                }),
            };
            self.inner
                .connect_network(net, req)
                .await
                .map_err(api("connect network", net.clone()))?;
        }
        Ok(created.id)
    }

    /// Starts a container; starting a running one is not an error.
    #[tracing::instrument(name = "docker.start", skip(self))]
    pub async fn start(&self, id: &str) -> Result<(), DockerError> {
        match self.inner.start_container(id, None::<StartContainerOptions>).await {
            Ok(()) => Ok(()),
            Err(e) if conflict_or_not_modified(&e) => Ok(()),
            Err(e) => Err(api("start container", id)(e)),
        }
    }

    /// The healthy containers (running, and `healthy` when they have a
    /// health check) that `host`'s `tier` operator owns and that carry
    /// `label` (`key` or `key=value`), with the address of each on its
    /// first network.
    pub async fn healthy_endpoints(&self, host: &str, tier: &str, label: &str) -> Result<Vec<Endpoint>, DockerError> {
        self.endpoints(host, tier, label, true).await
    }

    /// [`DockerClient::healthy_endpoints`], or every running one when not
    /// `healthy_only` (a cluster member catching up after its restart).
    pub async fn endpoints(
        &self,
        host: &str,
        tier: &str,
        label: &str,
        healthy_only: bool,
    ) -> Result<Vec<Endpoint>, DockerError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
                format!("{}={host}", labels::HOST),
                format!("{}={tier}", labels::TIER),
                label.to_owned(),
            ],
        )]);
        let opts = ListContainersOptions {
            all: false,
            filters: Some(filters),
            ..Default::default()
        };
        let list = self
            .inner
            .list_containers(Some(opts))
            .await
            .map_err(api("list containers labelled", label))?;
        let mut out = Vec::new();
        for s in list {
            let Some(id) = s.id else { continue };
            let info = match self.inner.inspect_container(&id, None::<InspectContainerOptions>).await {
                Ok(i) => i,
                Err(e) if not_found(&e) => continue,
                Err(e) => return Err(api("inspect container", id)(e)),
            };
            let state = info.state.unwrap_or_default();
            let healthy = match state.health.and_then(|h| h.status) {
                Some(bollard::models::HealthStatusEnum::HEALTHY) => true,
                Some(bollard::models::HealthStatusEnum::NONE | bollard::models::HealthStatusEnum::EMPTY) | None => {
                    state.running == Some(true)
                }
                Some(_) => false,
            };
            if !healthy && (healthy_only || state.running != Some(true)) {
                continue;
            }
            let lbls = info.config.and_then(|c| c.labels).unwrap_or_default();
            let ip = info
                .network_settings
                .and_then(|n| n.networks)
                .and_then(|n| n.into_values().find_map(|e| e.ip_address.filter(|ip| !ip.is_empty())));
            let Some(ip) = ip else { continue };
            out.push(Endpoint {
                service: lbls.get(labels::SERVICE).cloned().unwrap_or_default(),
                container: info.name.unwrap_or_default().trim_start_matches('/').to_owned(),
                ip,
                labels: lbls,
            });
        }
        Ok(out)
    }

    /// Restarts a container, giving it `grace` to stop.
    pub async fn restart(&self, id: &str, grace: Duration) -> Result<(), DockerError> {
        let opts = RestartContainerOptions {
            t: Some(grace.as_secs() as i32),
            ..Default::default()
        };
        self.inner
            .restart_container(id, Some(opts))
            .await
            .map_err(api("restart container", id))
    }

    /// Stops (with `grace`) and removes a container. Anonymous volumes go
    /// with it; named volumes never do.
    pub async fn remove(&self, id: &str, grace: Duration) -> Result<(), DockerError> {
        self.stop(id, grace).await?;
        self.remove_stopped(id).await
    }

    /// Stops a container within `grace` (gone or already stopped is fine).
    #[tracing::instrument(name = "docker.stop", skip(self, grace))]
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), DockerError> {
        let opts = StopContainerOptions {
            t: Some(grace.as_secs() as i32),
            ..Default::default()
        };
        match self.inner.stop_container(id, Some(opts)).await {
            Ok(()) => {}
            Err(e) if not_found(&e) || conflict_or_not_modified(&e) => {}
            Err(e) => return Err(api("stop container", id)(e)),
        }
        Ok(())
    }

    /// Removes a stopped container with its anonymous volumes (its named
    /// volumes stay).
    #[tracing::instrument(name = "docker.remove", skip(self))]
    pub async fn remove_stopped(&self, id: &str) -> Result<(), DockerError> {
        // `v`: the container's anonymous volumes go with it (a replica's
        // scratch space); Docker never removes a named volume this way.
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.inner.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            // Removal already in progress.
            Err(e) if conflict_or_not_modified(&e) => Ok(()),
            Err(e) => Err(api("remove container", id)(e)),
        }
    }

    /// Docker events about the tier's containers, as they happen.
    pub fn events(
        &self,
        host: &str,
        tier: &str,
    ) -> impl Stream<Item = Result<DockerEvent, DockerError>> + Send + 'static {
        let opts = EventsOptions {
            filters: Some(HashMap::from([
                ("type".to_string(), vec!["container".to_string()]),
                (
                    "label".to_string(),
                    vec![
                        format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
                        format!("{}={host}", labels::HOST),
                        format!("{}={tier}", labels::TIER),
                    ],
                ),
            ])),
            ..Default::default()
        };
        self.inner.events(Some(opts)).filter_map(|ev| async move {
            match ev {
                Err(e) => Some(Err(api("events", "")(e))),
                Ok(m) => {
                    let actor = m.actor?;
                    let id = actor.id?;
                    let service = actor.attributes.and_then(|a| a.get(labels::SERVICE).cloned())?;
                    Some(Ok(DockerEvent {
                        id,
                        service,
                        action: m.action.unwrap_or_default(),
                    }))
                }
            }
        })
    }
}

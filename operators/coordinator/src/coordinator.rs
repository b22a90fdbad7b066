//! The coordinator's logic, apart from gRPC: load the catalog, resolve a
//! selection, place services on hosts, plan, deploy in dependency order,
//! report status, remove.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use infra_bus::Bus;
use infra_compose::{Catalog, DependencyCondition, Graph, LoadOptions, SelectError, Selection, Severity, Tier};
use infra_proto::bus::v1::{
    DesiredService, Event, EventKind, Health, Heartbeat, ObservedService, PlacementSpec, ServiceRecord, ServiceSpec,
    UpdatePolicy,
};
use infra_proto::coordinator::v1 as api;
use tokio::sync::{mpsc, watch};
use tonic::Status;
use tracing::Instrument;

use crate::convert::{self, SecretContent};
use crate::placement::{self, Outcome, Rules, Usage};
use crate::rollout::{self, Reporter};
use crate::selections;
use crate::state::ObservedCache;

/// What the coordinator needs to run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This coordinator's id (a bus token).
    pub id: String,
    /// Compose project name: prefix of container, network and volume names.
    pub project: String,
    /// The catalog root (`compose/`).
    pub compose_dir: PathBuf,
    /// Override files merged onto the catalog (the local image map).
    pub overrides: Vec<PathBuf>,
    /// `.env` file; default `<compose_dir>/.env` when it exists.
    pub env_file: Option<PathBuf>,
    /// Directories beside the catalog that secret and config files may
    /// come from.
    pub secret_dirs: Vec<PathBuf>,
    /// Default per-service deadline of a deploy.
    pub deploy_timeout: Duration,
    /// The most replicas one service may have.
    pub max_replicas: u32,
    /// A host silent for this long is lost (its stateless replicas move).
    pub host_lost_after: Duration,
    /// How long a heartbeat counts (the hosts bucket's max age).
    pub heartbeat_ttl: Duration,
}

impl Settings {
    /// How long after its last heartbeat an operator disappears from view.
    pub fn heartbeat_grace(&self) -> Duration {
        self.heartbeat_ttl
    }
}

/// The coordinator. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    settings: Arc<Settings>,
    bus: Bus,
    cache: ObservedCache,
    leader: watch::Receiver<bool>,
    /// The call that owns each service's replica count now; a newer one
    /// cancels the older one's wait.
    owners: Arc<std::sync::Mutex<HashMap<String, tokio_util::sync::CancellationToken>>>,
}

/// The largest spec one service may have once built (encoded). Twice it
/// (a rolling update's old and new spec) must fit in one bus message.
const MAX_SPEC_BYTES: usize = 384 * 1024;

fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(e.to_string())
}

/// A service ready to dispatch: its spec (`replicas` is the total), its
/// placement rules, where its replicas go, and what the store holds for it
/// now on every host.
#[derive(Clone, Debug)]
struct Prepared {
    spec: ServiceSpec,
    rules: PlacementSpec,
    outcome: Outcome,
    existing: Vec<DesiredService>,
    update: UpdatePolicy,
    back: UpdatePolicy,
}

impl Prepared {
    /// The desired state now on `host`, removed or not.
    fn on(&self, host: &str) -> Option<&DesiredService> {
        self.existing.iter().find(|d| d.host == host)
    }

    /// Whether any host runs (or holds) it now.
    fn deployed(&self) -> bool {
        self.existing.iter().any(|d| !d.absent)
    }

    /// The spec one host gets: its share of the replicas.
    fn spec_for(&self, replicas: u32) -> ServiceSpec {
        let mut s = self.spec.clone();
        s.replicas = replicas;
        s
    }

    /// `h1, h2 (2)`: where the replicas go, for messages.
    fn hosts_label(&self) -> String {
        self.outcome
            .hosts
            .iter()
            .map(|(h, n)| if *n == 1 { h.clone() } else { format!("{h} ({n})") })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Host -> replicas there now.
    fn current(&self) -> BTreeMap<String, u32> {
        self.existing
            .iter()
            .filter(|d| !d.absent)
            .filter_map(|d| d.spec.as_ref().map(|s| (d.host.clone(), s.replicas.max(1))))
            .collect()
    }
}

/// The progress of a service over all its hosts: the least advanced one.
fn aggregate(each: &[Progress]) -> Progress {
    if each.is_empty() {
        return Progress::Waiting;
    }
    if each.contains(&Progress::Failed) {
        return Progress::Failed;
    }
    if each.iter().all(|p| *p == Progress::Completed) {
        return Progress::Completed;
    }
    if each.contains(&Progress::Waiting) {
        return Progress::Waiting;
    }
    if each.contains(&Progress::Started) {
        return Progress::Started;
    }
    Progress::Healthy
}

/// Where a service stands during a deploy, as its dependents see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Progress {
    Waiting,
    Started,
    Healthy,
    Completed,
    Failed,
}

impl Progress {
    fn word(self) -> &'static str {
        match self {
            Progress::Waiting => "not started",
            Progress::Started => "started but not healthy",
            Progress::Healthy => "running (healthy)",
            Progress::Completed => "completed",
            Progress::Failed => "failed",
        }
    }
}

/// What the services of one deploy know of each other: how far each has
/// come, and whether its own step has ended (so a dependent never waits
/// for a condition that can no longer be met).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Standing {
    progress: Progress,
    ended: bool,
}

type Board = HashMap<String, Standing>;

/// One service's part of a deploy (or of a scale: no dependencies, no
/// graph).
struct Step<'a> {
    name: &'a str,
    deps: Vec<(String, DependencyCondition)>,
    /// How long it may take to be ready once dispatched.
    deadline: Duration,
    /// How long it may wait for its dependencies (a backstop: the wait
    /// ends when they meet their conditions or their steps end).
    wait_limit: Duration,
    deployment: &'a str,
    board: Arc<watch::Sender<Board>>,
    graph: Option<&'a Graph>,
    tx: &'a mpsc::Sender<Result<api::DeployProgress, Status>>,
    /// A dependent in this deploy needs it run to completion
    /// (`service_completed_successfully`): it is ready once it has exited
    /// 0, not while it runs.
    until_completed: bool,
}

/// Marks a service's step ended when dropped, whether it returned or
/// panicked: its dependents stop waiting for it either way.
struct EndOnDrop {
    name: String,
    board: Arc<watch::Sender<Board>>,
}

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.board.send_modify(|m| {
            m.entry(self.name.clone())
                .or_insert(Standing {
                    progress: Progress::Failed,
                    ended: true,
                })
                .ended = true;
        });
    }
}

/// Where one host's share stands. A report counts only once it is about
/// the desired write it answers (`generation`): an operator still busy
/// with an older write must not make a newer one look done.
fn progress_of(o: &ObservedService, spec: &ServiceSpec, hash: &str, generation: u64) -> Progress {
    let want = spec.replicas.max(1);
    let current: Vec<_> = o.containers.iter().filter(|c| c.spec_hash == hash).collect();
    if o.generation < generation {
        return Progress::Waiting;
    }
    if o.health() == Health::Failed {
        return Progress::Failed;
    }
    if o.spec_hash != hash || (current.len() as u32) < want || current.len() != o.containers.len() {
        return Progress::Waiting;
    }
    match o.health() {
        Health::Healthy | Health::Running => Progress::Healthy,
        Health::Completed => Progress::Completed,
        _ if o.running_replicas >= 1 => Progress::Started,
        _ => Progress::Waiting,
    }
}

fn meets(p: Progress, cond: DependencyCondition) -> bool {
    match cond {
        DependencyCondition::ServiceStarted => matches!(p, Progress::Started | Progress::Healthy | Progress::Completed),
        DependencyCondition::ServiceHealthy => p == Progress::Healthy,
        DependencyCondition::ServiceCompletedSuccessfully => p == Progress::Completed,
    }
}

impl Coordinator {
    /// A coordinator over `bus`, with `cache` kept current by the caller.
    pub fn new(settings: Settings, bus: Bus, cache: ObservedCache) -> Self {
        Self {
            settings: Arc::new(settings),
            bus,
            cache,
            // Alone, a coordinator leads; `with_leadership` makes it follow
            // a lease.
            leader: watch::channel(true).1,
            owners: Arc::default(),
        }
    }

    /// Makes the caller the owner of `service`'s replica count: the
    /// previous owner's token is cancelled (its wait stops at once), and
    /// the returned one is cancelled when a later call claims the service.
    fn claim(&self, service: &str) -> tokio_util::sync::CancellationToken {
        let token = tokio_util::sync::CancellationToken::new();
        let mut owners = self.owners.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = owners.insert(service.to_owned(), token.clone()) {
            old.cancel();
        }
        token
    }

    /// Leads only while `leader` says so (the lease task keeps it current).
    pub fn with_leadership(mut self, leader: watch::Receiver<bool>) -> Self {
        self.leader = leader;
        self
    }

    /// Whether this coordinator leads now.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// What it runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Observed state, as the operators last reported it.
    pub(crate) fn cache(&self) -> &ObservedCache {
        &self.cache
    }

    fn env() -> BTreeMap<String, String> {
        std::env::vars().collect()
    }

    /// Loads the catalog afresh, so edits take effect on the next call.
    pub fn load(&self) -> Result<Catalog, Status> {
        let opts = LoadOptions {
            env_file: self.settings.env_file.clone(),
            env: Self::env(),
            overrides: self.settings.overrides.clone(),
            secret_dirs: self.settings.secret_dirs.clone(),
        };
        infra_compose::load_catalog(&self.settings.compose_dir, &opts).map_err(invalid)
    }

    /// The selected services (with their dependencies) and their graph.
    pub fn resolve(
        &self,
        catalog: &Catalog,
        sel: Option<&api::Selection>,
    ) -> Result<(BTreeSet<String>, Graph), Status> {
        let names = self.select(catalog, sel)?;
        let graph = catalog.graph(&names).map_err(invalid)?;
        Ok((names, graph))
    }

    /// The selected services with their dependencies, without ordering
    /// them (the lint reports what the graph would reject).
    pub fn select(&self, catalog: &Catalog, sel: Option<&api::Selection>) -> Result<BTreeSet<String>, Status> {
        let sel = sel.cloned().unwrap_or_default();
        let mut exclude: Vec<String> = Vec::new();
        let mut s = Selection {
            all: sel.all,
            tiers: Vec::new(),
            profiles: sel.profiles.clone(),
            services: sel.services.clone(),
        };
        for t in &sel.tiers {
            s.tiers.push(
                t.parse::<Tier>()
                    .map_err(|e| invalid(format!("selection.tiers: {e}")))?,
            );
        }
        if !sel.named.is_empty() {
            let named = selections::load(&catalog.root).map_err(invalid)?;
            let n = named.get(&sel.named).ok_or_else(|| {
                invalid(format!(
                    "selection.named: {:?} is not defined in {}/{}; defined: {}",
                    sel.named,
                    catalog.root.display(),
                    selections::FILE,
                    named.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?;
            s.all |= n.all;
            for t in &n.tiers {
                s.tiers.push(
                    t.parse::<Tier>()
                        .map_err(|e| invalid(format!("selections.{}.tiers: {e}", sel.named)))?,
                );
            }
            s.profiles.extend(n.profiles.iter().cloned());
            s.services.extend(n.services.iter().cloned());
            exclude.clone_from(&n.exclude);
        }
        let mut names = catalog.select(&s).map_err(|e| {
            // A profile of a named selection is located in selections.yml.
            if let SelectError::UnknownProfile { name, .. } = &e
                && !sel.named.is_empty()
                && !sel.profiles.contains(name)
            {
                let file = catalog.root.join(selections::FILE);
                let line = selections_line(&file, &sel.named, name).map_or(String::new(), |l| format!(":{l}"));
                return invalid(format!("{}{line}: {}.profiles: {e}", file.display(), sel.named));
            }
            invalid(format!("selection: {e}"))
        })?;
        for x in &exclude {
            names.remove(x);
        }
        if !exclude.is_empty() {
            for n in &names {
                if let Some(svc) = catalog.services.get(n)
                    && let Some(d) = svc
                        .depends_on
                        .iter()
                        .find(|d| d.required && exclude.contains(&d.service))
                {
                    return Err(invalid(format!(
                        "selection {:?} excludes {:?}, which {:?} needs",
                        sel.named, d.service, n
                    )));
                }
            }
        }
        Ok(names)
    }

    /// Lints the selection (an empty one: the whole catalog, every profile).
    pub fn lint(&self, req: &api::LintRequest) -> Result<api::LintResponse, Status> {
        let min = parse_min_severity(&req.min_severity)?;
        let catalog = self.load()?;
        let names = match req.selection.as_ref() {
            Some(s) if *s != api::Selection::default() => Some(self.select(&catalog, Some(s))?),
            _ => None,
        };
        Ok(lint_response(&catalog, names.as_ref(), min))
    }

    /// Operators alive now, from their heartbeats.
    pub async fn heartbeats(&self) -> Result<Vec<Heartbeat>, Status> {
        self.bus.list_heartbeats().await.map_err(unavailable)
    }

    async fn prepare(
        &self,
        catalog: &Catalog,
        graph: &Graph,
    ) -> Result<(Vec<(String, Prepared)>, Vec<SecretContent>), Status> {
        let env = Self::env();
        let hosts = self.eligible_hosts().await?;
        let desired = self.bus.list_desired(None).await.map_err(unavailable)?;
        let records = self.bus.list_records().await.map_err(unavailable)?;
        // What the other services take where: tier load for spreading, GPUs.
        let mut load: HashMap<(String, String), BTreeSet<String>> = HashMap::new();
        for d in desired.iter().filter(|d| !d.absent) {
            if let Some(s) = &d.spec {
                load.entry((d.host.clone(), s.tier.clone()))
                    .or_default()
                    .insert(s.name.clone());
            }
        }
        let mut gpus: HashMap<String, BTreeMap<String, u32>> = HashMap::new();
        for r in &records {
            let per = r.rules.as_ref().map_or(0, |p| p.gpus);
            for (h, n) in &r.placement {
                if per > 0 {
                    gpus.entry(h.clone()).or_default().insert(r.service.clone(), per * n);
                }
            }
        }
        // What every service reserves where (CPU, memory), kept current as
        // this deploy places its services.
        let mut reserved: HashMap<String, BTreeMap<String, placement::Reservation>> = HashMap::new();
        for d in desired.iter().filter(|d| !d.absent) {
            if let Some(s) = &d.spec {
                reserved
                    .entry(d.host.clone())
                    .or_default()
                    .insert(s.name.clone(), placement::Reservation::of(s).times(s.replicas.max(1)));
            }
        }
        let mut out = Vec::new();
        let mut secrets: BTreeMap<String, SecretContent> = BTreeMap::new();
        for name in graph.order() {
            let svc = &catalog.services[name];
            let (spec, contents) = convert::to_spec(catalog, &self.settings.project, svc, &env).map_err(invalid)?;
            let size = prost::Message::encoded_len(&spec);
            if size > MAX_SPEC_BYTES {
                return Err(invalid(format!(
                    "{}:{}: service {name:?}: its spec is {} KiB once built ({} environment entries, {} labels); a \
                     service's spec may be at most {} KiB, because its desired state carries two specs during a \
                     rolling update and the bus carries at most 1 MiB in one message",
                    svc.file.display(),
                    svc.line,
                    size / 1024,
                    spec.environment.len(),
                    spec.labels.len(),
                    MAX_SPEC_BYTES / 1024
                )));
            }
            let rules = convert::placement_spec(svc).map_err(invalid)?;
            if !rules.global && spec.replicas > self.settings.max_replicas {
                let line = catalog
                    .key_line(name, "deploy.replicas")
                    .map_or(String::new(), |l| format!(":{l}"));
                return Err(invalid(format!(
                    "{}{line}: service {name:?}: deploy.replicas {} is more than one service may have here \
                     (max_replicas = {} in the coordinator's configuration)",
                    svc.file.display(),
                    spec.replicas,
                    self.settings.max_replicas
                )));
            }
            for c in contents {
                secrets.insert(c.key.clone(), c);
            }
            let existing: Vec<DesiredService> = desired
                .iter()
                .filter(|d| d.spec.as_ref().is_some_and(|s| s.name == *name))
                .cloned()
                .collect();
            let usage = Usage {
                tier_load: load
                    .iter()
                    .filter(|((_, t), _)| *t == spec.tier)
                    .map(|((h, _), names)| (h.clone(), names.iter().filter(|n| *n != name).count()))
                    .collect(),
                gpus_used: gpus
                    .iter()
                    .map(|(h, by)| (h.clone(), by.iter().filter(|(n, _)| *n != name).map(|(_, g)| g).sum()))
                    .collect(),
                reserved: reserved
                    .iter()
                    .map(|(h, by)| {
                        let sum = by
                            .iter()
                            .filter(|(n, _)| *n != name)
                            .fold(placement::Reservation::default(), |a, (_, r)| a.plus(*r));
                        (h.clone(), sum)
                    })
                    .collect(),
            };
            let mut p = Prepared {
                spec,
                rules,
                outcome: Outcome::default(),
                existing,
                update: convert::update_policy(svc, false),
                back: convert::update_policy(svc, true),
            };
            let reserve = placement::Reservation::of(&p.spec);
            let parsed = Rules::from_spec(&p.spec.tier, p.spec.replicas.max(1), &p.rules)
                .map_err(invalid)?
                .reserving(reserve);
            p.outcome = placement::place(&parsed, &hosts, &p.current(), &usage);
            for by in reserved.values_mut() {
                by.remove(name);
            }
            for (h, n) in &p.outcome.hosts {
                reserved
                    .entry(h.clone())
                    .or_default()
                    .insert(name.clone(), reserve.times(*n));
                load.entry((h.clone(), p.spec.tier.clone()))
                    .or_default()
                    .insert(name.clone());
                if p.rules.gpus > 0 {
                    gpus.entry(h.clone())
                        .or_default()
                        .insert(name.clone(), p.rules.gpus * n);
                }
            }
            out.push((name.clone(), p));
        }
        cross_host_reach(catalog, &hosts, &mut out);
        Ok((out, secrets.into_values().collect()))
    }

    /// What a deploy would do. No side effects.
    pub async fn plan(&self, sel: Option<&api::Selection>) -> Result<api::PlanResponse, Status> {
        let catalog = self.load()?;
        let (_, graph) = self.resolve(&catalog, sel)?;
        let (prepared, _) = self.prepare(&catalog, &graph).await?;
        let level_of: HashMap<&str, usize> = graph
            .levels()
            .iter()
            .enumerate()
            .flat_map(|(i, l)| l.iter().map(move |n| (n.as_str(), i)))
            .collect();
        let mut warnings = Vec::new();
        let mut steps = Vec::new();
        for (name, p) in &prepared {
            let svc = &catalog.services[name];
            let old = p
                .existing
                .iter()
                .filter(|d| !d.absent)
                .find_map(|d| d.spec.as_ref())
                .map(|s| {
                    let mut s = s.clone();
                    s.replicas = p.current().values().sum();
                    s
                });
            let (action, changes) = match old {
                None => (api::Action::Create, vec![]),
                Some(old) => {
                    let mut changes = diff(&old, &p.spec);
                    if p.existing.iter().any(|d| d.hold && !d.absent) {
                        changes.push("start (created and held by an earlier deploy)".into());
                    }
                    if p.current() != p.outcome.hosts && !changes.iter().any(|c| c == "deploy.replicas") {
                        changes.push("placement".into());
                    }
                    if changes.is_empty() {
                        (api::Action::Unchanged, changes)
                    } else {
                        (api::Action::Update, changes)
                    }
                }
            };
            if p.outcome.pending > 0 {
                warnings.push(format!(
                    "{name}: {} replica{} would stay pending: {}",
                    p.outcome.pending,
                    if p.outcome.pending == 1 { "" } else { "s" },
                    p.outcome.reason
                ));
            }
            steps.push(api::PlanStep {
                service: name.clone(),
                tier: p.spec.tier.clone(),
                host: p.outcome.hosts.keys().cloned().collect::<Vec<_>>().join(","),
                placement: p.outcome.hosts.clone().into_iter().collect(),
                pending_replicas: p.outcome.pending,
                pending_reason: p.outcome.reason.clone(),
                action: action as i32,
                level: level_of.get(name.as_str()).copied().unwrap_or(0) as u32,
                waits_for: svc
                    .depends_on
                    .iter()
                    .filter(|d| graph.contains(&d.service))
                    .map(|d| format!("{} ({})", d.service, cond_name(d.condition)))
                    .collect(),
                image: p.spec.image.clone(),
                replicas: p.spec.replicas,
                changes,
                unsupported_keys: convert::unsupported_keys(svc),
            });
        }
        steps.sort_by(|a, b| (a.level, &a.service).cmp(&(b.level, &b.service)));
        warnings.extend(self.image_warnings(&prepared).await);
        Ok(api::PlanResponse { steps, warnings })
    }

    /// What the target hosts say of the images the plan needs: one warning
    /// per image a host neither has nor can pull (with the reason), and one
    /// per operator that did not answer.
    async fn image_warnings(&self, prepared: &[(String, Prepared)]) -> Vec<String> {
        // (host, tier) -> image -> services using it
        let mut asks: BTreeMap<(String, String), BTreeMap<String, Vec<String>>> = BTreeMap::new();
        for (name, p) in prepared {
            for h in p.outcome.hosts.keys() {
                asks.entry((h.clone(), p.spec.tier.clone()))
                    .or_default()
                    .entry(p.spec.image.clone())
                    .or_default()
                    .push(name.clone());
            }
        }
        let wait = operator_core::images::CHECK_TIMEOUT + Duration::from_secs(1);
        let answers = futures::future::join_all(asks.into_iter().map(|((host, tier), images)| async move {
            let list: Vec<String> = images.keys().cloned().collect();
            let answer = self.bus.check_images(&host, &tier, list, wait).await;
            (host, tier, images, answer)
        }))
        .await;
        let mut out = Vec::new();
        for (host, tier, images, answer) in answers {
            match answer {
                Ok(reply) => {
                    for st in reply.images.iter().filter(|s| !s.present && !s.pullable) {
                        let users = images.get(&st.image).map(|u| u.join(", ")).unwrap_or_default();
                        out.push(format!(
                            "{users}: image {} is not on host {host} and cannot be pulled there: {}",
                            st.image, st.reason
                        ));
                    }
                }
                Err(e) => out.push(format!(
                    "could not check the images of the {tier} services on host {host} ({e}); the deploy will \
                     find out whether it has them"
                )),
            }
        }
        out
    }

    pub(crate) async fn event(&self, kind: EventKind, service: &str, tier: &str, deployment: &str, reason: String) {
        let ev = Event {
            kind: kind as i32,
            host: self.settings.id.clone(),
            tier: if tier.is_empty() {
                "coordinator".into()
            } else {
                tier.to_owned()
            },
            service: service.to_owned(),
            reason,
            source: "coordinator".into(),
            deployment_id: deployment.to_owned(),
            ..Default::default()
        };
        if let Err(e) = self.bus.publish_event(&ev).await {
            tracing::warn!(error = %e, "could not publish coordinator event");
        }
    }

    /// Brings the selection up in dependency order, streaming progress to
    /// `tx`. Every check happens before the first write; afterwards a
    /// failing service blocks only what depends on it.
    pub async fn deploy(
        &self,
        req: api::DeployRequest,
        tx: mpsc::Sender<Result<api::DeployProgress, Status>>,
    ) -> Result<(), Status> {
        self.deploy_as(nuid::next().to_string(), req, tx).await
    }

    /// [`Coordinator::deploy`] under the id `deployment` (its record's, so
    /// its events and its record name the same deploy).
    #[tracing::instrument(name = "deploy", skip_all, fields(deployment = tracing::field::Empty, services = tracing::field::Empty))]
    pub async fn deploy_as(
        &self,
        deployment: String,
        req: api::DeployRequest,
        tx: mpsc::Sender<Result<api::DeployProgress, Status>>,
    ) -> Result<(), Status> {
        let catalog = self.load()?;
        let (_, graph) = self.resolve(&catalog, req.selection.as_ref())?;
        let (prepared, secrets) = self.prepare(&catalog, &graph).await?;
        let deadline = if req.timeout_seconds > 0 {
            Duration::from_secs(u64::from(req.timeout_seconds))
        } else {
            self.settings.deploy_timeout
        };
        tracing::Span::current()
            .record("deployment", deployment.as_str())
            .record("services", prepared.len());
        for s in secrets {
            self.bus.put_secret(&s.key, s.content).await.map_err(unavailable)?;
        }
        self.event(
            EventKind::DeployStarted,
            "",
            "",
            &deployment,
            format!("{} services", prepared.len()),
        )
        .await;

        let board = Arc::new(watch::channel(Board::new()).0);
        let graph = Arc::new(graph);
        let send = |p: api::DeployProgress| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Ok(p)).await;
            }
        };
        for (name, p) in &prepared {
            send(api::DeployProgress {
                deployment_id: deployment.clone(),
                service: name.clone(),
                tier: p.spec.tier.clone(),
                host: p.hosts_label(),
                phase: api::Phase::Planned as i32,
                time: Some(infra_proto::now()),
                ..Default::default()
            })
            .await;
        }
        // A dependency wait ends when the dependency's own step ends; the
        // limit is only a backstop against a step that never does: every
        // level of the graph may take its whole deadline.
        let wait_limit = deadline.saturating_mul(graph.levels().len().max(1) as u32);
        let mut tasks = tokio::task::JoinSet::new();
        for (name, p) in prepared {
            let me = self.clone();
            let deps: Vec<(String, DependencyCondition)> = catalog.services[&name]
                .depends_on
                .iter()
                .filter(|d| graph.contains(&d.service))
                .map(|d| (d.service.clone(), d.condition))
                .collect();
            let until_completed = catalog.services.values().any(|s| {
                graph.contains(&s.name)
                    && s.depends_on
                        .iter()
                        .any(|d| d.service == name && d.condition == DependencyCondition::ServiceCompletedSuccessfully)
            });
            let (board, graph, tx, deployment) = (board.clone(), graph.clone(), tx.clone(), deployment.clone());
            let span = tracing::info_span!("service", service = %name, tier = %p.spec.tier);
            tasks.spawn(
                async move {
                    let _end = EndOnDrop {
                        name: name.clone(),
                        board: board.clone(),
                    };
                    let step = Step {
                        name: &name,
                        deps,
                        deadline,
                        wait_limit,
                        deployment: &deployment,
                        board,
                        graph: Some(&graph),
                        tx: &tx,
                        until_completed,
                    };
                    let outcome = me.deploy_one(step, p).await;
                    (name, outcome)
                }
                .instrument(span),
            );
        }
        let (mut ready, mut failed, mut blocked) = (0u32, 0u32, 0u32);
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok((_, Progress::Failed)) => failed += 1,
                Ok((_, Progress::Waiting)) => blocked += 1,
                Ok(_) => ready += 1,
                Err(e) => {
                    tracing::error!(error = %e, "deploy task panicked");
                    failed += 1;
                }
            }
        }
        let msg = format!("{ready} ready, {failed} failed, {blocked} blocked");
        self.event(EventKind::DeployFinished, "", "", &deployment, msg.clone())
            .await;
        send(api::DeployProgress {
            deployment_id: deployment,
            phase: api::Phase::Done as i32,
            message: msg,
            time: Some(infra_proto::now()),
            ready,
            failed,
            blocked,
            ..Default::default()
        })
        .await;
        Ok(())
    }

    /// One service of a deploy (or of a scale, with no dependencies and
    /// no graph): wait for its dependencies, dispatch to every host its
    /// placement names, remove it from hosts it no longer has, wait until
    /// every host reports it ready. Returns `Waiting` when it was blocked.
    ///
    /// # Guarantees
    /// Every wait ends: a dependency wait when the dependency meets its
    /// condition, fails, or its step ends without meeting it (with the
    /// reason), else at `step.wait_limit`; the ready wait when the service
    /// is ready, fails, or `step.deadline` passes (naming what it waited
    /// for).
    async fn deploy_one(&self, step: Step<'_>, mut p: Prepared) -> Progress {
        let Step {
            name,
            deps,
            deadline,
            wait_limit,
            deployment,
            board,
            graph,
            tx,
            until_completed,
        } = step;
        let mut board_rx = board.subscribe();
        let tier_owned = p.spec.tier.clone();
        let tier: &str = &tier_owned;
        let hosts = p.hosts_label();
        let report = |phase: api::Phase, message: String, blocks: Vec<String>| {
            let ev = api::DeployProgress {
                deployment_id: deployment.to_owned(),
                service: name.to_owned(),
                tier: tier.to_owned(),
                host: hosts.clone(),
                phase: phase as i32,
                message,
                time: Some(infra_proto::now()),
                blocks,
                ..Default::default()
            };
            let tx = tx.clone();
            async move {
                let _ = tx.send(Ok(ev)).await;
            }
        };
        let set = |p: Progress| {
            board.send_modify(|m| {
                m.entry(name.to_owned())
                    .or_insert(Standing {
                        progress: p,
                        ended: false,
                    })
                    .progress = p;
            })
        };

        // A new service that must wait: have its containers created now
        // (held, not started), so that only `start` is left when the gate
        // opens. Its start time, not its creation, is what the gate orders.
        let held = !deps.is_empty() && !p.deployed() && !p.outcome.hosts.is_empty();
        if held {
            for (h, n) in &p.outcome.hosts {
                let desired = DesiredService {
                    spec: Some(p.spec_for(*n)),
                    host: h.clone(),
                    generation: p.on(h).map_or(0, |d| d.generation) + 1,
                    deployment_id: deployment.to_owned(),
                    hold: true,
                    ..Default::default()
                };
                if let Err(e) = self.bus.put_desired(&desired).await {
                    tracing::warn!(service = name, host = %h, error = %e, "could not pre-create; will create at dispatch");
                }
            }
        }

        // Wait for every dependency to meet its condition, or to fail.
        if !deps.is_empty() {
            report(
                api::Phase::Waiting,
                deps.iter()
                    .map(|(d, c)| format!("{d} ({})", cond_name(*c)))
                    .collect::<Vec<_>>()
                    .join(", "),
                vec![],
            )
            .await;
        }
        let waiting_since = Instant::now();
        loop {
            let st = board_rx.borrow_and_update().clone();
            // A failed dependency, one that finished without ever being
            // healthy, or one whose step ended short of the condition will
            // never meet it.
            let unmet = deps.iter().find_map(|(d, c)| {
                let s = st.get(d)?;
                if s.progress == Progress::Failed {
                    return Some((d, "failed".to_owned()));
                }
                if s.progress == Progress::Completed && *c == DependencyCondition::ServiceHealthy {
                    return Some((d, "completed without ever being healthy".to_owned()));
                }
                (s.ended && !meets(s.progress, *c)).then(|| {
                    (
                        d,
                        format!("ended {} but {name} needs it {}", s.progress.word(), cond_name(*c)),
                    )
                })
            });
            let left = wait_limit.saturating_sub(waiting_since.elapsed());
            let unmet = unmet.or_else(|| {
                if !left.is_zero() {
                    return None;
                }
                deps.iter()
                    .find(|(d, c)| !st.get(d).is_some_and(|s| meets(s.progress, *c)))
                    .map(|(d, c)| {
                        let seen = st.get(d).map_or("not started", |s| s.progress.word());
                        (
                            d,
                            format!(
                                "did not become {} within {}s (it is {seen})",
                                cond_name(*c),
                                wait_limit.as_secs()
                            ),
                        )
                    })
            });
            if let Some((d, why)) = unmet {
                let chain = graph
                    .and_then(|g| g.blocking_chain(d, name))
                    .map(|c| c.join(" -> "))
                    .unwrap_or_else(|| format!("{d} -> {name}"));
                set(Progress::Failed);
                report(
                    api::Phase::Blocked,
                    format!("blocked: dependency {d} {why} ({chain})"),
                    vec![],
                )
                .await;
                self.event(
                    EventKind::ServiceBlocked,
                    name,
                    tier,
                    deployment,
                    format!("dependency {d} {why}: {chain}"),
                )
                .await;
                // Nothing stays behind for a service that never started.
                if held {
                    for h in p.outcome.hosts.keys() {
                        let _ = self.bus.delete_desired(h, tier, name).await;
                    }
                }
                return Progress::Waiting;
            }
            if deps
                .iter()
                .all(|(d, c)| st.get(d).is_some_and(|s| meets(s.progress, *c)))
            {
                break;
            }
            // A closed board (the deploy is gone) ends the wait too.
            if let Ok(Err(_)) = tokio::time::timeout(left, board_rx.changed()).await {
                return Progress::Waiting;
            }
        }

        let fail = |message: String| async move {
            let blocks: Vec<String> = graph
                .map(|g| {
                    g.blocked_by(name)
                        .iter()
                        .filter_map(|b| g.blocking_chain(name, b).map(|c| c.join(" -> ")))
                        .collect()
                })
                .unwrap_or_default();
            set(Progress::Failed);
            report(api::Phase::Failed, message.clone(), blocks.clone()).await;
            let why = if blocks.is_empty() {
                message
            } else {
                format!("{message}; blocks {}", blocks.join(", "))
            };
            self.event(EventKind::ServiceFailed, name, tier, deployment, why).await;
            Progress::Failed
        };

        // The service-level record: what is wanted, where, what is pending,
        // which revision runs. A changed spec becomes a new revision only
        // once its rollout is done.
        let before = self.bus.get_record(tier, name).await.ok().flatten().unwrap_or_default();
        let running_spec = p
            .existing
            .iter()
            .filter(|d| !d.absent && !d.hold)
            .find_map(|d| d.spec.clone());
        let changed = running_spec
            .as_ref()
            .is_some_and(|o| operator_core::spec::spec_hash(o) != operator_core::spec::spec_hash(&p.spec));
        let replicas = if p.rules.global {
            p.outcome.placed()
        } else {
            p.spec.replicas.max(1)
        };
        let mut record = ServiceRecord {
            service: name.to_owned(),
            tier: tier.to_owned(),
            replicas,
            rules: Some(p.rules.clone()),
            placement: p.outcome.hosts.clone().into_iter().collect(),
            pending_replicas: p.outcome.pending,
            pending_reason: p.outcome.reason.clone(),
            deployment_id: deployment.to_owned(),
            updated_at: Some(infra_proto::now()),
            spec: Some(p.spec.clone()),
            revision: before.revision.max(1),
            previous_spec: before.previous_spec.clone(),
            update: Some(p.update.clone()),
            rollback: Some(p.back.clone()),
            rollout: before.rollout.clone(),
        };
        if changed && let Some(old) = before.spec.clone().or(running_spec.clone()) {
            let mut old = old;
            old.replicas = replicas;
            record.spec = Some(old);
        }
        if let Err(e) = self.bus.put_record(&record).await {
            return fail(format!("could not write the service record: {e}")).await;
        }
        if p.outcome.pending > 0 {
            self.event(
                EventKind::ServicePending,
                name,
                tier,
                deployment,
                format!(
                    "{} replica{} pending: {}",
                    p.outcome.pending,
                    if p.outcome.pending == 1 { "" } else { "s" },
                    p.outcome.reason
                ),
            )
            .await;
        }
        if p.outcome.hosts.is_empty() {
            return fail(format!("pending: {}", p.outcome.reason)).await;
        }

        // A changed spec on what runs rolls over it as update_config says;
        // then the placement below adds or removes replicas.
        if !held {
            let r = Reporter {
                name,
                tier,
                deployment,
                tx,
            };
            match self
                .roll_if_changed(&r, &p.existing, &p.spec, &p.update, &p.back, deadline)
                .await
            {
                Ok(false) => {}
                Ok(true) => {
                    p.existing = self
                        .bus
                        .list_desired(None)
                        .await
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|d| d.spec.as_ref().is_some_and(|s| s.name == name))
                        .collect();
                }
                Err(e) => return fail(e).await,
            }
        }

        // Dispatch: write desired state on every host whose share is not
        // already what we want; take it off hosts it no longer has (volumes
        // are kept).
        let mut all_unchanged = true;
        let mut targets: Vec<(String, ServiceSpec, String, u64)> = Vec::new();
        for (h, n) in &p.outcome.hosts {
            let spec = p.spec_for(*n);
            let hash = operator_core::spec::spec_hash(&spec);
            // A service still held by an interrupted deploy is not
            // unchanged: it must be released.
            let existing = p.on(h);
            let unchanged = existing.is_some_and(|d| {
                !d.absent
                    && !d.hold
                    && d.previous.is_none()
                    && d.spec
                        .as_ref()
                        .is_some_and(|s| operator_core::spec::spec_hash(s) == hash && s.replicas.max(1) == *n)
            });
            let mut generation = existing.map_or(0, |d| d.generation);
            if !unchanged {
                all_unchanged = false;
                generation += if held { 2 } else { 1 };
                let desired = DesiredService {
                    spec: Some(spec.clone()),
                    host: h.clone(),
                    generation,
                    deployment_id: deployment.to_owned(),
                    ..Default::default()
                };
                if let Err(e) = self.bus.put_desired(&desired).await {
                    return fail(format!("could not write desired state on {h}: {e}")).await;
                }
            }
            targets.push((h.clone(), spec, hash, generation));
        }
        for d in p
            .existing
            .iter()
            .filter(|d| !d.absent && !p.outcome.hosts.contains_key(&d.host))
        {
            all_unchanged = false;
            let mut gone = d.clone();
            gone.absent = true;
            gone.remove_volumes = false;
            gone.generation += 1;
            gone.deployment_id = deployment.to_owned();
            if let Err(e) = self.bus.put_desired(&gone).await {
                return fail(format!("could not take it off {}: {e}", d.host)).await;
            }
        }
        report(
            api::Phase::Dispatched,
            if all_unchanged {
                "unchanged".into()
            } else {
                format!("to {hosts}")
            },
            vec![],
        )
        .await;
        self.event(
            EventKind::ServiceDispatched,
            name,
            tier,
            deployment,
            format!("hosts {hosts}"),
        )
        .await;

        // Wait until every host has it ready (or one failed, or time ran
        // out). A one-shot job that a dependent needs completed is ready
        // once it has exited 0, not while it runs.
        let done = |p: Progress| {
            if until_completed {
                p == Progress::Completed
            } else {
                matches!(p, Progress::Healthy | Progress::Completed)
            }
        };
        let start = Instant::now();
        let mut changes = self.cache.subscribe();
        let mut last = Progress::Waiting;
        loop {
            let mut each = Vec::with_capacity(targets.len());
            let mut laggard: Option<(String, Option<ObservedService>)> = None;
            for (h, spec, hash, generation) in &targets {
                let obs = self.cache.get(h, tier, name).await;
                let now = obs
                    .as_ref()
                    .map_or(Progress::Waiting, |o| progress_of(o, spec, hash, *generation));
                if now == Progress::Failed {
                    let o = obs.unwrap_or_default();
                    let why = if o.message.is_empty() {
                        "failed".to_string()
                    } else {
                        o.message.clone()
                    };
                    return fail(if targets.len() > 1 { format!("{h}: {why}") } else { why }).await;
                }
                if laggard.is_none() && !done(now) {
                    laggard = Some((h.clone(), obs));
                }
                each.push(now);
            }
            let now = aggregate(&each);
            if now != last {
                set(now);
                last = now;
            }
            if done(now) {
                let health = self
                    .cache
                    .get(&targets[0].0, tier, name)
                    .await
                    .map_or(Health::Healthy, |o| o.health());
                let mut msg = format!("{health:?}").to_lowercase();
                if p.outcome.pending > 0 {
                    msg.push_str(&format!(
                        "; {} of {} replicas placed, {} pending: {}",
                        p.outcome.placed(),
                        record.replicas,
                        p.outcome.pending,
                        p.outcome.reason
                    ));
                }
                report(api::Phase::Ready, msg, vec![]).await;
                self.event(EventKind::ServiceReady, name, tier, deployment, String::new())
                    .await;
                return now;
            }
            let left = deadline.saturating_sub(start.elapsed());
            if left.is_zero() {
                let (h, obs) = laggard.unwrap_or_default();
                let seen = obs.map_or_else(
                    || format!("no report from the {tier} operator on {h}"),
                    |o| {
                        format!(
                            "{}{:?}, {} of {} replicas healthy{}",
                            if targets.len() > 1 {
                                format!("{h}: ")
                            } else {
                                String::new()
                            },
                            o.health(),
                            o.healthy_replicas,
                            o.desired_replicas,
                            if o.message.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", o.message)
                            }
                        )
                    },
                );
                let what = if until_completed { "not completed" } else { "not ready" };
                return fail(format!("{what} after {}s ({seen})", deadline.as_secs())).await;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), changes.changed()).await;
        }
    }

    /// State of every deployed service (or of the selection).
    pub async fn status(&self, sel: Option<&api::Selection>) -> Result<api::GetStatusResponse, Status> {
        let filter: Option<BTreeSet<String>> = match sel {
            Some(s) if *s != api::Selection::default() => {
                let catalog = self.load()?;
                Some(self.resolve(&catalog, Some(s))?.0)
            }
            _ => None,
        };
        let desired = self.bus.list_desired(None).await.map_err(unavailable)?;
        // What the members' operators report of cluster members (Patroni's
        // role, state, timeline, lag), from their heartbeats.
        let beats = self.bus.list_heartbeats().await.unwrap_or_default();
        let member_state = |host: &str, tier: &str, name: &str| {
            let key = format!("{}{name}", operator_core::members::STATE_FACT_PREFIX);
            beats
                .iter()
                .find(|b| b.host == host && b.tier == tier)
                .and_then(|b| b.labels.get(&key).cloned())
        };
        let mut out = Vec::new();
        for d in desired {
            let Some(spec) = d.spec.as_ref() else { continue };
            if filter.as_ref().is_some_and(|f| !f.contains(&spec.name)) {
                continue;
            }
            let o = self
                .cache
                .get(&d.host, &spec.tier, &spec.name)
                .await
                .unwrap_or_default();
            let mut message = if d.absent { "removing".into() } else { o.message.clone() };
            if let Some(m) = member_state(&d.host, &spec.tier, &spec.name).filter(|_| !d.absent) {
                message = if message.is_empty() {
                    m
                } else {
                    format!("{message}; {m}")
                };
            }
            out.push(api::ServiceStatus {
                service: spec.name.clone(),
                tier: spec.tier.clone(),
                host: d.host.clone(),
                desired_replicas: if d.absent { 0 } else { spec.replicas.max(1) },
                running_replicas: o.running_replicas,
                healthy_replicas: o.healthy_replicas,
                health: if o.service.is_empty() {
                    Health::Starting as i32
                } else {
                    o.health
                },
                container_ids: o.containers.iter().map(|c| c.id.chars().take(12).collect()).collect(),
                since: o.since,
                message,
                ..Default::default()
            });
        }
        // Replicas no host could take: one row without a host, with why.
        for r in self.bus.list_records().await.map_err(unavailable)? {
            if r.pending_replicas == 0 || filter.as_ref().is_some_and(|f| !f.contains(&r.service)) {
                continue;
            }
            out.push(api::ServiceStatus {
                service: r.service.clone(),
                tier: r.tier.clone(),
                desired_replicas: r.pending_replicas,
                health: Health::Unspecified as i32,
                since: r.updated_at,
                message: format!("pending: {}", r.pending_reason),
                pending_replicas: r.pending_replicas,
                pending_reason: r.pending_reason.clone(),
                ..Default::default()
            });
        }
        out.sort_by(|a, b| (&a.tier, &a.service, &a.host).cmp(&(&b.tier, &b.service, &b.host)));
        Ok(api::GetStatusResponse { services: out })
    }

    /// Stops and removes the selection's containers, dependents first.
    /// Volumes stay unless `remove_volumes`.
    pub async fn remove(&self, req: api::RemoveRequest) -> Result<api::RemoveResponse, Status> {
        let sel = req.selection.clone().unwrap_or_default();
        if sel == api::Selection::default() {
            return Err(invalid(
                "selection: name what to remove (services, tiers, profiles or a named selection), or set \
                 selection.all to remove everything deployed",
            ));
        }
        let desired = self.bus.list_desired(None).await.map_err(unavailable)?;
        let records = self.bus.list_records().await.map_err(unavailable)?;
        // What runs (or is held) now, with the spec it runs.
        let deployed: BTreeMap<String, &ServiceSpec> = desired
            .iter()
            .filter(|d| !d.absent)
            .filter_map(|d| d.spec.as_ref().map(|s| (s.name.clone(), s)))
            .collect();
        let known = |n: &str| deployed.contains_key(n) || records.iter().any(|r| r.service == n);
        let mut set: BTreeSet<String> = BTreeSet::new();
        if sel.all {
            set.extend(deployed.keys().cloned());
            set.extend(records.iter().map(|r| r.service.clone()));
        }
        // A service of the catalog that is not deployed has nothing to
        // remove (so Remove may be repeated); a name the catalog does not
        // know either is a mistake.
        let mut catalog: Option<Catalog> = None;
        for n in &sel.services {
            if known(n) {
                set.insert(n.clone());
                continue;
            }
            if catalog.is_none() {
                catalog = Some(self.load()?);
            }
            if !catalog.as_ref().is_some_and(|c| c.services.contains_key(n)) {
                return Err(invalid(format!(
                    "selection.services: {n:?} is neither deployed nor in the catalog; nothing was removed"
                )));
            }
        }
        for t in &sel.tiers {
            t.parse::<Tier>()
                .map_err(|e| invalid(format!("selection.tiers: {e}")))?;
            set.extend(deployed.values().filter(|s| &s.tier == t).map(|s| s.name.clone()));
        }
        if !sel.named.is_empty() || !sel.profiles.is_empty() {
            let catalog = match catalog {
                Some(c) => c,
                None => self.load()?,
            };
            let like_deploy = api::Selection {
                named: sel.named.clone(),
                profiles: sel.profiles.clone(),
                ..Default::default()
            };
            set.extend(
                self.select(&catalog, Some(&like_deploy))?
                    .into_iter()
                    .filter(|n| known(n)),
            );
        }
        // Deployed services outside the selection that need one in it.
        let needs = |outside: &BTreeSet<String>| -> Vec<(String, String)> {
            deployed
                .iter()
                .filter(|(n, _)| !outside.contains(*n))
                .flat_map(|(n, s)| {
                    s.depends_on
                        .iter()
                        .filter(|d| d.required && outside.contains(&d.service))
                        .map(|d| (n.clone(), d.service.clone()))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        loop {
            let dependents = needs(&set);
            if dependents.is_empty() || req.force {
                break;
            }
            if !req.cascade {
                let names: Vec<String> = dependents.iter().map(|(n, d)| format!("{n} needs {d}")).collect();
                return Err(Status::failed_precondition(format!(
                    "other deployed services need what would be removed ({}): remove them too with cascade, or \
                     leave them without it with force; nothing was removed",
                    names.join(", ")
                )));
            }
            set.extend(dependents.into_iter().map(|(n, _)| n));
        }
        // Dependents first: a service goes once nothing left in the set
        // needs it.
        let mut order: Vec<String> = Vec::new();
        let mut left = set.clone();
        while !left.is_empty() {
            let ready: Vec<String> = left
                .iter()
                .filter(|n| {
                    !left.iter().any(|o| {
                        o != *n
                            && deployed
                                .get(o)
                                .is_some_and(|s| s.depends_on.iter().any(|d| &d.service == *n))
                    })
                })
                .cloned()
                .collect();
            // A cycle (the catalog refuses them; desired state from an old
            // coordinator might not): take the rest in name order.
            let ready = if ready.is_empty() {
                left.iter().cloned().collect()
            } else {
                ready
            };
            for n in ready {
                left.remove(&n);
                order.push(n);
            }
        }
        let mut removed = Vec::new();
        for name in &order {
            let here: Vec<&DesiredService> = desired
                .iter()
                .filter(|d| d.spec.as_ref().is_some_and(|s| s.name == *name))
                .collect();
            let Some(tier) = here.first().and_then(|d| d.spec.as_ref()).map(|s| s.tier.clone()) else {
                // Never deployed, or only pending: forget the record.
                if let Some(r) = records.iter().find(|r| &r.service == name) {
                    self.bus.delete_record(&r.tier, name).await.map_err(unavailable)?;
                    removed.push(name.clone());
                }
                continue;
            };
            for d in &here {
                let mut d = (*d).clone();
                d.absent = true;
                d.remove_volumes = req.remove_volumes;
                d.generation += 1;
                self.bus.put_desired(&d).await.map_err(unavailable)?;
            }
            self.event(EventKind::ServiceRemoveRequested, name, &tier, "", String::new())
                .await;
            // Wait for the operators to take it down before its
            // dependencies.
            let start = Instant::now();
            for d in &here {
                while start.elapsed() < Duration::from_secs(120) {
                    if self
                        .bus
                        .get_desired(&d.host, &tier, name)
                        .await
                        .map_err(unavailable)?
                        .is_none()
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            self.bus.delete_record(&tier, name).await.map_err(unavailable)?;
            removed.push(name.clone());
        }
        Ok(api::RemoveResponse {
            removed,
            volumes_removed: req.remove_volumes,
        })
    }

    /// Rolls what runs of a service to `new` when it differs, or resumes a
    /// rollout to `new` that was left midway. `Ok(true)` when it rolled.
    async fn roll_if_changed(
        &self,
        r: &Reporter<'_>,
        existing: &[DesiredService],
        new: &ServiceSpec,
        update: &UpdatePolicy,
        back: &UpdatePolicy,
        deadline: Duration,
    ) -> Result<bool, String> {
        let running: Vec<&DesiredService> = existing
            .iter()
            .filter(|d| !d.absent && !d.hold && d.spec.is_some())
            .collect();
        let Some(first) = running.first() else { return Ok(false) };
        let counts: BTreeMap<String, u32> = running
            .iter()
            .map(|d| (d.host.clone(), d.spec.as_ref().map_or(1, |s| s.replicas.max(1))))
            .collect();
        let hash = operator_core::spec::spec_hash(new);
        let current = first.spec.as_ref().expect("filtered");
        if let Some(prev) = running.iter().find_map(|d| d.previous.as_ref()) {
            if operator_core::spec::spec_hash(current) != hash {
                return Err(format!(
                    "a rollout of {} to another spec is paused or in progress: Rollout resumes it, Rollback undoes it",
                    r.name
                ));
            }
            let updated: BTreeMap<String, u32> = running.iter().map(|d| (d.host.clone(), d.updated)).collect();
            let at = rollout::done_from(&rollout::slots(&counts), &updated);
            r.send(
                api::Phase::Updating,
                String::new(),
                format!("resuming the rollout at replica {}", at + 1),
            )
            .await;
            let prev = prev.clone();
            self.rollout(r, &prev, new, &counts, at, update, back, deadline, false)
                .await?;
            return Ok(true);
        }
        if operator_core::spec::spec_hash(current) == hash {
            return Ok(false);
        }
        let old = current.clone();
        self.rollout(r, &old, new, &counts, 0, update, back, deadline, false)
            .await?;
        Ok(true)
    }

    /// Rolls a deployed service to the catalog's spec (with `image` and
    /// `environment` laid over it), as its update_config says.
    #[tracing::instrument(name = "rollout", skip_all)]
    pub async fn rollout_service(
        &self,
        req: api::RolloutRequest,
        tx: mpsc::Sender<Result<api::DeployProgress, Status>>,
    ) -> Result<(), Status> {
        if req.service.is_empty() {
            return Err(invalid("service: must name a service"));
        }
        let catalog = self.load()?;
        let svc = catalog.services.get(&req.service).ok_or_else(|| {
            Status::not_found(format!(
                "service: no service {:?} in the catalog at {}",
                req.service,
                catalog.root.display()
            ))
        })?;
        let (mut spec, contents) =
            convert::to_spec(&catalog, &self.settings.project, svc, &Self::env()).map_err(invalid)?;
        if !req.image.is_empty() {
            spec.image.clone_from(&req.image);
        }
        for (k, v) in &req.environment {
            if k.is_empty() || k.contains('=') {
                return Err(invalid(format!("environment: {k:?} is not a variable name")));
            }
            spec.environment.insert(k.clone(), v.clone());
        }
        let existing: Vec<DesiredService> = self
            .bus
            .list_desired(None)
            .await
            .map_err(unavailable)?
            .into_iter()
            .filter(|d| d.spec.as_ref().is_some_and(|s| s.name == req.service))
            .collect();
        if !existing.iter().any(|d| !d.absent && !d.hold) {
            return Err(Status::failed_precondition(format!(
                "service {:?} is not deployed: deploy it first",
                req.service
            )));
        }
        // The same cross-host reach as a deploy gives it.
        let everyone = self.bus.list_desired(None).await.map_err(unavailable)?;
        let mut placed: HashMap<String, Vec<String>> = HashMap::new();
        for d in everyone.iter().filter(|d| !d.absent) {
            if let Some(s) = &d.spec {
                placed.entry(s.name.clone()).or_default().push(d.host.clone());
            }
        }
        let mine = placed.get(&req.service).cloned().unwrap_or_default();
        let hosts = self.eligible_hosts().await?;
        reach_spec(&catalog, &hosts, &placed, &req.service, &mine, &mut spec);
        // Replicas stay as they are: a rollout changes the spec, not the count.
        spec.replicas = existing
            .iter()
            .filter(|d| !d.absent)
            .filter_map(|d| d.spec.as_ref())
            .map(|s| s.replicas.max(1))
            .sum();
        for c in contents {
            self.bus.put_secret(&c.key, c.content).await.map_err(unavailable)?;
        }
        let deadline = self.deadline(req.timeout_seconds);
        let deployment = nuid::next().to_string();
        let r = Reporter {
            name: &req.service,
            tier: &spec.tier,
            deployment: &deployment,
            tx: &tx,
        };
        let (update, back) = (convert::update_policy(svc, false), convert::update_policy(svc, true));
        if let Ok(Some(mut rec)) = self.bus.get_record(&spec.tier, &req.service).await {
            rec.update = Some(update.clone());
            rec.rollback = Some(back.clone());
            let _ = self.bus.put_record(&rec).await;
        }
        let outcome = self
            .roll_if_changed(&r, &existing, &spec, &update, &back, deadline)
            .await;
        let (ok, message) = match outcome {
            Ok(true) => (true, "rolled out".to_string()),
            Ok(false) => (true, "unchanged: every replica already runs this spec".to_string()),
            Err(e) => (false, e),
        };
        self.done(&r, ok, message).await;
        Ok(())
    }

    /// Undoes a rollout in progress or paused, or goes back to the previous
    /// revision, as the service's rollback_config says.
    #[tracing::instrument(name = "rollback", skip_all)]
    pub async fn rollback_service(
        &self,
        req: api::RollbackRequest,
        tx: mpsc::Sender<Result<api::DeployProgress, Status>>,
    ) -> Result<(), Status> {
        if req.service.is_empty() {
            return Err(invalid("service: must name a service"));
        }
        let records = self.bus.list_records().await.map_err(unavailable)?;
        let Some(record) = records.into_iter().find(|r| r.service == req.service) else {
            return Err(Status::failed_precondition(format!(
                "service {:?} is not deployed: nothing to roll back",
                req.service
            )));
        };
        let existing: Vec<DesiredService> = self
            .bus
            .list_desired(None)
            .await
            .map_err(unavailable)?
            .into_iter()
            .filter(|d| !d.absent && !d.hold && d.spec.as_ref().is_some_and(|s| s.name == req.service))
            .collect();
        let Some(first) = existing.first().and_then(|d| d.spec.clone()) else {
            return Err(Status::failed_precondition(format!(
                "service {:?} runs nowhere: nothing to roll back",
                req.service
            )));
        };
        let counts: BTreeMap<String, u32> = existing
            .iter()
            .map(|d| (d.host.clone(), d.spec.as_ref().map_or(1, |s| s.replicas.max(1))))
            .collect();
        let (update, back) = (
            record.update.clone().unwrap_or_default(),
            record.rollback.clone().unwrap_or_default(),
        );
        let deadline = self.deadline(req.timeout_seconds);
        let deployment = nuid::next().to_string();
        let r = Reporter {
            name: &req.service,
            tier: &record.tier,
            deployment: &deployment,
            tx: &tx,
        };
        // A rollout midway: take its updated replicas back.
        if let Some(prev) = existing.iter().find_map(|d| d.previous.clone()) {
            let updated: BTreeMap<String, u32> = existing.iter().map(|d| (d.host.clone(), d.updated)).collect();
            let at = rollout::done_from(&rollout::slots(&counts), &updated);
            self.event(
                EventKind::RollbackStarted,
                &req.service,
                &record.tier,
                &deployment,
                format!("{at} replicas"),
            )
            .await;
            let end = self.roll(&r, &first, &prev, &counts, at, 0, &back, deadline).await;
            let settled = self.settle(&r, &prev, &counts).await;
            if let Ok(Some(mut rec)) = self.bus.get_record(&record.tier, &req.service).await {
                rec.rollout = None;
                let _ = self.bus.put_record(&rec).await;
            }
            let (ok, msg) = match (end, settled) {
                (rollout::RollEnd::Done, Ok(())) => {
                    self.event(
                        EventKind::RollbackFinished,
                        &req.service,
                        &record.tier,
                        &deployment,
                        "back on the previous spec".into(),
                    )
                    .await;
                    (true, format!("rolled back {at} replicas to the previous spec"))
                }
                (rollout::RollEnd::Failed { why, .. }, _) => (false, format!("rollback failed: {why}")),
                (_, Err(e)) => (false, e),
            };
            self.done(&r, ok, msg).await;
            return Ok(());
        }
        let Some(target) = record.previous_spec.clone() else {
            return Err(Status::failed_precondition(format!(
                "{} has no previous revision to go back to (revision {} is its first)",
                req.service,
                record.revision.max(1)
            )));
        };
        let outcome = self
            .rollout(&r, &first, &target, &counts, 0, &back, &update, deadline, true)
            .await;
        let (ok, msg) = match outcome {
            Ok(()) => (
                true,
                format!("back on the previous revision (now revision {})", record.revision + 1),
            ),
            Err(e) => (false, e),
        };
        self.done(&r, ok, msg).await;
        Ok(())
    }

    fn deadline(&self, secs: u32) -> Duration {
        if secs > 0 {
            Duration::from_secs(u64::from(secs))
        } else {
            self.settings.deploy_timeout
        }
    }

    async fn done(&self, r: &Reporter<'_>, ok: bool, message: String) {
        let _ =
            r.tx.send(Ok(api::DeployProgress {
                deployment_id: r.deployment.to_owned(),
                service: r.name.to_owned(),
                tier: r.tier.to_owned(),
                phase: api::Phase::Done as i32,
                message,
                time: Some(infra_proto::now()),
                ready: u32::from(ok),
                failed: u32::from(!ok),
                ..Default::default()
            }))
            .await;
    }

    /// Sets a deployed service's replica count: places the new count by the
    /// service's rules (keeping replicas where they are), starts what is
    /// new, removes what is surplus, and streams progress to `tx` until
    /// every host has its share ready. The spec is the one last applied, not
    /// the catalog's: scaling never rolls out an edit.
    #[tracing::instrument(name = "scale", skip_all)]
    pub async fn scale(
        &self,
        req: api::ScaleRequest,
        tx: mpsc::Sender<Result<api::DeployProgress, Status>>,
    ) -> Result<(), Status> {
        if req.service.is_empty() {
            return Err(invalid("service: must name a service"));
        }
        if req.replicas > self.settings.max_replicas {
            return Err(invalid(format!(
                "replicas: {} is more than one service may have here (max_replicas = {} in the coordinator's \
                 configuration); nothing was changed",
                req.replicas, self.settings.max_replicas
            )));
        }
        let records = self.bus.list_records().await.map_err(unavailable)?;
        let Some(record) = records.into_iter().find(|r| r.service == req.service) else {
            return Err(Status::failed_precondition(format!(
                "service {:?} is not deployed: deploy it first",
                req.service
            )));
        };
        let (Some(spec), Some(rules)) = (record.spec.clone(), record.rules.clone()) else {
            return Err(Status::failed_precondition(format!(
                "service {:?} was deployed by an older coordinator: deploy it again to scale it",
                req.service
            )));
        };
        if rules.global {
            return Err(Status::failed_precondition(format!(
                "{} is global (deploy.mode: global): it runs one replica on every eligible host, so it cannot be \
                 scaled; change its placement constraints instead",
                req.service
            )));
        }
        let desired = self.bus.list_desired(None).await.map_err(unavailable)?;
        let existing: Vec<DesiredService> = desired
            .into_iter()
            .filter(|d| d.spec.as_ref().is_some_and(|s| s.name == req.service))
            .collect();
        let now: u32 = existing
            .iter()
            .filter(|d| !d.absent)
            .filter_map(|d| d.spec.as_ref())
            .map(|s| s.replicas.max(1))
            .sum();
        if rules.stateful && req.replicas != now {
            let volumes: Vec<&str> = spec
                .mounts
                .iter()
                .filter(|m| m.kind() == infra_proto::bus::v1::MountKind::Volume)
                .map(|m| m.source.as_str())
                .collect();
            return Err(Status::failed_precondition(format!(
                "{} keeps its state in named volumes ({}): the {} operator does not know how to scale it (a new \
                 replica would start on an empty volume of its own); scale a clustered service by its members",
                req.service,
                volumes.join(", "),
                spec.tier
            )));
        }
        let deadline = if req.timeout_seconds > 0 {
            Duration::from_secs(u64::from(req.timeout_seconds))
        } else {
            self.settings.deploy_timeout
        };
        let deployment = nuid::next().to_string();
        let mut spec = spec;
        spec.replicas = req.replicas;
        let (update, back) = (
            record.update.clone().unwrap_or_default(),
            record.rollback.clone().unwrap_or_default(),
        );
        let mut p = Prepared {
            spec,
            rules,
            outcome: Outcome::default(),
            existing,
            update,
            back,
        };
        if req.replicas == 0 {
            // Nothing to place: take it off every host, keep the record.
            self.claim(&req.service).cancel();
            for d in p.existing.iter().filter(|d| !d.absent) {
                let mut gone = d.clone();
                gone.absent = true;
                gone.remove_volumes = false;
                gone.generation += 1;
                gone.deployment_id.clone_from(&deployment);
                self.bus.put_desired(&gone).await.map_err(unavailable)?;
            }
            let mut r = record;
            r.replicas = 0;
            r.placement.clear();
            r.pending_replicas = 0;
            r.pending_reason.clear();
            r.updated_at = Some(infra_proto::now());
            r.deployment_id.clone_from(&deployment);
            self.bus.put_record(&r).await.map_err(unavailable)?;
            self.event(
                EventKind::ServiceScaled,
                &req.service,
                &p.spec.tier,
                &deployment,
                format!("{now} -> 0"),
            )
            .await;
            let _ = tx
                .send(Ok(api::DeployProgress {
                    deployment_id: deployment,
                    service: req.service.clone(),
                    tier: p.spec.tier.clone(),
                    phase: api::Phase::Done as i32,
                    message: format!("scaled {now} -> 0"),
                    time: Some(infra_proto::now()),
                    ..Default::default()
                }))
                .await;
            return Ok(());
        }
        let hosts = self.eligible_hosts().await?;
        let parsed = Rules::from_spec(&p.spec.tier, req.replicas, &p.rules)
            .map_err(invalid)?
            .reserving(placement::Reservation::of(&p.spec));
        let others = self.bus.list_records().await.map_err(unavailable)?;
        let all_desired = self.bus.list_desired(None).await.map_err(unavailable)?;
        let mut usage = Usage {
            reserved: placement::reserved_by_others(&all_desired, &req.service),
            ..Usage::default()
        };
        for r in others.iter().filter(|r| r.service != req.service) {
            let per = r.rules.as_ref().map_or(0, |x| x.gpus);
            for (h, n) in &r.placement {
                if r.tier == p.spec.tier {
                    *usage.tier_load.entry(h.clone()).or_default() += 1;
                }
                *usage.gpus_used.entry(h.clone()).or_default() += per * n;
            }
        }
        p.outcome = placement::place(&parsed, &hosts, &p.current(), &usage);
        if p.outcome.short_of_room {
            return Err(Status::failed_precondition(format!(
                "{} cannot have {} replicas: {}; nothing was changed",
                req.service, req.replicas, p.outcome.reason
            )));
        }
        // This call now owns the service's count: an earlier Scale still
        // waiting for its own count stops.
        let superseded = self.claim(&req.service);
        self.event(
            EventKind::ServiceScaled,
            &req.service,
            &p.spec.tier,
            &deployment,
            format!("{now} -> {} (hosts {})", req.replicas, p.hosts_label()),
        )
        .await;
        let tier = p.spec.tier.clone();
        let step = Step {
            name: &req.service,
            deps: Vec::new(),
            deadline,
            wait_limit: Duration::ZERO,
            deployment: &deployment,
            board: Arc::new(watch::channel(Board::new()).0),
            graph: None,
            tx: &tx,
            until_completed: false,
        };
        let outcome = tokio::select! {
            o = self.deploy_one(step, p) => Some(o),
            () = superseded.cancelled() => None,
        };
        let ok = matches!(outcome, Some(Progress::Healthy | Progress::Completed));
        let message = match outcome {
            Some(_) => format!("scaled {now} -> {}", req.replicas),
            None => format!(
                "superseded: a newer Scale of {} took over before {} replicas were ready",
                req.service, req.replicas
            ),
        };
        let _ = tx
            .send(Ok(api::DeployProgress {
                deployment_id: deployment,
                service: req.service.clone(),
                tier,
                phase: api::Phase::Done as i32,
                message,
                time: Some(infra_proto::now()),
                ready: u32::from(ok),
                failed: u32::from(!ok),
                ..Default::default()
            }))
            .await;
        Ok(())
    }

    /// Hosts and their operators.
    pub async fn hosts(&self) -> Result<api::ListHostsResponse, Status> {
        let mut by_host: BTreeMap<String, api::HostInfo> = BTreeMap::new();
        for hb in self.heartbeats().await? {
            let h = by_host.entry(hb.host.clone()).or_insert_with(|| api::HostInfo {
                host: hb.host.clone(),
                ..Default::default()
            });
            let mut labels = hb.labels.clone();
            let metrics_addr = labels
                .remove(operator_core::metrics::HEARTBEAT_LABEL)
                .unwrap_or_default();
            h.labels.extend(labels);
            h.operators.push(api::OperatorInfo {
                tier: hb.tier.clone(),
                version: hb.version.clone(),
                last_heartbeat: hb.sent_at,
                started_at: hb.started_at,
                grpc_addr: hb.grpc_addr.clone(),
                services: hb.services,
                metrics_addr,
            });
        }
        for st in self.host_states().await.into_values() {
            let h = by_host.entry(st.host.clone()).or_insert_with(|| api::HostInfo {
                host: st.host.clone(),
                ..Default::default()
            });
            h.state = if st.lost { "lost" } else { "drained" }.into();
        }
        for h in by_host.values_mut() {
            h.operators.sort_by(|a, b| a.tier.cmp(&b.tier));
            if h.state.is_empty() {
                h.state = "active".into();
            }
        }
        Ok(api::ListHostsResponse {
            hosts: by_host.into_values().collect(),
        })
    }

    /// Services of the catalog (every one, when the selection is empty),
    /// with where they run.
    pub async fn list(&self, sel: Option<&api::Selection>) -> Result<api::ListServicesResponse, Status> {
        let catalog = self.load()?;
        let names: BTreeSet<String> = match sel {
            Some(s) if *s != api::Selection::default() => self.resolve(&catalog, Some(s))?.0,
            _ => catalog.services.keys().cloned().collect(),
        };
        let observed = self.cache.all().await;
        let records: HashMap<String, ServiceRecord> = self
            .bus
            .list_records()
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(|r| (r.service.clone(), r))
            .collect();
        let mut out = Vec::new();
        for n in names {
            let rec = records.get(&n);
            let svc = &catalog.services[&n];
            let here: Vec<&ObservedService> = observed.iter().filter(|o| o.service == n).collect();
            out.push(api::ServiceSummary {
                name: n.clone(),
                tier: svc.tier.as_str().to_owned(),
                image: svc.image.clone().unwrap_or_default(),
                depends_on: svc.depends_on.iter().map(|d| d.service.clone()).collect(),
                profiles: svc.profiles.clone(),
                hosts: here.iter().map(|o| o.host.clone()).collect(),
                health: here.first().map_or(Health::Unspecified as i32, |o| o.health),
                replicas: rec.map_or(svc.replicas(), |r| r.replicas),
                revision: rec.map_or(0, |r| r.revision),
                rollout: rec
                    .and_then(|r| r.rollout.as_ref())
                    .map(|r| r.phase.clone())
                    .unwrap_or_default(),
            });
        }
        Ok(api::ListServicesResponse { services: out })
    }

    /// One service in full.
    pub async fn describe(&self, name: &str) -> Result<api::DescribeServiceResponse, Status> {
        if name.is_empty() {
            return Err(invalid("name: must name a service"));
        }
        let catalog = self.load()?;
        let svc = catalog.services.get(name).ok_or_else(|| {
            Status::not_found(format!(
                "name: no service {name:?} in the catalog at {}",
                catalog.root.display()
            ))
        })?;
        let summary = self
            .list(Some(&api::Selection {
                services: vec![name.to_owned()],
                ..Default::default()
            }))
            .await?;
        let summary = summary.services.into_iter().find(|s| s.name == name);
        let dependents = catalog
            .services
            .values()
            .filter(|s| s.depends_on.iter().any(|d| d.service == name))
            .map(|s| s.name.clone())
            .collect();
        let (spec, _) = convert::to_spec(&catalog, &self.settings.project, svc, &Self::env()).map_err(invalid)?;
        Ok(api::DescribeServiceResponse {
            summary,
            dependencies: spec
                .depends_on
                .iter()
                .map(|d| api::Dependency {
                    service: d.service.clone(),
                    tier: d.tier.clone(),
                    condition: d.condition,
                    required: d.required,
                })
                .collect(),
            dependents,
            source_file: svc.file.display().to_string(),
            source_line: svc.line as u32,
            unsupported_keys: convert::unsupported_keys(svc),
            // From the heartbeats: the gRPC layer fills them (service.rs).
            members: Vec::new(),
            spec: Some(spec),
            observed: self
                .cache
                .all()
                .await
                .into_iter()
                .filter(|o| o.service == name)
                .collect(),
        })
    }
}

/// Label of a host that holds its private address: the address other
/// hosts reach it on (never a public one).
pub const ADDR_LABEL: &str = "addr";

/// Cross-host reach, when the hosts say their private addresses (label
/// [`ADDR_LABEL`]):
///
/// - a service that others depend on publishes the ports it listens on
///   (`expose`, and the targets of `ports`) on its host's private address
///   only (`@addr`, which each operator replaces with its own), so it is
///   reachable from the other hosts and not beyond them;
/// - a service with a dependency placed on another host gets an
///   `extra_hosts` entry that maps the dependency's name to that host's
///   private address (`@host:<name>`, resolved by the operator from the
///   heartbeats), so it reaches it by the same name it uses on one host.
///
/// Both placeholders keep one spec for every host of a service, so a
/// rollout compares one spec hash everywhere. With no `addr` label on any
/// host (one host) nothing changes: Docker's DNS does it all.
fn cross_host_reach(catalog: &Catalog, hosts: &[placement::HostView], prepared: &mut [(String, Prepared)]) {
    let placed: HashMap<String, Vec<String>> = prepared
        .iter()
        .map(|(n, p)| (n.clone(), p.outcome.hosts.keys().cloned().collect()))
        .collect();
    for (name, p) in prepared.iter_mut() {
        let mine: Vec<String> = p.outcome.hosts.keys().cloned().collect();
        reach_spec(catalog, hosts, &placed, name, &mine, &mut p.spec);
    }
}

/// [`cross_host_reach`] for one service's spec, with `placed` the hosts of
/// every service and `mine` those of this one.
fn reach_spec(
    catalog: &Catalog,
    hosts: &[placement::HostView],
    placed: &HashMap<String, Vec<String>>,
    name: &str,
    mine: &[String],
    spec: &mut ServiceSpec,
) {
    let with_addr: BTreeSet<&str> = hosts
        .iter()
        .filter(|h| h.labels.get(ADDR_LABEL).is_some_and(|a| !a.is_empty()))
        .map(|h| h.name.as_str())
        .collect();
    if with_addr.is_empty() {
        return;
    }
    let Some(svc) = catalog.services.get(name) else { return };
    // Cluster members (etcd-1..3, pg-0..2) are written as single-replica
    // services of one Compose file that reach each other by name without
    // any `depends_on` among them. Only single-replica services count, so
    // a published port never has two replicas on one host; and only those
    // with ports to reach (`expose`), so a stack of unrelated
    // single services keeps its specs.
    let peers: Vec<&str> = if spec.replicas.max(1) == 1 && mine.len() <= 1 {
        catalog
            .services
            .values()
            .filter(|s| s.name != name && s.file == svc.file && !expose_ports(s).is_empty())
            .filter(|s| {
                placed
                    .get(&s.name)
                    .is_some_and(|h| h.len() == 1 && !mine.contains(&h[0]))
            })
            .map(|s| s.name.as_str())
            .collect()
    } else {
        Vec::new()
    };
    let needed = catalog
        .services
        .values()
        .any(|s| s.depends_on.iter().any(|d| d.service == name));
    // What its peers reach: its `expose` entries (the targets of `ports`
    // are published already, and publishing them again would take a port
    // another member publishes on this host).
    let to_publish = if needed {
        convert::service_ports(svc)
    } else if !peers.is_empty() {
        expose_ports(svc)
    } else {
        Vec::new()
    };
    {
        for (port, proto) in to_publish {
            let have = spec.ports.iter().any(|x| {
                x.published == u32::from(port) && (x.protocol == proto || x.protocol.is_empty() && proto == "tcp")
            });
            if !have {
                spec.ports.push(infra_proto::bus::v1::PortSpec {
                    host_ip: "@addr".into(),
                    published: u32::from(port),
                    target: u32::from(port),
                    protocol: proto,
                });
            }
        }
    }
    for d in &svc.depends_on {
        let Some(dep_hosts) = placed.get(&d.service) else {
            continue;
        };
        let Some(dh) = dep_hosts.iter().find(|h| with_addr.contains(h.as_str())) else {
            continue;
        };
        // Only when some replica runs where the dependency does not.
        if mine.iter().all(|h| dep_hosts.contains(h)) {
            continue;
        }
        let entry = format!("{}:@host:{dh}", d.service);
        if !spec.extra_hosts.contains(&entry) {
            spec.extra_hosts.push(entry);
        }
    }
    for peer in peers {
        let Some(ph) = placed.get(peer).and_then(|h| h.first()) else {
            continue;
        };
        if !with_addr.contains(ph.as_str()) {
            continue;
        }
        let entry = format!("{peer}:@host:{ph}");
        if !spec.extra_hosts.contains(&entry) {
            spec.extra_hosts.push(entry);
        }
    }
}

/// A service's `expose` entries as (port, protocol): what the other members
/// of its stack reach it on.
fn expose_ports(svc: &infra_compose::Service) -> Vec<(u16, String)> {
    let mut out: Vec<(u16, String)> = svc
        .expose
        .iter()
        .filter_map(|e| {
            let (port, proto) = e.split_once('/').unwrap_or((e.as_str(), "tcp"));
            Some((port.trim().parse().ok()?, proto.trim().to_lowercase()))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `min_severity` of a lint request: empty means every finding.
pub fn parse_min_severity(s: &str) -> Result<Severity, Status> {
    if s.is_empty() {
        return Ok(Severity::Info);
    }
    s.parse().map_err(|e| invalid(format!("min_severity: {e}")))
}

/// The lint findings of `names` (all services when `None`) at `min` or
/// worse, as the API returns them.
pub fn lint_response(catalog: &Catalog, names: Option<&BTreeSet<String>>, min: Severity) -> api::LintResponse {
    let findings: Vec<api::LintFinding> = infra_compose::lint(catalog)
        .into_iter()
        .filter(|f| f.severity.is_at_least(min))
        .filter(|f| match (names, &f.service) {
            (Some(n), Some(s)) => n.contains(s),
            _ => true,
        })
        .map(|f| api::LintFinding {
            rule: f.rule.id().to_owned(),
            severity: f.severity.as_str().to_owned(),
            file: f.file.display().to_string(),
            line: u32::try_from(f.line).unwrap_or(u32::MAX),
            service: f.service.unwrap_or_default(),
            message: f.message,
            why: f.why.to_owned(),
        })
        .collect();
    let count = |sev: Severity| findings.iter().filter(|f| f.severity == sev.as_str()).count() as u32;
    api::LintResponse {
        errors: count(Severity::Error),
        warnings: count(Severity::Warning),
        findings,
    }
}

/// The line of `profile` in the named selection `named` of selections.yml.
fn selections_line(file: &std::path::Path, named: &str, profile: &str) -> Option<usize> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut inside = false;
    let mut header = None;
    for (i, line) in text.lines().enumerate() {
        if !line.starts_with([' ', '\t', '#']) && !line.trim().is_empty() {
            inside = line.trim_end().strip_suffix(':') == Some(named);
            if inside {
                header = Some(i + 1);
            }
            continue;
        }
        if inside && line.contains(profile) && !line.trim_start().starts_with('#') {
            return Some(i + 1);
        }
    }
    header
}

fn cond_name(c: DependencyCondition) -> &'static str {
    match c {
        DependencyCondition::ServiceStarted => "service_started",
        DependencyCondition::ServiceHealthy => "service_healthy",
        DependencyCondition::ServiceCompletedSuccessfully => "service_completed_successfully",
    }
}

/// Names of the spec fields that differ, for the plan.
fn diff(old: &ServiceSpec, new: &ServiceSpec) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |cond: bool, name: &str| {
        if cond {
            out.push(name.to_owned());
        }
    };
    check(old.image != new.image, "image");
    check(old.command != new.command, "command");
    check(old.entrypoint != new.entrypoint, "entrypoint");
    check(old.environment != new.environment, "environment");
    check(old.ports != new.ports, "ports");
    check(old.mounts != new.mounts, "volumes");
    check(old.networks != new.networks, "networks");
    check(old.healthcheck != new.healthcheck, "healthcheck");
    check(old.restart != new.restart, "restart");
    check(old.labels != new.labels, "labels");
    check(old.secrets != new.secrets, "secrets");
    check(old.user != new.user, "user");
    check(old.read_only != new.read_only, "read_only");
    check(old.security_opt != new.security_opt, "security_opt");
    check(
        old.cap_add != new.cap_add || old.cap_drop != new.cap_drop,
        "capabilities",
    );
    check(old.replicas != new.replicas, "deploy.replicas");
    check(old.resources != new.resources, "deploy.resources");
    check(old.depends_on != new.depends_on, "depends_on");
    if out.is_empty() && operator_core::spec::spec_hash(old) != operator_core::spec::spec_hash(new) {
        out.push("other".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use infra_proto::bus::v1::ContainerStatus;

    use super::*;

    fn spec(replicas: u32) -> ServiceSpec {
        ServiceSpec {
            name: "s".into(),
            tier: "data".into(),
            image: "i".into(),
            replicas,
            ..Default::default()
        }
    }

    fn observed(hash: &str, health: Health, hashes: &[&str], running: u32) -> ObservedService {
        ObservedService {
            spec_hash: hash.into(),
            health: health as i32,
            running_replicas: running,
            containers: hashes
                .iter()
                .map(|h| ContainerStatus {
                    spec_hash: (*h).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn readiness_needs_every_replica_on_the_new_spec() {
        let s = spec(2);
        let h = "new";
        // The old containers being healthy does not count.
        assert_eq!(
            progress_of(&observed("old", Health::Healthy, &["old", "old"], 2), &s, h, 0),
            Progress::Waiting
        );
        assert_eq!(
            progress_of(&observed(h, Health::Healthy, &[h, "old"], 2), &s, h, 0),
            Progress::Waiting
        );
        assert_eq!(
            progress_of(&observed(h, Health::Starting, &[h, h], 1), &s, h, 0),
            Progress::Started
        );
        assert_eq!(
            progress_of(&observed(h, Health::Healthy, &[h, h], 2), &s, h, 0),
            Progress::Healthy
        );
        assert_eq!(
            progress_of(&observed(h, Health::Failed, &[], 0), &s, h, 0),
            Progress::Failed
        );
        assert_eq!(
            progress_of(&observed(h, Health::Completed, &[h, h], 0), &s, h, 0),
            Progress::Completed
        );
    }

    #[test]
    fn a_report_about_an_older_write_does_not_count_even_when_it_looks_done() {
        let s = spec(2);
        let h = "new";
        let mut o = observed(h, Health::Healthy, &[h, h], 2);
        o.generation = 6;
        assert_eq!(progress_of(&o, &s, h, 7), Progress::Waiting);
        // Not even a failure: it may be the old write's.
        o.health = Health::Failed as i32;
        assert_eq!(progress_of(&o, &s, h, 7), Progress::Waiting);
        o.generation = 7;
        assert_eq!(progress_of(&o, &s, h, 7), Progress::Failed);
    }

    #[test]
    fn conditions_are_met_as_compose_defines_them() {
        use DependencyCondition::*;
        assert!(meets(Progress::Started, ServiceStarted));
        assert!(!meets(Progress::Started, ServiceHealthy));
        assert!(meets(Progress::Healthy, ServiceHealthy));
        assert!(!meets(Progress::Healthy, ServiceCompletedSuccessfully));
        assert!(meets(Progress::Completed, ServiceCompletedSuccessfully));
        assert!(!meets(Progress::Failed, ServiceStarted));
    }

    #[test]
    fn the_plan_diff_names_the_fields_that_changed() {
        let a = spec(1);
        let mut b = a.clone();
        b.image = "j".into();
        b.replicas = 3;
        b.environment.insert("K".into(), "V".into());
        assert_eq!(diff(&a, &b), vec!["image", "environment", "deploy.replicas"]);
        assert!(diff(&a, &a).is_empty());
    }
}

#[cfg(test)]
mod reach_tests {
    use super::*;

    /// A catalog of one stack file: etcd-1 and etcd-2 (peers, no
    /// depends_on between them) and a client that depends on etcd-1.
    fn catalog(dir: &std::path::Path) -> Catalog {
        let file = dir.join("docker-compose.yml");
        std::fs::write(
            &file,
            "services:\n  etcd-1:\n    image: e\n    expose: [\"2379\", \"2380\"]\n  etcd-2:\n    image: e\n    expose: [\"2379\", \"2380\"]\n  client:\n    image: c\n    deploy:\n      replicas: 2\n    depends_on: [etcd-1]\n",
        )
        .unwrap();
        infra_compose::load_files(&[(file, Tier::Data)], &LoadOptions::default()).unwrap()
    }

    fn hosts(with_addr: bool) -> Vec<placement::HostView> {
        ["h1", "h2"]
            .iter()
            .map(|h| placement::HostView {
                name: (*h).into(),
                labels: if with_addr {
                    [(ADDR_LABEL.to_string(), format!("10.0.0.{}", &h[1..]))].into()
                } else {
                    BTreeMap::new()
                },
                tiers: BTreeSet::new(),
            })
            .collect()
    }

    fn spec_of(name: &str, replicas: u32) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            replicas,
            ..Default::default()
        }
    }

    fn placed(pairs: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(n, hs)| ((*n).into(), hs.iter().map(|h| (*h).to_string()).collect()))
            .collect()
    }

    #[test]
    fn members_of_one_stack_on_other_hosts_reach_each_other_by_name_and_publish_their_peer_ports() {
        let dir = tempfile::tempdir().unwrap();
        let cat = catalog(dir.path());
        let where_ = placed(&[("etcd-1", &["h1"]), ("etcd-2", &["h2"]), ("client", &["h1", "h2"])]);
        let mut s = spec_of("etcd-2", 1);
        reach_spec(&cat, &hosts(true), &where_, "etcd-2", &["h2".into()], &mut s);
        assert_eq!(s.extra_hosts, vec!["etcd-1:@host:h1".to_string()]);
        let published: Vec<(String, u32)> = s.ports.iter().map(|p| (p.host_ip.clone(), p.published)).collect();
        assert_eq!(published, vec![("@addr".into(), 2379), ("@addr".into(), 2380)]);
        // A multi-replica service of the same file is not a cluster member:
        // it keeps the depends_on reach only.
        let mut c = spec_of("client", 2);
        reach_spec(
            &cat,
            &hosts(true),
            &where_,
            "client",
            &["h1".into(), "h2".into()],
            &mut c,
        );
        assert_eq!(c.extra_hosts, vec!["etcd-1:@host:h1".to_string()]);
        assert!(c.ports.is_empty(), "{:?}", c.ports);
    }

    #[test]
    fn single_services_of_one_stack_with_nothing_to_reach_keep_their_specs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("docker-compose.yml");
        std::fs::write(&file, "services:\n  db:\n    image: d\n  cache:\n    image: c\n").unwrap();
        let cat = infra_compose::load_files(&[(file, Tier::Data)], &LoadOptions::default()).unwrap();
        let where_ = placed(&[("db", &["h2"]), ("cache", &["h1"])]);
        let mut s = spec_of("db", 1);
        reach_spec(&cat, &hosts(true), &where_, "db", &["h2".into()], &mut s);
        assert_eq!(s, spec_of("db", 1));
    }

    #[test]
    fn a_member_with_published_ports_does_not_publish_their_targets_again_on_the_private_address() {
        // pg-router publishes 15432:5432 on host1, where pg-0 publishes
        // 5432 on the private address: the router must not take it too.
        let dir = tempfile::tempdir().unwrap();
        let cat = catalog(dir.path());
        let file = dir.path().join("docker-compose.yml");
        let text = std::fs::read_to_string(&file).unwrap() + "  router:\n    image: r\n    ports: [\"15432:5432\"]\n";
        std::fs::write(&file, text).unwrap();
        drop(cat);
        let cat = infra_compose::load_files(&[(file, Tier::Data)], &LoadOptions::default()).unwrap();
        let where_ = placed(&[("etcd-1", &["h1"]), ("etcd-2", &["h2"]), ("router", &["h1"])]);
        let mut s = spec_of("router", 1);
        reach_spec(&cat, &hosts(true), &where_, "router", &["h1".into()], &mut s);
        assert!(s.ports.is_empty(), "{:?}", s.ports);
        assert_eq!(s.extra_hosts, vec!["etcd-2:@host:h2".to_string()]);
    }

    #[test]
    fn on_one_host_or_with_members_together_the_spec_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let cat = catalog(dir.path());
        let apart = placed(&[("etcd-1", &["h1"]), ("etcd-2", &["h2"])]);
        let mut s = spec_of("etcd-2", 1);
        reach_spec(&cat, &hosts(false), &apart, "etcd-2", &["h2".into()], &mut s);
        assert_eq!(s, spec_of("etcd-2", 1), "no addr label: nothing changes");
        let together = placed(&[("etcd-1", &["h1"]), ("etcd-2", &["h1"])]);
        let mut s = spec_of("etcd-2", 1);
        reach_spec(&cat, &hosts(true), &together, "etcd-2", &["h1".into()], &mut s);
        assert_eq!(s, spec_of("etcd-2", 1), "peers on the same host use Docker's DNS");
    }
}

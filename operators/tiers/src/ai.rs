//! The ai tier: the host's GPUs (NVML) as host facts, and the models
//! declared for Ollama pulled once it is healthy.
//!
//! # GPUs
//!
//! The coordinator places a service that reserves GPUs only on a host whose
//! heartbeats say `gpus >= n` (a configured label `gpus` wins over the
//! fact). This extension reads the GPUs through NVML ([`GpuSource`]) and
//! publishes `gpus` (the count) and, per GPU, `gpu.<i>.model`,
//! `gpu.<i>.memory_bytes`, `gpu.<i>.memory_used_bytes` and
//! `gpu.<i>.utilization_percent`, refreshed every [`GPU_REFRESH`]. NVML is
//! loaded at run time: a host without NVIDIA's library reports `gpus=0`
//! once and the operator goes on.
//!
//! # Models
//!
//! A service with the label [`OLLAMA_MODELS_LABEL`] (the coordinator sets it
//! from `x-ollama-models`) gets those models pulled through Ollama's HTTP
//! API (`GET /api/tags`, `POST /api/pull`) once its container is healthy.
//! Each model's state is a host fact (`ollama.<service>.<model>` =
//! `present` or `missing: <why>`) and a log line when it changes ("model
//! llama3.2:1b pulled", "model X missing").

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use hyper::Method;
use operator_core::{Extension, Facts, TierContext};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use infra_products::http::{Body, Http, HttpError};

/// This tier's extensions.
pub const EXTENSIONS: &[Extension] = &[gpus_extension, models_extension];

/// How often GPU facts are read again (memory used and utilisation move).
pub const GPU_REFRESH: Duration = Duration::from_secs(30);

/// The label listing the models to pull into an Ollama service,
/// comma-separated (see the coordinator's `convert::OLLAMA_MODELS_LABEL`).
pub const OLLAMA_MODELS_LABEL: &str = "io.infra.ollama.models";
/// Optional label with the port Ollama listens on in its container.
pub const OLLAMA_PORT_LABEL: &str = "io.infra.ollama.port";
/// Ollama's default port.
pub const OLLAMA_PORT: u16 = 11434;
/// How often declared models are checked again.
pub const MODELS_RESYNC: Duration = Duration::from_secs(30);
/// How long one pull may take (models are gigabytes).
pub const PULL_TIMEOUT: Duration = Duration::from_secs(3600);

/// One GPU as NVML reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuReading {
    /// Model name (`NVIDIA H100 80GB HBM3`).
    pub model: String,
    /// Total memory.
    pub memory_total_bytes: u64,
    /// Memory in use.
    pub memory_used_bytes: u64,
    /// GPU utilisation over NVML's last sample period, in percent.
    pub utilization_percent: u32,
}

/// Why GPUs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// NVIDIA's library (`libnvidia-ml.so`) is not on this host: no GPUs.
    #[error("no NVIDIA library: {0}")]
    NoLibrary(String),
    /// The library is there but NVML failed (driver not loaded, GPU lost).
    #[error("NVML: {0}")]
    Nvml(String),
}

/// Where GPU readings come from: NVML on a host, recorded values in tests.
pub trait GpuSource: Send + Sync {
    /// Every GPU now, in NVML's index order.
    fn read(&self) -> Result<Vec<GpuReading>, GpuError>;
}

/// The NVML reader.
pub struct NvmlSource(nvml_wrapper::Nvml);

impl NvmlSource {
    /// Loads NVML; [`GpuError::NoLibrary`] when the library is missing
    /// (quick: no GPU is touched).
    pub fn init() -> Result<Self, GpuError> {
        use nvml_wrapper::error::NvmlError;
        match nvml_wrapper::Nvml::init() {
            Ok(n) => Ok(Self(n)),
            Err(NvmlError::LibloadingError(e)) => Err(GpuError::NoLibrary(e.to_string())),
            Err(NvmlError::DriverNotLoaded) => Err(GpuError::NoLibrary("the NVIDIA driver is not loaded".into())),
            Err(e) => Err(GpuError::Nvml(e.to_string())),
        }
    }
}

impl GpuSource for NvmlSource {
    fn read(&self) -> Result<Vec<GpuReading>, GpuError> {
        let nvml = |e: nvml_wrapper::error::NvmlError| GpuError::Nvml(e.to_string());
        let n = self.0.device_count().map_err(nvml)?;
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
            let d = self.0.device_by_index(i).map_err(nvml)?;
            let mem = d.memory_info().map_err(nvml)?;
            out.push(GpuReading {
                model: d.name().map_err(nvml)?,
                memory_total_bytes: mem.total,
                memory_used_bytes: mem.used,
                // Some GPUs (MIG slices) do not report utilisation.
                utilization_percent: d.utilization_rates().map(|u| u.gpu).unwrap_or(0),
            });
        }
        Ok(out)
    }
}

/// Recorded readings, for tests and for hosts that stand in for GPU hosts.
#[derive(Clone, Debug, Default)]
pub struct RecordedGpus(pub Vec<GpuReading>);

impl GpuSource for RecordedGpus {
    fn read(&self) -> Result<Vec<GpuReading>, GpuError> {
        Ok(self.0.clone())
    }
}

/// The host facts of `gpus`: `gpus` = count, and per GPU its model,
/// memory and utilisation under `gpu.<index>.`.
pub fn gpu_facts(gpus: &[GpuReading]) -> BTreeMap<String, String> {
    let mut f = BTreeMap::from([(infra_bus::facts::GPUS.to_string(), gpus.len().to_string())]);
    for (i, g) in gpus.iter().enumerate() {
        f.insert(format!("gpu.{i}.model"), g.model.clone());
        f.insert(format!("gpu.{i}.memory_bytes"), g.memory_total_bytes.to_string());
        f.insert(format!("gpu.{i}.memory_used_bytes"), g.memory_used_bytes.to_string());
        f.insert(
            format!("gpu.{i}.utilization_percent"),
            g.utilization_percent.to_string(),
        );
    }
    f
}

fn gpus_extension(ctx: TierContext) -> futures::future::BoxFuture<'static, ()> {
    async move {
        match NvmlSource::init() {
            Ok(src) => run_gpus(Arc::new(src), ctx.facts, GPU_REFRESH, ctx.shutdown).await,
            Err(GpuError::NoLibrary(why)) => {
                tracing::info!(reason = %why, "no NVIDIA library: 0 GPUs");
                ctx.facts.set(infra_bus::facts::GPUS, "0");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read GPUs: reporting 0 GPUs");
                ctx.facts.set(infra_bus::facts::GPUS, "0");
            }
        }
    }
    .boxed()
}

/// Publishes `source`'s GPUs as facts now and every `every` until
/// `shutdown`. A failed read keeps the last facts (a GPU busy for a moment
/// is not a GPU gone) and is logged once until reads work again.
pub async fn run_gpus(source: Arc<dyn GpuSource>, facts: Facts, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut published = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let src = source.clone();
        match tokio::task::spawn_blocking(move || src.read()).await {
            Ok(Ok(gpus)) => {
                if !published {
                    tracing::info!(gpus = gpus.len(), "GPUs found through NVML");
                    published = true;
                }
                failing = false;
                for (k, v) in gpu_facts(&gpus) {
                    facts.set(k, v);
                }
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot read GPUs; keeping the last facts");
                }
                failing = true;
                if !published {
                    facts.set(infra_bus::facts::GPUS, "0");
                }
            }
            Err(e) => tracing::warn!(error = %e, "GPU reader panicked"),
        }
    }
}

/// Where one declared model stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelState {
    /// Ollama had it already.
    Present,
    /// Pulled now.
    Pulled,
    /// Not there, and the pull failed (the reason names no secret: Ollama
    /// takes none).
    Missing(String),
}

impl ModelState {
    /// The fact's value.
    pub fn fact(&self) -> String {
        match self {
            Self::Present | Self::Pulled => "present".into(),
            Self::Missing(why) => format!("missing: {why}"),
        }
    }
}

#[derive(Deserialize)]
struct Tags {
    #[serde(default)]
    models: Vec<Tag>,
}

#[derive(Deserialize)]
struct Tag {
    #[serde(default)]
    name: String,
    #[serde(default)]
    model: String,
}

#[derive(Deserialize)]
struct PullStatus {
    #[serde(default)]
    status: String,
    #[serde(default)]
    error: String,
}

/// `name` with Ollama's default tag: `nomic-embed-text` is
/// `nomic-embed-text:latest` in `/api/tags`.
fn canonical(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

/// The models from the label's value (comma-separated, blanks dropped).
pub fn declared_models(label: &str) -> Vec<String> {
    label
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Makes every model of `models` present in the Ollama at `base`
/// (`http://ip:11434`): lists what it has, pulls what is missing (one at a
/// time, `stream: false`), and says where each stands. Idempotent: models
/// present are not pulled again.
pub async fn ensure_models(
    http: &Http,
    pull: &Http,
    base: &str,
    models: &[String],
) -> Result<Vec<(String, ModelState)>, HttpError> {
    let url = format!("{base}/api/tags");
    let tags: Tags = http.json(Method::GET, &url, &[], None).await?;
    let have: std::collections::HashSet<String> = tags
        .models
        .iter()
        .flat_map(|t| [canonical(&t.name), canonical(&t.model)])
        .collect();
    let mut out = Vec::with_capacity(models.len());
    for m in models {
        if have.contains(&canonical(m)) {
            out.push((m.clone(), ModelState::Present));
            continue;
        }
        let url = format!("{base}/api/pull");
        let body = Body::Json(serde_json::json!({ "model": m, "stream": false }));
        let state = match pull.json::<PullStatus>(Method::POST, &url, &[], Some(body)).await {
            Ok(s) if s.error.is_empty() && s.status == "success" => ModelState::Pulled,
            Ok(s) if !s.error.is_empty() => ModelState::Missing(s.error),
            Ok(s) => ModelState::Missing(format!("pull ended with status {:?}", s.status)),
            Err(e) => ModelState::Missing(e.to_string()),
        };
        out.push((m.clone(), state));
    }
    Ok(out)
}

fn models_extension(ctx: TierContext) -> futures::future::BoxFuture<'static, ()> {
    async move {
        let http = Http::new(Duration::from_secs(10));
        let pull = Http::new(PULL_TIMEOUT);
        // Last reported state per (service, model): report changes only.
        let mut reported: BTreeMap<(String, String), String> = BTreeMap::new();
        let mut tick = tokio::time::interval(MODELS_RESYNC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let endpoints = ctx
                .docker
                .healthy_endpoints(&ctx.host, ctx.tier, OLLAMA_MODELS_LABEL)
                .await
                .unwrap_or_default();
            for ep in endpoints {
                let models = declared_models(ep.labels.get(OLLAMA_MODELS_LABEL).map_or("", String::as_str));
                if models.is_empty() {
                    continue;
                }
                let port = ep
                    .labels
                    .get(OLLAMA_PORT_LABEL)
                    .and_then(|p| p.parse::<u16>().ok())
                    .unwrap_or(OLLAMA_PORT);
                let base = format!("http://{}:{port}", ep.ip);
                let work = ensure_models(&http, &pull, &base, &models);
                let states = tokio::select! {
                    _ = ctx.shutdown.cancelled() => return,
                    r = work => r,
                };
                match states {
                    Ok(states) => {
                        for (model, state) in states {
                            report(&ctx.facts, &mut reported, &ep.service, &model, &state);
                        }
                    }
                    Err(e) => tracing::warn!(service = %ep.service, error = %e, "cannot list Ollama's models"),
                }
            }
        }
    }
    .boxed()
}

/// Sets the model's fact and logs when its state changed.
fn report(
    facts: &Facts,
    reported: &mut BTreeMap<(String, String), String>,
    service: &str,
    model: &str,
    state: &ModelState,
) {
    let value = state.fact();
    facts.set(format!("ollama.{service}.{model}"), value.clone());
    let key = (service.to_owned(), model.to_owned());
    if reported.get(&key) == Some(&value) {
        return;
    }
    match state {
        ModelState::Pulled => tracing::info!(service, model, "model {model} pulled"),
        ModelState::Present => tracing::info!(service, model, "model {model} present"),
        ModelState::Missing(why) => tracing::warn!(service, model, reason = %why, "model {model} missing"),
    }
    reported.insert(key, value);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use infra_test_support::fake_http as fake;

    fn h100(used: u64, util: u32) -> GpuReading {
        GpuReading {
            model: "NVIDIA H100 80GB HBM3".into(),
            memory_total_bytes: 85_520_809_984,
            memory_used_bytes: used,
            utilization_percent: util,
        }
    }

    #[test]
    fn two_recorded_gpus_become_a_count_and_per_gpu_model_memory_and_utilisation() {
        let src = RecordedGpus(vec![h100(1 << 30, 12), h100(0, 0)]);
        let f = gpu_facts(&src.read().unwrap());
        assert_eq!(f["gpus"], "2");
        assert_eq!(f["gpu.0.model"], "NVIDIA H100 80GB HBM3");
        assert_eq!(f["gpu.0.memory_bytes"], "85520809984");
        assert_eq!(f["gpu.0.memory_used_bytes"], "1073741824");
        assert_eq!(f["gpu.0.utilization_percent"], "12");
        assert_eq!(f["gpu.1.memory_used_bytes"], "0");
        assert_eq!(f.len(), 1 + 2 * 4);
    }

    #[test]
    fn no_gpus_is_the_fact_gpus_zero_and_nothing_else() {
        assert_eq!(gpu_facts(&[]), BTreeMap::from([("gpus".to_string(), "0".to_string())]));
    }

    #[test]
    fn without_nvidias_library_nvml_init_says_no_library_at_once() {
        // The machines here have no NVIDIA library; on a GPU host this
        // test only checks that init is quick.
        let t = std::time::Instant::now();
        let r = NvmlSource::init();
        assert!(t.elapsed() < Duration::from_secs(5));
        if !std::path::Path::new("/dev/nvidiactl").exists() {
            assert!(matches!(r, Err(GpuError::NoLibrary(_))), "{:?}", r.err());
        }
    }

    /// Readings that change between calls, then fail.
    struct Sequence(std::sync::Mutex<Vec<Result<Vec<GpuReading>, GpuError>>>);

    impl GpuSource for Sequence {
        fn read(&self) -> Result<Vec<GpuReading>, GpuError> {
            let mut v = self.0.lock().unwrap();
            if v.len() > 1 {
                return v.remove(0);
            }
            match &v[0] {
                Ok(g) => Ok(g.clone()),
                Err(e) => Err(GpuError::Nvml(e.to_string())),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn gpu_facts_are_refreshed_each_period_and_a_failed_read_keeps_the_last_ones() {
        let src = Arc::new(Sequence(std::sync::Mutex::new(vec![
            Ok(vec![h100(1, 10)]),
            Ok(vec![h100(2, 90)]),
            Err(GpuError::Nvml("GPU is lost".into())),
        ])));
        let facts = Facts::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_gpus(src, facts.clone(), Duration::from_secs(30), stop.clone()));
        let settle = || async {
            for _ in 0..20 {
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        settle().await;
        assert_eq!(facts.snapshot()["gpu.0.utilization_percent"], "10");
        tokio::time::sleep(Duration::from_secs(30)).await;
        settle().await;
        assert_eq!(facts.snapshot()["gpu.0.utilization_percent"], "90");
        tokio::time::sleep(Duration::from_secs(60)).await;
        settle().await;
        let f = facts.snapshot();
        assert_eq!(
            (f["gpus"].as_str(), f["gpu.0.utilization_percent"].as_str()),
            ("1", "90")
        );
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .unwrap()
            .unwrap();
    }

    /// A fake Ollama: `/api/tags` lists what it has; `/api/pull` adds the
    /// model unless its name starts with `nope`, which Ollama answers with
    /// its documented error body.
    async fn fake_ollama(have: &[&str]) -> (fake::Server, Arc<AtomicUsize>) {
        let models = Arc::new(std::sync::Mutex::new(
            have.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        ));
        let pulls = Arc::new(AtomicUsize::new(0));
        let p = pulls.clone();
        let server = fake::start(move |r| match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/api/tags") => {
                let list: Vec<_> = models
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|m| serde_json::json!({"name": m, "model": m, "size": 1, "digest": "x"}))
                    .collect();
                (200, serde_json::json!({ "models": list }).to_string())
            }
            ("POST", "/api/pull") => {
                p.fetch_add(1, Ordering::SeqCst);
                let body = r.json();
                assert_eq!(body["stream"], false, "pulls must not stream");
                let name = body["model"].as_str().unwrap_or_default().to_owned();
                if name.starts_with("nope") {
                    (500, r#"{"error":"pull model manifest: file does not exist"}"#.into())
                } else {
                    models.lock().unwrap().push(canonical(&name));
                    (200, r#"{"status":"success"}"#.into())
                }
            }
            _ => (404, r#"{"error":"not found"}"#.into()),
        })
        .await;
        (server, pulls)
    }

    #[tokio::test]
    async fn declared_models_missing_from_ollama_are_pulled_once_and_present_ones_are_left_alone() {
        let (ollama, pulls) = fake_ollama(&["nomic-embed-text:latest"]).await;
        let http = Http::new(Duration::from_secs(5));
        let models = declared_models("llama3.2:1b, nomic-embed-text");
        let states = ensure_models(&http, &http, &ollama.url, &models).await.unwrap();
        assert_eq!(
            states,
            vec![
                ("llama3.2:1b".to_string(), ModelState::Pulled),
                ("nomic-embed-text".to_string(), ModelState::Present),
            ]
        );
        assert_eq!(pulls.load(Ordering::SeqCst), 1);

        // A second pass pulls nothing.
        let states = ensure_models(&http, &http, &ollama.url, &models).await.unwrap();
        assert!(states.iter().all(|(_, s)| *s == ModelState::Present), "{states:?}");
        assert_eq!(pulls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_model_ollama_cannot_pull_is_reported_missing_with_ollamas_reason() {
        let (ollama, _) = fake_ollama(&[]).await;
        let http = Http::new(Duration::from_secs(5));
        let states = ensure_models(&http, &http, &ollama.url, &["nope:1b".to_string()])
            .await
            .unwrap();
        let ModelState::Missing(why) = &states[0].1 else {
            panic!("{states:?}")
        };
        assert!(why.contains("HTTP 500") && why.contains("file does not exist"), "{why}");

        let facts = Facts::default();
        let mut reported = BTreeMap::new();
        report(&facts, &mut reported, "ollama", "nope:1b", &states[0].1);
        assert!(facts.snapshot()["ollama.ollama.nope:1b"].starts_with("missing: "));
        report(&facts, &mut reported, "ollama", "llama3.2:1b", &ModelState::Pulled);
        assert_eq!(facts.snapshot()["ollama.ollama.llama3.2:1b"], "present");
    }

    #[tokio::test]
    async fn an_ollama_that_does_not_answer_is_an_error_naming_the_url() {
        let http = Http::new(Duration::from_secs(2));
        let e = ensure_models(&http, &http, "http://127.0.0.1:9", &["m".to_string()])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("GET http://127.0.0.1:9/api/tags"), "{e}");
    }
}

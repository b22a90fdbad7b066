//! Rolling updates and rollback through the real coordinator, operators,
//! NATS, Docker engine and grpcurl, on one host: a rollout moves every
//! replica batch by batch as `deploy.update_config` says, with never fewer
//! ready replicas than the order allows; a rollout to a spec whose health
//! check fails stops at its first batch and reverts by itself; a paused
//! rollout is undone by Rollback; Rollback goes back one revision.
//!
//! Rollouts across several hosts with a client sending requests the whole
//! time are in `tests/hosts.rs`. Images: `infra-local/nginx:1`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use infra_e2e::{Options, Platform, write};

fn platform(name: &str, catalog: &Path) -> Platform {
    let o = Options::over(name, catalog, &["gateway"]);
    Platform::start(o)
}

/// A web service of three replicas whose health check fails when
/// `BROKEN=1`, so a rollout can be made to fail with an environment change.
fn web(order: &str, failure_action: &str) -> String {
    format!(
        r#"services:
  web:
    image: infra-local/nginx:1
    environment:
      VERSION: "1"
    deploy:
      replicas: 3
      update_config:
        parallelism: 1
        order: {order}
        monitor: 1s
        failure_action: {failure_action}
      rollback_config:
        parallelism: 0
        monitor: 1s
    healthcheck:
      test: ["CMD-SHELL", "[ \"$$BROKEN\" != 1 ] && wget -q -O /dev/null http://127.0.0.1/"]
      interval: 1s
      timeout: 2s
      retries: 2
"#
    )
}

/// (name, VERSION, BROKEN, Docker health) of every web container.
fn replicas(p: &Platform) -> Vec<(String, String, String, String)> {
    let ids = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=io.infra.project={}", p.opts.project),
            "--filter",
            "label=io.infra.service=web",
        ])
        .output()
        .unwrap();
    let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
    let mut out = Vec::new();
    for id in ids.split_whitespace() {
        let o = Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{.Name}}|{{range .Config.Env}}{{.}},{{end}}|{{if .State.Health}}{{.State.Health.Status}}{{end}}",
                id,
            ])
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        let mut parts = line.split('|');
        let name = parts.next().unwrap_or("").trim_start_matches('/').to_owned();
        let env = parts.next().unwrap_or("");
        let var = |k: &str| {
            env.split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .unwrap_or("")
                .to_owned()
        };
        out.push((
            name,
            var("VERSION"),
            var("BROKEN"),
            parts.next().unwrap_or("").to_owned(),
        ));
    }
    out.sort();
    out
}

/// Counts, in the background, how many web containers answer HTTP at each
/// moment, and keeps the lowest count seen.
struct Watcher {
    stop: Arc<AtomicBool>,
    min: Arc<AtomicUsize>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(project: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let min = Arc::new(AtomicUsize::new(usize::MAX));
        let (s, m, project) = (stop.clone(), min.clone(), project.to_owned());
        let handle = std::thread::spawn(move || {
            let list = || {
                let ids = Command::new("docker")
                    .args([
                        "ps",
                        "-q",
                        "--filter",
                        &format!("label=io.infra.project={project}"),
                        "--filter",
                        "label=io.infra.service=web",
                    ])
                    .output()
                    .unwrap();
                let mut v: Vec<String> = String::from_utf8_lossy(&ids.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                v.sort();
                v
            };
            while !s.load(Ordering::SeqCst) {
                let ids = list();
                let serving = ids
                    .iter()
                    .filter(|id| {
                        Command::new("docker")
                            .args([
                                "exec",
                                id,
                                "sh",
                                "-c",
                                "[ \"$BROKEN\" != 1 ] && wget -q -O /dev/null http://127.0.0.1/",
                            ])
                            .stderr(std::process::Stdio::null())
                            .status()
                            .is_ok_and(|s| s.success())
                    })
                    .count();
                // Only a consistent sample counts: the same containers
                // before and after probing them.
                if list() == ids {
                    m.fetch_min(serving, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self {
            stop,
            min,
            handle: Some(handle),
        }
    }

    fn lowest(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.min.load(Ordering::SeqCst)
    }
}

fn phases(progress: &[serde_json::Value], phase: &str) -> Vec<String> {
    progress
        .iter()
        .filter(|m| m["phase"] == phase)
        .map(|m| m["message"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn revision(p: &Platform) -> u64 {
    let d = p.call("DescribeService", r#"{"name":"web"}"#);
    d[0]["summary"]["revision"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| d[0]["summary"]["revision"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_start_first_rollout_moves_one_replica_at_a_time_with_all_three_serving_and_rollback_goes_back_a_revision() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "01-gateway/web/docker-compose.yml",
        &web("start-first", "rollback"),
    );
    let p = platform("rollstart", dir.path());
    let progress = p.call("Deploy", r#"{"timeoutSeconds":60}"#);
    assert_eq!(progress.last().unwrap()["ready"], 1, "{progress:#?}");
    assert_eq!(revision(&p), 1);
    let before = replicas(&p);
    assert_eq!(before.len(), 3, "{before:?}");

    let watch = Watcher::start(&p.opts.project);
    let progress = p.call(
        "Rollout",
        r#"{"service":"web","environment":{"VERSION":"2"},"timeoutSeconds":60}"#,
    );
    let lowest = watch.lowest();
    let done = progress.last().unwrap();
    assert_eq!(done["ready"], 1, "{progress:#?}");
    let batches = phases(&progress, "PHASE_UPDATING");
    assert_eq!(batches.len(), 3, "one batch per replica: {batches:#?}");
    assert!(batches[0].starts_with("batch 1 of 3:"), "{batches:?}");
    // Start-first: a new container was ready before each old one stopped.
    assert!(lowest >= 3, "only {lowest} replicas served at one point");
    let after = replicas(&p);
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(
        after.iter().all(|r| r.1 == "2"),
        "every replica on VERSION=2: {after:?}"
    );
    assert_eq!(revision(&p), 2);

    // Rollback: one call, back to revision 1's spec, as a new revision.
    let progress = p.call("Rollback", r#"{"service":"web","timeoutSeconds":60}"#);
    assert_eq!(progress.last().unwrap()["ready"], 1, "{progress:#?}");
    let back = replicas(&p);
    assert_eq!(back.len(), 3, "{back:?}");
    assert!(back.iter().all(|r| r.1 == "1"), "every replica on VERSION=1: {back:?}");
    assert_eq!(revision(&p), 3);
}

#[test]
fn a_rollout_whose_health_check_fails_stops_at_the_first_batch_and_reverts_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "01-gateway/web/docker-compose.yml",
        &web("stop-first", "rollback"),
    );
    let p = platform("rollfail", dir.path());
    let progress = p.call("Deploy", r#"{"timeoutSeconds":60}"#);
    assert_eq!(progress.last().unwrap()["ready"], 1, "{progress:#?}");
    let names: Vec<String> = replicas(&p).into_iter().map(|r| r.0).collect();

    let watch = Watcher::start(&p.opts.project);
    let progress = p.call(
        "Rollout",
        r#"{"service":"web","environment":{"BROKEN":"1"},"timeoutSeconds":30}"#,
    );
    let lowest = watch.lowest();
    let done = progress.last().unwrap();
    assert_eq!(done["failed"], 1, "{progress:#?}");
    assert!(
        done["message"].as_str().unwrap().contains("rolled back"),
        "{progress:#?}"
    );
    // Only the first batch was tried.
    let tried = phases(&progress, "PHASE_UPDATING");
    assert_eq!(tried.len(), 1, "{tried:#?}");
    assert!(tried[0].contains("unhealthy"), "{tried:?}");
    // Stop-first with parallelism 1: never fewer than 3 - 1 serving.
    assert!(lowest >= 2, "only {lowest} replicas served at one point");
    // Every replica is back on the old spec; the untouched ones were never
    // restarted.
    let after = replicas(&p);
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.iter().all(|r| r.2.is_empty() && r.1 == "1"), "{after:?}");
    assert_eq!(
        after.iter().filter(|r| names.contains(&r.0)).count(),
        3,
        "same container names: {names:?} vs {after:?}"
    );
    assert_eq!(revision(&p), 1, "a reverted rollout is no revision");
}

#[test]
fn a_paused_rollout_keeps_serving_and_rollback_undoes_it() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "01-gateway/web/docker-compose.yml",
        &web("stop-first", "pause"),
    );
    let p = platform("rollpause", dir.path());
    p.call("Deploy", r#"{"timeoutSeconds":60}"#);
    let progress = p.call(
        "Rollout",
        r#"{"service":"web","environment":{"BROKEN":"1"},"timeoutSeconds":20}"#,
    );
    let paused = phases(&progress, "PHASE_PAUSED");
    assert_eq!(paused.len(), 1, "{progress:#?}");
    assert!(paused[0].contains("paused after 1 of 3 replicas"), "{paused:?}");
    let d = p.call("DescribeService", r#"{"name":"web"}"#);
    assert_eq!(d[0]["summary"]["rollout"], "paused", "{d:?}");
    // The two untouched replicas still serve the old spec.
    let now = replicas(&p);
    assert_eq!(now.iter().filter(|r| r.2.is_empty()).count(), 2, "{now:?}");

    // A deploy of another spec is refused while it is paused.
    let progress = p.call("Deploy", r#"{"timeoutSeconds":20}"#);
    let failed = phases(&progress, "PHASE_FAILED");
    assert!(
        failed.iter().any(|m| m.contains("paused or in progress")),
        "{progress:#?}"
    );

    let progress = p.call("Rollback", r#"{"service":"web","timeoutSeconds":30}"#);
    assert_eq!(progress.last().unwrap()["ready"], 1, "{progress:#?}");
    let after = replicas(&p);
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.iter().all(|r| r.2.is_empty()), "{after:?}");
    let d = p.call("DescribeService", r#"{"name":"web"}"#);
    assert!(d[0]["summary"].get("rollout").is_none(), "{d:?}");
}

#[test]
fn a_changed_catalog_file_rolls_the_service_one_replica_at_a_time_and_every_replica_reads_the_new_content() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "01-gateway/web/docker-compose.yml",
        r#"services:
  web:
    image: infra-local/nginx:1
    volumes:
      - ./site/index.html:/usr/share/nginx/html/index.html:ro
      - ./site/extra:/usr/share/nginx/html/extra:ro
    deploy:
      replicas: 2
      update_config:
        parallelism: 1
        order: start-first
        monitor: 1s
    healthcheck:
      test: ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1/"]
      interval: 1s
      timeout: 2s
      retries: 2
"#,
    );
    write(dir.path(), "01-gateway/web/site/index.html", "version one\n");
    write(dir.path(), "01-gateway/web/site/extra/a/b.txt", "deep\n");
    let p = platform("rollconfig", dir.path());
    let progress = p.call("Deploy", r#"{"timeoutSeconds":60}"#);
    assert_eq!(progress.last().unwrap()["ready"], 1, "{progress:#?}");
    let read = |path: &str| -> Vec<String> {
        let mut out: Vec<String> = replicas(&p)
            .iter()
            .map(|r| {
                let o = Command::new("docker")
                    .args(["exec", &r.0, "cat", path])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&o.stdout).into_owned()
            })
            .collect();
        out.sort();
        out
    };
    assert_eq!(read("/usr/share/nginx/html/index.html"), ["version one\n"; 2]);
    assert_eq!(read("/usr/share/nginx/html/extra/a/b.txt"), ["deep\n"; 2]);
    // The file came through the bus: the bind source is the operator's
    // copy, not the catalog's.
    let first = replicas(&p)[0].0.clone();
    let src = Command::new("docker")
        .args(["inspect", "-f", "{{range .Mounts}}{{.Source}} {{end}}", &first])
        .output()
        .unwrap();
    let src = String::from_utf8_lossy(&src.stdout).into_owned();
    assert!(
        !src.contains(&dir.path().display().to_string()) && src.contains("/configs/web/"),
        "mounted from the operator's state: {src}"
    );

    // Nothing changed: a deploy leaves the containers alone.
    let ids = || {
        let o = Command::new("docker")
            .args([
                "ps",
                "-q",
                "--no-trunc",
                "--filter",
                &format!("label=io.infra.project={}", p.opts.project),
                "--filter",
                "label=io.infra.service=web",
            ])
            .output()
            .unwrap();
        let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    };
    let before = ids();
    let progress = p.call("Deploy", r#"{"timeoutSeconds":60}"#);
    assert_eq!(progress.last().unwrap()["ready"], 1, "{progress:#?}");
    assert_eq!(ids(), before, "an unchanged catalog recreates nothing");

    // A changed file rolls the service by its update order.
    write(dir.path(), "01-gateway/web/site/index.html", "version two\n");
    let progress = p.call("Deploy", r#"{"timeoutSeconds":60}"#);
    assert_eq!(progress.last().unwrap()["ready"], 1, "{progress:#?}");
    let batches = phases(&progress, "PHASE_UPDATING");
    assert_eq!(batches.len(), 2, "one batch per replica: {progress:#?}");
    assert_eq!(read("/usr/share/nginx/html/index.html"), ["version two\n"; 2]);
    assert_eq!(read("/usr/share/nginx/html/extra/a/b.txt"), ["deep\n"; 2]);
}

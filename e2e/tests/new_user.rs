//! What a new user met on a fresh clone, each through the real binaries,
//! NATS, Docker and grpcurl: deploys that end, secrets that stay inside the
//! catalog and on the host with the container's user, bounded scaling that
//! stops when told, health only once a probe of the new run passed,
//! resumed deploys that end, Remove that takes what it names, stray
//! containers said out loud, oversized input refused, watches back soon
//! after a NATS restart, clients that wait through a takeover, and plans
//! that say which images cannot be had.
//!
//! Each test writes a small catalog of its own with the local images
//! (`e2e/images/build.sh`: `infra-local/debian:bookworm`).

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use infra_e2e::scenarios::{wait_for, write};
use infra_e2e::{Options, Platform, bin_dir, parse_json_stream, record_events};
use infra_proto::bus::v1::{Event, EventKind};

const DEBIAN: &str = "infra-local/debian:bookworm";

/// A platform over `catalog` with the operators of `tiers`.
fn platform(name: &str, catalog: &Path, tiers: &[&str], env: &[(&str, &str)]) -> Platform {
    let mut o = Options::local(name);
    o.compose_dir = catalog.to_owned();
    o.overrides.clear();
    o.tiers = tiers.iter().map(|t| (*t).to_owned()).collect();
    o.env
        .extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Platform::start(o)
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// grpcurl against the coordinator with a deadline on the whole call, so a
/// call that never ends fails the test instead of hanging it. Returns
/// (success, stdout, stderr).
fn grpcurl(p: &Platform, method: &str, data: &str, max_secs: u32) -> (bool, String, String) {
    let bin = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let out = Command::new(bin)
        .args(["-plaintext", "-max-time", &max_secs.to_string(), "-d", data, &p.grpc])
        .arg(format!("infra.coordinator.v1.CoordinatorService/{method}"))
        .output()
        .expect("grpcurl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Names of this platform's containers of `service` (any state).
fn containers_of(p: &Platform, service: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-a",
        "--format",
        "{{.Names}}",
        "--filter",
        &format!("label=io.infra.project={}", p.opts.project),
        "--filter",
        &format!("label=io.infra.service={service}"),
    ])
    .lines()
    .map(str::to_owned)
    .collect()
}

fn events_of(seen: &Arc<Mutex<Vec<(Instant, Event)>>>, kind: EventKind) -> Vec<(Instant, Event)> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(_, e)| e.kind() == kind)
        .cloned()
        .collect()
}

fn rfc3339_secs(s: &str) -> f64 {
    // 2026-12-02T18:01:02.123456789Z -> seconds of the day are enough here.
    let t = s.split('T').nth(1).unwrap_or("0:0:0Z").trim_end_matches('Z');
    let mut parts = t.split(':');
    let h: f64 = parts.next().unwrap_or("0").parse().unwrap_or(0.0);
    let m: f64 = parts.next().unwrap_or("0").parse().unwrap_or(0.0);
    let s: f64 = parts.next().unwrap_or("0").parse().unwrap_or(0.0);
    h * 3600.0 + m * 60.0 + s
}

#[test]
fn a_deploy_with_one_shot_jobs_ends_and_a_dependent_starts_only_after_its_job_exited_0() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "04-data/jobs/docker-compose.yml",
        &format!(
            r#"services:
  migrate:
    image: {DEBIAN}
    command: ["sh", "-c", "sleep 2; echo migrated"]
    restart: "no"
  app:
    image: {DEBIAN}
    command: ["sleep", "infinity"]
    init: true
    depends_on:
      migrate:
        condition: service_completed_successfully
  broken:
    image: {DEBIAN}
    command: ["sh", "-c", "sleep 1; exit 3"]
    restart: "no"
  after-broken:
    image: {DEBIAN}
    command: ["sleep", "infinity"]
    init: true
    depends_on:
      broken:
        condition: service_completed_successfully
"#
        ),
    );
    let p = platform("jobs", dir.path(), &["data"], &[]);
    let t = Instant::now();
    let (ok, out, err) = grpcurl(&p, "Deploy", "{}", 120);
    assert!(ok, "the deploy ended within 120 s: {err}\n{out}");
    let stream = parse_json_stream(&out);
    let done = stream
        .iter()
        .find(|m| m["phase"] == "PHASE_DONE")
        .unwrap_or_else(|| panic!("no done: {out}"));
    assert_eq!(done["ready"], 2, "{done}");
    assert_eq!(done["failed"], 1, "{done}");
    assert_eq!(done["blocked"], 1, "{done}");
    let ready_of = |svc: &str| {
        stream
            .iter()
            .find(|m| m["service"] == svc && m["phase"] == "PHASE_READY")
            .map(|m| m["message"].as_str().unwrap_or("").to_owned())
    };
    assert_eq!(ready_of("migrate").as_deref(), Some("completed"), "{out}");
    assert!(ready_of("app").is_some(), "{out}");
    let blocked = stream
        .iter()
        .find(|m| m["service"] == "after-broken" && m["phase"] == "PHASE_BLOCKED")
        .unwrap_or_else(|| panic!("after-broken not blocked: {out}"));
    assert!(blocked["message"].as_str().unwrap().contains("broken"), "{blocked}");
    assert!(
        containers_of(&p, "after-broken").is_empty(),
        "nothing left of a blocked service"
    );

    // Docker's own clock: app started after migrate exited.
    let migrate = format!("{}-migrate-1", p.opts.project);
    let app = format!("{}-app-1", p.opts.project);
    let finished = rfc3339_secs(&docker(&["inspect", "-f", "{{.State.FinishedAt}}", &migrate]));
    let started = rfc3339_secs(&docker(&["inspect", "-f", "{{.State.StartedAt}}", &app]));
    assert_eq!(docker(&["inspect", "-f", "{{.State.ExitCode}}", &migrate]), "0");
    assert!(
        started >= finished,
        "app started at {started}, before migrate finished at {finished}"
    );
    println!(
        "NEW-USER | deploy with one-shot jobs ended in {:.1}s: app started {:.2}s after migrate exited 0",
        t.elapsed().as_secs_f64(),
        started - finished
    );
}

#[test]
fn a_secret_file_outside_the_catalog_is_refused_and_host_secret_files_belong_to_the_containers_user() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // Outside the catalog: refused at load, with file, line and service.
    let bad = tempfile::tempdir().unwrap();
    write(
        bad.path(),
        "04-data/db/docker-compose.yml",
        &format!(
            "services:\n  db:\n    image: {DEBIAN}\n    command: [sleep, infinity]\n    secrets: [x]\nsecrets:\n  x:\n    file: {}/etc/shadow\n",
            "../".repeat(12)
        ),
    );
    let p = platform("secretout", bad.path(), &["data"], &[]);
    for method in ["Plan", "Deploy"] {
        let (ok, _, err) = grpcurl(&p, method, "{}", 30);
        assert!(!ok, "{method} refused");
        assert!(err.contains("InvalidArgument"), "{method}: {err}");
        assert!(err.contains("04-data/db/docker-compose.yml:8"), "{method}: {err}");
        assert!(
            err.contains("outside the catalog") && err.contains("db"),
            "{method}: {err}"
        );
    }
    assert!(containers_of(&p, "db").is_empty());
    drop(p);

    // Inside: the file on the host is the container user's, 0400, in a
    // 0700 tree, and goes when no service uses it.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "04-data/app/token.txt", "s3cr3t-token-value\n");
    let stack = |reader_has_secret: bool| {
        let secret = if reader_has_secret {
            "    secrets: [token]\n"
        } else {
            ""
        };
        format!(
            r#"services:
  reader:
    image: {DEBIAN}
    user: nobody
    command: ["sleep", "infinity"]
    init: true
{secret}  owned:
    image: {DEBIAN}
    command: ["sleep", "infinity"]
    init: true
    secrets:
      - source: token
        uid: "1234"
        gid: "1234"
        mode: 0440
  rooted:
    image: {DEBIAN}
    command: ["sleep", "infinity"]
    init: true
    secrets: [token]
secrets:
  token:
    file: ./token.txt
"#
        )
    };
    write(dir.path(), "04-data/app/docker-compose.yml", &stack(true));
    let p = platform("secretin", dir.path(), &["data"], &[]);
    let (ok, out, err) = grpcurl(&p, "Deploy", "{}", 120);
    assert!(ok && out.contains("3 ready"), "{err}\n{out}");
    let tree = p.dir.path().join("state/secrets");
    for d in [tree.clone(), tree.join("reader"), tree.join("owned")] {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", d.display());
    }
    let reader = std::fs::metadata(tree.join("reader/token")).unwrap();
    assert_eq!((reader.uid(), reader.gid()), (65534, 65534), "nobody's");
    assert_eq!(reader.permissions().mode() & 0o777, 0o400);
    let owned = std::fs::metadata(tree.join("owned/token")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (1234, 1234));
    assert_eq!(owned.permissions().mode() & 0o777, 0o440);
    // A root container's entrypoint may hand over to a service user: 0444
    // inside it, as Docker's own secrets; the host tree is still root's.
    let rooted = std::fs::metadata(tree.join("rooted/token")).unwrap();
    assert_eq!((rooted.uid(), rooted.gid()), (0, 0));
    assert_eq!(rooted.permissions().mode() & 0o777, 0o444);
    let c = format!("{}-reader-1", p.opts.project);
    assert_eq!(docker(&["exec", &c, "cat", "/run/secrets/token"]), "s3cr3t-token-value");
    let other = Command::new("docker")
        .args(["exec", "-u", "1000", &c, "cat", "/run/secrets/token"])
        .output()
        .unwrap();
    assert!(!other.status.success(), "another user of the container cannot read it");

    // The secret leaves reader's spec: its file leaves the host.
    write(dir.path(), "04-data/app/docker-compose.yml", &stack(false));
    let (ok, out, err) = grpcurl(&p, "Deploy", "{}", 120);
    assert!(ok, "{err}\n{out}");
    wait_for("reader's secret file deleted", Duration::from_secs(30), || {
        !tree.join("reader/token").exists()
    });
    assert!(tree.join("owned/token").exists(), "owned still uses it");
    let (ok, _, err) = grpcurl(&p, "Remove", r#"{"selection":{"services":["owned"]}}"#, 60);
    assert!(ok, "{err}");
    wait_for("owned's secret directory deleted", Duration::from_secs(30), || {
        !tree.join("owned").exists()
    });
    assert!(!p.all_logs().contains("s3cr3t-token-value"), "no secret in a log");
}

#[test]
fn scale_is_bounded_and_a_new_count_stops_work_toward_the_old_one_at_once() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "04-data/w/docker-compose.yml",
        &format!(
            r#"services:
  worker:
    image: {DEBIAN}
    command: ["sleep", "infinity"]
    stop_grace_period: 4s
    volumes: ["/scratch"]
  heavy:
    image: {DEBIAN}
    command: ["sleep", "infinity"]
    init: true
    deploy:
      resources:
        reservations:
          cpus: "0.5"
"#
        ),
    );
    let p = platform("scale", dir.path(), &["data"], &[("INFRA_MAX_REPLICAS", "20")]);
    let (ok, out, err) = grpcurl(&p, "Deploy", "{}", 120);
    assert!(ok && out.contains("2 ready"), "{err}\n{out}");

    // Above the configured maximum: refused, nothing made.
    let (ok, _, err) = grpcurl(&p, "Scale", r#"{"service":"worker","replicas":100000}"#, 30);
    assert!(
        !ok && err.contains("InvalidArgument") && err.contains("max_replicas = 20"),
        "{err}"
    );
    // Beyond what the host's CPUs allow for the reservations: refused.
    let cpus: usize = std::thread::available_parallelism().map_or(2, |n| n.get());
    let too_many = cpus * 2 + 1;
    let (ok, _, err) = grpcurl(
        &p,
        "Scale",
        &format!(r#"{{"service":"heavy","replicas":{too_many}}}"#),
        30,
    );
    assert!(!ok && err.contains("FailedPrecondition"), "{err}");
    assert!(
        err.contains("reserves 0.5 CPUs") && err.contains("nothing was changed"),
        "{err}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(containers_of(&p, "worker").len(), 1);
    assert_eq!(containers_of(&p, "heavy").len(), 1);

    // Scale up far, then back down while it works: the first call ends as
    // superseded and creation stops.
    let first = {
        let grpc = p.grpc.clone();
        std::thread::spawn(move || {
            let bin = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
            let out = Command::new(bin)
                .args([
                    "-plaintext",
                    "-max-time",
                    "120",
                    "-d",
                    r#"{"service":"worker","replicas":20}"#,
                ])
                .arg(&grpc)
                .arg("infra.coordinator.v1.CoordinatorService/Scale")
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    wait_for("worker scaling up", Duration::from_secs(60), || {
        containers_of(&p, "worker").len() >= 8
    });
    let most = containers_of(&p, "worker").len();
    let volumes: Vec<String> = containers_of(&p, "worker")
        .iter()
        .filter(|n| !n.ends_with("-worker-1") && !n.ends_with("-worker-2"))
        .map(|n| docker(&["inspect", "-f", "{{range .Mounts}}{{.Name}}{{end}}", n]))
        .filter(|v| !v.is_empty())
        .collect();
    assert!(!volumes.is_empty(), "the extra replicas have anonymous volumes");
    let t = Instant::now();
    let (ok, out, err) = grpcurl(&p, "Scale", r#"{"service":"worker","replicas":2}"#, 120);
    assert!(ok && out.contains("scaled"), "{err}\n{out}");
    let first = first.join().unwrap();
    assert!(
        first.contains("superseded"),
        "the first Scale says it was superseded: {first}"
    );
    wait_for("worker back at 2", Duration::from_secs(60), || {
        containers_of(&p, "worker").len() == 2
    });
    let down = t.elapsed();
    // And it stays there: nothing goes on creating toward 20.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(containers_of(&p, "worker").len(), 2, "no creation toward the old count");
    let left: Vec<&String> = volumes
        .iter()
        .filter(|v| !docker(&["volume", "ls", "-q", "--filter", &format!("name={v}")]).is_empty())
        .collect();
    assert!(
        left.is_empty(),
        "anonymous volumes went with their containers: {left:?}"
    );
    println!(
        "NEW-USER | scale 20 then 2: {most} containers when told, back to 2 in {:.1}s (stop grace 4 s each, removed \
         in parallel)",
        down.as_secs_f64()
    );
    // One at a time, 4 s each, would take (most - 2) * 4 s.
    assert!(
        down < Duration::from_secs(((most as u64).saturating_sub(2) * 4).max(8)),
        "removals ran in parallel: {down:?} for {most}"
    );
}

#[test]
fn a_restarted_container_is_starting_until_a_probe_of_its_new_run_passes() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "04-data/slow/docker-compose.yml",
        &format!(
            r#"services:
  slow:
    image: {DEBIAN}
    command: ["sh", "-c", "sleep 4; touch /run/ok/ready; exec sleep infinity"]
    restart: unless-stopped
    tmpfs: ["/run/ok"]
    healthcheck:
      test: ["CMD", "test", "-f", "/run/ok/ready"]
      interval: 60s
      start_interval: 250ms
"#
        ),
    );
    let p = platform("restartprobe", dir.path(), &["data"], &[]);
    let (ok, out, err) = grpcurl(&p, "Deploy", "{}", 120);
    assert!(ok && out.contains("1 ready"), "{err}\n{out}");
    let seen = record_events(&[p.nats.url()], None, None);
    let c = format!("{}-slow-1", p.opts.project);
    let killed = Instant::now();
    docker(&["kill", &c]);
    // Running again (restarted by Docker or by the operator), and not
    // healthy: its check cannot pass before 4 s.
    wait_for("slow running again", Duration::from_secs(30), || {
        docker(&["inspect", "-f", "{{.State.Running}}", &c]) == "true" && killed.elapsed() > Duration::from_millis(500)
    });
    let status = p.call("GetStatus", r#"{"selection":{"services":["slow"]}}"#);
    let health = status[0]["services"][0]["health"].as_str().unwrap_or("").to_owned();
    let restarted_at = Instant::now();
    assert_ne!(health, "HEALTH_HEALTHY", "healthy right after a restart: {status:?}");
    wait_for("slow healthy again", Duration::from_secs(60), || {
        !events_of(&seen, EventKind::Healthy).is_empty()
    });
    let (at, _) = events_of(&seen, EventKind::Healthy)[0].clone();
    let after = at.duration_since(killed);
    println!(
        "NEW-USER | kill -> healthy {:.1}s (the check can first pass 4 s after the restart; running again after \
         {:.1}s)",
        after.as_secs_f64(),
        restarted_at.duration_since(killed).as_secs_f64()
    );
    assert!(
        after >= Duration::from_millis(3500),
        "healthy {after:?} after the kill: before a probe of the new run could pass"
    );
}

#[test]
fn remove_takes_exactly_what_it_names_and_refuses_to_strand_a_dependent() {
    let dir = tempfile::tempdir().unwrap();
    let svc = |name: &str, dep: Option<&str>| {
        let dep = dep.map_or(String::new(), |d| {
            format!("    depends_on:\n      {d}:\n        condition: service_started\n")
        });
        format!("  {name}:\n    image: {DEBIAN}\n    command: [\"sleep\", \"infinity\"]\n    init: true\n{dep}")
    };
    write(
        dir.path(),
        "04-data/chain/docker-compose.yml",
        &format!(
            "services:\n{}{}{}{}",
            svc("db", None),
            svc("app", Some("db")),
            svc("web", Some("app")),
            svc("other", None)
        ),
    );
    let p = platform("remove", dir.path(), &["data"], &[]);
    let seen = record_events(&[p.nats.url()], None, None);
    let (ok, out, err) = grpcurl(&p, "Deploy", "{}", 120);
    assert!(ok && out.contains("4 ready"), "{err}\n{out}");

    let (ok, _, err) = grpcurl(&p, "Remove", "{}", 30);
    assert!(
        !ok && err.contains("InvalidArgument") && err.contains("selection.all"),
        "{err}"
    );
    let (ok, _, err) = grpcurl(&p, "Remove", r#"{"selection":{"services":["db"]}}"#, 30);
    assert!(
        !ok && err.contains("FailedPrecondition") && err.contains("app needs db"),
        "{err}"
    );
    assert_eq!(containers_of(&p, "db").len(), 1, "refused: nothing removed");

    let (ok, out, err) = grpcurl(&p, "Remove", r#"{"selection":{"services":["web"]}}"#, 60);
    assert!(ok, "{err}");
    let removed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(removed["removed"], serde_json::json!(["web"]), "only web: {out}");
    assert!(containers_of(&p, "web").is_empty());
    for kept in ["db", "app", "other"] {
        assert_eq!(containers_of(&p, kept).len(), 1, "{kept} kept");
    }

    let (ok, out, err) = grpcurl(&p, "Remove", r#"{"selection":{"services":["db"]},"cascade":true}"#, 60);
    assert!(ok, "{err}");
    let removed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        removed["removed"],
        serde_json::json!(["app", "db"]),
        "dependents first: {out}"
    );
    assert_eq!(containers_of(&p, "other").len(), 1, "other kept");

    let (ok, out, err) = grpcurl(&p, "Remove", r#"{"selection":{"all":true}}"#, 60);
    assert!(ok && out.contains("other"), "{err}\n{out}");
    assert!(containers_of(&p, "other").is_empty());
    let failures = events_of(&seen, EventKind::ReconcileFailed);
    assert!(failures.is_empty(), "no reconcile_failed while removing: {failures:?}");
}

#[test]
fn a_container_with_our_labels_that_we_did_not_make_is_removed_with_a_warning_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "04-data/web/docker-compose.yml",
        &format!("services:\n  web:\n    image: {DEBIAN}\n    command: [\"sleep\", \"infinity\"]\n    init: true\n"),
    );
    let p = platform("stray", dir.path(), &["data"], &[]);
    let (ok, out, err) = grpcurl(&p, "Deploy", "{}", 120);
    assert!(ok && out.contains("1 ready"), "{err}\n{out}");
    let seen = record_events(&[p.nats.url()], None, None);
    let real = format!("{}-web-1", p.opts.project);
    let real_id = docker(&["inspect", "-f", "{{.Id}}", &real]);
    let stray = format!("{}-impostor", p.opts.project);
    let l = |k: &str, v: &str| format!("--label={k}={v}");
    let made = docker(&[
        "run",
        "-d",
        "--name",
        &stray,
        &l("io.infra.managed-by", "infra-operator"),
        &l("io.infra.host", &p.opts.host),
        &l("io.infra.tier", "data"),
        &l("io.infra.service", "web"),
        &l("io.infra.replica", "1"),
        &l("io.infra.project", &p.opts.project),
        &l("io.infra.spec-hash", "deadbeefdeadbeef"),
        DEBIAN,
        "sleep",
        "infinity",
    ]);
    assert!(!made.is_empty(), "docker run");
    wait_for("the stray removed", Duration::from_secs(30), || {
        docker(&["ps", "-aq", "--filter", &format!("name={stray}")]).is_empty()
    });
    wait_for("the warning event", Duration::from_secs(10), || {
        !events_of(&seen, EventKind::StrayContainer).is_empty()
    });
    let (_, warning) = events_of(&seen, EventKind::StrayContainer)[0].clone();
    for needle in [
        stray.as_str(),
        "deadbeefdeadbeef",
        "no desired state",
        "removed",
        "not made by it",
    ] {
        assert!(warning.reason.contains(needle), "lacks {needle:?}: {}", warning.reason);
    }
    let removed = events_of(&seen, EventKind::Removed);
    assert!(
        removed.iter().all(|(_, e)| !e.reason.is_empty()),
        "every removed event says why: {removed:?}"
    );
    assert!(
        p.log("data-operator").contains("not made by it"),
        "the operator's log says it too"
    );
    assert_eq!(
        docker(&["inspect", "-f", "{{.Id}}", &real]),
        real_id,
        "the real replica was left alone"
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn oversized_input_is_refused_at_load_naming_the_limit_and_the_coordinators_memory_stays_flat() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "04-data/ok/docker-compose.yml",
        &format!("services:\n  ok:\n    image: {DEBIAN}\n"),
    );
    let p = platform("oversized", dir.path(), &["data"], &[]);
    let pid = p.pids()["coordinator"];
    let before = rss_kib(pid);

    // 20 MB of environment in one file.
    let mut big = String::from("services:\n  huge:\n    image: infra-local/debian:bookworm\n    environment:\n");
    let mut i = 0;
    while big.len() < 20 * 1024 * 1024 {
        big.push_str(&format!("      VARIABLE_{i:08}: value-value-value-value-value-value\n"));
        i += 1;
    }
    write(dir.path(), "04-data/huge/docker-compose.yml", &big);
    for _ in 0..3 {
        let (ok, _, err) = grpcurl(&p, "Plan", "{}", 60);
        assert!(!ok && err.contains("InvalidArgument"), "{err}");
        assert!(err.contains("04-data/huge/docker-compose.yml"), "{err}");
        assert!(err.contains("at most 1048576 bytes"), "{err}");
    }
    // Under the file limit, over what one spec may be on the bus.
    let mut wide = String::from("services:\n  wide:\n    image: infra-local/debian:bookworm\n    environment:\n");
    let mut i = 0;
    while wide.len() < 1000 * 1024 {
        wide.push_str(&format!("      W_{i:06}: {}\n", "v".repeat(40)));
        i += 1;
    }
    write(dir.path(), "04-data/huge/docker-compose.yml", &wide);
    let (ok, _, err) = grpcurl(&p, "Deploy", "{}", 60);
    assert!(!ok && err.contains("InvalidArgument"), "{err}");
    assert!(
        err.contains("04-data/huge/docker-compose.yml:2") && err.contains("\"wide\""),
        "{err}"
    );
    assert!(err.contains("at most 384 KiB"), "{err}");
    assert!(containers_of(&p, "ok").is_empty(), "nothing half-applied");
    let after = rss_kib(pid);
    println!("NEW-USER | coordinator RSS {before} KiB before, {after} KiB after refusing 20 MB and 1 MB stacks");
    assert!(
        after < before + 64 * 1024,
        "the coordinator's memory stays flat: {before} KiB -> {after} KiB"
    );
}

#[test]
fn after_a_nats_restart_a_desired_change_reaches_the_operator_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "04-data/web/docker-compose.yml",
        &format!("services:\n  web:\n    image: {DEBIAN}\n    command: [\"sleep\", \"infinity\"]\n    init: true\n"),
    );
    let mut p = platform("natsrestart", dir.path(), &["data"], &[]);
    let (ok, out, err) = grpcurl(&p, "Deploy", "{}", 120);
    assert!(ok && out.contains("1 ready"), "{err}\n{out}");
    // Its JetStream answers nothing for 8 s after the restart (a server
    // recovering a large store): every client's own consumer recovery has
    // backed off to 10 s between attempts by then.
    p.nats.restart_with_slow_jetstream(Duration::from_secs(8));
    let restarted = Instant::now();
    // The operators heartbeat again: they are connected.
    wait_for("the operator back on the bus", Duration::from_secs(30), || {
        let (ok, out, _) = grpcurl(&p, "ListHosts", "{}", 5);
        ok && out.contains("data")
    });
    // The first write the coordinator takes after the restart (it may
    // refuse while it takes the lead again); a Scale returns once the new
    // replica runs, so its time is the time the change took to reach the
    // operator and be done.
    let (accepted, took) = loop {
        let t = Instant::now();
        let (ok, out, err) = grpcurl(&p, "Scale", r#"{"service":"web","replicas":2}"#, 60);
        if ok {
            assert!(out.contains("scaled 1 -") && out.contains("\"ready\": 1"), "{out}");
            break (t, t.elapsed());
        }
        assert!(restarted.elapsed() < Duration::from_secs(60), "no write taken: {err}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(containers_of(&p, "web").len(), 2);
    println!(
        "NEW-USER | NATS restart -> write accepted after {:.1}s -> second replica running {:.1}s later",
        accepted.duration_since(restarted).as_secs_f64(),
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(4),
        "the operator's watch was back within seconds of the reconnect: {took:?}"
    );
}

#[test]
fn a_client_waits_through_the_takeover_when_the_coordinator_died_holding_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "04-data/web/docker-compose.yml",
        &format!("services:\n  web:\n    image: {DEBIAN}\n    command: [\"sleep\", \"infinity\"]\n    init: true\n"),
    );
    let mut p = platform("stalelease", dir.path(), &["data"], &[]);
    let (ok, _, err) = grpcurl(&p, "Plan", "{}", 30);
    assert!(ok, "{err}");
    // Killed while leading: its lease stays until it expires.
    p.kill("coordinator");
    p.spawn_coordinator(0);
    wait_for("the new coordinator answers", Duration::from_secs(30), || {
        grpcurl(&p, "ListHosts", "{}", 5).0
    });
    let (ok, _, err) = grpcurl(&p, "Deploy", "{}", 30);
    assert!(!ok, "refused during the takeover");
    assert!(err.contains("Unavailable") && err.contains("expires in"), "{err}");
    assert!(err.contains("earlier run of this coordinator"), "{err}");
    let t = Instant::now();
    let out = Command::new(bin_dir("debug").join("infractl"))
        .args(["--addr", &format!("http://{}", p.grpc), "deploy", "web"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "infractl waited and deployed: {stderr}\n{stdout}");
    assert!(stderr.contains("waiting up to"), "it said it waits: {stderr}");
    assert!(stdout.contains("1 ready"), "{stdout}");
    println!(
        "NEW-USER | infractl deploy through a takeover: done in {:.1}s",
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn plan_says_which_images_a_host_lacks_and_cannot_pull_and_list_hosts_shows_each_operators_metrics() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "04-data/img/docker-compose.yml",
        &format!(
            "services:\n  here:\n    image: {DEBIAN}\n  nowhere:\n    image: registry.invalid/nothing/at-all:1.0\n"
        ),
    );
    let o = Options::over("images", dir.path(), &["data", "gateway"]);
    let p = Platform::start(o);
    let plan = p.call("Plan", "{}");
    let warnings: Vec<String> = plan[0]["warnings"]
        .as_array()
        .map(|w| w.iter().map(|v| v.as_str().unwrap_or("").to_owned()).collect())
        .unwrap_or_default();
    let about = |svc: &str| warnings.iter().filter(|w| w.starts_with(&format!("{svc}:"))).count();
    assert_eq!(about("here"), 0, "{warnings:?}");
    let w = warnings
        .iter()
        .find(|w| w.starts_with("nowhere:"))
        .unwrap_or_else(|| panic!("no warning for nowhere: {warnings:?}"));
    assert!(
        w.contains("registry.invalid/nothing/at-all:1.0")
            && w.contains(&format!("not on host {}", p.opts.host))
            && w.contains("cannot be pulled"),
        "{w}"
    );

    let hosts = p.call("ListHosts", "{}");
    let ops = hosts[0]["hosts"][0]["operators"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let metrics: Vec<&str> = ops.iter().filter_map(|o| o["metricsAddr"].as_str()).collect();
    assert_eq!(metrics.len(), 2, "each operator has its own: {ops:?}");
    assert_ne!(metrics[0], metrics[1], "{metrics:?}");
    assert!(
        hosts[0]["hosts"][0]["labels"].get("metrics").is_none(),
        "not a host label: {hosts:?}"
    );
}

#[test]
fn a_new_leader_ends_every_deploy_record_it_finds_running_the_newest_and_superseding_the_rest() {
    use infra_proto::bus::v1::DeploymentInProgress;
    use infra_proto::coordinator::v1 as api;
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "04-data/web/docker-compose.yml",
        &format!("services:\n  web:\n    image: {DEBIAN}\n    command: [\"sleep\", \"infinity\"]\n    init: true\n"),
    );
    let mut o = Options::over("resume", dir.path(), &["data"]);
    o.coordinators = 2;
    let mut p = Platform::start(o);
    wait_for("a leader", Duration::from_secs(30), || {
        std::panic::catch_unwind(|| p.leader()).is_ok()
    });
    let lead = p.leader();
    let seen = record_events(&[p.nats.url()], None, None);
    // Two deploys a leader recorded and never finished: an older one (an
    // hour old, as if hung) and a newer one over the same service.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bus = rt
        .block_on(infra_bus::Bus::connect(&infra_bus::BusConfig {
            url: p.nats.url(),
            name: "test".into(),
            ..Default::default()
        }))
        .unwrap();
    let request = api::DeployRequest {
        selection: Some(api::Selection {
            services: vec!["web".into()],
            ..Default::default()
        }),
        timeout_seconds: 60,
        prune: false,
    }
    .encode_to_vec();
    let now = infra_proto::now();
    for (id, age) in [("older", 3600), ("newer", 5)] {
        rt.block_on(bus.put_deployment(&DeploymentInProgress {
            id: id.into(),
            request: request.clone(),
            started_at: Some(prost_types::Timestamp {
                seconds: now.seconds - age,
                nanos: 0,
            }),
            holder: "a-coordinator-that-died".into(),
            catalog_revision: 1,
        }))
        .unwrap();
    }
    p.kill(&Platform::coordinator_name(lead));
    let finished = |id: &str| {
        events_of(&seen, EventKind::DeployFinished)
            .into_iter()
            .find(|(_, e)| e.deployment_id == id)
            .map(|(at, e)| (at, e.reason))
    };
    wait_for("both records ended", Duration::from_secs(90), || {
        finished("older").is_some() && finished("newer").is_some()
    });
    let (older_at, older) = finished("older").unwrap();
    let (newer_at, newer) = finished("newer").unwrap();
    assert!(older.contains("superseded by deploy newer"), "{older}");
    assert!(newer.contains("1 ready"), "{newer}");
    let started: Vec<String> = events_of(&seen, EventKind::DeployStarted)
        .into_iter()
        .map(|(_, e)| e.deployment_id)
        .collect();
    assert_eq!(started, vec!["newer".to_string()], "only the newest ran");
    assert!(older_at <= newer_at, "the superseded one ended first");
    assert!(
        rt.block_on(bus.list_deployments()).unwrap().is_empty(),
        "no record left"
    );
    assert_eq!(containers_of(&p, "web").len(), 1);
}

/// Sends bytes as they are in a gRPC frame, and reads the answer as bytes.
#[derive(Clone, Default)]
struct Raw;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let v = bytes::Buf::chunk(buf).to_vec();
        bytes::Buf::advance(buf, v.len());
        Ok(Some(v))
    }
}

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

#[test]
fn a_request_that_is_not_protobuf_is_invalid_argument_and_so_are_bad_ports_and_alias_bombs() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "04-data/web/docker-compose.yml",
        &format!("services:\n  web:\n    image: {DEBIAN}\n    expose: [\"8080\", \"70000\"]\n"),
    );
    let p = platform("rawproto", dir.path(), &["data"], &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        let ch = tonic::transport::Channel::from_shared(format!("http://{}", p.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut g = tonic::client::Grpc::new(ch);
        g.ready().await.unwrap();
        g.unary(
            tonic::Request::new(vec![0xff, 0xff, 0xff, 0xff, 0x0f]),
            tonic::codegen::http::uri::PathAndQuery::from_static("/infra.coordinator.v1.CoordinatorService/Plan"),
            Raw,
        )
        .await
        .unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("PlanRequest"), "{status:?}");

    let (ok, _, err) = grpcurl(&p, "Plan", "{}", 30);
    assert!(!ok && err.contains("InvalidArgument"), "{err}");
    assert!(
        err.contains("04-data/web/docker-compose.yml:4") && err.contains("70000"),
        "{err}"
    );

    let mut bomb = String::from("x-a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    let mut prev = 'a';
    for c in 'b'..='i' {
        bomb.push_str(&format!(
            "x-{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
        prev = c;
    }
    bomb.push_str(&format!("services:\n  web:\n    image: {DEBIAN}\n"));
    write(dir.path(), "04-data/web/docker-compose.yml", &bomb);
    let (ok, _, err) = grpcurl(&p, "Plan", "{}", 30);
    assert!(!ok && err.contains("InvalidArgument"), "{err}");
    assert!(
        err.contains("04-data/web/docker-compose.yml:2") && err.contains("aliases"),
        "{err}"
    );
}

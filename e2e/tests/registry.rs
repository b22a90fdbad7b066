//! Pulling from a private registry with TLS and htpasswd authentication
//! (Debian's `docker-registry`, the distribution registry 2.8), as a user
//! who mirrors images into their own registry would: the user's checkout
//! of the shipped catalog, their override moving three shipped services
//! (pushgateway, node-exporter, alertmanager) to the registry with an
//! `x-registries` block, the password in the catalog's `secrets/` folder.
//! The hosts' engines trust the registry's CA (`/etc/docker/certs.d`), as
//! a VPS is set up for a registry with its own CA.
//!
//! 1. A wrong password: pushgateway (`pull_policy: always`) fails with the
//!    registry's `unauthorized`, node-exporter (`never`, not on the hosts)
//!    fails saying so, and alertmanager (from the local images) comes up.
//! 2. The right password (the file changed, the catalog pushed): Plan warns
//!    of the unknown tag with the registry's `manifest unknown`; Deploy
//!    runs pushgateway on both hosts pinned to the registry's digest,
//!    alertmanager (`daily`) from the registry, and fails node-exporter
//!    with the registry's reason while the rest comes up.
//! 3. Both tags pushed again with new content: Plan shows pushgateway's
//!    digest change and leaves alertmanager (`daily`: not a day yet)
//!    unchanged; Deploy rolls pushgateway one replica at a time (its
//!    `update_config`) onto the new digest; alertmanager keeps its container.
//!
//! Throughout, the password appears in no deploy or plan output, event,
//! operator or coordinator log, or `docker inspect` of any container.

use std::path::Path;
use std::process::Command;

use infra_e2e::hosts::{Cluster, ClusterOptions};
use serde_json::Value;

const WRONG: &str = "not-the-password-7c1e";

/// `docker ARGS` on the outer engine, with a client config of its own (the
/// registry login of the "CI" that pushes).
fn outer(config: &Path, args: &[&str]) -> String {
    let out = Command::new("docker")
        .env("DOCKER_CONFIG", config)
        .args(args)
        .output()
        .expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pushes `local` as `<pushed>/<repo>` and returns the registry's digest.
/// `rev` > 1 makes new content first (a label over the image).
fn push(config: &Path, pushed: &str, local: &str, repo: &str, rev: u32) -> String {
    let to = format!("{pushed}/{repo}");
    if rev > 1 {
        let name = format!("registry-e2e-commit-{}", std::process::id());
        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
        outer(config, &["create", "--name", &name, local]);
        outer(
            config,
            &[
                "commit",
                "--change",
                &format!("LABEL io.infra.e2e.rev={rev}"),
                &name,
                &to,
            ],
        );
        outer(config, &["rm", "-f", &name]);
    } else {
        outer(config, &["tag", local, &to]);
    }
    let out = outer(config, &["push", &to]);
    out.split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("a digest in the push output: {out}"))
        .to_owned()
}

/// The deploy's last word for each service: (phase, message).
fn outcomes(progress: &[Value]) -> std::collections::BTreeMap<String, (String, String)> {
    let mut out = std::collections::BTreeMap::new();
    for p in progress {
        if let Some(s) = p["service"].as_str().filter(|s| !s.is_empty()) {
            out.insert(
                s.to_owned(),
                (
                    p["phase"].as_str().unwrap_or_default().to_owned(),
                    p["message"].as_str().unwrap_or_default().to_owned(),
                ),
            );
        }
    }
    out
}

/// `Config.Image` of the running containers of `service` on `host`.
fn running_images(c: &Cluster, host: &str, service: &str) -> Vec<String> {
    let ids = String::from_utf8_lossy(
        &c.docker(
            host,
            &["ps", "-q", "--filter", &format!("label=io.infra.service={service}")],
        )
        .stdout,
    )
    .split_whitespace()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    ids.iter()
        .map(|id| {
            String::from_utf8_lossy(&c.docker(host, &["inspect", "-f", "{{.Config.Image}}", id]).stdout)
                .trim()
                .to_owned()
        })
        .collect()
}

fn deploy(c: &Cluster, services: &[&str]) -> Vec<Value> {
    c.call(
        "Deploy",
        &serde_json::json!({"selection": {"services": services}, "timeoutSeconds": 120}).to_string(),
    )
}

#[test]
#[allow(clippy::too_many_lines)] // one story, told in order
fn a_private_registry_with_tls_and_a_password_from_the_secrets_pins_rolls_and_never_shows_the_password() {
    let (_checkout, catalog) = infra_e2e::catalog_checkout();
    let mut opts = ClusterOptions::new(2)
        .tiers(&["observability"])
        .images(&["infra-local/alertmanager:0"]);
    opts.compose_dir = catalog.clone();
    opts.project = "reg".into();
    let user = opts.user_override();
    let c = Cluster::start(opts);
    let hosts = c.hosts();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let password = format!("pw-{}-{}", std::process::id(), infra_e2e::shipped::unix_now());

    // ------------------------------------------------ the user's registry
    let name = format!("registry.{}", c.id);
    let reg = format!("{name}:5000");
    let ssl = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj"])
        .arg(format!("/CN={name}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{name},IP:127.0.0.1"))
        .arg("-keyout")
        .arg(dir.join("tls.key"))
        .arg("-out")
        .arg(dir.join("tls.crt"))
        .output()
        .expect("openssl");
    assert!(ssl.status.success(), "{}", String::from_utf8_lossy(&ssl.stderr));
    let htpasswd = Command::new("htpasswd")
        .args(["-Bbn", "deploy", &password])
        .output()
        .expect("htpasswd");
    assert!(htpasswd.status.success());
    std::fs::write(dir.join("htpasswd"), &htpasswd.stdout).unwrap();
    for f in ["tls.key", "tls.crt", "htpasswd"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let config = dir.join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    let container = format!("{}-registry", c.id);
    outer(
        &config,
        &[
            "run",
            "-d",
            "--name",
            &container,
            "--label",
            &format!("{}={}", infra_e2e::hosts::CLUSTER_LABEL, c.id),
            "--network",
            &c.id,
            "--network-alias",
            &name,
            "-p",
            "127.0.0.1::5000",
            "-v",
            &format!("{}:/certs:ro", dir.display()),
            "-e",
            "REGISTRY_HTTP_TLS_CERTIFICATE=/certs/tls.crt",
            "-e",
            "REGISTRY_HTTP_TLS_KEY=/certs/tls.key",
            "-e",
            "REGISTRY_AUTH=htpasswd",
            "-e",
            "REGISTRY_AUTH_HTPASSWD_REALM=infra",
            "-e",
            "REGISTRY_AUTH_HTPASSWD_PATH=/certs/htpasswd",
            "infra-local/registry:2",
        ],
    );
    let port = outer(&config, &["port", &container, "5000/tcp"]);
    let pushed = port.trim().lines().next().unwrap().replace("0.0.0.0", "127.0.0.1");
    infra_test_support::wait_for("the registry answers", std::time::Duration::from_secs(30), || {
        Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("https://{pushed}/v2/"))
            .output()
            .is_ok_and(|o| o.stdout == b"401")
    });
    // The outer engine pushes over loopback (a registry there is trusted).
    let login = Command::new("docker")
        .env("DOCKER_CONFIG", &config)
        .args(["login", &pushed, "-u", "deploy", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write;
            ch.stdin.take().unwrap().write_all(password.as_bytes())?;
            ch.wait_with_output()
        })
        .expect("docker login");
    assert!(login.status.success(), "{}", String::from_utf8_lossy(&login.stderr));
    let push_gw1 = push(
        &config,
        &pushed,
        "infra-local/pushgateway:1",
        "mirror/pushgateway:v1.11.2",
        1,
    );
    let alert1 = push(
        &config,
        &pushed,
        "infra-local/alertmanager:0",
        "mirror/alertmanager:v0.30.0",
        1,
    );
    // The hosts' engines trust its CA.
    for h in &hosts {
        let certs = format!("/etc/docker/certs.d/{reg}");
        let _ = Command::new("docker")
            .args(["exec", &c.container(h), "mkdir", "-p", &certs])
            .status();
        let cp = Command::new("docker")
            .arg("cp")
            .arg(dir.join("tls.crt"))
            .arg(format!("{}:{certs}/ca.crt", c.container(h)))
            .status()
            .expect("docker cp");
        assert!(cp.success());
    }

    // ---------------------------------------------- 1. a wrong password
    let secret = catalog.join("secrets/registry_password");
    std::fs::write(&secret, format!("{WRONG}\n")).unwrap();
    std::fs::write(
        &user,
        format!(
            r"x-registries:
  {reg}:
    username: deploy
    password_secret: registry_password
services:
  pushgateway:
    image: {reg}/mirror/pushgateway:v1.11.2
    pull_policy: always
    deploy:
      replicas: 2
      placement:
        max_replicas_per_node: 1
      update_config:
        parallelism: 1
        order: stop-first
  node-exporter:
    image: {reg}/mirror/node-exporter:v1.10.0
    pull_policy: never
"
        ),
    )
    .unwrap();
    infra_e2e::shipped::catalog_push(&c, &catalog, &user);
    let mut said: Vec<Value> = Vec::new();
    let first = deploy(&c, &["pushgateway", "node-exporter", "alertmanager"]);
    said.extend(first.iter().cloned());
    let last = outcomes(&first);
    assert_eq!(last["alertmanager"].0, "PHASE_READY", "the rest comes up: {first:#?}");
    assert_eq!(last["pushgateway"].0, "PHASE_FAILED", "{first:#?}");
    assert!(
        last["pushgateway"].1.contains("unauthorized"),
        "the registry's reason: {:?}\n{}",
        last["pushgateway"],
        c.tier_logs("observability")
    );
    assert_eq!(last["node-exporter"].0, "PHASE_FAILED", "{first:#?}");
    assert!(
        last["node-exporter"].1.contains("pull_policy is never"),
        "{:?}",
        last["node-exporter"]
    );

    // ------------------------------------------- 2. the right password
    std::fs::write(&secret, format!("{password}\n")).unwrap();
    std::fs::write(
        &user,
        format!(
            r"x-registries:
  {reg}:
    username: deploy
    password_secret: registry_password
services:
  pushgateway:
    image: {reg}/mirror/pushgateway:v1.11.2
    pull_policy: always
    deploy:
      replicas: 2
      placement:
        max_replicas_per_node: 1
      update_config:
        parallelism: 1
        order: stop-first
  node-exporter:
    image: {reg}/mirror/node-exporter:no-such-tag
  alertmanager:
    image: {reg}/mirror/alertmanager:v0.30.0
    pull_policy: daily
"
        ),
    )
    .unwrap();
    infra_e2e::shipped::catalog_push(&c, &catalog, &user);
    let plan = c.call(
        "Plan",
        r#"{"selection":{"services":["pushgateway","node-exporter","alertmanager"]}}"#,
    );
    said.extend(plan.iter().cloned());
    let warnings = plan[0]["warnings"].to_string();
    assert!(
        warnings.contains("node-exporter") && warnings.contains("manifest unknown"),
        "the plan names the unknown tag with the registry's words: {warnings}"
    );
    assert!(!warnings.contains("pushgateway"), "{warnings}");
    let second = deploy(&c, &["pushgateway", "node-exporter", "alertmanager"]);
    said.extend(second.iter().cloned());
    let last = outcomes(&second);
    assert_eq!(
        last["pushgateway"].0,
        "PHASE_READY",
        "{second:#?}\n{}",
        c.tier_logs("observability")
    );
    assert_eq!(last["alertmanager"].0, "PHASE_READY", "{second:#?}");
    assert_eq!(last["node-exporter"].0, "PHASE_FAILED", "{second:#?}");
    assert!(
        last["node-exporter"].1.contains("manifest unknown"),
        "{:?}",
        last["node-exporter"]
    );
    let pinned = |digest: &str, repo: &str| format!("{reg}/mirror/{repo}@{digest}");
    for h in &hosts {
        assert_eq!(
            running_images(&c, h, "pushgateway"),
            vec![pinned(&push_gw1, "pushgateway")],
            "pushgateway on {h} runs the digest the registry gave"
        );
    }
    let alert_host = hosts
        .iter()
        .find(|h| !running_images(&c, h, "alertmanager").is_empty())
        .expect("alertmanager runs")
        .clone();
    assert_eq!(
        running_images(&c, &alert_host, "alertmanager"),
        vec![pinned(&alert1, "alertmanager")]
    );
    let alert_id = infra_e2e::shipped::running(&c, &alert_host, "alertmanager").unwrap();

    // ---------------------------------------- 3. the tags pushed again
    let push_gw2 = push(
        &config,
        &pushed,
        "infra-local/pushgateway:1",
        "mirror/pushgateway:v1.11.2",
        2,
    );
    let alert2 = push(
        &config,
        &pushed,
        "infra-local/alertmanager:0",
        "mirror/alertmanager:v0.30.0",
        2,
    );
    assert_ne!(push_gw1, push_gw2);
    assert_ne!(alert1, alert2);
    let plan = c.call("Plan", r#"{"selection":{"services":["pushgateway","alertmanager"]}}"#);
    said.extend(plan.iter().cloned());
    let steps = plan[0]["steps"].as_array().cloned().unwrap_or_default();
    let step = |s: &str| steps.iter().find(|x| x["service"] == s).cloned().unwrap_or_default();
    assert_eq!(step("pushgateway")["action"], "ACTION_UPDATE", "{plan:#?}");
    let short = |d: &str| d.trim_start_matches("sha256:")[..12].to_owned();
    assert!(
        step("pushgateway")["changes"].to_string().contains(&short(&push_gw2)),
        "the plan shows the new digest: {:#?}",
        step("pushgateway")
    );
    assert_eq!(step("alertmanager")["action"], "ACTION_UNCHANGED", "daily: {plan:#?}");
    let since = infra_e2e::shipped::unix_now();
    let third = deploy(&c, &["pushgateway", "alertmanager"]);
    said.extend(third.iter().cloned());
    let last = outcomes(&third);
    assert_eq!(last["pushgateway"].0, "PHASE_READY", "{third:#?}");
    for h in &hosts {
        assert_eq!(
            running_images(&c, h, "pushgateway"),
            vec![pinned(&push_gw2, "pushgateway")],
            "pushgateway on {h} rolled to the tag's new digest"
        );
    }
    // One replica at a time (parallelism 1, stop-first): never both down.
    let members: Vec<(&str, &str)> = hosts.iter().map(|h| ("pushgateway", h.as_str())).collect();
    let windows = infra_e2e::shipped::down_windows(&c, &members, since);
    assert!(
        windows.windows(2).all(|w| w[0].1 <= w[1].0),
        "the replicas were down one after the other: {windows:?}"
    );
    assert_eq!(
        infra_e2e::shipped::running(&c, &alert_host, "alertmanager").as_deref(),
        Some(alert_id.as_str()),
        "alertmanager (daily) kept its container"
    );

    // ------------------------------------------ the password, nowhere
    let events = infra_e2e::shipped::event_history(&c);
    let mut seen = vec![
        ("deploy and plan output", serde_json::to_string(&said).unwrap()),
        ("events", serde_json::to_string(&events).unwrap()),
        ("operator logs", c.tier_logs("observability")),
        ("coordinator log", c.coordinator_log(0)),
    ];
    assert!(seen[1].1.contains("pushgateway"), "the events were read: {}", seen[1].1);
    for h in &hosts {
        let ids = String::from_utf8_lossy(&c.docker(h, &["ps", "-aq"]).stdout).into_owned();
        let mut args = vec!["inspect"];
        args.extend(ids.split_whitespace());
        seen.push((
            "docker inspect",
            String::from_utf8_lossy(&c.docker(h, &args).stdout).into_owned(),
        ));
    }
    for (what, text) in &seen {
        assert!(!text.is_empty(), "{what} read");
        assert!(!text.contains(&password), "the password in {what}");
        assert!(!text.contains(WRONG), "the wrong password in {what}");
    }
}

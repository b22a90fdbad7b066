//! The install artifact, on a simulated host: the operators image
//! (`e2e/images/recipes/operators`, built from this checkout's
//! `infra-operator` binary) run on the host's own Docker engine the way
//! docs/operating.md tells a user to, with the socket, host networking and
//! restart policy `unless-stopped`. What a user checks: the host's tiers
//! heartbeat (with the private address the operators found), a deploy
//! runs there, the supervisor dying is repaired by
//! Docker, replacing the image (an upgrade) restarts none of the
//! containers it manages, and the new operators do manage them.
//!
//! Needs `bash e2e/images/build.sh host nats nginx debian` and, after
//! `cargo build --workspace --bins`,
//! `INFRA_PROFILE=debug bash e2e/images/build.sh operators` (`just test`
//! does both).

use std::time::{Duration, Instant};

use infra_e2e::hosts::{Cluster, ClusterOptions, OPERATORS_IMAGE};
use infra_e2e::scenarios::the_container;
use infra_e2e::write;
use infra_test_support::wait_for;

const IMAGE: &str = OPERATORS_IMAGE;
const NEXT: &str = "infra-local/operators:next";

const WEB: &str = r#"services:
  web:
    image: infra-local/nginx:1
    ports: ["8080:80"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/"]
      interval: 1s
      retries: 5
"#;

const DB: &str = r#"services:
  db:
    image: infra-local/debian:bookworm
    command: ["sh", "-c", "echo kept > /data/mark; exec sleep infinity"]
    init: true
    volumes: ["db-data:/data"]
volumes:
  db-data: {}
"#;

fn inspect(c: &Cluster, what: &str, format: &str) -> String {
    let out = c.docker("host1", &["inspect", "-f", format, what]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn host_label(c: &Cluster, label: &str) -> String {
    let hosts = c.call("ListHosts", "{}");
    hosts[0]["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["host"] == "host1")
        .and_then(|h| h["labels"][label].as_str())
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn the_operators_image_runs_the_hosts_tiers_docker_restarts_it_and_an_upgrade_restarts_no_managed_container() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "01-gateway/web/compose.yml", WEB);
    write(dir.path(), "04-data/db/compose.yml", DB);
    let mut opts = ClusterOptions::new(1)
        .images(&[IMAGE, "infra-local/nginx:1", "infra-local/debian:bookworm"])
        .catalog(dir.path());
    // No operator started by the harness: the image brings them.
    opts.host_tiers.insert("host1".into(), Vec::new());
    let c = Cluster::start(opts);

    // 1. Installed: both tiers heartbeat, with the image as a host label.
    let t0 = Instant::now();
    c.install_operators("host1", &["gateway", "data"], IMAGE);
    let installed = t0.elapsed();
    assert_eq!(host_label(&c, "operator_image"), IMAGE);
    // `labels.addr = "auto"`: the host's private address, found on its
    // interfaces (its inner engine's bridge left out).
    assert_eq!(host_label(&c, "addr"), c.host_ip("host1"));
    assert_eq!(
        inspect(&c, "infra-operators", "{{.HostConfig.RestartPolicy.Name}}"),
        "unless-stopped"
    );
    let ps = c.docker(
        "host1",
        &[
            "exec",
            "infra-operators",
            "sh",
            "-c",
            r#"for p in /proc/[0-9]*; do tr '\0' ' ' < $p/cmdline; echo; done"#,
        ],
    );
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    assert!(
        ps.lines().any(|l| l.starts_with("gateway-operator")) && ps.lines().any(|l| l.starts_with("data-operator")),
        "one process per tier: {ps}"
    );

    // 2. A deploy runs there.
    let progress = c.call(
        "Deploy",
        r#"{"selection":{"services":["web","db"]},"timeoutSeconds":120}"#,
    );
    let done = progress.last().expect("a DONE message");
    assert_eq!(done["ready"].as_u64(), Some(2), "{progress:#?}\n{}", c.all_logs());
    let web = the_container(&c, "host1", "web");
    let db = the_container(&c, "host1", "db");

    // 3. The supervisor dies (SIGKILL from the host): Docker starts it
    //    again, and the containers it manages were never touched.
    let pid = inspect(&c, "infra-operators", "{{.State.Pid}}");
    let t0 = Instant::now();
    let out = std::process::Command::new("docker")
        .args(["exec", &c.container("host1"), "kill", "-KILL", &pid])
        .output()
        .unwrap();
    assert!(out.status.success(), "kill {pid}: {out:?}");
    wait_for("Docker restarts the operators", Duration::from_secs(60), || {
        inspect(&c, "infra-operators", "{{.RestartCount}} {{.State.Running}}") == "1 true"
    });
    let restarted = t0.elapsed();
    assert_eq!(the_container(&c, "host1", "web"), web, "web untouched by the crash");
    assert_eq!(the_container(&c, "host1", "db"), db, "db untouched by the crash");

    // 4. Upgrade: the operators container replaced by another image (a new
    //    tag here; a new build for a user). Its operators drain on SIGTERM,
    //    the new ones adopt what runs: no container restarted.
    let tagged = c.docker("host1", &["tag", IMAGE, NEXT]);
    assert!(tagged.status.success(), "{tagged:?}");
    let t0 = Instant::now();
    c.install_operators("host1", &["gateway", "data"], NEXT);
    wait_for("heartbeats name the new image", Duration::from_secs(30), || {
        host_label(&c, "operator_image") == NEXT
    });
    let upgraded = t0.elapsed();
    assert_eq!(inspect(&c, "infra-operators", "{{.Config.Image}}"), NEXT);
    assert_eq!(
        the_container(&c, "host1", "web"),
        web,
        "web not restarted by the upgrade"
    );
    assert_eq!(the_container(&c, "host1", "db"), db, "db not restarted by the upgrade");

    // 5. The new operators manage them: a web container removed by hand is
    //    replaced, healthy; the db's volume kept its data throughout.
    let gone = c.docker("host1", &["rm", "-f", &web.0]);
    assert!(gone.status.success(), "{gone:?}");
    wait_for(
        "the installed operator starts web again",
        Duration::from_secs(60),
        || {
            let o = c.docker(
                "host1",
                &[
                    "ps",
                    "-q",
                    "--filter",
                    "label=io.infra.service=web",
                    "--filter",
                    "health=healthy",
                ],
            );
            let id = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            !id.is_empty() && id != web.0
        },
    );
    let mark = c.docker("host1", &["exec", &db.0, "cat", "/data/mark"]);
    assert_eq!(String::from_utf8_lossy(&mark.stdout).trim(), "kept");

    // 6. Stopping the operators leaves what they run running.
    let stopped = c.docker("host1", &["stop", "-t", "30", "infra-operators"]);
    assert!(stopped.status.success(), "{stopped:?}");
    assert_eq!(inspect(&c, &db.0, "{{.State.Running}}"), "true");
    let logs = c.docker("host1", &["logs", "infra-operators"]);
    let logs = String::from_utf8_lossy(&logs.stderr).into_owned() + &String::from_utf8_lossy(&logs.stdout);
    assert!(logs.contains("operator drained"), "the operators drained: {logs}");
    println!(
        "BENCH | install: docker run -> both tiers heartbeat {:.1}s; supervisor SIGKILL -> running again {:.1}s; \
         upgrade (stop, drain, run the new image) -> new heartbeats {:.1}s; 0 managed containers restarted",
        installed.as_secs_f64(),
        restarted.as_secs_f64(),
        upgraded.as_secs_f64()
    );
}

/// Runs `infra-operator join --token TOKEN` (the install image) on host1's
/// engine, in the foreground; the output once it exits.
fn join_on_host1(c: &Cluster, token: &str, state_dir: &str) -> std::process::Output {
    c.docker(
        "host1",
        &[
            "run",
            "--rm",
            "--network",
            "host",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-v",
            "/var/lib/infra:/var/lib/infra",
            "-v",
            "/tmp:/tmp",
            IMAGE,
            "join",
            "--token",
            token,
            "--state-dir",
            state_dir,
        ],
    )
}

/// Whether `path` exists in host1 (its own file system).
fn exists_on_host1(c: &Cluster, path: &str) -> bool {
    std::process::Command::new("docker")
        .args(["exec", &c.container("host1"), "test", "-e", path])
        .status()
        .expect("docker")
        .success()
}

fn refused(out: &std::process::Output, why: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "refused with exit 64: {err}");
    assert!(err.contains(why), "the reason names {why:?}: {err}");
}

#[test]
fn a_host_joins_with_a_one_time_token_refuses_expired_forged_altered_and_used_tokens_and_once_removed_cannot_come_back()
{
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "01-gateway/web/compose.yml", WEB);
    let mut opts = ClusterOptions::new(1)
        .images(&[IMAGE, "infra-local/nginx:1"])
        .catalog(dir.path());
    // host1 is a bare VPS: nothing of the platform runs there yet.
    opts.host_tiers.insert("host1".into(), Vec::new());
    let c = Cluster::start(opts);
    let add = |ttl: u32| {
        let r = c.call(
            "AddHost",
            &format!(r#"{{"host":"host1","labels":{{"zone":"a"}},"tiers":["gateway"],"ttlSeconds":{ttl}}}"#),
        );
        r[0].clone()
    };
    const STATE: &str = "/var/lib/infra/state";

    // Expired: refused before anything is asked.
    let expired = add(1)["token"].as_str().expect("a token").to_owned();
    std::thread::sleep(Duration::from_millis(2500)); // the token's life, not a synchronisation
    refused(&join_on_host1(&c, &expired, STATE), "expired");
    // Forged: a token signed by keys that are not the platform's is
    // refused by NATS itself.
    let good = add(600);
    let token = good["token"].as_str().expect("a token").to_owned();
    let mut forged = infra_bus::join::JoinToken::decode(&token).unwrap();
    let other = infra_bus::auth::Authority::generate();
    let host1 = infra_bus::Token::new("host", "host1").unwrap();
    let fake = other.user_until(
        "join-host1",
        Some(&infra_bus::auth::join_permissions(&host1)),
        Some(forged.expires_at),
    );
    let parts: Vec<&str> = fake.text.lines().collect();
    forged.jwt = parts[1].to_owned();
    forged.seed = fake
        .text
        .lines()
        .skip_while(|l| !l.contains("NKEY SEED"))
        .nth(1)
        .unwrap()
        .to_owned();
    refused(
        &join_on_host1(&c, &forged.encode(), STATE),
        "NATS refused the join token",
    );
    // Altered: the platform's credential with another secret.
    let mut altered = infra_bus::join::JoinToken::decode(&token).unwrap();
    altered.secret = infra_bus::join::new_secret();
    refused(&join_on_host1(&c, &altered.encode(), STATE), "does not match");
    // Nothing was kept by any of them, and no operator runs.
    assert!(
        !exists_on_host1(&c, &format!("{STATE}/bus")),
        "a refused join leaves nothing"
    );
    assert!(!c.list_hosts().unwrap_or_default().contains_key("host1"));

    // The good token: the command AddHost printed, run as is on host1.
    let t0 = Instant::now();
    let command = good["command"].as_str().expect("a command").to_owned();
    assert!(command.contains(&token) && command.contains(IMAGE), "{command}");
    let out = std::process::Command::new("docker")
        .args(["exec", &c.container("host1"), "sh", "-c", &command])
        .output()
        .expect("docker");
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_hosts(
        "host1 joined, its gateway operator heartbeats",
        Duration::from_secs(90),
        |h| h.get("host1").is_some_and(|t| t.contains("gateway")),
    );
    let joined = t0.elapsed();
    assert_eq!(host_label(&c, "zone"), "a", "the labels given at AddHost");
    let listed = c.list_hosts().unwrap_or_default();
    assert_eq!(listed["host1"].len(), 1, "the tiers given at AddHost only: {listed:?}");
    // Its own credential, readable by root only; the token's is not kept.
    let out = std::process::Command::new("docker")
        .args([
            "exec",
            &c.container("host1"),
            "stat",
            "-c",
            "%a",
            &format!("{STATE}/bus/host.creds"),
        ])
        .output()
        .expect("docker");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "600");

    // Used: the same token again (on a clean state directory) is refused.
    refused(&join_on_host1(&c, &token, "/tmp/again"), "used already");
    assert!(!exists_on_host1(&c, "/tmp/again/bus"));

    // The joined host takes work on its scoped credential.
    let progress = c.call("Deploy", r#"{"selection":{"services":["web"]},"timeoutSeconds":120}"#);
    assert_eq!(progress.last().unwrap()["ready"], 1, "{progress:#?}");

    // Removed: drained (web has nowhere to go: force), its credentials
    // revoked, its keys deleted; NATS closes its connections.
    assert!(
        c.nats_connection_names().iter().any(|n| n.ends_with("@host1")),
        "host1's operators are connected before: {:?}",
        c.nats_connection_names()
    );
    let t1 = Instant::now();
    let out = c.call("RemoveHost", r#"{"host":"host1","force":true,"timeoutSeconds":30}"#);
    let done = out.last().expect("a DONE line");
    assert_eq!(done["phase"], "PHASE_DONE", "{out:#?}");
    let summary = done["message"].as_str().unwrap_or_default();
    assert!(summary.contains("2 credential(s) revoked"), "{summary}");
    wait_for(
        "host1's operators disconnected from every NATS server",
        Duration::from_secs(30),
        || !c.nats_connection_names().iter().any(|n| n.ends_with("@host1")),
    );
    let cut = t1.elapsed();
    // The credential it kept is refused from now on.
    let kept = std::process::Command::new("docker")
        .args(["exec", &c.container("host1"), "cat", &format!("{STATE}/bus/host.creds")])
        .output()
        .expect("docker");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let again = rt.block_on(infra_bus::Bus::connect(&infra_bus::BusConfig {
        creds: Some(String::from_utf8_lossy(&kept.stdout).into_owned()),
        inbox_prefix: Some("_INBOX_host1".into()),
        ..c.bus_config("e2e-revoked-host1")
    }));
    let e = again.expect_err("a revoked credential is refused").to_string();
    assert!(e.contains("refused the credentials"), "{e}");
    // Its keys are gone, and it stays out: its operators, restarted by
    // Docker as after a reboot, cannot come back. (A bounded wait for
    // what must not happen: two heartbeat lifetimes.)
    let admin = rt
        .block_on(infra_bus::Bus::connect(&c.bus_config("e2e-admin")))
        .unwrap();
    let left = rt.block_on(admin.list_desired(None)).unwrap();
    assert!(!left.iter().any(|d| d.host == "host1"), "{left:?}");
    let out = c.docker("host1", &["restart", "infra-operators"]);
    assert!(out.status.success(), "{out:?}");
    std::thread::sleep(Duration::from_secs(2 * infra_e2e::hosts::HEARTBEAT_TTL_SECS));
    assert!(!c.list_hosts().unwrap_or_default().contains_key("host1"));
    assert!(!c.nats_connection_names().iter().any(|n| n.ends_with("@host1")));
    println!(
        "BENCH | join: AddHost -> host1 in ListHosts with its tier heartbeating {:.1}s (docker run of the install image included); RemoveHost -> its connections closed {:.1}s",
        joined.as_secs_f64(),
        cut.as_secs_f64()
    );
}

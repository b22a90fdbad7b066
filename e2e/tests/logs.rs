//! Logs across hosts through the real coordinator, grpcurl and infractl:
//! a service with one replica on each of two hosts; `Logs` gives every
//! replica's lines with its host and replica, `tail` per replica, follows
//! what comes next (the coordinator fenced off the hosts: the lines come
//! over the bus), and a client that goes away ends the reads on both
//! hosts.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use infra_e2e::hosts::{Cluster, ClusterOptions};
use infra_e2e::parse_json_stream;
use infra_test_support::wait_for;

const STACK: &str = r#"services:
  chatty:
    image: infra-local/debian:bookworm
    init: true
    command:
      - sh
      - -c
      - 'echo "starting on $$(hostname)" >&2; i=0; while :; do echo "line $$i"; i=$$((i+1)); sleep 0.2; done'
    deploy:
      replicas: 2
      placement:
        max_replicas_per_node: 1
"#;

fn logs(c: &Cluster, request: &str) -> Vec<serde_json::Value> {
    c.call("Logs", request)
}

#[test]
fn logs_come_from_every_replica_on_every_host_follow_and_stop_when_the_client_goes() {
    let dir = tempfile::tempdir().unwrap();
    infra_e2e::write(dir.path(), "09-tooling/chatty/docker-compose.yml", STACK);
    let mut opts = ClusterOptions::new(2)
        .tiers(&["tooling"])
        .images(&["infra-local/debian:bookworm"])
        .catalog(dir.path());
    opts.project = "logs".into();
    let c = Cluster::start(opts);
    let progress = c.call(
        "Deploy",
        r#"{"selection":{"services":["chatty"]},"timeoutSeconds":120}"#,
    );
    assert_eq!(progress.last().unwrap()["ready"], 1, "{progress:#?}");
    std::thread::sleep(Duration::from_secs(2));

    // The last 3 lines of each replica, from both hosts.
    let lines = logs(&c, r#"{"services":["chatty"],"tail":3}"#);
    for h in c.hosts() {
        let mine: Vec<&serde_json::Value> = lines.iter().filter(|l| l["host"] == h.as_str()).collect();
        assert_eq!(mine.len(), 3, "3 lines from {h}: {lines:#?}");
        assert!(
            mine.iter()
                .all(|l| l["service"] == "chatty" && l["replica"].as_u64().is_some() && l["time"].is_string()),
            "{mine:#?}"
        );
        assert!(
            mine.iter()
                .all(|l| l["text"].as_str().is_some_and(|t| t.starts_with("line ")))
        );
    }
    // From the start: stderr too.
    let all = logs(&c, r#"{"services":["chatty"]}"#);
    assert!(
        all.iter()
            .any(|l| l["stream"] == "stderr" && l["text"].as_str().is_some_and(|t| t.starts_with("starting on"))),
        "{all:#?}"
    );

    // infractl: one line each, `host/service.replica | text`.
    let out = Command::new(infra_e2e::bin_dir("debug").join("infractl"))
        .args([
            "--addr",
            &format!("http://{}", c.grpc()),
            "logs",
            "chatty",
            "--tail",
            "1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for h in c.hosts() {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{h}/chatty.")) && l.contains("| line ")),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Following: a marker written on host2 is printed within seconds.
    let mut follow = Command::new(std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into()))
        .args([
            "-plaintext",
            "-max-time",
            "120",
            "-d",
            r#"{"services":["chatty"],"follow":true,"tail":1}"#,
        ])
        .arg(c.grpc())
        .arg("infra.coordinator.v1.CoordinatorService/Logs")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let printed: Arc<Mutex<String>> = Arc::default();
    {
        let (sink, mut out) = (printed.clone(), follow.stdout.take().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    wait_for("the follow prints both hosts' lines", Duration::from_secs(30), || {
        let p = printed.lock().unwrap();
        c.hosts().iter().all(|h| p.contains(&format!("\"host\": \"{h}\"")))
    });
    let id = String::from_utf8_lossy(
        &c.docker("host2", &["ps", "-q", "--filter", "label=io.infra.service=chatty"])
            .stdout,
    )
    .trim()
    .to_owned();
    let marker = format!("marker-{}", std::process::id());
    let t0 = Instant::now();
    let o = c.docker(
        "host2",
        &["exec", &id, "sh", "-c", &format!("echo {marker} > /proc/1/fd/1")],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_for("the marker printed", Duration::from_secs(20), || {
        printed.lock().unwrap().contains(&marker)
    });
    let latency = t0.elapsed();
    let seen = parse_json_stream(&printed.lock().unwrap());
    let m = seen.iter().find(|l| l["text"] == marker.as_str()).unwrap();
    assert_eq!(m["host"], "host2", "{m}");

    // The client goes away: both hosts close their reads.
    follow.kill().unwrap();
    follow.wait().unwrap();
    for h in c.hosts() {
        wait_for(&format!("{h} closed its read"), Duration::from_secs(30), || {
            c.log(&h, "tooling").contains("log read closed: nobody pulled")
        });
    }

    // A service deployed nowhere: an error naming it.
    let out = c.grpcurl(
        &["infra.coordinator.v1.CoordinatorService/Logs"],
        Some(r#"{"services":["nope"]}"#),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("NotFound") && err.contains("nope"),
        "{err}"
    );
    println!(
        "BENCH | logs follow across hosts (fenced coordinator, debug binaries) | line written on host2 -> printed by grpcurl {:.0} ms",
        latency.as_secs_f64() * 1000.0
    );
}

/// Megabytes the burst test's service writes at once: `LOGS_BURST_MB`
/// (`just bench-logs` sets 50), 5 in the suite.
fn burst_mb() -> u64 {
    std::env::var("LOGS_BURST_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

#[test]
fn a_burst_of_lines_is_read_whole_with_bounded_memory_and_other_calls_answered() {
    let mb = burst_mb();
    let dir = tempfile::tempdir().unwrap();
    // 100-byte lines (99 + newline), `mb` MB of them at once, then quiet.
    let stack = format!(
        r#"services:
  burst:
    image: infra-local/debian:bookworm
    init: true
    command:
      - sh
      - -c
      - 'head -c {} /dev/zero | tr "\000" x | fold -w 99; echo; echo burst-done; sleep infinity'
    # room for the whole burst in one json-file (about 1.7 bytes stored per
    # byte logged); the default, 10m x 3, keeps the last 30 MB only
    logging:
      driver: json-file
      options:
        max-size: "{}m"
        max-file: "2"
"#,
        mb * 990_000,
        mb * 2 + 10
    );
    infra_e2e::write(dir.path(), "09-tooling/burst/docker-compose.yml", &stack);
    let mut opts = ClusterOptions::new(1)
        .tiers(&["tooling"])
        .images(&["infra-local/debian:bookworm"])
        .catalog(dir.path());
    opts.project = "logburst".into();
    let c = Cluster::start(opts);
    let before = (
        c.operator_rss_kib("host1", "tooling").unwrap(),
        c.coordinator_rss_kib(0).unwrap(),
    );
    let progress = c.call("Deploy", r#"{"selection":{"services":["burst"]},"timeoutSeconds":120}"#);
    assert_eq!(progress.last().unwrap()["ready"], 1, "{progress:#?}");
    let id = String::from_utf8_lossy(
        &c.docker("host1", &["ps", "-q", "--filter", "label=io.infra.service=burst"])
            .stdout,
    )
    .trim()
    .to_owned();
    wait_for("the burst written", Duration::from_secs(120), || {
        String::from_utf8_lossy(&c.docker("host1", &["logs", "--tail", "1", &id]).stdout).contains("burst-done")
    });

    // Read it all through infractl while sampling memory and asking the
    // coordinator something else.
    let t0 = Instant::now();
    let reader = Command::new(infra_e2e::bin_dir("debug").join("infractl"))
        .args(["--addr", &format!("http://{}", c.grpc()), "logs", "burst"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut peak_op, mut peak_coord, mut slowest_call) = (before.0, before.1, Duration::ZERO);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let out = {
        let done = done.clone();
        std::thread::spawn(move || {
            let o = reader.wait_with_output().unwrap();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            o
        })
    };
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        peak_op = peak_op.max(c.operator_rss_kib("host1", "tooling").unwrap_or(0));
        peak_coord = peak_coord.max(c.coordinator_rss_kib(0).unwrap_or(0));
        let t = Instant::now();
        c.call("ListHosts", "{}");
        slowest_call = slowest_call.max(t.elapsed());
        assert!(t0.elapsed() < Duration::from_secs(600), "the read ends");
    }
    let took = t0.elapsed();
    let out = out.join().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines = text.lines().filter(|l| l.ends_with(&"x".repeat(99))).count() as u64;
    assert_eq!(lines, mb * 10_000, "every line of the burst, once");
    assert!(
        text.lines().last().is_some_and(|l| l.ends_with("burst-done")),
        "in order, to the end"
    );
    // Bounded: far less than the burst itself grew anywhere.
    let grew_op = peak_op.saturating_sub(before.0);
    let grew_coord = peak_coord.saturating_sub(before.1);
    assert!(
        grew_op < 64 * 1024 && grew_coord < 64 * 1024,
        "memory grew by operator {grew_op} KiB, coordinator {grew_coord} KiB for a {mb} MB read"
    );
    println!(
        "BENCH | logs burst | {mb} MB ({} lines) read in {:.1}s ({:.1} MB/s) | operator RSS {} -> peak {} KiB, coordinator {} -> peak {} KiB | slowest ListHosts meanwhile {} ms",
        mb * 10_000,
        took.as_secs_f64(),
        mb as f64 / took.as_secs_f64(),
        before.0,
        peak_op,
        before.1,
        peak_coord,
        slowest_call.as_millis()
    );
}

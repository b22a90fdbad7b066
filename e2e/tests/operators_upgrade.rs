//! `UpgradeOperators` over three simulated hosts installed with the
//! operators image: one host at a time, each host's install container is
//! replaced (by a helper from the new image) while a client writes to a
//! Valkey on every host; what a user checks: every write acknowledged and
//! kept, the managed containers never restarted (Docker's own start
//! times), every host's heartbeats naming the new image, and a roll to an
//! image whose operators do not keep running stops at the first host,
//! which is put back as it was.
//!
//! Needs what `e2e/tests/install.rs` needs, and `infra-local/redis:7`.

use std::time::{Duration, Instant};

use infra_e2e::hosts::{Cluster, ClusterOptions, OPERATORS_IMAGE};
use infra_e2e::scenarios::{ValkeyConn, the_container};
use infra_e2e::write;
use infra_test_support::load::Load;

const NEXT: &str = "infra-local/operators:upgrade-next";
const BROKEN: &str = "infra-local/operators:upgrade-broken";
const PASSWORD: &str = "e2e-upgrade-pass";

const KV: &str = r#"services:
  kv:
    image: infra-local/redis:7
    command: ["valkey-server", "--requirepass", "e2e-upgrade-pass", "--save", ""]
    ports: ["16379:6379"]
    deploy:
      replicas: 3
      placement:
        max_replicas_per_node: 1
"#;

fn install_image(c: &Cluster, host: &str) -> String {
    let o = c.docker(
        host,
        &[
            "inspect",
            "-f",
            "{{.Config.Image}} {{.State.Running}}",
            "infra-operators",
        ],
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn images_in_heartbeats(c: &Cluster) -> Vec<(String, String)> {
    let hosts = c.call("ListHosts", "{}");
    hosts[0]["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            (
                h["host"].as_str().unwrap_or_default().to_owned(),
                h["labels"]["operator_image"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn operators_roll_to_a_new_image_one_host_at_a_time_under_writes_restarting_nothing_and_a_bad_image_stops_the_roll() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "04-data/kv/compose.yml", KV);
    let mut opts = ClusterOptions::new(3)
        .images(&[OPERATORS_IMAGE, "infra-local/redis:7"])
        .catalog(dir.path());
    for h in ["host1", "host2", "host3"] {
        opts.host_tiers.insert(h.into(), Vec::new());
    }
    let c = Cluster::start(opts);
    let hosts = c.hosts();
    for h in &hosts {
        c.install_operators(h, &["data"], OPERATORS_IMAGE);
        // The new image: another tag of the same build (a new build for a
        // user); the broken one starts only its upgrade helper.
        let tagged = c.docker(h, &["tag", OPERATORS_IMAGE, NEXT]);
        assert!(tagged.status.success(), "{tagged:?}");
        let dockerfile = format!(
            "FROM {OPERATORS_IMAGE}\nENTRYPOINT [\"/bin/sh\", \"-c\", \"[ \\\"$0\\\" = upgrade-self ] && exec /usr/local/bin/infra-operator \\\"$0\\\" \\\"$@\\\"; echo broken >&2; exit 3\"]\n"
        );
        let built = std::process::Command::new("docker")
            .args([
                "exec",
                "-i",
                &c.container(h),
                "docker",
                "build",
                "-q",
                "-t",
                BROKEN,
                "-",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().expect("stdin").write_all(dockerfile.as_bytes())?;
                child.wait_with_output()
            })
            .expect("docker build");
        assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    }
    let progress = c.call("Deploy", r#"{"selection":{"services":["kv"]},"timeoutSeconds":120}"#);
    assert_eq!(
        progress.last().unwrap()["ready"],
        1,
        "kv ready: {progress:#?}\n{}",
        c.all_logs()
    );
    let before: Vec<_> = hosts.iter().map(|h| the_container(&c, h, "kv")).collect();

    // A client writes to the Valkey of every host, SET n, all along.
    let loads: Vec<Load> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let addr = format!("{}:16379", c.host_ip(h));
            let mut conn: Option<ValkeyConn> = None;
            Load::stepping(i as u64, 3, Duration::from_millis(50), move |n| {
                if conn.is_none() {
                    conn = Some(ValkeyConn::open(&addr, PASSWORD)?);
                }
                let r = conn
                    .as_mut()
                    .expect("a connection")
                    .call(&["SET", &format!("k{n}"), &n.to_string()]);
                if r.is_err() {
                    conn = None;
                }
                r.map(|_| ())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2)); // writes before the roll, not a synchronisation

    // The roll: one host at a time.
    let t0 = Instant::now();
    let out = c.call(
        "UpgradeOperators",
        &format!(r#"{{"image":"{NEXT}","timeoutSeconds":120}}"#),
    );
    let took = t0.elapsed();
    let done = out.last().expect("a DONE line");
    assert_eq!(done["phase"], "PHASE_DONE", "{out:#?}\n{}", c.coordinator_log(0));
    let per_host: Vec<String> = out
        .iter()
        .filter(|l| l["phase"] == "PHASE_READY")
        .map(|l| {
            format!(
                "{} {}",
                l["host"].as_str().unwrap_or_default(),
                l["message"].as_str().unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(per_host.len(), 3, "{out:#?}");
    // One host at a time: each host's READY comes before the next host is
    // asked.
    let order: Vec<&str> = out
        .iter()
        .filter(|l| l["phase"] == "PHASE_UPDATING" || l["phase"] == "PHASE_READY")
        .map(|l| l["host"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        order,
        ["host1", "host1", "host2", "host2", "host3", "host3"],
        "{out:#?}"
    );
    for h in &hosts {
        assert_eq!(install_image(&c, h), format!("{NEXT} true"), "{h}");
    }
    assert!(
        images_in_heartbeats(&c).iter().all(|(_, i)| i == NEXT),
        "{:?}",
        images_in_heartbeats(&c)
    );

    // A roll to an image whose operators do not keep running stops at the
    // first host, which gets its previous operators back; the next host
    // is not asked.
    let bad = c.grpcurl(
        &["infra.coordinator.v1.CoordinatorService/UpgradeOperators"],
        Some(&format!(
            r#"{{"image":"{BROKEN}","hosts":["host1","host2"],"timeoutSeconds":25}}"#
        )),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&bad.stdout),
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(!bad.status.success(), "the roll fails: {text}");
    assert!(
        text.contains("host host1") && text.contains("the roll stops here"),
        "{text}"
    );
    infra_test_support::wait_for("host1's previous operators back", Duration::from_secs(60), || {
        install_image(&c, "host1") == format!("{NEXT} true")
    });
    assert_eq!(
        install_image(&c, "host2"),
        format!("{NEXT} true"),
        "host2 was not asked"
    );

    // Nothing the operators manage restarted; every write acknowledged
    // and kept.
    let after: Vec<_> = hosts.iter().map(|h| the_container(&c, h, "kv")).collect();
    assert_eq!(before, after, "the Valkeys were not restarted (ids and start times)");
    let mut acked = 0;
    let mut longest = Duration::ZERO;
    for (i, load) in loads.iter().enumerate() {
        let w = load.take();
        assert!(w.failed.is_empty(), "{}: failed writes: {:?}", hosts[i], w.failed);
        let mut conn = ValkeyConn::open(&format!("{}:16379", c.host_ip(&hosts[i])), PASSWORD).unwrap();
        for n in &w.acked {
            let v = conn.text(&["GET", &format!("k{n}")]).unwrap();
            assert_eq!(v, n.to_string(), "k{n} on {}", hosts[i]);
        }
        acked += w.acked.len();
        longest = longest.max(w.longest_gap);
    }
    drop(loads);
    println!(
        "BENCH | operators upgrade over 3 hosts (one at a time) {:.1}s: {}; {acked} writes acknowledged, 0 failed, 0 lost, longest gap {:.2}s; 0 managed containers restarted; a bad image stopped the roll at host1 and put its operators back",
        took.as_secs_f64(),
        per_host.join("; "),
        longest.as_secs_f64()
    );
}

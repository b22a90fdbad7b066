//! Backups that restore, from the shipped catalog: `mng-pg`'s `x-backup`
//! (pg_dump of each database in its own container) stored in the shipped MinIO's bucket
//! (`x-backup-targets` in 04-data/minio; rclone's S3 server stands in for
//! MinIO here, e2e/images/recipes/s3), on one joined host with the
//! coordinator fenced off it (the backup runs where the data is).
//!
//! Known data is written (a table of a stated size), a backup is taken
//! through grpcurl while a client keeps inserting (the longest gap between
//! its acknowledged inserts during the backup is measured), more rows are
//! written after it, then the service is removed with its volume and
//! deployed again empty; the restore brings back every row written before
//! the backup's start, and none of those written after it. The same for
//! the shipped `mng-valkey` (an RDB through `valkey-cli --rdb`, restored as
//! the base of a new append-only file set: the keys are back, and stay
//! after a restart). Retention keeps
//! the newest `keep`, the leader takes a scheduled backup by itself, every
//! backup and restore is an event with its size, and MinIO's password
//! shows in no event or log. The user's override sets `keep: 2` and a
//! one-minute schedule for the test; everything else is the shipped file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use infra_e2e::hosts::{Cluster, ClusterOptions};
use serde_json::Value;

/// Rows of the known table (about 200 bytes each).
const ROWS: u64 = 100_000;

fn psql(c: &Cluster, host: &str, sql: &str) -> Result<String, String> {
    let id = infra_e2e::shipped::running(c, host, "mng-pg").ok_or("mng-pg does not run")?;
    let o = c.docker(
        host,
        &[
            "exec",
            &id,
            "psql",
            "-X",
            "-q",
            "-tA",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            "postgres",
            "-d",
            "app",
            "-c",
            sql,
        ],
    );
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// An S3 store outside the catalog, over https with a certificate of its
/// own CA: rclone's S3 server on the cluster's network, by a name the
/// hosts resolve. Its CA and key go into the checkout's `secrets/`.
struct Offsite {
    name: String,
    password: String,
}

fn offsite_store(c: &Cluster, catalog: &std::path::Path) -> Offsite {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap().keep();
    let name = format!("offsite.{}", c.id);
    let ssl = |args: &[&str]| {
        let o = Command::new("openssl")
            .current_dir(&dir)
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    ssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=backup test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    ssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        &format!("/CN={name}"),
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
    ]);
    std::fs::write(dir.join("san.ext"), format!("subjectAltName=DNS:{name}\n")).unwrap();
    ssl(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "tls.crt",
    ]);
    for f in ["tls.key", "tls.crt"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let password = format!("offsite-{}-{}", std::process::id(), infra_e2e::shipped::unix_now());
    std::fs::write(catalog.join("secrets/offsite_s3_key"), &password).unwrap();
    std::fs::copy(dir.join("ca.crt"), catalog.join("secrets/offsite_ca")).unwrap();
    let o = Command::new("docker")
        .args([
            "run",
            "-d",
            "--name",
            &format!("{}-offsite", c.id),
            "--label",
            &format!("{}={}", infra_e2e::hosts::CLUSTER_LABEL, c.id),
            "--network",
            &c.id,
            "--network-alias",
            &name,
            "-v",
            &format!("{}:/certs:ro", dir.display()),
            "--entrypoint",
            "rclone",
            "infra-local/s3:1",
            "serve",
            "s3",
            "/tmp/data",
            "--addr",
            ":9443",
            "--cert",
            "/certs/tls.crt",
            "--key",
            "/certs/tls.key",
            "--auth-key",
            &format!("offsite,{password}"),
            "--config",
            "/tmp/rclone.conf",
        ])
        .output()
        .expect("docker");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Offsite { name, password }
}

fn of_kind<'a>(ev: &'a [Value], kind: &str) -> Vec<&'a Value> {
    ev.iter().filter(|e| e["kind"] == kind).collect()
}

#[test]
#[allow(clippy::too_many_lines)] // one story, told in order
fn a_backup_of_the_shipped_mng_pg_restores_every_row_written_before_it_into_a_new_volume() {
    let (_checkout, catalog) = infra_e2e::catalog_checkout();
    let mut opts = ClusterOptions::new(1).tiers(&["data"]).images(&[
        "infra-local/postgres:15",
        "infra-local/redis:7",
        "infra-local/s3:1",
    ]);
    opts.compose_dir = catalog.clone();
    opts.project = "bk".into();
    let user = opts.user_override();
    std::fs::write(
        &user,
        "services:\n  mng-pg:\n    x-backup:\n      keep: 2\n      schedule: 1m\n",
    )
    .unwrap();
    let c = Cluster::start(opts);
    let host = c.hosts()[0].clone();
    let done = c.call(
        "Deploy",
        r#"{"selection":{"services":["minio","mng-pg","mng-valkey"]},"timeoutSeconds":240}"#,
    );
    assert_eq!(done.last().unwrap()["ready"], 3, "{done:#?}\n{}", c.tier_logs("data"));

    // ---------------------------------------------------- known data
    let pg = |sql: &str| {
        let id = infra_e2e::shipped::running(&c, &host, "mng-pg").unwrap();
        let o = c.docker(&host, &["exec", &id, "psql", "-X", "-q", "-U", "postgres", "-c", sql]);
        assert!(o.status.success(), "{sql}: {}", String::from_utf8_lossy(&o.stderr));
    };
    pg("CREATE DATABASE app");
    psql(
        &c,
        &host,
        &format!(
            "CREATE TABLE t (id bigint PRIMARY KEY, v text); INSERT INTO t SELECT g, repeat(md5(g::text), 6) FROM \
             generate_series(1, {ROWS}) g; CREATE TABLE w (id bigserial PRIMARY KEY, phase text, at timestamptz \
             DEFAULT now())"
        ),
    )
    .unwrap();
    let db_bytes: u64 = psql(&c, &host, "SELECT pg_database_size('app')")
        .unwrap()
        .parse()
        .unwrap();
    let digest = psql(&c, &host, "SELECT md5(string_agg(v, '' ORDER BY id)) FROM t").unwrap();

    // ------------------------------- a backup while a client writes
    let acked: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let c = &c;
        std::thread::scope(|s| {
            let (sink, halt, on) = (acked.clone(), stop.clone(), host.clone());
            let h = s.spawn(move || {
                while !halt.load(Ordering::Relaxed) {
                    if let Ok(id) = psql(c, &on, "INSERT INTO w (phase) VALUES ('before') RETURNING id")
                        && let Ok(id) = id.parse()
                    {
                        sink.lock().unwrap().push((Instant::now(), id));
                    }
                }
            });
            // A few acknowledged writes first.
            infra_test_support::wait_for("the writer's first inserts", Duration::from_secs(60), || {
                acked.lock().unwrap().len() >= 3
            });
            let before = acked.lock().unwrap().last().map(|a| a.1).unwrap();
            let t0 = Instant::now();
            let backup = c.call("Backup", r#"{"service":"mng-pg"}"#);
            let took = t0.elapsed();
            std::thread::sleep(Duration::from_secs(2));
            stop.store(true, Ordering::Relaxed);
            h.join().unwrap();
            (backup, before, t0, took)
        })
    };
    let (backup, acked_before, t0, took) = writer;
    let first = backup[0].clone();
    let key = first["key"].as_str().expect("a key").to_owned();
    let size: u64 = first["size"].as_str().and_then(|s| s.parse().ok()).expect("a size");
    assert!(key.starts_with("bk/mng-pg/") && key.ends_with(".dump"), "{first:#}");
    assert_eq!(first["bucket"], "backups");
    assert!(size > ROWS * 100, "a dump of the table: {first:#}");
    let acks = acked.lock().unwrap().clone();
    let during: Vec<Instant> = acks
        .iter()
        .map(|a| a.0)
        .filter(|t| *t >= t0 - Duration::from_secs(1) && *t <= t0 + took + Duration::from_secs(1))
        .collect();
    let gap = during.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    assert!(
        during.len() >= 2,
        "the client wrote during the backup: {} acks",
        during.len()
    );
    let last_acked = acks.last().unwrap().1;
    // The writer's usual interval (a `psql` through `docker exec` each).
    let mut intervals: Vec<Duration> = acks.windows(2).map(|w| w[1].0 - w[0].0).collect();
    intervals.sort();
    let usual = intervals.get(intervals.len() / 2).copied().unwrap_or_default();
    // Rows after the backup: not in it.
    psql(
        &c,
        &host,
        "INSERT INTO w (phase) SELECT 'after' FROM generate_series(1, 50)",
    )
    .unwrap();

    // ------------------------------------ the volume destroyed
    let removed = c.call(
        "Remove",
        r#"{"selection":{"services":["mng-pg"]},"removeVolumes":true,"force":true}"#,
    );
    assert_eq!(removed[0]["volumesRemoved"], true, "{removed:#?}");
    let again = c.call(
        "Deploy",
        r#"{"selection":{"services":["minio","mng-pg"]},"timeoutSeconds":240}"#,
    );
    assert_eq!(again.last().unwrap()["ready"], 2, "{again:#?}");
    let id = infra_e2e::shipped::running(&c, &host, "mng-pg").unwrap();
    let o = c.docker(
        &host,
        &["exec", &id, "psql", "-U", "postgres", "-d", "app", "-c", "SELECT 1"],
    );
    assert!(!o.status.success(), "the new volume has no database app");

    // --------------------------------------------------- restore
    let r0 = Instant::now();
    // By its key: the leader's schedule may have taken one meanwhile.
    let restored = c.call(
        "Restore",
        &serde_json::json!({"service": "mng-pg", "key": key}).to_string(),
    );
    let restore_took = r0.elapsed();
    assert_eq!(restored[0]["key"], key.as_str(), "{restored:#?}");
    assert_eq!(psql(&c, &host, "SELECT count(*) FROM t").unwrap(), ROWS.to_string());
    assert_eq!(
        psql(&c, &host, "SELECT md5(string_agg(v, '' ORDER BY id)) FROM t").unwrap(),
        digest,
        "the table is back as it was"
    );
    let present: Vec<u64> = psql(&c, &host, "SELECT id FROM w ORDER BY id")
        .unwrap()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    for id in 1..=acked_before {
        assert!(
            present.contains(&id),
            "row {id} acknowledged before the backup started is back"
        );
    }
    assert!(
        present.iter().all(|id| *id <= last_acked),
        "no row written after the backup: {present:?} (last acknowledged during it: {last_acked})"
    );
    assert_eq!(
        psql(&c, &host, "SELECT count(*) FROM w WHERE phase = 'after'").unwrap(),
        "0"
    );

    // ------------------------- Valkey: an RDB back into a new volume
    let valkey = |cmd: &str| -> String {
        let id = infra_e2e::shipped::running(&c, &host, "mng-valkey").expect("mng-valkey runs");
        let o = c.docker(
            &host,
            &[
                "exec",
                &id,
                "sh",
                "-c",
                &format!("valkey-cli -a \"$(cat /run/secrets/valkey_password)\" --no-auth-warning {cmd}"),
            ],
        );
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    valkey("EVAL \"for i=1,20000 do redis.call('SET','key:'..i,string.rep('v',64)..i) end\" 0");
    assert_eq!(valkey("DBSIZE"), "20000");
    let v0 = Instant::now();
    let vb = c.call("Backup", r#"{"service":"mng-valkey"}"#);
    let v_took = v0.elapsed();
    let v_size: u64 = vb[0]["size"].as_str().and_then(|s| s.parse().ok()).expect("a size");
    // (RDB compresses the repeated values.)
    assert!(v_size > 20_000 * 10, "an RDB of the keys: {vb:#?}");
    valkey("SET written:after 1");
    let removed = c.call(
        "Remove",
        r#"{"selection":{"services":["mng-valkey"]},"removeVolumes":true,"force":true}"#,
    );
    assert_eq!(removed[0]["volumesRemoved"], true, "{removed:#?}");
    let again = c.call(
        "Deploy",
        r#"{"selection":{"services":["mng-valkey"]},"timeoutSeconds":240}"#,
    );
    assert_eq!(again.last().unwrap()["ready"], 1, "{again:#?}");
    assert_eq!(valkey("DBSIZE"), "0", "a new, empty volume");
    let vr0 = Instant::now();
    let vr = c.call(
        "Restore",
        &serde_json::json!({"service": "mng-valkey", "key": vb[0]["key"]}).to_string(),
    );
    assert_eq!(vr[0]["key"], vb[0]["key"], "{vr:#?}");
    // The server restarts on the restored files by itself.
    infra_test_support::wait_for("mng-valkey serves the restored keys", Duration::from_secs(60), || {
        valkey("DBSIZE") == "20000"
    });
    let v_restore = vr0.elapsed();
    assert_eq!(valkey("GET key:777"), format!("{}777", "v".repeat(64)));
    assert_eq!(valkey("EXISTS written:after"), "0", "nothing written after the backup");
    // In its append-only files: a restart keeps them.
    let id = infra_e2e::shipped::running(&c, &host, "mng-valkey").unwrap();
    c.docker(&host, &["restart", &id]);
    infra_test_support::wait_for("mng-valkey back after a restart", Duration::from_secs(60), || {
        valkey("DBSIZE") == "20000"
    });

    // ------------------------------------- retention: keep 2
    let second = c.call("Backup", r#"{"service":"mng-pg"}"#);
    let third = c.call("Backup", r#"{"service":"mng-pg"}"#);
    assert!(
        third[0]["deleted"].as_array().is_some_and(|d| !d.is_empty()),
        "retention deleted the oldest: {third:#?}"
    );
    let listed = c.call("ListBackups", r#"{"service":"mng-pg"}"#);
    let keys: Vec<&str> = listed[0]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["key"].as_str())
        .collect();
    assert_eq!(keys.len(), 2, "keep 2: {keys:?}");
    assert_eq!(keys[1], third[0]["key"].as_str().unwrap(), "the newest last: {keys:?}");
    assert!(keys[0] >= second[0]["key"].as_str().unwrap(), "{keys:?}");
    assert!(!keys.contains(&key.as_str()), "the first went: {keys:?}");
    let out = std::process::Command::new(infra_e2e::bin_dir("debug").join("infractl"))
        .args(["--addr", &format!("http://{}", c.grpc()), "backup", "list", "mng-pg"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().count() == 2 && text.contains(&format!("backups/{}", keys[1])),
        "{text}"
    );

    // --------------------------- the leader's schedule (1 minute here)
    let taken = |ev: &[Value]| of_kind(ev, "EVENT_KIND_BACKUP_TAKEN").len();
    let before_schedule = taken(&infra_e2e::shipped::event_history(&c));
    infra_test_support::wait_for(
        "a scheduled backup, taken by the leader",
        Duration::from_secs(150),
        || taken(&infra_e2e::shipped::event_history(&c)) > before_schedule,
    );

    // ------------------------- events with sizes; no password anywhere
    let ev = infra_e2e::shipped::event_history(&c);
    let taken_ev = of_kind(&ev, "EVENT_KIND_BACKUP_TAKEN");
    assert!(
        taken_ev.iter().any(|e| e["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&key) && r.contains(&format!("{size} bytes")))),
        "{taken_ev:#?}"
    );
    let restored_ev = of_kind(&ev, "EVENT_KIND_BACKUP_RESTORED");
    assert_eq!(restored_ev.len(), 2, "mng-pg and mng-valkey: {restored_ev:#?}");
    let password = std::fs::read_to_string(catalog.join("secrets/minio_root_password")).unwrap();
    let password = password.trim();
    assert!(password.len() >= 8);
    for (what, text) in [
        ("events", serde_json::to_string(&ev).unwrap()),
        ("operator logs", c.tier_logs("data")),
        ("coordinator log", c.coordinator_log(0)),
    ] {
        assert!(!text.contains(password), "MinIO's password in the {what}");
    }

    // ------------------ an off-site store over https, with its own CA
    let offsite = offsite_store(&c, &catalog);
    std::fs::write(
        &user,
        format!(
            "x-backup-targets:\n  offsite:\n    endpoint: https://{0}:9443\n    bucket: offsite\n    access_key: \
             offsite\n    secret_key_secret: offsite_s3_key\n    ca_secret: offsite_ca\n    part_size: 5m\n  untrusted:\n    endpoint: \
             https://{0}:9443\n    bucket: offsite\n    access_key: offsite\n    secret_key_secret: offsite_s3_key\n\
             services:\n  mng-pg:\n    x-backup:\n      keep: 2\n      target: offsite\n  mng-valkey:\n    \
             x-backup:\n      target: untrusted\n",
            offsite.name
        ),
    )
    .unwrap();
    infra_e2e::shipped::catalog_push(&c, &catalog, &user);
    let ob = c.call("Backup", r#"{"service":"mng-pg"}"#);
    assert_eq!(ob[0]["bucket"], "offsite", "{ob:#?}");
    // Stored in 5 MB parts (a multipart upload), read back whole below.
    let parts = size.div_ceil(5 << 20);
    assert!(parts >= 2, "{size}");
    assert!(
        c.tier_logs("data").contains(&format!("\"parts\":{parts}")),
        "the operator stored it in {parts} parts"
    );
    let listed = c.call("ListBackups", r#"{"service":"mng-pg"}"#);
    assert!(
        listed[0]["backups"]
            .as_array()
            .is_some_and(|b| b.iter().any(|o| o["key"] == ob[0]["key"])),
        "{listed:#?}"
    );
    // Restored over the running database this time (its clients are cut).
    psql(&c, &host, "DELETE FROM t WHERE id <= 1000").unwrap();
    let or = c.call(
        "Restore",
        &serde_json::json!({"service": "mng-pg", "key": ob[0]["key"]}).to_string(),
    );
    assert_eq!(or[0]["key"], ob[0]["key"], "{or:#?}");
    assert_eq!(psql(&c, &host, "SELECT count(*) FROM t").unwrap(), ROWS.to_string());
    // A store whose certificate nothing trusts is refused, saying why.
    let o = c.grpcurl(
        &["infra.coordinator.v1.CoordinatorService/Backup"],
        Some(r#"{"service":"mng-valkey"}"#),
    );
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && said.contains("certificate") && said.contains("UnknownIssuer"),
        "{said}"
    );
    let ev = infra_e2e::shipped::event_history(&c);
    for (what, text) in [
        ("events", serde_json::to_string(&ev).unwrap()),
        ("operator logs", c.tier_logs("data")),
        ("coordinator log", c.coordinator_log(0)),
    ] {
        assert!(
            !text.contains(&offsite.password),
            "the off-site store's key in the {what}"
        );
    }

    let restore_size: u64 = restored[0]["size"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
    println!(
        "BENCH backup: mng-pg database {:.1} MB ({ROWS} rows + the writer's); backup {:.1} MB taken and \
         stored in {:.2} s (operator's own figure {} s); restore of {:.1} MB into a new volume {:.2} s; longest gap \
         between acknowledged inserts during the backup {} ms ({} inserts then; the writer's median interval {} ms)",
        db_bytes as f64 / 1e6,
        size as f64 / 1e6,
        took.as_secs_f64(),
        first["seconds"],
        restore_size as f64 / 1e6,
        restore_took.as_secs_f64(),
        gap.as_millis(),
        during.len(),
        usual.as_millis()
    );
    println!(
        "BENCH backup: mng-valkey 20000 keys, RDB {:.2} MB taken and stored in {:.2} s; restored into a new volume \
         and serving again in {:.2} s",
        v_size as f64 / 1e6,
        v_took.as_secs_f64(),
        v_restore.as_secs_f64()
    );
}

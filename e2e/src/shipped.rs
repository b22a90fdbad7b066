//! Asking the shipped stacks' services on a bed's hosts what a user would
//! ask them: which container runs a service, a MariaDB query, when an engine
//! saw a service stop and start. Shared by the tests that deploy the shipped
//! catalog across joined hosts (`ha.rs`, `galera_hosts.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::hosts::Cluster;

/// The running container of `service` on `host` (its id; the name changes
/// as it rolls), if one runs there.
pub fn running(c: &Cluster, host: &str, service: &str) -> Option<String> {
    let o = c.docker(
        host,
        &["ps", "-q", "--filter", &format!("label=io.infra.service={service}")],
    );
    let id = String::from_utf8_lossy(&o.stdout).split_whitespace().next()?.to_owned();
    Some(id)
}

/// `mariadb` as `user` in `service`'s container on `host`, to its own
/// server, database `app`; the password read there from the secret file
/// `secret`. Rows as tab-separated lines.
pub fn mariadb(
    c: &Cluster,
    host: &str,
    service: &str,
    user: &str,
    secret: &str,
    query: &str,
) -> Result<String, String> {
    let id = running(c, host, service).ok_or_else(|| format!("no {service} running on {host}"))?;
    let script =
        format!(r#"MYSQL_PWD="$(< /run/secrets/{secret})" exec mariadb -u{user} -h127.0.0.1 -N -B app -e "$1""#);
    let o = c.docker(host, &["exec", &id, "bash", "-c", &script, "bash", query]);
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).trim().to_owned())
    }
}

/// A Galera status variable (`wsrep_cluster_size`, ...) of `service` on
/// `host`, asked as root; empty when it cannot be asked.
pub fn galera_status(c: &Cluster, host: &str, service: &str, var: &str) -> String {
    mariadb(
        c,
        host,
        service,
        "root",
        "mariadb_root_password",
        &format!("SHOW GLOBAL STATUS LIKE '{var}'"),
    )
    .map(|r| r.split('\t').nth(1).unwrap_or("").to_owned())
    .unwrap_or_default()
}

/// When `host`'s engine saw containers of `service` die and start since
/// `since` (unix seconds): (nanoseconds of the engine's clock, `die` or
/// `start`), in order.
pub fn lifecycle(c: &Cluster, host: &str, service: &str, since: u64) -> Vec<(i128, String)> {
    let filters = [
        "type=container".to_owned(),
        format!("label=io.infra.service={service}"),
        "event=die".into(),
        "event=start".into(),
    ];
    c.engine_events(host, since, &filters, "{{.TimeNano}} {{.Action}}")
        .lines()
        .filter_map(|l| {
            let (t, a) = l.split_once(' ')?;
            Some((t.parse().ok()?, a.to_owned()))
        })
        .collect()
}

/// The windows in which each of `members` (service, host) was down since
/// `since`: (died, started again, service), by the engines' clocks, sorted;
/// panics when one did not restart. Two windows that overlap are two
/// members down together.
pub fn down_windows<'a>(c: &Cluster, members: &[(&'a str, &str)], since: u64) -> Vec<(i128, i128, &'a str)> {
    windows(members, |host, service| lifecycle(c, host, service, since))
}

/// [`down_windows`] from the events `lifecycle(host, service)` gives.
pub fn windows<'a>(
    members: &[(&'a str, &str)],
    lifecycle: impl Fn(&str, &str) -> Vec<(i128, String)>,
) -> Vec<(i128, i128, &'a str)> {
    let mut windows: Vec<(i128, i128, &str)> = members
        .iter()
        .map(|(service, host)| {
            let ev = lifecycle(host, service);
            let died = ev
                .iter()
                .find(|(_, a)| a == "die")
                .map(|e| e.0)
                .unwrap_or_else(|| panic!("{service} on {host} restarted: {ev:?}"));
            let back = ev
                .iter()
                .find(|(t, a)| a == "start" && *t > died)
                .map(|e| e.0)
                .unwrap_or_else(|| panic!("{service} on {host} started again: {ev:?}"));
            (died, back, *service)
        })
        .collect();
    windows.sort_unstable();
    windows
}

/// One container event an engine recorded.
#[derive(Clone, Debug)]
pub struct EngineEvent {
    /// Nanoseconds of the engine's clock (the bed's hosts share one).
    pub nanos: i128,
    /// `start`, `die`, `exec_start: <command>`, `health_status: healthy`, ...
    pub action: String,
    /// The `io.infra.service` label of the container.
    pub service: String,
    /// For exec events, the exec's id.
    pub exec_id: String,
    /// For `die` and `exec_die`, the exit code.
    pub exit_code: String,
}

/// Every container event of the hosts' engines, recorded as they happen
/// (`docker events` follows on each host into a file): an engine keeps only
/// its last 256 events, which a busy host (health checks of twenty
/// containers) passes in a minute or two. A host that dies stops its
/// recording.
pub struct EngineEvents {
    children: Vec<std::process::Child>,
    files: BTreeMap<String, PathBuf>,
}

const EVENT_FORMAT: &str = "{{.TimeNano}}|{{.Action}}|{{index .Actor.Attributes \"io.infra.service\"}}|{{index .Actor.Attributes \"execID\"}}|{{index .Actor.Attributes \"exitCode\"}}";

impl EngineEvents {
    /// Starts recording on every host of `c`, from now.
    pub fn start(c: &Cluster) -> Self {
        let mut children = Vec::new();
        let mut files = BTreeMap::new();
        for h in c.hosts() {
            let path = c.dir.path().join(format!("{h}-engine-events.log"));
            let out = std::fs::File::create(&path).expect("an events file");
            let child = std::process::Command::new("docker")
                .args([
                    "exec",
                    &c.container(&h),
                    "docker",
                    "events",
                    "--filter",
                    "type=container",
                    "--format",
                ])
                .arg(EVENT_FORMAT)
                .stdout(out)
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("docker events");
            children.push(child);
            files.insert(h, path);
        }
        // `docker events` subscribes as it starts: give it that moment.
        std::thread::sleep(std::time::Duration::from_millis(500));
        Self { children, files }
    }

    /// What `host`'s engine recorded of `service`'s containers so far, in
    /// order.
    pub fn of(&self, host: &str, service: &str) -> Vec<EngineEvent> {
        let text = self
            .files
            .get(host)
            .map(std::fs::read_to_string)
            .transpose()
            .ok()
            .flatten()
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                // The action may hold `|` (a health test's pipe): the
                // time is the first field, the attributes the last three.
                let mut tail = l.rsplitn(4, '|');
                let (exit_code, exec_id, name, head) = (tail.next()?, tail.next()?, tail.next()?, tail.next()?);
                let (nanos, action) = head.split_once('|')?;
                (name == service).then(|| EngineEvent {
                    nanos: nanos.parse().unwrap_or_default(),
                    action: action.to_owned(),
                    service: name.to_owned(),
                    exec_id: exec_id.to_owned(),
                    exit_code: exit_code.to_owned(),
                })
            })
            .collect()
    }

    /// `die` and `start` of `service` on `host` after `after` (nanoseconds),
    /// as [`lifecycle`] gives them.
    pub fn lifecycle(&self, host: &str, service: &str, after: i128) -> Vec<(i128, String)> {
        self.of(host, service)
            .into_iter()
            .filter(|e| e.nanos > after && (e.action == "die" || e.action == "start"))
            .map(|e| (e.nanos, e.action))
            .collect()
    }

    /// When `service` first started on `host` after `after`, and when it
    /// first passed its health test `test` (a text of its command): Docker's
    /// verdict, or earlier a pass of the same test that the operator ran
    /// itself while Docker still said `starting` (an exec of it that exited
    /// 0).
    pub fn started_and_healthy(
        &self,
        host: &str,
        service: &str,
        test: &str,
        after: i128,
    ) -> (Option<i128>, Option<i128>) {
        let ev: Vec<EngineEvent> = self.of(host, service).into_iter().filter(|e| e.nanos > after).collect();
        let started = ev.iter().find(|e| e.action == "start").map(|e| e.nanos);
        let probes: Vec<&str> = ev
            .iter()
            .filter(|e| !test.is_empty() && e.action.starts_with("exec_start: ") && e.action.contains(test))
            .map(|e| e.exec_id.as_str())
            .collect();
        let healthy = ev
            .iter()
            .filter(|e| {
                e.action == "health_status: healthy"
                    || (e.action == "exec_die" && e.exit_code == "0" && probes.contains(&e.exec_id.as_str()))
            })
            .map(|e| e.nanos)
            .min();
        (started, healthy)
    }
}

impl Drop for EngineEvents {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Nanoseconds since the epoch now, as the engines' clocks count.
pub fn now_nanos() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_nanos()
        .try_into()
        .expect("nanoseconds fit")
}

/// Seconds since the epoch, less one (a `since` for engine events that
/// takes in what happens from now on).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs()
        - 1
}

/// `infractl catalog push` of a user's checkout `catalog` with the local
/// image override and the user's own override `user`: a new catalog
/// revision on the bus, as a user publishes one.
pub fn catalog_push(c: &Cluster, catalog: &std::path::Path, user: &std::path::Path) {
    let out = std::process::Command::new(crate::bin_dir("debug").join("infractl"))
        .args(["--addr", &format!("http://{}", c.grpc()), "catalog", "push"])
        .arg(catalog)
        .arg("--override")
        .arg(crate::repo_root().join("e2e/images/local.override.yml"))
        .arg("--override")
        .arg(user)
        .output()
        .expect("infractl");
    assert!(
        out.status.success(),
        "catalog push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every event in the history so far (`WatchEvents` from sequence 1,
/// read for a few seconds through grpcurl).
pub fn event_history(c: &Cluster) -> Vec<serde_json::Value> {
    let o = std::process::Command::new(std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into()))
        .args([
            "-plaintext",
            "-max-time",
            "4",
            "-d",
            r#"{"startSequence":"1"}"#,
            c.grpc(),
        ])
        .arg("infra.coordinator.v1.CoordinatorService/WatchEvents")
        .output()
        .expect("grpcurl");
    crate::parse_json_stream(&String::from_utf8_lossy(&o.stdout))
}

//! Backups declared in the catalog: a service's `x-backup` block (how to
//! dump and restore it, how often, how many to keep, where) and the
//! top-level `x-backup-targets` (S3 buckets and their keys):
//!
//! ```yaml
//! x-backup-targets:
//!   minio:
//!     endpoint: http://minio:9000
//!     bucket: backups
//!     access_key: minio-admin
//!     secret_key_secret: minio_root_password   # a top-level secret, or secrets/<name>
//! services:
//!   mng-pg:
//!     x-backup:
//!       dump: ["sh", "-c", "pg_dumpall -U postgres --clean --if-exists"]
//!       restore: ["sh", "-c", "psql -v ON_ERROR_STOP=1 -U postgres -d postgres"]
//!       schedule: daily        # hourly, daily, weekly or a duration (6h)
//!       keep: 7
//!       target: minio          # may be left out when there is one target
//! ```
//!
//! A cluster whose members are several services (Patroni's pg-0..2, the
//! Galera nodes) is backed up once, as a group: each member's block names
//! the `group` (the name backups are taken, listed and restored by) and a
//! `member` command that exits 0 only in the member to dump from and
//! restore into (Patroni's leader, a synced Galera node). The members'
//! blocks must otherwise agree (they usually come from one YAML anchor).
//! `restore_member`, when restores go to another member than dumps (a
//! Valkey replica is dumped, its primary restored), is that member's check:
//!
//! ```yaml
//!   pg-0:
//!     x-backup:
//!       group: pg-cluster
//!       member: ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8008/primary"]
//!       dump: ...
//! ```
//!
//! Errors name the service (or the target) and the field.

use std::collections::BTreeMap;
use std::time::Duration;

use infra_compose::{Catalog, Service};
use infra_proto::bus::v1::BackupTarget;
use serde_json::Value;

/// The service key.
pub const BACKUP_KEY: &str = "x-backup";
/// The top-level key.
pub const TARGETS_KEY: &str = "x-backup-targets";

/// One service's backups, as the catalog declares them.
#[derive(Clone, Debug, PartialEq)]
pub struct BackupPlan {
    /// The command whose stdout is the backup, run in the service's container.
    pub dump: Vec<String>,
    /// The command fed a backup on stdin to restore it; empty: none.
    pub restore: Vec<String>,
    /// How often the leader takes one; `None`: on demand only.
    pub every: Option<Duration>,
    /// How many to keep (older ones are deleted after a new one is stored).
    pub keep: u32,
    /// The target's name.
    pub target: String,
    /// How long a dump or a restore may take.
    pub timeout: Duration,
    /// The group this service is backed up with (`None`: by itself).
    pub group: Option<String>,
    /// The command that exits 0 in the member to use; empty: any running one.
    pub member: Vec<String>,
    /// The same for restores, when they go elsewhere (a Valkey replica is
    /// dumped, the primary restored); empty: `member`.
    pub restore_member: Vec<String>,
}

impl BackupPlan {
    /// The member check of `op` ("run" or "restore").
    pub fn member_check(&self, op: &str) -> &[String] {
        if op == "restore" && !self.restore_member.is_empty() {
            &self.restore_member
        } else {
            &self.member
        }
    }
}

/// What is backed up under one name: a service, or a group of them.
#[derive(Clone, Debug, PartialEq)]
pub struct Subject {
    /// The settings (the same for every member).
    pub plan: BackupPlan,
    /// The services whose containers may run the dump, in name order.
    pub members: Vec<String>,
}

fn strings(v: &Value, at: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{at}: every item must be a string"))
            })
            .collect(),
        Value::String(s) if !s.is_empty() => Ok(vec!["sh".into(), "-c".into(), s.clone()]),
        _ => Err(format!("{at}: a command (a list of strings, or one shell line)")),
    }
}

fn duration(v: &Value, at: &str) -> Result<Duration, String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => format!("{n}s"),
        _ => return Err(format!("{at}: a duration (30m, 6h) expected")),
    };
    let d = match s.as_str() {
        "hourly" => Duration::from_secs(3600),
        "daily" => Duration::from_secs(86_400),
        "weekly" => Duration::from_secs(7 * 86_400),
        other => infra_compose::parse_duration(other.strip_prefix("every ").unwrap_or(other))
            .map_err(|e| format!("{at}: {e} (hourly, daily, weekly or a duration such as 6h)"))?,
    };
    if d < Duration::from_secs(60) {
        return Err(format!("{at}: {s:?} is less than a minute"));
    }
    Ok(d)
}

/// `svc`'s backups, if it declares any.
pub fn plan(catalog: &Catalog, svc: &Service) -> Result<Option<BackupPlan>, String> {
    let Some(block) = svc.extensions.get(BACKUP_KEY) else {
        return Ok(None);
    };
    let place = format!("service {:?} ({}:{})", svc.name, svc.file.display(), svc.line);
    let at = |f: &str| format!("{place}: {BACKUP_KEY}.{f}");
    let m = block
        .as_object()
        .ok_or_else(|| format!("{place}: {BACKUP_KEY}: a mapping expected"))?;
    for k in m.keys() {
        if !matches!(
            k.as_str(),
            "dump" | "restore" | "schedule" | "keep" | "target" | "timeout" | "group" | "member" | "restore_member"
        ) {
            return Err(format!(
                "{}: unknown key (dump, restore, schedule, keep, target, timeout, group, member, restore_member)",
                at(k)
            ));
        }
    }
    let dump = strings(m.get("dump").unwrap_or(&Value::Null), &at("dump"))?;
    let restore = match m.get("restore") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => strings(v, &at("restore"))?,
    };
    let every = m.get("schedule").map(|v| duration(v, &at("schedule"))).transpose()?;
    let keep = match m.get("keep") {
        None => 7,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| format!("{}: a number from 1 to 10000", at("keep")))? as u32,
    };
    let timeout = m
        .get("timeout")
        .map(|v| duration(v, &at("timeout")))
        .transpose()?
        .unwrap_or(Duration::from_secs(3600));
    let targets = catalog.extensions.get(TARGETS_KEY).and_then(Value::as_object);
    let target = match m.get("target") {
        Some(Value::String(t)) => t.clone(),
        Some(_) => return Err(format!("{}: a target name expected", at("target"))),
        None => match targets.map(|t| t.keys().collect::<Vec<_>>()).as_deref() {
            Some([one]) => (*one).clone(),
            _ => {
                return Err(format!(
                    "{}: name one of {TARGETS_KEY} (there is not exactly one)",
                    at("target")
                ));
            }
        },
    };
    if !targets.is_some_and(|t| t.contains_key(&target)) {
        return Err(format!("{}: {target:?} is not in {TARGETS_KEY}", at("target")));
    }
    let group = match m.get("group") {
        None | Some(Value::Null) => None,
        Some(Value::String(g)) if valid_name(g) => {
            if catalog.services.contains_key(g) {
                return Err(format!("{}: {g:?} is the name of a service", at("group")));
            }
            Some(g.clone())
        }
        Some(_) => {
            return Err(format!(
                "{}: a name of letters, digits, '-', '_' and '.' expected",
                at("group")
            ));
        }
    };
    let member = match m.get("member") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => strings(v, &at("member"))?,
    };
    let restore_member = match m.get("restore_member") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => strings(v, &at("restore_member"))?,
    };
    for (k, v) in [("member", &member), ("restore_member", &restore_member)] {
        if !v.is_empty() && group.is_none() {
            return Err(format!("{}: only a group's members choose one (set group)", at(k)));
        }
    }
    Ok(Some(BackupPlan {
        dump,
        restore,
        every,
        keep,
        target,
        timeout,
        group,
        member,
        restore_member,
    }))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Every name the catalog's services are backed up by: a service's own,
/// or its group's (once, with all its members). The members of a group
/// must declare the same settings.
pub fn subjects(catalog: &Catalog) -> Result<BTreeMap<String, Subject>, String> {
    let mut out: BTreeMap<String, Subject> = BTreeMap::new();
    for svc in catalog.services.values() {
        let Some(p) = plan(catalog, svc)? else { continue };
        let name = p.group.clone().unwrap_or_else(|| svc.name.clone());
        match out.get_mut(&name) {
            None => {
                out.insert(
                    name,
                    Subject {
                        plan: p,
                        members: vec![svc.name.clone()],
                    },
                );
            }
            Some(s) => {
                if s.plan != p {
                    let first = &catalog.services[&s.members[0]];
                    return Err(format!(
                        "service {:?} ({}:{}): its {BACKUP_KEY} differs from that of {:?} ({}:{}), in the same \
                         group {name:?}: the members of a group are backed up once, with one setting",
                        svc.name,
                        svc.file.display(),
                        svc.line,
                        first.name,
                        first.file.display(),
                        first.line
                    ));
                }
                s.members.push(svc.name.clone());
            }
        }
    }
    for s in out.values_mut() {
        s.members.sort();
    }
    Ok(out)
}

/// The target `name`, keys read from its secret.
pub fn target(catalog: &Catalog, name: &str, env: &BTreeMap<String, String>) -> Result<BackupTarget, String> {
    let at = |f: &str| format!("{TARGETS_KEY}.{name:?}.{f}");
    let m = catalog
        .extensions
        .get(TARGETS_KEY)
        .and_then(Value::as_object)
        .and_then(|t| t.get(name))
        .and_then(Value::as_object)
        .ok_or_else(|| format!("{TARGETS_KEY}.{name:?}: not declared (a mapping expected)"))?;
    for k in m.keys() {
        if !matches!(
            k.as_str(),
            "endpoint" | "bucket" | "region" | "access_key" | "secret_key_secret" | "ca_secret" | "part_size"
        ) {
            return Err(format!(
                "{}: unknown key (endpoint, bucket, region, access_key, secret_key_secret, ca_secret, part_size)",
                at(k)
            ));
        }
    }
    let text = |f: &str, required: bool| -> Result<String, String> {
        match m.get(f) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            None if !required => Ok(String::new()),
            _ => Err(format!("{}: a string expected", at(f))),
        }
    };
    let secret = text("secret_key_secret", true)?;
    let secret_key =
        super::registry::secret_text(catalog, &secret, env).map_err(|e| format!("{}: {e}", at("secret_key_secret")))?;
    let ca = text("ca_secret", false)?;
    let ca_pem = if ca.is_empty() {
        String::new()
    } else {
        super::registry::secret_text(catalog, &ca, env).map_err(|e| format!("{}: {e}", at("ca_secret")))?
    };
    let endpoint = text("endpoint", true)?;
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(format!(
            "{}: {endpoint:?} is not an http:// or https:// URL",
            at("endpoint")
        ));
    }
    if !ca_pem.is_empty() && !ca_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("{}: {ca:?} holds no PEM certificate", at("ca_secret")));
    }
    let part_size = match m.get("part_size") {
        None => 0,
        Some(v) => {
            let text = match v {
                Value::String(t) => t.clone(),
                Value::Number(n) => n.to_string(),
                _ => String::new(),
            };
            let n = infra_compose::parse_size(&text)
                .map_err(|e| format!("{}: {e} (a size such as 64m)", at("part_size")))?;
            if n < 5 << 20 {
                return Err(format!("{}: {text:?} is under S3's least part, 5m", at("part_size")));
            }
            n
        }
    };
    Ok(BackupTarget {
        endpoint,
        ca_pem,
        part_size,
        bucket: text("bucket", true)?,
        region: text("region", false)?,
        access_key: text("access_key", true)?,
        secret_key,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use infra_compose::{LoadOptions, load_catalog};

    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn a_backup_block_and_its_target_are_read_and_bad_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "secrets/s3_key", "k3y\n");
        write(
            dir.path(),
            "04-data/db/docker-compose.yml",
            r#"x-backup-targets:
  store:
    endpoint: http://minio:9000
    bucket: backups
    access_key: admin
    secret_key_secret: s3_key
  offsite:
    endpoint: https://s3.example.com
    bucket: backups
    access_key: admin
    secret_key_secret: s3_key
    ca_secret: s3_key
  tiny:
    endpoint: https://s3.example.com
    bucket: backups
    access_key: admin
    secret_key_secret: s3_key
    part_size: 1m
services:
  db:
    image: postgres:17
    x-backup:
      dump: ["pg_dumpall"]
      restore: "psql -d postgres"
      schedule: daily
      keep: 3
      target: store
  bad:
    image: postgres:17
    x-backup:
      dump: ["pg_dumpall"]
      schedule: 10s
  worse:
    image: postgres:17
    x-backup:
      dump: ["pg_dumpall"]
      target: elsewhere
  plain:
    image: postgres:17
"#,
        );
        let cat = load_catalog(dir.path(), &LoadOptions::default()).unwrap();
        let p = plan(&cat, &cat.services["db"]).unwrap().unwrap();
        assert_eq!(p.dump, vec!["pg_dumpall"]);
        assert_eq!(p.restore, vec!["sh", "-c", "psql -d postgres"]);
        assert_eq!(
            (p.every, p.keep, p.target.as_str()),
            (Some(Duration::from_secs(86_400)), 3, "store")
        );
        assert_eq!(plan(&cat, &cat.services["plain"]).unwrap(), None);
        let e = plan(&cat, &cat.services["bad"]).unwrap_err();
        assert!(
            e.contains("service \"bad\" (")
                && e.contains("docker-compose.yml:")
                && e.contains("): x-backup.schedule")
                && e.contains("less than a minute"),
            "{e}"
        );
        let e = plan(&cat, &cat.services["worse"]).unwrap_err();
        assert!(e.contains("\"elsewhere\" is not in x-backup-targets"), "{e}");
        let t = target(&cat, "store", &BTreeMap::new()).unwrap();
        assert_eq!((t.bucket.as_str(), t.secret_key.as_str()), ("backups", "k3y"));
        assert!(t.ca_pem.is_empty());
        let e = target(&cat, "offsite", &BTreeMap::new()).unwrap_err();
        assert!(
            e.contains("x-backup-targets.\"offsite\".ca_secret: \"s3_key\" holds no PEM certificate"),
            "{e}"
        );
        let e = target(&cat, "tiny", &BTreeMap::new()).unwrap_err();
        assert!(e.contains("part_size: \"1m\" is under S3's least part, 5m"), "{e}");
        assert!(!format!("{:?}", plan(&cat, &cat.services["db"])).contains("k3y"));
    }

    #[test]
    fn the_members_of_a_group_are_one_subject_and_must_agree() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "secrets/s3_key", "k3y\n");
        let stack = |third_keep: u32| {
            format!(
                r#"x-backup-targets:
  store:
    endpoint: http://minio:9000
    bucket: backups
    access_key: admin
    secret_key_secret: s3_key
x-pg: &pg
  image: spilo:17
  x-backup: &bk
    group: pg-cluster
    member: curl -fs http://127.0.0.1:8008/primary
    dump: pg_dumpall
    restore: psql
    schedule: daily
services:
  pg-0: *pg
  pg-1: *pg
  pg-2:
    image: spilo:17
    x-backup:
      <<: *bk
      keep: {third_keep}
  solo:
    image: postgres:17
    x-backup:
      dump: pg_dumpall
"#
            )
        };
        write(dir.path(), "04-data/pg/docker-compose.yml", &stack(7));
        let cat = load_catalog(dir.path(), &LoadOptions::default()).unwrap();
        let all = subjects(&cat).unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), ["pg-cluster", "solo"]);
        let g = &all["pg-cluster"];
        assert_eq!(g.members, ["pg-0", "pg-1", "pg-2"]);
        assert_eq!(g.plan.member, ["sh", "-c", "curl -fs http://127.0.0.1:8008/primary"]);
        assert_eq!(all["solo"].members, ["solo"]);

        write(dir.path(), "04-data/pg/docker-compose.yml", &stack(3));
        let cat = load_catalog(dir.path(), &LoadOptions::default()).unwrap();
        let e = subjects(&cat).unwrap_err();
        assert!(
            e.contains("service \"pg-2\"")
                && e.contains("differs from that of \"pg-0\"")
                && e.contains("\"pg-cluster\""),
            "{e}"
        );

        write(
            dir.path(),
            "04-data/pg/docker-compose.yml",
            &stack(7).replace("group: pg-cluster", "group: solo"),
        );
        let cat = load_catalog(dir.path(), &LoadOptions::default()).unwrap();
        let e = subjects(&cat).unwrap_err();
        assert!(e.contains("x-backup.group: \"solo\" is the name of a service"), "{e}");
    }
}

//! What a Plan says changes in a service's spec: one line per changed
//! field, its old and new values (`image: a → b`, `environment: ROLL: 1 →
//! 2, +DEBUG=1`). Secrets and configuration files by their content hash;
//! an environment value whose name says it is a secret (`*PASSWORD*`,
//! `*SECRET*`, `*TOKEN*`, `*KEY`, ...) by the hash of its value too, so a
//! plan never prints one.

use std::collections::BTreeMap;

use infra_proto::bus::v1::ServiceSpec;
use sha2::{Digest, Sha256};

/// The first 12 hex digits of a hash, as the plan shows it.
fn short(hash: &str) -> String {
    format!("sha256:{}", &hash[..hash.len().min(12)])
}

/// Whether an environment name says its value is a secret.
fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    ["PASSWORD", "PASSWD", "SECRET", "TOKEN", "CREDENTIAL", "PRIVATE"]
        .iter()
        .any(|w| n.contains(w))
        || n.ends_with("KEY")
        || n.ends_with("_PWD")
}

fn value(name: &str, v: &str) -> String {
    if secret_name(name) {
        short(&hex::encode(Sha256::digest(v.as_bytes())))
    } else {
        v.to_owned()
    }
}

fn or_none(v: &str) -> &str {
    if v.is_empty() { "(none)" } else { v }
}

/// `+K=V`, `-K`, `K: a → b` for the keys of two maps that differ.
fn map_changes(old: &BTreeMap<&str, &str>, new: &BTreeMap<&str, &str>, mask: bool) -> String {
    let shown = |k: &str, v: &str| if mask { value(k, v) } else { v.to_owned() };
    let mut parts = Vec::new();
    for (k, v) in new {
        match old.get(k) {
            None => parts.push(format!("+{k}={}", shown(k, v))),
            Some(o) if o != v => parts.push(format!("{k}: {} → {}", shown(k, o), shown(k, v))),
            Some(_) => {}
        }
    }
    parts.extend(old.keys().filter(|k| !new.contains_key(*k)).map(|k| format!("-{k}")));
    parts.join(", ")
}

fn sorted(m: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn list(v: &[String]) -> String {
    format!("[{}]", v.join(" "))
}

/// What `spec`'s mounted files are, by target: the content hash of each.
fn files(spec: &ServiceSpec) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for s in &spec.secrets {
        out.insert(format!("secret {}", s.name), short(&s.sha256));
    }
    for c in &spec.configs {
        for f in &c.files {
            let at = if f.path.is_empty() {
                c.target.clone()
            } else {
                format!("{}/{}", c.target.trim_end_matches('/'), f.path)
            };
            out.insert(at, short(&f.sha256));
        }
    }
    out
}

/// The changed fields of `old` → `new`, one line each, field name first.
pub(crate) fn diff(old: &ServiceSpec, new: &ServiceSpec) -> Vec<String> {
    let mut out = Vec::new();
    let mut line = |name: &str, changed: bool, text: &dyn Fn() -> String| {
        if changed {
            let t = text();
            out.push(if t.is_empty() {
                name.to_owned()
            } else {
                format!("{name}: {t}")
            });
        }
    };
    // A pinned image shows its digest: a tag pushed again is a change.
    let image = |s: &ServiceSpec| {
        if s.image_digest.is_empty() {
            s.image.clone()
        } else {
            let d = s.image_digest.strip_prefix("sha256:").unwrap_or(&s.image_digest);
            format!("{}@{}", s.image, short(d))
        }
    };
    line(
        "image",
        old.image != new.image || old.image_digest != new.image_digest,
        &|| format!("{} → {}", image(old), image(new)),
    );
    let args = |a: &Option<infra_proto::bus::v1::Args>| {
        a.as_ref()
            .map_or_else(|| "(image default)".to_owned(), |a| list(&a.args))
    };
    line("command", old.command != new.command, &|| {
        format!("{} → {}", args(&old.command), args(&new.command))
    });
    line("entrypoint", old.entrypoint != new.entrypoint, &|| {
        format!("{} → {}", args(&old.entrypoint), args(&new.entrypoint))
    });
    line("environment", old.environment != new.environment, &|| {
        map_changes(&sorted(&old.environment), &sorted(&new.environment), true)
    });
    line("ports", old.ports != new.ports, &|| {
        let show = |s: &ServiceSpec| {
            s.ports
                .iter()
                .map(|p| {
                    let host = if p.published == 0 {
                        String::new()
                    } else {
                        format!("{}:", p.published)
                    };
                    format!(
                        "{}{host}{}/{}",
                        if p.host_ip.is_empty() {
                            String::new()
                        } else {
                            format!("{}:", p.host_ip)
                        },
                        p.target,
                        p.protocol
                    )
                })
                .collect::<Vec<_>>()
        };
        format!("{} → {}", list(&show(old)), list(&show(new)))
    });
    line("volumes", old.mounts != new.mounts, &|| {
        let show = |s: &ServiceSpec| {
            s.mounts
                .iter()
                .map(|m| format!("{}:{}{}", m.source, m.target, if m.read_only { ":ro" } else { "" }))
                .collect::<Vec<_>>()
        };
        format!("{} → {}", list(&show(old)), list(&show(new)))
    });
    let (fo, fnew) = (files(old), files(new));
    line("files", fo != fnew, &|| {
        let o: BTreeMap<&str, &str> = fo.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let n: BTreeMap<&str, &str> = fnew.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        map_changes(&o, &n, false)
    });
    line("networks", old.networks != new.networks, &String::new);
    line("healthcheck", old.healthcheck != new.healthcheck, &|| {
        let t = |s: &ServiceSpec| s.healthcheck.as_ref().map(|h| list(&h.test)).unwrap_or_default();
        if t(old) == t(new) {
            String::new()
        } else {
            format!("{} → {}", or_none(&t(old)), or_none(&t(new)))
        }
    });
    line("restart", old.restart != new.restart, &|| {
        format!("{} → {}", or_none(&old.restart), or_none(&new.restart))
    });
    line("labels", old.labels != new.labels, &|| {
        map_changes(&sorted(&old.labels), &sorted(&new.labels), false)
    });
    line("user", old.user != new.user, &|| {
        format!("{} → {}", or_none(&old.user), or_none(&new.user))
    });
    line("read_only", old.read_only != new.read_only, &|| {
        format!("{} → {}", old.read_only, new.read_only)
    });
    line("security_opt", old.security_opt != new.security_opt, &|| {
        format!("{} → {}", list(&old.security_opt), list(&new.security_opt))
    });
    line(
        "capabilities",
        old.cap_add != new.cap_add || old.cap_drop != new.cap_drop,
        &|| {
            format!(
                "add {} drop {} → add {} drop {}",
                list(&old.cap_add),
                list(&old.cap_drop),
                list(&new.cap_add),
                list(&new.cap_drop)
            )
        },
    );
    line("extra_hosts", old.extra_hosts != new.extra_hosts, &|| {
        format!("{} → {}", list(&old.extra_hosts), list(&new.extra_hosts))
    });
    line("deploy.replicas", old.replicas != new.replicas, &|| {
        format!("{} → {}", old.replicas, new.replicas)
    });
    line("deploy.resources", old.resources != new.resources, &String::new);
    line("depends_on", old.depends_on != new.depends_on, &|| {
        let names = |s: &ServiceSpec| s.depends_on.iter().map(|d| d.service.clone()).collect::<Vec<_>>();
        format!("{} → {}", list(&names(old)), list(&names(new)))
    });
    if out.is_empty() && infra_proto::spec::spec_hash(old) != infra_proto::spec::spec_hash(new) {
        out.push("other".into());
    }
    out
}

/// `diff` as the field names alone (for messages that list them).
#[cfg(test)]
fn fields(old: &ServiceSpec, new: &ServiceSpec) -> Vec<String> {
    diff(old, new)
        .into_iter()
        .map(|l| l.split(':').next().unwrap_or_default().to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use infra_proto::bus::v1::{ConfigFile, ConfigMount, SecretMount};

    use super::*;

    fn spec() -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            image: "i:1".into(),
            replicas: 1,
            ..Default::default()
        }
    }

    #[test]
    fn each_changed_field_says_old_and_new() {
        let a = spec();
        let mut b = a.clone();
        b.image = "i:2".into();
        b.replicas = 3;
        b.environment.insert("MODE".into(), "fast".into());
        assert_eq!(
            diff(&a, &b),
            vec!["image: i:1 → i:2", "environment: +MODE=fast", "deploy.replicas: 1 → 3"]
        );
        assert_eq!(fields(&a, &b), vec!["image", "environment", "deploy.replicas"]);
        // The same tag at another digest.
        let (mut p1, mut p2) = (a.clone(), a.clone());
        p1.image_digest = format!("sha256:{}", "1".repeat(64));
        p2.image_digest = format!("sha256:{}", "2".repeat(64));
        assert_eq!(
            diff(&p1, &p2),
            vec![format!(
                "image: i:1@sha256:{} → i:1@sha256:{}",
                "1".repeat(12),
                "2".repeat(12)
            )]
        );
        assert!(diff(&a, &a).is_empty());
        let mut c = b.clone();
        c.environment.insert("MODE".into(), "slow".into());
        c.environment.insert("OTHER".into(), "x".into());
        assert_eq!(diff(&b, &c), vec!["environment: MODE: fast → slow, +OTHER=x"]);
        assert_eq!(diff(&c, &b), vec!["environment: MODE: slow → fast, -OTHER"]);
    }

    #[test]
    fn secrets_and_files_by_hash_and_secret_looking_values_never() {
        let mut a = spec();
        a.environment.insert("DB_PASSWORD".into(), "hunter2".into());
        a.secrets.push(SecretMount {
            name: "db".into(),
            sha256: "aa".repeat(32),
            ..Default::default()
        });
        a.configs.push(ConfigMount {
            target: "/etc/haproxy.cfg".into(),
            files: vec![ConfigFile {
                sha256: "cc".repeat(32),
                ..Default::default()
            }],
            ..Default::default()
        });
        let mut b = a.clone();
        b.environment.insert("DB_PASSWORD".into(), "correct horse".into());
        b.secrets[0].sha256 = "bb".repeat(32);
        b.configs[0].files[0].sha256 = "dd".repeat(32);
        let d = diff(&a, &b).join("\n");
        assert!(!d.contains("hunter2") && !d.contains("correct horse"), "{d}");
        assert!(d.contains("environment: DB_PASSWORD: sha256:"), "{d}");
        assert!(
            d.contains("files: /etc/haproxy.cfg: sha256:cccccccccccc → sha256:dddddddddddd"),
            "{d}"
        );
        assert!(
            d.contains("secret db: sha256:aaaaaaaaaaaa → sha256:bbbbbbbbbbbb"),
            "{d}"
        );
    }
}

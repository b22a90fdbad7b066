//! Raw (interpolated, merged) YAML to domain types.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_norway::{Mapping, Value};

use crate::Tier;
use crate::envfile::parse_env;
use crate::error::LoadErrorKind;
use crate::keypath::KeyPath;
use crate::model::*;
use crate::paths::resolve;
use crate::values::*;

/// Service keys we turn into fields; a near miss of one of these is an error.
pub(crate) const SERVICE_KEYS: &[&str] = &[
    "image",
    "build",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "volumes",
    "tmpfs",
    "networks",
    "healthcheck",
    "depends_on",
    "restart",
    "labels",
    "profiles",
    "secrets",
    "configs",
    "user",
    "read_only",
    "security_opt",
    "cap_add",
    "cap_drop",
    "privileged",
    "hostname",
    "working_dir",
    "stop_signal",
    "stop_grace_period",
    "init",
    "shm_size",
    "ulimits",
    "sysctls",
    "extra_hosts",
    "expose",
    "devices",
    "dns",
    "network_mode",
    "pid",
    "ipc",
    "platform",
    "pull_policy",
    "logging",
    "gpus",
    "container_name",
    "deploy",
];

/// Compose service keys we know but do not model: reported, never an error.
const SERVICE_KEYS_UNMODELED: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "cgroup",
    "cgroup_parent",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpus",
    "cpuset",
    "credential_spec",
    "develop",
    "device_cgroup_rules",
    "dns_opt",
    "dns_search",
    "domainname",
    "external_links",
    "extends",
    "group_add",
    "isolation",
    "label_file",
    "links",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "models",
    "oom_kill_disable",
    "oom_score_adj",
    "post_start",
    "pre_stop",
    "provider",
    "runtime",
    "scale",
    "stdin_open",
    "storage_opt",
    "tty",
    "userns_mode",
    "uts",
    "volumes_from",
    "use_api_socket",
];

/// What converting one service needs to know.
pub(crate) struct SvcCtx<'a> {
    pub name: &'a str,
    pub tier: Tier,
    pub file: &'a Path,
    pub line: usize,
    /// Directory relative paths resolve against (absolute).
    pub dir: &'a Path,
    /// The interpolation environment (for bare `KEY` entries and `~`).
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

struct Conv<'a> {
    ctx: &'a SvcCtx<'a>,
    unsupported: BTreeMap<String, serde_json::Value>,
}

impl Conv<'_> {
    /// Checks the keys of a mapping against `known` (acted on) and
    /// `unmodeled` (known to Compose, reported); anything else is an error
    /// when it is a near miss of a known key and reported otherwise.
    fn keys(&mut self, m: &Mapping, p: &KeyPath, known: &[&str], unmodeled: &[&str]) -> R<()> {
        for (k, v) in m {
            let key = key_str(k, p)?;
            if known.contains(&key.as_str()) || (p.0.is_empty() && key.starts_with("x-")) {
                continue;
            }
            let kp = p.key(&key);
            let near = (!unmodeled.contains(&key.as_str()) && !key.starts_with("x-"))
                .then(|| closest(&key, known.iter().copied(), 2))
                .flatten();
            if let Some(s) = near {
                return Err(err_kind(
                    LoadErrorKind::UnknownKey,
                    &kp,
                    format!("unknown key {key:?}; did you mean {s:?}?"),
                ));
            }
            self.unsupported.insert(kp.to_string(), to_json(v));
        }
        Ok(())
    }
}

pub(crate) fn service(ctx: &SvcCtx<'_>, raw: &Value) -> R<Service> {
    let root = KeyPath::root();
    let m = match raw {
        Value::Null => &Mapping::new(),
        v => mapping(v, &root)?,
    };
    let mut c = Conv {
        ctx,
        unsupported: BTreeMap::new(),
    };
    c.keys(m, &root, SERVICE_KEYS, SERVICE_KEYS_UNMODELED)?;
    let g = |k: &str| m.get(k);
    let p = |k: &str| root.key(k);

    let mut extensions = BTreeMap::new();
    for (k, v) in m {
        if let Some(k) = k.as_str().filter(|k| k.starts_with("x-")) {
            extensions.insert(k.to_string(), to_json(v));
        }
    }

    let mut environment = BTreeMap::new();
    if let Some(v) = g("env_file") {
        env_files(ctx, v, &p("env_file"), &mut environment)?;
    }
    if let Some(v) = g("environment") {
        env_entries(ctx, v, &p("environment"), &mut environment)?;
    }

    let svc = Service {
        name: ctx.name.to_string(),
        tier: ctx.tier,
        file: ctx.file.to_path_buf(),
        line: ctx.line,
        image: opt_string(g("image"), &p("image"))?,
        build: g("build").map(|v| build(ctx, v, &p("build"))).transpose()?,
        command: g("command").map(|v| command(v, &p("command"))).transpose()?.flatten(),
        entrypoint: g("entrypoint")
            .map(|v| command(v, &p("entrypoint")))
            .transpose()?
            .flatten(),
        environment,
        ports: g("ports").map_or(Ok(Vec::new()), |v| c.ports(v, &p("ports")))?,
        volumes: g("volumes").map_or(Ok(Vec::new()), |v| c.volumes(v, &p("volumes")))?,
        tmpfs: opt_list(g("tmpfs"), &p("tmpfs"))?,
        networks: g("networks").map_or(Ok(Vec::new()), |v| c.networks(v, &p("networks")))?,
        healthcheck: match g("healthcheck") {
            None | Some(Value::Null) => None,
            Some(v) => Some(c.healthcheck(v, &p("healthcheck"))?),
        },
        depends_on: g("depends_on").map_or(Ok(Vec::new()), |v| c.depends_on(v, &p("depends_on")))?,
        restart: g("restart").map(|v| restart(v, &p("restart"))).transpose()?.flatten(),
        labels: opt_dict(g("labels"), &p("labels"))?,
        profiles: opt_list(g("profiles"), &p("profiles"))?,
        secrets: g("secrets").map_or(Ok(Vec::new()), |v| c.secret_refs(v, &p("secrets")))?,
        configs: g("configs").map_or(Ok(Vec::new()), |v| c.secret_refs(v, &p("configs")))?,
        user: opt_string(g("user"), &p("user"))?,
        read_only: opt_bool(g("read_only"), &p("read_only"))?.unwrap_or(false),
        security_opt: opt_list(g("security_opt"), &p("security_opt"))?,
        cap_add: opt_list(g("cap_add"), &p("cap_add"))?,
        cap_drop: opt_list(g("cap_drop"), &p("cap_drop"))?,
        privileged: opt_bool(g("privileged"), &p("privileged"))?.unwrap_or(false),
        hostname: opt_string(g("hostname"), &p("hostname"))?,
        working_dir: opt_string(g("working_dir"), &p("working_dir"))?,
        stop_signal: opt_string(g("stop_signal"), &p("stop_signal"))?,
        stop_grace_period: opt_duration(g("stop_grace_period"), &p("stop_grace_period"))?,
        init: opt_bool(g("init"), &p("init"))?,
        shm_size: opt_size(g("shm_size"), &p("shm_size"))?,
        ulimits: g("ulimits").map_or(Ok(BTreeMap::new()), |v| ulimits(v, &p("ulimits")))?,
        sysctls: opt_dict(g("sysctls"), &p("sysctls"))?,
        extra_hosts: g("extra_hosts").map_or(Ok(Vec::new()), |v| extra_hosts(v, &p("extra_hosts")))?,
        expose: {
            let list = opt_list(g("expose"), &p("expose"))?;
            for (i, e) in list.iter().enumerate() {
                expose_entry(e, &p("expose").index(i))?;
            }
            list
        },
        devices: opt_list(g("devices"), &p("devices"))?,
        dns: opt_list(g("dns"), &p("dns"))?,
        network_mode: opt_string(g("network_mode"), &p("network_mode"))?,
        pid: opt_string(g("pid"), &p("pid"))?,
        ipc: opt_string(g("ipc"), &p("ipc"))?,
        platform: opt_string(g("platform"), &p("platform"))?,
        pull_policy: opt_string(g("pull_policy"), &p("pull_policy"))?,
        logging: match g("logging") {
            None | Some(Value::Null) => None,
            Some(v) => Some(c.logging(v, &p("logging"))?),
        },
        gpus: g("gpus").map_or(Ok(Vec::new()), |v| c.gpus(v, &p("gpus")))?,
        container_name: opt_string(g("container_name"), &p("container_name"))?,
        deploy: match g("deploy") {
            None | Some(Value::Null) => None,
            Some(v) => Some(c.deploy(v, &p("deploy"))?),
        },
        extensions,
        unsupported: BTreeMap::new(),
    };
    Ok(Service {
        unsupported: c.unsupported,
        ..svc
    })
}

fn command(v: &Value, p: &KeyPath) -> R<Option<Vec<String>>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => shell_words::split(s)
            .map(Some)
            .map_err(|e| err(p, format!("cannot split {s:?} into words: {e}"))),
        Value::Sequence(_) => string_list(v, p).map(Some),
        _ => Err(type_err(v, p, "a string or a list of strings")),
    }
}

fn build(ctx: &SvcCtx<'_>, v: &Value, p: &KeyPath) -> R<Build> {
    let (context, m) = match v {
        Value::String(s) => (s.clone(), None),
        Value::Mapping(m) => (
            opt_string(m.get("context"), &p.key("context"))?.unwrap_or_else(|| ".".into()),
            Some(m),
        ),
        _ => return Err(type_err(v, p, "a string or a map")),
    };
    let context = if context.contains("://") || context.starts_with("git@") {
        context
    } else {
        resolve(ctx.dir, &context, ctx.env).display().to_string()
    };
    let mut b = Build {
        context,
        dockerfile: None,
        args: BTreeMap::new(),
        target: None,
        other: BTreeMap::new(),
    };
    if let Some(m) = m {
        b.dockerfile = opt_string(m.get("dockerfile"), &p.key("dockerfile"))?;
        b.args = opt_dict(m.get("args"), &p.key("args"))?;
        b.target = opt_string(m.get("target"), &p.key("target"))?;
        for (k, val) in m {
            let k = key_str(k, p)?;
            if !matches!(k.as_str(), "context" | "dockerfile" | "args" | "target") {
                b.other.insert(k, to_json(val));
            }
        }
    }
    Ok(b)
}

/// `env_file`: a path, or a list of paths or `{path, required}`; files are
/// read in order and later values win.
fn env_files(ctx: &SvcCtx<'_>, v: &Value, p: &KeyPath, out: &mut BTreeMap<String, String>) -> R<()> {
    let items: Vec<(KeyPath, &Value)> = match v {
        Value::Sequence(items) => items.iter().enumerate().map(|(i, it)| (p.index(i), it)).collect(),
        other => vec![(p.clone(), other)],
    };
    for (ip, item) in items {
        let (path, required) = match item {
            Value::Mapping(m) => {
                let path = opt_string(m.get("path"), &ip.key("path"))?
                    .ok_or_else(|| err(&ip, "env_file entry needs a `path`"))?;
                let req = opt_bool(m.get("required"), &ip.key("required"))?.unwrap_or(true);
                (path, req)
            }
            other => (string(other, &ip)?, true),
        };
        let abs = resolve(ctx.dir, &path, ctx.env);
        let text = match crate::load::read_text(&abs, crate::load::MAX_FILE_BYTES) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(err_kind(
                    LoadErrorKind::MissingFile,
                    &ip,
                    format!("env_file {} does not exist", abs.display()),
                ));
            }
            Err(e) => {
                return Err(err_kind(
                    LoadErrorKind::Io,
                    &ip,
                    format!("cannot read env_file {}: {e}", abs.display()),
                ));
            }
        };
        let pairs = parse_env(&text).map_err(|e| ConvError {
            kind: LoadErrorKind::EnvFile,
            path: KeyPath::root(),
            message: e.message,
            file: Some(abs.clone()),
            line: Some(e.line),
        })?;
        out.extend(pairs);
    }
    Ok(())
}

/// `environment` in list or map form; a key without a value takes it from
/// the interpolation environment, or is dropped (as Compose does).
fn env_entries(ctx: &SvcCtx<'_>, v: &Value, p: &KeyPath, out: &mut BTreeMap<String, String>) -> R<()> {
    match v {
        Value::Null => {}
        Value::Mapping(m) => {
            for (k, val) in m {
                let key = key_str(k, p)?;
                match val {
                    Value::Null => {
                        if let Some(x) = (ctx.env)(&key) {
                            out.insert(key, x);
                        }
                    }
                    other => {
                        let s = string(other, &p.key(&key))?;
                        out.insert(key, s);
                    }
                }
            }
        }
        Value::Sequence(items) => {
            for (i, it) in items.iter().enumerate() {
                let s = string(it, &p.index(i))?;
                match s.split_once('=') {
                    Some((k, val)) => {
                        out.insert(k.to_string(), val.to_string());
                    }
                    None => {
                        if let Some(x) = (ctx.env)(&s) {
                            out.insert(s, x);
                        }
                    }
                }
            }
        }
        _ => return Err(type_err(v, p, "a map or a list of KEY=VALUE")),
    }
    Ok(())
}

fn items<'v>(v: &'v Value, p: &KeyPath) -> R<Vec<(KeyPath, &'v Value)>> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Sequence(items) => Ok(items.iter().enumerate().map(|(i, it)| (p.index(i), it)).collect()),
        _ => Err(type_err(v, p, "a list")),
    }
}

fn protocol(s: &str, p: &KeyPath) -> R<Protocol> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "sctp" => Ok(Protocol::Sctp),
        other => Err(err(p, format!("unknown protocol {other:?} (use tcp, udp or sctp)"))),
    }
}

/// Checks an `expose` entry: `PORT`, `PORT-PORT`, optionally `/tcp|udp|sctp`,
/// ports 1 to 65535.
fn expose_entry(s: &str, p: &KeyPath) -> R<()> {
    let (ports, proto) = s.split_once('/').map_or((s, None), |(a, b)| (a, Some(b)));
    if let Some(pr) = proto {
        protocol(pr, p)?;
    }
    let (a, _) = port_range(ports, p).map_err(|_| {
        err(
            p,
            format!("invalid port {s:?}: expose takes ports 1 to 65535 (`8080`, `8000-8010`, `53/udp`)"),
        )
    })?;
    if a == 0 {
        return Err(err(p, format!("invalid port {s:?}: ports start at 1")));
    }
    Ok(())
}

fn port_range(s: &str, p: &KeyPath) -> R<(u16, u16)> {
    let bad = || err(p, format!("invalid port {s:?}"));
    match s.split_once('-') {
        Some((a, b)) => {
            let a: u16 = a.trim().parse().map_err(|_| bad())?;
            let b: u16 = b.trim().parse().map_err(|_| bad())?;
            if b < a {
                return Err(bad());
            }
            Ok((a, b))
        }
        None => {
            let a: u16 = s.trim().parse().map_err(|_| bad())?;
            Ok((a, a))
        }
    }
}

/// Expands `host` and `target` ranges pairwise.
fn expand_ports(
    host_ip: Option<String>,
    host: Option<(u16, u16)>,
    target: (u16, u16),
    proto: Protocol,
    p: &KeyPath,
) -> R<Vec<Port>> {
    let n = target.1 - target.0;
    if let Some(h) = host.filter(|h| h.1 - h.0 != n) {
        {
            return Err(err(
                p,
                format!(
                    "host port range {}-{} and container port range {}-{} differ in size",
                    h.0, h.1, target.0, target.1
                ),
            ));
        }
    }
    Ok((0..=n)
        .map(|i| Port {
            host_ip: host_ip.clone(),
            published: host.map(|h| h.0 + i),
            target: target.0 + i,
            protocol: proto,
        })
        .collect())
}

/// Short port syntax: `80`, `8080:80`, `127.0.0.1:8080:80/udp`,
/// `[::1]:8080:80`, `127.0.0.1::80`, `9000-9001:9000-9001`.
pub(crate) fn parse_port(s: &str, p: &KeyPath) -> R<Vec<Port>> {
    let (spec, proto) = match s.rsplit_once('/') {
        Some((a, b)) => (a, protocol(b, p)?),
        None => (s, Protocol::Tcp),
    };
    let (ip, rest) = if let Some(r) = spec.strip_prefix('[') {
        let (ip, after) = r.split_once(']').ok_or_else(|| err(p, format!("invalid port {s:?}")))?;
        let after = after
            .strip_prefix(':')
            .ok_or_else(|| err(p, format!("invalid port {s:?}")))?;
        (Some(ip.to_string()), after)
    } else {
        (None, spec)
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, host, target) = match (ip, parts.as_slice()) {
        (None, [t]) => (None, None, *t),
        (None, [h, t]) => (None, Some(*h), *t),
        (None, [i, h, t]) => (Some(i.to_string()), Some(*h), *t),
        (Some(ip), [h, t]) => (Some(ip), Some(*h), *t),
        _ => return Err(err(p, format!("invalid port {s:?}"))),
    };
    let host = match host {
        Some(h) if !h.is_empty() => Some(port_range(h, p)?),
        _ => None,
    };
    let ip = ip.filter(|i| !i.is_empty());
    expand_ports(ip, host, port_range(target, p)?, proto, p)
}

/// Short volume syntax: `name:/path[:ro]`, `./rel:/path`, `/abs:/path`, `/path`.
fn parse_volume(ctx: &SvcCtx<'_>, s: &str, p: &KeyPath) -> R<Mount> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, target, mode) = match parts.as_slice() {
        [t] => (None, *t, ""),
        [s, t] => (Some(*s), *t, ""),
        [s, t, m] => (Some(*s), *t, *m),
        _ => return Err(err(p, format!("invalid volume {s:?}"))),
    };
    if target.is_empty() || !target.starts_with('/') {
        return Err(err(
            p,
            format!("invalid volume {s:?}: the container path must be absolute"),
        ));
    }
    let mut read_only = false;
    for opt in mode.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" => read_only = true,
            "rw" | "z" | "Z" | "nocopy" | "consistent" | "cached" | "delegated" | "shared" | "rshared" | "slave"
            | "rslave" | "private" | "rprivate" => {}
            other => return Err(err(p, format!("unknown volume option {other:?} in {s:?}"))),
        }
    }
    let (kind, source) = match src {
        None => (MountKind::Volume, None),
        Some(sp) if is_host_path(sp) => (
            MountKind::Bind,
            Some(resolve(ctx.dir, sp, ctx.env).display().to_string()),
        ),
        Some(name) => (MountKind::Volume, Some(name.to_string())),
    };
    Ok(Mount {
        kind,
        source,
        target: target.to_string(),
        read_only,
        tmpfs_size: None,
    })
}

pub(crate) fn is_host_path(s: &str) -> bool {
    s.starts_with('/') || s.starts_with('.') || s.starts_with('~')
}

fn restart(v: &Value, p: &KeyPath) -> R<Option<RestartPolicy>> {
    let s = match v {
        Value::Null => return Ok(None),
        Value::Bool(false) => return Ok(Some(RestartPolicy::No)),
        other => string(other, p)?,
    };
    Ok(Some(match s.as_str() {
        "no" | "false" => RestartPolicy::No,
        "always" => RestartPolicy::Always,
        "unless-stopped" => RestartPolicy::UnlessStopped,
        "on-failure" => RestartPolicy::OnFailure(None),
        other => match other.strip_prefix("on-failure:") {
            Some(n) => {
                RestartPolicy::OnFailure(Some(n.parse().map_err(|_| {
                    err(p, format!("invalid restart policy {other:?}: retries must be a number"))
                })?))
            }
            None => {
                return Err(err(
                    p,
                    format!("unknown restart policy {other:?} (use no, always, on-failure[:N], unless-stopped)"),
                ));
            }
        },
    }))
}

fn ulimits(v: &Value, p: &KeyPath) -> R<BTreeMap<String, Ulimit>> {
    let mut out = BTreeMap::new();
    for (k, val) in mapping(v, p)? {
        let name = key_str(k, p)?;
        let kp = p.key(&name);
        let u = match val {
            Value::Mapping(m) => {
                let soft = int(
                    m.get("soft").ok_or_else(|| err(&kp, "missing `soft`"))?,
                    &kp.key("soft"),
                )?;
                let hard = int(
                    m.get("hard").ok_or_else(|| err(&kp, "missing `hard`"))?,
                    &kp.key("hard"),
                )?;
                Ulimit { soft, hard }
            }
            other => {
                let n = int(other, &kp)?;
                Ulimit { soft: n, hard: n }
            }
        };
        out.insert(name, u);
    }
    Ok(out)
}

fn extra_hosts(v: &Value, p: &KeyPath) -> R<Vec<String>> {
    let mut out = Vec::new();
    match v {
        Value::Mapping(m) => {
            for (k, val) in m {
                let host = key_str(k, p)?;
                for ip in string_list(val, &p.key(&host))? {
                    out.push(format!("{host}:{ip}"));
                }
            }
        }
        other => {
            for (i, s) in string_list(other, p)?.into_iter().enumerate() {
                let (h, ip) = s
                    .split_once('=')
                    .or_else(|| s.split_once(':'))
                    .ok_or_else(|| err(&p.index(i), format!("invalid extra host {s:?}, expected host:ip")))?;
                out.push(format!("{h}:{ip}"));
            }
        }
    }
    Ok(out)
}

/// YAML 1.2 reads `0440` as the integer 440; Compose means octal. A number
/// whose digits are all octal is read as octal; a string is always octal.
fn file_mode(v: &Value, p: &KeyPath) -> R<u32> {
    let digits = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().trim_start_matches("0o").to_string(),
        _ => return Err(type_err(v, p, "a file mode")),
    };
    if let Ok(m) = u32::from_str_radix(&digits, 8) {
        return Ok(m);
    }
    match v {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| type_err(v, p, "a file mode")),
        _ => Err(type_err(v, p, "a file mode")),
    }
}

impl Conv<'_> {
    fn ports(&mut self, v: &Value, p: &KeyPath) -> R<Vec<Port>> {
        let mut out = Vec::new();
        for (ip, item) in items(v, p)? {
            match item {
                Value::Number(_) | Value::String(_) => out.extend(parse_port(&string(item, &ip)?, &ip)?),
                Value::Mapping(m) => {
                    self.keys(
                        m,
                        &ip,
                        &["target", "published", "host_ip", "protocol"],
                        &["mode", "name", "app_protocol"],
                    )?;
                    let target = m.get("target").ok_or_else(|| err(&ip, "missing `target`"))?;
                    let target = port_range(&string(target, &ip.key("target"))?, &ip.key("target"))?;
                    let host = match opt_string(m.get("published"), &ip.key("published"))? {
                        Some(h) if !h.is_empty() => Some(port_range(&h, &ip.key("published"))?),
                        _ => None,
                    };
                    let proto = match opt_string(m.get("protocol"), &ip.key("protocol"))? {
                        Some(s) => protocol(&s, &ip.key("protocol"))?,
                        None => Protocol::Tcp,
                    };
                    let host_ip = opt_string(m.get("host_ip"), &ip.key("host_ip"))?;
                    out.extend(expand_ports(host_ip, host, target, proto, &ip)?);
                }
                other => return Err(type_err(other, &ip, "a port string or map")),
            }
        }
        Ok(out)
    }

    fn volumes(&mut self, v: &Value, p: &KeyPath) -> R<Vec<Mount>> {
        let mut out = Vec::new();
        for (ip, item) in items(v, p)? {
            match item {
                Value::String(s) => out.push(parse_volume(self.ctx, s, &ip)?),
                Value::Mapping(m) => {
                    self.keys(
                        m,
                        &ip,
                        &["type", "source", "target", "read_only", "tmpfs"],
                        &["bind", "volume", "image", "consistency"],
                    )?;
                    let tp = ip.key("type");
                    let kind = match opt_string(m.get("type"), &tp)?.as_deref() {
                        Some("volume") | None => MountKind::Volume,
                        Some("bind") => MountKind::Bind,
                        Some("tmpfs") => MountKind::Tmpfs,
                        Some(other) => {
                            return Err(err(
                                &tp,
                                format!("unsupported mount type {other:?} (use volume, bind or tmpfs)"),
                            ));
                        }
                    };
                    let target =
                        opt_string(m.get("target"), &ip.key("target"))?.ok_or_else(|| err(&ip, "missing `target`"))?;
                    let mut source = opt_string(m.get("source"), &ip.key("source"))?.filter(|s| !s.is_empty());
                    if kind == MountKind::Bind {
                        let s = source.ok_or_else(|| err(&ip, "a bind mount needs a `source`"))?;
                        source = Some(resolve(self.ctx.dir, &s, self.ctx.env).display().to_string());
                    }
                    let mut tmpfs_size = None;
                    if let Some(t) = m.get("tmpfs") {
                        let tp = ip.key("tmpfs");
                        let tm = mapping(t, &tp)?;
                        self.keys(tm, &tp, &["size"], &["mode"])?;
                        tmpfs_size = opt_size(tm.get("size"), &tp.key("size"))?;
                    }
                    out.push(Mount {
                        kind,
                        source,
                        target,
                        read_only: opt_bool(m.get("read_only"), &ip.key("read_only"))?.unwrap_or(false),
                        tmpfs_size,
                    });
                }
                other => return Err(type_err(other, &ip, "a volume string or map")),
            }
        }
        Ok(out)
    }

    fn networks(&mut self, v: &Value, p: &KeyPath) -> R<Vec<NetworkAttachment>> {
        match v {
            Value::Mapping(m) => {
                let mut out = Vec::new();
                for (k, val) in m {
                    let name = key_str(k, p)?;
                    let np = p.key(&name);
                    let (aliases, ipv4_address, ipv6_address) = match val {
                        Value::Null => (Vec::new(), None, None),
                        Value::Mapping(nm) => {
                            self.keys(
                                nm,
                                &np,
                                &["aliases"],
                                &[
                                    "ipv4_address",
                                    "ipv6_address",
                                    "link_local_ips",
                                    "mac_address",
                                    "driver_opts",
                                    "priority",
                                    "gw_priority",
                                    "interface_name",
                                ],
                            )?;
                            // Static addresses stay in `unsupported` (not
                            // acted on) and are read too, for the lint.
                            (
                                opt_list(nm.get("aliases"), &np.key("aliases"))?,
                                opt_string(nm.get("ipv4_address"), &np.key("ipv4_address"))?,
                                opt_string(nm.get("ipv6_address"), &np.key("ipv6_address"))?,
                            )
                        }
                        other => return Err(type_err(other, &np, "a map or null")),
                    };
                    out.push(NetworkAttachment {
                        name,
                        aliases,
                        ipv4_address,
                        ipv6_address,
                    });
                }
                Ok(out)
            }
            other => Ok(string_list(other, p)?
                .into_iter()
                .map(|name| NetworkAttachment {
                    name,
                    aliases: Vec::new(),
                    ipv4_address: None,
                    ipv6_address: None,
                })
                .collect()),
        }
    }

    fn healthcheck(&mut self, v: &Value, p: &KeyPath) -> R<Healthcheck> {
        let m = mapping(v, p)?;
        self.keys(
            m,
            p,
            &[
                "test",
                "interval",
                "timeout",
                "start_period",
                "start_interval",
                "retries",
                "disable",
            ],
            &[],
        )?;
        let tp = p.key("test");
        let mut test = match m.get("test") {
            None | Some(Value::Null) => HealthTest::Inherit,
            Some(Value::String(s)) if s.trim().is_empty() => HealthTest::None,
            Some(Value::String(s)) => HealthTest::Shell(s.clone()),
            Some(seq @ Value::Sequence(_)) => {
                let words = string_list(seq, &tp)?;
                match words.split_first() {
                    Some((first, rest)) if first == "NONE" => {
                        let _ = rest;
                        HealthTest::None
                    }
                    Some((first, rest)) if first == "CMD" => HealthTest::Cmd(rest.to_vec()),
                    Some((first, rest)) if first == "CMD-SHELL" => HealthTest::Shell(rest.join(" ")),
                    Some((first, _)) => {
                        return Err(err(
                            &tp,
                            format!("a test list must start with CMD, CMD-SHELL or NONE, not {first:?}"),
                        ));
                    }
                    None => HealthTest::Inherit,
                }
            }
            Some(other) => return Err(type_err(other, &tp, "a string or a list")),
        };
        if opt_bool(m.get("disable"), &p.key("disable"))? == Some(true) {
            test = HealthTest::None;
        }
        Ok(Healthcheck {
            test,
            interval: opt_duration(m.get("interval"), &p.key("interval"))?,
            timeout: opt_duration(m.get("timeout"), &p.key("timeout"))?,
            start_period: opt_duration(m.get("start_period"), &p.key("start_period"))?,
            start_interval: opt_duration(m.get("start_interval"), &p.key("start_interval"))?,
            retries: opt_uint(m.get("retries"), &p.key("retries"))?,
        })
    }

    fn depends_on(&mut self, v: &Value, p: &KeyPath) -> R<Vec<Dependency>> {
        let plain = |service: String| Dependency {
            service,
            condition: DependencyCondition::ServiceStarted,
            required: true,
            restart: false,
        };
        match v {
            Value::Mapping(m) => {
                let mut out = Vec::new();
                for (k, val) in m {
                    let name = key_str(k, p)?;
                    let dp = p.key(&name);
                    let mut d = plain(name);
                    match val {
                        Value::Null => {}
                        Value::Mapping(dm) => {
                            self.keys(dm, &dp, &["condition", "required", "restart"], &[])?;
                            if let Some(c) = opt_string(dm.get("condition"), &dp.key("condition"))? {
                                d.condition = match c.as_str() {
                                    "service_started" => DependencyCondition::ServiceStarted,
                                    "service_healthy" => DependencyCondition::ServiceHealthy,
                                    "service_completed_successfully" => {
                                        DependencyCondition::ServiceCompletedSuccessfully
                                    }
                                    other => {
                                        return Err(err(
                                            &dp.key("condition"),
                                            format!(
                                                "unknown condition {other:?} (use service_started, service_healthy or service_completed_successfully)"
                                            ),
                                        ));
                                    }
                                };
                            }
                            d.required = opt_bool(dm.get("required"), &dp.key("required"))?.unwrap_or(true);
                            d.restart = opt_bool(dm.get("restart"), &dp.key("restart"))?.unwrap_or(false);
                        }
                        other => return Err(type_err(other, &dp, "a map")),
                    }
                    out.push(d);
                }
                Ok(out)
            }
            other => Ok(string_list(other, p)?.into_iter().map(plain).collect()),
        }
    }

    fn secret_refs(&mut self, v: &Value, p: &KeyPath) -> R<Vec<SecretRef>> {
        let mut out = Vec::new();
        for (ip, item) in items(v, p)? {
            out.push(match item {
                Value::Mapping(m) => {
                    self.keys(m, &ip, &["source", "target", "uid", "gid", "mode"], &[])?;
                    SecretRef {
                        source: opt_string(m.get("source"), &ip.key("source"))?
                            .ok_or_else(|| err(&ip, "missing `source`"))?,
                        target: opt_string(m.get("target"), &ip.key("target"))?,
                        uid: opt_string(m.get("uid"), &ip.key("uid"))?,
                        gid: opt_string(m.get("gid"), &ip.key("gid"))?,
                        mode: m.get("mode").map(|v| file_mode(v, &ip.key("mode"))).transpose()?,
                    }
                }
                other => SecretRef {
                    source: string(other, &ip)?,
                    target: None,
                    uid: None,
                    gid: None,
                    mode: None,
                },
            });
        }
        Ok(out)
    }

    fn logging(&mut self, v: &Value, p: &KeyPath) -> R<Logging> {
        let m = mapping(v, p)?;
        self.keys(m, p, &["driver", "options"], &[])?;
        Ok(Logging {
            driver: opt_string(m.get("driver"), &p.key("driver"))?,
            options: opt_dict(m.get("options"), &p.key("options"))?,
        })
    }

    fn gpus(&mut self, v: &Value, p: &KeyPath) -> R<Vec<DeviceRequest>> {
        if v.as_str() == Some("all") {
            return Ok(vec![DeviceRequest {
                capabilities: vec!["gpu".into()],
                count: Some(DeviceCount::All),
                device_ids: Vec::new(),
                driver: None,
                options: BTreeMap::new(),
            }]);
        }
        let mut out = Vec::new();
        for (ip, item) in items(v, p)? {
            let mut d = self.device(item, &ip)?;
            if d.capabilities.is_empty() {
                d.capabilities.push("gpu".into());
            }
            out.push(d);
        }
        Ok(out)
    }

    fn device(&mut self, v: &Value, p: &KeyPath) -> R<DeviceRequest> {
        let m = mapping(v, p)?;
        self.keys(m, p, &["capabilities", "count", "device_ids", "driver", "options"], &[])?;
        let count = match m.get("count") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s == "all" => Some(DeviceCount::All),
            Some(c) => Some(DeviceCount::Count(uint(c, &p.key("count"))?)),
        };
        Ok(DeviceRequest {
            capabilities: opt_list(m.get("capabilities"), &p.key("capabilities"))?,
            count,
            device_ids: opt_list(m.get("device_ids"), &p.key("device_ids"))?,
            driver: opt_string(m.get("driver"), &p.key("driver"))?,
            options: opt_dict(m.get("options"), &p.key("options"))?,
        })
    }

    fn deploy(&mut self, v: &Value, p: &KeyPath) -> R<Deploy> {
        let m = mapping(v, p)?;
        self.keys(
            m,
            p,
            &[
                "mode",
                "replicas",
                "resources",
                "update_config",
                "rollback_config",
                "placement",
                "restart_policy",
                "labels",
                "endpoint_mode",
            ],
            &[],
        )?;
        let mode = match opt_string(m.get("mode"), &p.key("mode"))?.as_deref() {
            None | Some("replicated") => DeployMode::Replicated,
            Some("global") => DeployMode::Global,
            Some(other) => {
                return Err(err(
                    &p.key("mode"),
                    format!("unsupported deploy mode {other:?} (use replicated or global)"),
                ));
            }
        };
        let mut resources = Resources::default();
        if let Some(r) = m.get("resources").filter(|r| !r.is_null()) {
            let rp = p.key("resources");
            let rm = mapping(r, &rp)?;
            self.keys(rm, &rp, &["limits", "reservations"], &[])?;
            if let Some(l) = rm.get("limits").filter(|l| !l.is_null()) {
                let lp = rp.key("limits");
                let lm = mapping(l, &lp)?;
                self.keys(lm, &lp, &["cpus", "memory", "pids"], &[])?;
                resources.limits = ResourceLimits {
                    cpus: lm.get("cpus").map(|c| float(c, &lp.key("cpus"))).transpose()?,
                    memory: opt_size(lm.get("memory"), &lp.key("memory"))?,
                    pids: lm.get("pids").map(|c| int(c, &lp.key("pids"))).transpose()?,
                };
            }
            if let Some(r) = rm.get("reservations").filter(|r| !r.is_null()) {
                let lp = rp.key("reservations");
                let lm = mapping(r, &lp)?;
                self.keys(lm, &lp, &["cpus", "memory", "devices"], &["generic_resources"])?;
                let mut devices = Vec::new();
                if let Some(d) = lm.get("devices") {
                    for (ip, item) in items(d, &lp.key("devices"))? {
                        devices.push(self.device(item, &ip)?);
                    }
                }
                resources.reservations = ResourceReservations {
                    cpus: lm.get("cpus").map(|c| float(c, &lp.key("cpus"))).transpose()?,
                    memory: opt_size(lm.get("memory"), &lp.key("memory"))?,
                    devices,
                };
            }
        }
        let placement = match m.get("placement").filter(|x| !x.is_null()) {
            None => Placement::default(),
            Some(pl) => {
                let pp = p.key("placement");
                let pm = mapping(pl, &pp)?;
                self.keys(pm, &pp, &["constraints", "max_replicas_per_node", "preferences"], &[])?;
                let mut preferences = Vec::new();
                if let Some(prefs) = pm.get("preferences") {
                    for (ip, item) in items(prefs, &pp.key("preferences"))? {
                        match item {
                            Value::Mapping(sm) => match sm.get("spread") {
                                Some(s) => preferences.push(string(s, &ip.key("spread"))?),
                                None => return Err(err(&ip, "a placement preference needs `spread`")),
                            },
                            other => preferences.push(string(other, &ip)?),
                        }
                    }
                }
                Placement {
                    constraints: opt_list(pm.get("constraints"), &pp.key("constraints"))?,
                    max_replicas_per_node: opt_uint(pm.get("max_replicas_per_node"), &pp.key("max_replicas_per_node"))?,
                    preferences,
                }
            }
        };
        let restart_policy = match m.get("restart_policy").filter(|x| !x.is_null()) {
            None => None,
            Some(r) => {
                let rp = p.key("restart_policy");
                let rm = mapping(r, &rp)?;
                self.keys(rm, &rp, &["condition", "delay", "max_attempts", "window"], &[])?;
                let condition = match opt_string(rm.get("condition"), &rp.key("condition"))?.as_deref() {
                    None | Some("any") => RestartCondition::Any,
                    Some("none") => RestartCondition::None,
                    Some("on-failure") => RestartCondition::OnFailure,
                    Some(other) => {
                        return Err(err(
                            &rp.key("condition"),
                            format!("unknown condition {other:?} (use none, on-failure or any)"),
                        ));
                    }
                };
                Some(DeployRestartPolicy {
                    condition,
                    delay: opt_duration(rm.get("delay"), &rp.key("delay"))?,
                    max_attempts: opt_uint(rm.get("max_attempts"), &rp.key("max_attempts"))?,
                    window: opt_duration(rm.get("window"), &rp.key("window"))?,
                })
            }
        };
        Ok(Deploy {
            mode,
            replicas: opt_uint(m.get("replicas"), &p.key("replicas"))?.unwrap_or(1),
            resources,
            update_config: self.update_config(m.get("update_config"), &p.key("update_config"))?,
            rollback_config: self.update_config(m.get("rollback_config"), &p.key("rollback_config"))?,
            placement,
            restart_policy,
            labels: opt_dict(m.get("labels"), &p.key("labels"))?,
            endpoint_mode: opt_string(m.get("endpoint_mode"), &p.key("endpoint_mode"))?,
        })
    }

    fn update_config(&mut self, v: Option<&Value>, p: &KeyPath) -> R<Option<UpdateConfig>> {
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let m = mapping(v, p)?;
        self.keys(
            m,
            p,
            &[
                "parallelism",
                "delay",
                "failure_action",
                "monitor",
                "max_failure_ratio",
                "order",
            ],
            &[],
        )?;
        let d = UpdateConfig::default();
        let failure_action = match opt_string(m.get("failure_action"), &p.key("failure_action"))?.as_deref() {
            None => d.failure_action,
            Some("pause") => FailureAction::Pause,
            Some("continue") => FailureAction::Continue,
            Some("rollback") => FailureAction::Rollback,
            Some(other) => {
                return Err(err(
                    &p.key("failure_action"),
                    format!("unknown failure_action {other:?} (use pause, continue or rollback)"),
                ));
            }
        };
        let order = match opt_string(m.get("order"), &p.key("order"))?.as_deref() {
            None => d.order,
            Some("stop-first") => UpdateOrder::StopFirst,
            Some("start-first") => UpdateOrder::StartFirst,
            Some(other) => {
                return Err(err(
                    &p.key("order"),
                    format!("unknown order {other:?} (use stop-first or start-first)"),
                ));
            }
        };
        let ratio = match m.get("max_failure_ratio") {
            None | Some(Value::Null) => d.max_failure_ratio,
            Some(r) => float(r, &p.key("max_failure_ratio"))?,
        };
        if !(0.0..=1.0).contains(&ratio) {
            return Err(err(
                &p.key("max_failure_ratio"),
                format!("max_failure_ratio {ratio} must be between 0 and 1"),
            ));
        }
        Ok(Some(UpdateConfig {
            parallelism: opt_uint(m.get("parallelism"), &p.key("parallelism"))?.unwrap_or(d.parallelism),
            delay: opt_duration(m.get("delay"), &p.key("delay"))?.unwrap_or(d.delay),
            failure_action,
            monitor: opt_duration(m.get("monitor"), &p.key("monitor"))?.unwrap_or(d.monitor),
            max_failure_ratio: ratio,
            order,
        }))
    }
}

/// Splits unknown keys of a top-level entry into `unsupported`, with the
/// same near-miss rule as services.
fn top_keys(m: &Mapping, p: &KeyPath, known: &[&str], unsupported: &mut BTreeMap<String, serde_json::Value>) -> R<()> {
    for (k, v) in m {
        let key = key_str(k, p)?;
        if known.contains(&key.as_str()) {
            continue;
        }
        if let Some(s) = closest(&key, known.iter().copied(), 2) {
            return Err(err_kind(
                LoadErrorKind::UnknownKey,
                &p.key(&key),
                format!("unknown key {key:?}; did you mean {s:?}?"),
            ));
        }
        unsupported.insert(key, to_json(v));
    }
    Ok(())
}

/// `external: true` or the legacy `external: {name: x}`.
fn external(v: Option<&Value>, p: &KeyPath) -> R<(bool, Option<String>)> {
    match v {
        None | Some(Value::Null) => Ok((false, None)),
        Some(Value::Mapping(m)) => Ok((true, opt_string(m.get("name"), &p.key("name"))?)),
        Some(other) => Ok((boolean(other, p)?, None)),
    }
}

pub(crate) fn network_def(v: &Value, p: &KeyPath, file: &Path) -> R<NetworkDef> {
    let mut d = NetworkDef {
        file: file.to_path_buf(),
        ..NetworkDef::default()
    };
    let Some(m) = v.as_mapping() else {
        return if v.is_null() {
            Ok(d)
        } else {
            Err(type_err(v, p, "a map"))
        };
    };
    let mut unsupported = BTreeMap::new();
    top_keys(
        m,
        p,
        &["name", "external", "driver", "internal", "labels"],
        &mut unsupported,
    )?;
    let (ext, ext_name) = external(m.get("external"), &p.key("external"))?;
    d.external = ext;
    d.name = opt_string(m.get("name"), &p.key("name"))?.or(ext_name);
    d.driver = opt_string(m.get("driver"), &p.key("driver"))?;
    d.internal = opt_bool(m.get("internal"), &p.key("internal"))?.unwrap_or(false);
    d.labels = opt_dict(m.get("labels"), &p.key("labels"))?;
    d.unsupported = unsupported;
    Ok(d)
}

pub(crate) fn volume_def(v: &Value, p: &KeyPath, file: &Path) -> R<VolumeDef> {
    let mut d = VolumeDef {
        file: file.to_path_buf(),
        ..VolumeDef::default()
    };
    let Some(m) = v.as_mapping() else {
        return if v.is_null() {
            Ok(d)
        } else {
            Err(type_err(v, p, "a map"))
        };
    };
    let mut unsupported = BTreeMap::new();
    top_keys(m, p, &["name", "external", "driver", "labels"], &mut unsupported)?;
    let (ext, ext_name) = external(m.get("external"), &p.key("external"))?;
    d.external = ext;
    d.name = opt_string(m.get("name"), &p.key("name"))?.or(ext_name);
    d.driver = opt_string(m.get("driver"), &p.key("driver"))?;
    d.labels = opt_dict(m.get("labels"), &p.key("labels"))?;
    d.unsupported = unsupported;
    Ok(d)
}

/// A top-level secret or config. A `file` must exist now, so a missing
/// secret stops the load instead of a container start on some host.
pub(crate) fn secret_def(
    v: &Value,
    p: &KeyPath,
    file: &Path,
    line: usize,
    dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    allow_content: bool,
) -> R<SecretDef> {
    let m = mapping(v, p)?;
    let mut known = vec!["file", "environment", "external", "name"];
    if allow_content {
        known.push("content");
    }
    let mut unsupported = BTreeMap::new();
    top_keys(m, p, &known, &mut unsupported)?;
    let (ext, ext_name) = external(m.get("external"), &p.key("external"))?;
    let name = opt_string(m.get("name"), &p.key("name"))?.or(ext_name);
    let source = if ext {
        SecretSource::External
    } else if let Some(f) = opt_string(m.get("file"), &p.key("file"))? {
        let abs: PathBuf = resolve(dir, &f, env);
        if !abs.exists() {
            return Err(err_kind(
                LoadErrorKind::MissingFile,
                &p.key("file"),
                format!("file {} does not exist", abs.display()),
            ));
        }
        SecretSource::File(abs)
    } else if let Some(e) = opt_string(m.get("environment"), &p.key("environment"))? {
        SecretSource::Environment(e)
    } else if let Some(c) = allow_content
        .then(|| opt_string(m.get("content"), &p.key("content")))
        .transpose()?
        .flatten()
    {
        SecretSource::Content(c)
    } else {
        return Err(err(p, "needs one of `file`, `environment` or `external`"));
    };
    Ok(SecretDef {
        source,
        name,
        file: file.to_path_buf(),
        line,
    })
}

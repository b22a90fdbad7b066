//! Reading the catalog: discovery, YAML, interpolation, includes (see the
//! `include` module), overrides, conversion and cross-file checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde_norway::{Mapping, Value};

use crate::Tier;
use crate::checks::{check_references, check_sources};
use crate::convert::{self, SvcCtx};
use crate::envfile::parse_env;
use crate::error::{LoadError, LoadErrorKind};
use crate::include;
use crate::interp::interpolate;
use crate::keypath::{KeyPath, LineIndex};
use crate::model::{NetworkDef, SecretDef, Service, VolumeDef};
use crate::paths::{absolute_dir, absolutize_file_entry, absolutize_service};
use crate::values::{ConvError, closest, strip_tags, suggest, to_json};

/// File names accepted for a stack, in order of preference.
pub const COMPOSE_FILE_NAMES: [&str; 4] = [
    "docker-compose.yml",
    "docker-compose.yaml",
    "compose.yml",
    "compose.yaml",
];

const TOP_KEYS: &[&str] = &[
    "services", "networks", "volumes", "secrets", "configs", "include", "name", "version",
];

/// The largest Compose, override or dotenv file the catalog reads. Real
/// stacks are a few kilobytes; a bigger file is refused before it is
/// parsed, so a runaway input never costs the coordinator its memory.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The largest secret or config file: Docker Swarm's limit too. Its
/// content travels on the bus in one message.
pub const MAX_SECRET_BYTES: u64 = 500 * 1024;

/// Reads a text file the catalog names, refusing one over `limit` bytes
/// before reading it.
pub(crate) fn read_text(path: &Path, limit: u64) -> std::io::Result<String> {
    let len = std::fs::metadata(path)?.len();
    if len > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("it is {len} bytes; the catalog reads files of at most {limit} bytes"),
        ));
    }
    std::fs::read_to_string(path)
}

/// How to load: where variables come from and which overrides to apply.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Dotenv file for interpolation; `None` means `<root>/.env` if it exists
    /// (a file named here must exist).
    pub env_file: Option<PathBuf>,
    /// Process environment; wins over the dotenv file, as in Compose.
    /// Callers pass `std::env::vars()` explicitly so tests stay hermetic.
    pub env: BTreeMap<String, String>,
    /// Compose override files merged onto the catalog, in order: mappings
    /// merge key by key, scalars and sequences replace.
    pub overrides: Vec<PathBuf>,
    /// Directories outside the catalog that secret and config `file:`
    /// sources may name. The catalog root and the directories of the
    /// override files always may; any other path is refused, symlinks
    /// resolved, so a catalog cannot read `/etc/shadow` into the bus.
    pub secret_dirs: Vec<PathBuf>,
}

/// The top-level `include` of one file, as written (after interpolation),
/// kept as a record of what the loader followed (see the `include`
/// module).
#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    /// The file that has it.
    pub file: PathBuf,
    /// As written.
    pub value: serde_json::Value,
}

/// Every service of every tier, as one Compose project.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    /// The `compose/` folder (for `load_files`, the common parent of the files).
    pub root: PathBuf,
    /// By name; names are unique across the catalog.
    pub services: BTreeMap<String, Service>,
    /// Top-level networks of all files, merged.
    pub networks: BTreeMap<String, NetworkDef>,
    /// Top-level volumes of all files, merged.
    pub volumes: BTreeMap<String, VolumeDef>,
    /// Top-level secrets of all files.
    pub secrets: BTreeMap<String, SecretDef>,
    /// Top-level configs of all files (same shape as secrets).
    pub configs: BTreeMap<String, SecretDef>,
    /// Top-level `x-*` keys.
    pub extensions: BTreeMap<String, serde_json::Value>,
    /// The `include` lists of the files read, as written; every one was
    /// followed, and the files it named are in `files`.
    pub includes: Vec<Include>,
    /// Unknown top-level keys.
    pub unsupported: BTreeMap<String, serde_json::Value>,
    /// Files read, each once: the catalog's (each stack followed by the
    /// files it includes), then the overrides.
    pub files: Vec<PathBuf>,
    /// For each service, the lines of its keys and list items in the file
    /// that defines it, by path relative to the service (`image`,
    /// `environment.POSTGRES_DB`, `ports[0]`, `networks.infra_net.ipv4_address`).
    /// List-form `environment` and `labels` items (`- KEY=value`) are also
    /// found by key (`environment.KEY`). Use [`Catalog::key_line`].
    pub key_lines: BTreeMap<String, BTreeMap<String, usize>>,
}

impl Catalog {
    /// The line of `key` (relative to the service, as in
    /// [`Catalog::key_lines`]) in the file that defines `service`, when the
    /// loader found it there.
    pub fn key_line(&self, service: &str, key: &str) -> Option<usize> {
        self.key_lines.get(service)?.get(key).copied()
    }
}

/// The lines of one service's keys, relative to the service.
fn service_key_lines(lines: &LineIndex, base: &KeyPath, raw: &Value) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> = lines.under(base).collect();
    for key in ["environment", "labels"] {
        let Some(Value::Sequence(items)) = raw.get(key) else {
            continue;
        };
        for (i, it) in items.iter().enumerate() {
            let Some(s) = it.as_str() else { continue };
            let k = s.split_once('=').map_or(s, |(k, _)| k).trim();
            if let Some(l) = out.get(&format!("{key}[{i}]")).copied() {
                out.entry(format!("{key}.{k}")).or_insert(l);
            }
        }
    }
    out
}

/// The interpolation variables of a file.
pub(crate) type Vars = BTreeMap<String, String>;

/// One file read: its interpolated top level and where it came from.
pub(crate) struct Doc {
    pub path: PathBuf,
    /// Relative paths in it resolve against this (absolute) directory: its
    /// own, or the `project_directory` it was included with.
    pub dir: PathBuf,
    pub lines: LineIndex,
    pub doc: Mapping,
    /// What `${VAR}` and bare `environment` keys read in this file.
    pub vars: Rc<Vars>,
    /// The file and line of the `include` entry that brought it in.
    pub included_from: Option<(PathBuf, usize)>,
}

impl Doc {
    /// Looks a variable up in the file's interpolation environment.
    pub fn var(&self, k: &str) -> Option<String> {
        self.vars.get(k).cloned()
    }
}

pub(crate) struct RawService {
    value: Value,
    pub doc: usize,
    tier: Tier,
}

struct RawEntry {
    value: Value,
    doc: usize,
}

/// Loads `root` (the `compose/` folder): every `NN-tier/stack/docker-compose.yml`.
///
/// Fails on the first problem, located by file and line, because a catalog
/// that half-loads would deploy half a platform.
pub fn load_catalog(root: &Path, opts: &LoadOptions) -> Result<Catalog, LoadError> {
    let files = discover(root)?;
    let default_env = root.join(".env");
    load(root.to_path_buf(), &files, Some(default_env), opts)
}

/// Loads explicit files with their tiers (tests and tools). The dotenv file
/// is only `opts.env_file`.
pub fn load_files(files: &[(PathBuf, Tier)], opts: &LoadOptions) -> Result<Catalog, LoadError> {
    let root = common_dir(files.iter().map(|(p, _)| p.as_path()));
    load(root, files, None, opts)
}

fn common_dir<'a>(paths: impl Iterator<Item = &'a Path>) -> PathBuf {
    let mut common: Option<PathBuf> = None;
    for p in paths {
        let dir = p.parent().unwrap_or(Path::new("")).to_path_buf();
        common = Some(match common {
            None => dir,
            Some(c) => {
                let mut out = PathBuf::new();
                for (a, b) in c.components().zip(dir.components()) {
                    if a != b {
                        break;
                    }
                    out.push(a.as_os_str());
                }
                out
            }
        });
    }
    common.unwrap_or_default()
}

pub(crate) fn io_err(path: &Path, e: std::io::Error) -> LoadError {
    let kind = match e.kind() {
        std::io::ErrorKind::NotFound => LoadErrorKind::MissingFile,
        std::io::ErrorKind::FileTooLarge => LoadErrorKind::TooLarge,
        _ => LoadErrorKind::Io,
    };
    LoadError::new(kind, path, format!("cannot read: {e}")).source(e)
}

fn sorted_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, LoadError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !path.is_dir() {
            continue;
        }
        out.push((name, path));
    }
    out.sort();
    Ok(out)
}

/// Finds `root/NN-tier/stack/<compose file>`; stacks without a Compose
/// file (helper folders) are skipped, and so are root folders that do not
/// start with `NN-` (`secrets/`); an `NN-` folder naming no tier is an
/// error.
fn discover(root: &Path) -> Result<Vec<(PathBuf, Tier)>, LoadError> {
    let mut files = Vec::new();
    for (name, tier_dir) in sorted_dirs(root)? {
        let numbered = name
            .split_once('-')
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !numbered {
            continue;
        }
        let tier = Tier::from_folder(&name).ok_or_else(|| {
            LoadError::new(
                LoadErrorKind::UnknownTier,
                &tier_dir,
                format!(
                    "folder {name:?} names no tier; expected NN-<tier> with tier one of {} (or 03-security)",
                    Tier::ALL.map(Tier::as_str).join(", ")
                ),
            )
        })?;
        for (_, stack) in sorted_dirs(&tier_dir)? {
            if let Some(f) = COMPOSE_FILE_NAMES.iter().map(|n| stack.join(n)).find(|p| p.is_file()) {
                files.push((f, tier));
            }
        }
    }
    Ok(files)
}

fn read_vars(default_env: Option<PathBuf>, opts: &LoadOptions) -> Result<Vars, LoadError> {
    let mut vars = BTreeMap::new();
    let env_file = match (&opts.env_file, default_env) {
        (Some(f), _) => Some(f.clone()),
        (None, Some(d)) if d.is_file() => Some(d),
        _ => None,
    };
    if let Some(f) = env_file {
        let text = read_text(&f, MAX_FILE_BYTES).map_err(|e| io_err(&f, e))?;
        let pairs =
            parse_env(&text).map_err(|e| LoadError::new(LoadErrorKind::EnvFile, &f, e.message).at(Some(e.line)))?;
        vars.extend(pairs);
    }
    vars.extend(opts.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(vars)
}

fn service_of(path: &KeyPath) -> Option<&str> {
    use crate::keypath::Seg;
    match path.0.as_slice() {
        [Seg::Key(s), Seg::Key(name), ..] if s == "services" => Some(name),
        _ => None,
    }
}

/// Reads and interpolates one file with `vars`; its `dir` is its own
/// directory until an `include` sets another.
pub(crate) fn read_doc(path: &Path, vars: &Rc<Vars>) -> Result<Doc, LoadError> {
    let lookup = |k: &str| vars.get(k).cloned();
    let text = read_text(path, MAX_FILE_BYTES).map_err(|e| io_err(path, e))?;
    let mut value: Value = serde_norway::from_str(&text).map_err(|e| yaml_err(path, &text, e))?;
    value.apply_merge().map_err(|e| yaml_err(path, &text, e))?;
    strip_tags(&mut value);
    let lines = LineIndex::build(&text);
    let doc = match value {
        Value::Null => Mapping::new(),
        Value::Mapping(m) => m,
        other => {
            return Err(LoadError::new(
                LoadErrorKind::InvalidValue,
                path,
                format!("the top level must be a map, found {}", crate::values::describe(&other)),
            )
            .at(Some(1)));
        }
    };
    let mut doc = Value::Mapping(doc);
    interpolate_tree(&mut doc, &KeyPath::root(), &lookup).map_err(|(p, e)| {
        let mut err = LoadError::new(LoadErrorKind::Interpolation, path, e.message)
            .at(lines.line(&p))
            .key(&p);
        if let Some(s) = service_of(&p) {
            err = err.service(s);
        }
        err
    })?;
    let doc = match doc {
        Value::Mapping(m) => m,
        _ => Mapping::new(),
    };
    Ok(Doc {
        path: path.to_path_buf(),
        dir: absolute_dir(path.parent().unwrap_or(Path::new("."))),
        lines,
        doc,
        vars: vars.clone(),
        included_from: None,
    })
}

fn yaml_err(path: &Path, text: &str, e: serde_norway::Error) -> LoadError {
    let loc = e.location();
    let mut msg = e.to_string();
    if let Some(i) = msg.rfind(" at line ") {
        msg.truncate(i);
    }
    let mut line = loc.as_ref().map(|l| l.line());
    // The parser gives no place for an expansion that runs away (an alias
    // bomb): name the first alias, where the expansion starts.
    if loc.is_none() && (msg.contains("repetition limit") || msg.contains("recursion limit")) {
        line = first_alias_line(text);
        msg = format!(
            "the document expands too far through aliases (anchors used inside anchors): {msg}; a catalog file must \
             stay small once its aliases are expanded"
        );
    }
    LoadError::new(LoadErrorKind::Yaml, path, msg)
        .at(line)
        .col(loc.as_ref().map(|l| l.column()))
        .source(e)
}

/// The first line that uses an alias (`*name` as a value).
fn first_alias_line(text: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.split(" #").next().unwrap_or(l);
            l.char_indices().any(|(i, c)| {
                c == '*'
                    && (i == 0 || matches!(l.as_bytes()[i - 1], b' ' | b'[' | b',' | b'{' | b':' | b'-'))
                    && l[i + 1..].starts_with(|n: char| n.is_ascii_alphanumeric() || n == '_')
            })
        })
        .map(|i| i + 1)
}

fn interpolate_tree(
    v: &mut Value,
    p: &KeyPath,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (KeyPath, crate::interp::InterpError)> {
    match v {
        Value::String(s) => {
            *s = interpolate(s, lookup).map_err(|e| (p.clone(), e))?;
        }
        Value::Sequence(items) => {
            for (i, it) in items.iter_mut().enumerate() {
                interpolate_tree(it, &p.index(i), lookup)?;
            }
        }
        Value::Mapping(m) => {
            for (k, val) in m.iter_mut() {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => crate::values::describe(other),
                };
                interpolate_tree(val, &p.key(&key), lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Override semantics: mappings merge key by key, anything else replaces.
pub(crate) fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(bv) => merge(bv, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// [`merge`] for JSON values (the catalog's top-level extensions).
fn merge_json(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(bv) => merge_json(bv, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn key_of(k: &Value, path: &Path, lines: &LineIndex, at: &KeyPath) -> Result<String, LoadError> {
    k.as_str().map(str::to_string).ok_or_else(|| {
        LoadError::new(
            LoadErrorKind::InvalidValue,
            path,
            format!("invalid key: {}, expected a string", crate::values::describe(k)),
        )
        .at(lines.line(at))
        .key(at)
    })
}

fn entries<'a>(v: &'a Value, d: &Doc, at: &KeyPath) -> Result<Vec<(String, &'a Value)>, LoadError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| Ok((key_of(k, &d.path, &d.lines, at)?, v)))
            .collect(),
        other => Err(LoadError::new(
            LoadErrorKind::InvalidValue,
            &d.path,
            format!("invalid type: {}, expected a map", crate::values::describe(other)),
        )
        .at(d.lines.line(at))
        .key(at)),
    }
}

fn conv_err(e: ConvError, d: &Doc, base: &KeyPath, service: Option<&str>) -> LoadError {
    let mut full = base.clone();
    full.0.extend(e.path.0.iter().cloned());
    let mut err = match e.file {
        Some(f) => LoadError::new(e.kind, &f, e.message).at(e.line),
        None => LoadError::new(e.kind, &d.path, e.message)
            .at(e.line.or_else(|| d.lines.line(&full)))
            .key(&full),
    };
    if let Some(s) = service {
        err = err.service(s);
    }
    err
}

#[derive(Default)]
struct Raw {
    services: BTreeMap<String, RawService>,
    networks: BTreeMap<String, RawEntry>,
    volumes: BTreeMap<String, RawEntry>,
    secrets: BTreeMap<String, RawEntry>,
    configs: BTreeMap<String, RawEntry>,
    extensions: BTreeMap<String, serde_json::Value>,
    includes: Vec<Include>,
    unsupported: BTreeMap<String, serde_json::Value>,
}

impl Raw {
    /// Adds one document's top level; `tier` is `None` for override files.
    fn add(&mut self, docs: &[Doc], di: usize, tier: Option<Tier>) -> Result<(), LoadError> {
        let d = &docs[di];
        let lookup = &|k: &str| d.var(k);
        for (k, v) in &d.doc {
            let top = key_of(k, &d.path, &d.lines, &KeyPath::root())?;
            let tp = KeyPath::root().key(&top);
            match top.as_str() {
                "services" => {
                    for (name, sv) in entries(v, d, &tp)? {
                        let sp = tp.key(&name);
                        let line = d.lines.line(&sp);
                        match (tier, self.services.get_mut(&name)) {
                            (Some(_), Some(prev)) => {
                                return Err(LoadError::new(
                                    LoadErrorKind::Duplicate,
                                    &d.path,
                                    format!(
                                        "service {name:?} is defined both in {} and in {}; service names must be unique across the catalog",
                                        include::label(&docs[prev.doc]),
                                        include::label(d)
                                    ),
                                )
                                .at(line)
                                .service(&name));
                            }
                            (Some(t), None) => {
                                self.services.insert(
                                    name,
                                    RawService {
                                        value: sv.clone(),
                                        doc: di,
                                        tier: t,
                                    },
                                );
                            }
                            (None, Some(prev)) => {
                                let mut over = sv.clone();
                                absolutize_service(&mut over, &d.dir, lookup);
                                merge(&mut prev.value, over);
                            }
                            (None, None) => {
                                let known: Vec<&str> = self.services.keys().map(String::as_str).collect();
                                let hint = suggest(&name, known)
                                    .map(|s| format!("; did you mean {s:?}?"))
                                    .unwrap_or_default();
                                return Err(LoadError::new(
                                    LoadErrorKind::Override,
                                    &d.path,
                                    format!("override names service {name:?}, which the catalog does not define{hint}"),
                                )
                                .at(line)
                                .service(&name));
                            }
                        }
                    }
                }
                "networks" | "volumes" | "secrets" | "configs" => {
                    let target = match top.as_str() {
                        "networks" => &mut self.networks,
                        "volumes" => &mut self.volumes,
                        "secrets" => &mut self.secrets,
                        _ => &mut self.configs,
                    };
                    for (name, ev) in entries(v, d, &tp)? {
                        let mut ev = ev.clone();
                        if tier.is_none() {
                            absolutize_file_entry(&mut ev, &d.dir, lookup);
                        }
                        match target.get_mut(&name) {
                            Some(prev) => {
                                // A secret's relative `file` must stay tied to
                                // the file that declared it.
                                if matches!(top.as_str(), "secrets" | "configs") && tier.is_some() {
                                    let pd = &docs[prev.doc];
                                    absolutize_file_entry(&mut prev.value, &pd.dir, &|k: &str| pd.var(k));
                                    absolutize_file_entry(&mut ev, &d.dir, lookup);
                                }
                                merge(&mut prev.value, ev);
                            }
                            None => {
                                target.insert(name, RawEntry { value: ev, doc: di });
                            }
                        }
                    }
                }
                "include" if tier.is_none() => return Err(include::in_override(d, &tp)),
                "include" => self.includes.push(Include {
                    file: d.path.clone(),
                    value: to_json(v),
                }),
                "name" | "version" => {}
                // Top-level extensions of several files (and of the
                // overrides) merge as services do: mappings key by key
                // (`x-backup-targets` of two stacks, a user's extra target),
                // anything else replaces.
                x if x.starts_with("x-") => match self.extensions.get_mut(&top) {
                    Some(prev) => merge_json(prev, to_json(v)),
                    None => {
                        self.extensions.insert(top.clone(), to_json(v));
                    }
                },
                other => {
                    if let Some(s) = closest(other, TOP_KEYS.iter().copied(), 2) {
                        return Err(LoadError::new(
                            LoadErrorKind::UnknownKey,
                            &d.path,
                            format!("unknown top-level key {other:?}; did you mean {s:?}?"),
                        )
                        .at(d.lines.line(&tp))
                        .key(&tp));
                    }
                    self.unsupported.insert(top.clone(), to_json(v));
                }
            }
        }
        Ok(())
    }
}

fn load(
    root: PathBuf,
    files: &[(PathBuf, Tier)],
    default_env: Option<PathBuf>,
    opts: &LoadOptions,
) -> Result<Catalog, LoadError> {
    let vars = Rc::new(read_vars(default_env, opts)?);
    let mut docs = Vec::new();
    let mut raw = Raw::default();
    let abs_root = absolute_dir(&root);
    for (path, tier) in files {
        for (di, t) in include::read_stack(path, *tier, &vars, &abs_root, &mut docs)? {
            raw.add(&docs, di, Some(t))?;
        }
    }
    for path in &opts.overrides {
        docs.push(read_doc(path, &vars)?);
        raw.add(&docs, docs.len() - 1, None)?;
    }

    let mut services = BTreeMap::new();
    let mut key_lines = BTreeMap::new();
    for (name, rs) in &raw.services {
        let d = &docs[rs.doc];
        let base = KeyPath::root().key("services").key(name);
        let lookup = |k: &str| d.var(k);
        let ctx = SvcCtx {
            name,
            tier: rs.tier,
            file: &d.path,
            line: d.lines.line(&base).unwrap_or(1),
            dir: &d.dir,
            env: &lookup,
        };
        let svc = convert::service(&ctx, &rs.value).map_err(|e| conv_err(e, d, &base, Some(name)))?;
        services.insert(name.clone(), svc);
        key_lines.insert(name.clone(), service_key_lines(&d.lines, &base, &rs.value));
    }

    let def_path = |kind: &str, name: &str| KeyPath::root().key(kind).key(name);
    let mut networks = BTreeMap::new();
    for (name, e) in &raw.networks {
        let d = &docs[e.doc];
        let base = def_path("networks", name);
        let n = convert::network_def(&e.value, &KeyPath::root(), &d.path).map_err(|er| conv_err(er, d, &base, None))?;
        networks.insert(name.clone(), n);
    }
    let mut volumes = BTreeMap::new();
    for (name, e) in &raw.volumes {
        let d = &docs[e.doc];
        let base = def_path("volumes", name);
        let v = convert::volume_def(&e.value, &KeyPath::root(), &d.path).map_err(|er| conv_err(er, d, &base, None))?;
        volumes.insert(name.clone(), v);
    }
    let mut secret_maps = [BTreeMap::new(), BTreeMap::new()];
    for (i, (kind, entries)) in [("secrets", &raw.secrets), ("configs", &raw.configs)]
        .into_iter()
        .enumerate()
    {
        for (name, e) in entries {
            let d = &docs[e.doc];
            let base = def_path(kind, name);
            let lookup = |k: &str| d.var(k);
            // The `file:` line when there is one: what a secret's errors
            // point at.
            let line = d
                .lines
                .exact(&base.key("file"))
                .or_else(|| d.lines.line(&base))
                .unwrap_or(1);
            let s = convert::secret_def(
                &e.value,
                &KeyPath::root(),
                &d.path,
                line,
                &d.dir,
                &lookup,
                kind == "configs",
            )
            .map_err(|er| {
                let mut le = conv_err(er, d, &base, None);
                le = LoadError::new(
                    le.kind(),
                    le.file(),
                    format!("{} {name:?}: {}", &kind[..kind.len() - 1], le.message()),
                )
                .at(le.line())
                .key(&base);
                le
            })?;
            secret_maps[i].insert(name.clone(), s);
        }
    }
    let [secrets, configs] = secret_maps;

    let catalog = Catalog {
        root,
        services,
        networks,
        volumes,
        secrets,
        configs,
        extensions: raw.extensions,
        includes: raw.includes,
        unsupported: raw.unsupported,
        files: include::distinct_files(&docs),
        key_lines,
    };
    check_references(&catalog, &raw.services, &docs)?;
    check_sources(&catalog, opts)?;
    Ok(catalog)
}

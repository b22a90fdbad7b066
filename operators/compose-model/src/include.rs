//! Following the top-level `include:` of a Compose file, with the Compose
//! specification's meaning.
//!
//! - **Syntax.** The short form lists files (`include: [../common/db.yml]`);
//!   the long form has `path` (a file, or a list of files), and optionally
//!   `project_directory` and `env_file` (a file or a list). Relative values
//!   resolve against the directory of the file that has the `include`.
//! - **Each entry is a Compose file of its own.** Its relative paths (bind
//!   mount sources, `env_file`, secret and config `file:`, build contexts)
//!   resolve against its project directory: `project_directory`, by default
//!   the directory of the included file (of the first one, for a list). The
//!   files of a list are merged in order as Compose overrides, with the
//!   loader's rule (mappings merge key by key, anything else replaces); a
//!   later file may also add names.
//! - **Variables.** The entry's `env_file`s (by default `.env` in its
//!   project directory, when there is one) give default values; the
//!   variables of the including file (for a stack: the catalog's `.env` and
//!   the process environment) win, as Compose passes its own environment
//!   down. So the process environment always wins.
//! - **Nesting.** An included file may include others; a file that ends up
//!   including itself is an error at the `include` entry that closes the
//!   loop, naming every file of the loop.
//! - **Conflicts.** A name (service, network, volume, secret or config)
//!   that a file and a file it includes both define, or that two of its
//!   included files define, is an error naming both files and lines, unless
//!   the two definitions are identical once interpolated and with their
//!   paths resolved (Compose's rule too, so the shared `infra_net: {}` may
//!   appear in both). Across stacks the catalog's own rules stand: a
//!   service name is unique in the whole catalog, networks and the other
//!   top-level entries merge.
//! - **Tiers.** The tier comes from the folder a file lives in, as for the
//!   stacks: a file included from another tier folder of the catalog
//!   (`<root>/NN-tier/...`) gives its services that folder's tier; any
//!   other included file (beside the stack, in the same tier folder, or
//!   outside the tier folders) belongs to the tier of the file that
//!   includes it, so nested includes pass the stack's tier down.
//! - **Files.** A missing included file is an error at its `include`
//!   entry (the including file and line), and so is one over
//!   [`MAX_FILE_BYTES`]. Secret and config files of included files must
//!   live where the loader allows any secret to (the catalog, an override
//!   file's directory, `secret_dirs`). Override files may not `include`:
//!   an override only changes what the catalog defines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde_norway::Value;

use crate::Tier;
use crate::envfile::parse_env;
use crate::error::{LoadError, LoadErrorKind};
use crate::keypath::KeyPath;
use crate::load::{Doc, MAX_FILE_BYTES, Vars, io_err, merge, read_doc, read_text};
use crate::paths::{absolute_dir, absolutize_file_entry, absolutize_service, resolve};
use crate::values::{closest, describe};

/// The top-level sections whose names an include may not redefine.
const SECTIONS: [&str; 5] = ["services", "networks", "volumes", "secrets", "configs"];

/// For each of [`SECTIONS`], the document that defines each name.
type Names = [BTreeMap<String, usize>; 5];

/// Reads the stack file `path` and, depth first, every file it includes,
/// appending them to `docs`. Returns the documents read with the tier of
/// each, in reading order (the stack first).
pub(crate) fn read_stack(
    path: &Path,
    tier: Tier,
    vars: &Rc<Vars>,
    root: &Path,
    docs: &mut Vec<Doc>,
) -> Result<Vec<(usize, Tier)>, LoadError> {
    let mut l = Loader {
        root,
        docs,
        read: Vec::new(),
        chain: Vec::new(),
    };
    l.unit(&Unit {
        paths: vec![path.to_path_buf()],
        dir: None,
        vars: vars.clone(),
        tier,
        from: None,
    })?;
    Ok(l.read)
}

/// A document's file, and the `include` that brought it in if any.
pub(crate) fn label(d: &Doc) -> String {
    match &d.included_from {
        Some((f, l)) => format!("{} (included from {}:{l})", d.path.display(), f.display()),
        None => d.path.display().to_string(),
    }
}

/// The files of `docs`, each once, in reading order.
pub(crate) fn distinct_files(docs: &[Doc]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for d in docs {
        if !out.contains(&d.path) {
            out.push(d.path.clone());
        }
    }
    out
}

/// The error for an `include` in an override file.
pub(crate) fn in_override(d: &Doc, at: &KeyPath) -> LoadError {
    LoadError::new(
        LoadErrorKind::Override,
        &d.path,
        "an override file may not `include` other files (an override only changes what the catalog defines); \
         include them from a catalog stack",
    )
    .at(d.lines.line(at))
    .key(at)
}

struct Loader<'a> {
    /// The catalog folder, absolute.
    root: &'a Path,
    docs: &'a mut Vec<Doc>,
    /// The documents read, with their tiers.
    read: Vec<(usize, Tier)>,
    /// The files being read, outermost first: (canonical path, as named).
    chain: Vec<(PathBuf, PathBuf)>,
}

/// One Compose file to read with what it includes: a stack, or one
/// `include` entry.
struct Unit {
    /// The file, or the files merged in order.
    paths: Vec<PathBuf>,
    /// The project directory (`None`: the file's own).
    dir: Option<PathBuf>,
    vars: Rc<Vars>,
    tier: Tier,
    /// The `include` entry (file, line).
    from: Option<(PathBuf, usize)>,
}

/// One parsed `include` entry; each value comes with its line and key.
struct Entry {
    line: Option<usize>,
    paths: Vec<Located>,
    project_dir: Option<PathBuf>,
    env_files: Vec<Located>,
}

struct Located {
    path: PathBuf,
    line: Option<usize>,
    key: KeyPath,
}

impl Loader<'_> {
    /// Reads a unit's files and what they include; returns every name the
    /// unit defines.
    fn unit(&mut self, u: &Unit) -> Result<Names, LoadError> {
        let mut names = Names::default();
        for (j, path) in u.paths.iter().enumerate() {
            let mut doc = read_doc(path, &u.vars)?;
            if let Some(dir) = &u.dir {
                doc.dir = dir.clone();
            }
            doc.included_from = u.from.clone();
            let di = self.docs.len();
            self.docs.push(doc);
            self.read.push((di, u.tier));
            self.chain.push((canonical(path), path.clone()));
            let imported = self.includes(di, u.tier);
            self.chain.pop();
            let mut file_names = own_names(&self.docs[di], di);
            self.join(&mut file_names, imported?, true)?;
            if j == 0 {
                names = file_names;
            } else {
                self.overlay(&mut names, file_names, di)?;
            }
        }
        Ok(names)
    }

    /// Follows the `include` of document `di` (of tier `tier`); returns the
    /// names the included files define.
    fn includes(&mut self, di: usize, tier: Tier) -> Result<Names, LoadError> {
        let mut names = Names::default();
        for e in entries(&self.docs[di])? {
            let d = &self.docs[di];
            for p in &e.paths {
                check_file(d, p)?;
                self.check_cycle(d, p)?;
            }
            let first = &e.paths[0].path;
            let dir = e
                .project_dir
                .clone()
                .unwrap_or_else(|| absolute_dir(first.parent().unwrap_or(Path::new("/"))));
            let unit = Unit {
                vars: env_vars(d, &e, &dir)?,
                tier: self.tier_of(first, d, tier),
                from: Some((d.path.clone(), e.line.unwrap_or(1))),
                paths: e.paths.into_iter().map(|p| p.path).collect(),
                dir: Some(dir),
            };
            let sub = self.unit(&unit)?;
            self.join(&mut names, sub, false)?;
        }
        Ok(names)
    }

    fn check_cycle(&self, d: &Doc, p: &Located) -> Result<(), LoadError> {
        let c = canonical(&p.path);
        let Some(pos) = self.chain.iter().position(|(k, _)| *k == c) else {
            return Ok(());
        };
        let mut files: Vec<String> = self.chain[pos..].iter().map(|(_, f)| f.display().to_string()).collect();
        files.push(p.path.display().to_string());
        Err(LoadError::new(
            LoadErrorKind::InvalidValue,
            &d.path,
            format!("include cycle: {} (each file includes the next)", files.join(" -> ")),
        )
        .at(p.line)
        .key(&p.key))
    }

    /// The tier of an included file: its tier folder's when that differs
    /// from the includer's folder, else the includer's tier.
    fn tier_of(&self, file: &Path, includer: &Doc, tier: Tier) -> Tier {
        match tier_folder(self.root, file) {
            Some((folder, t)) if tier_folder(self.root, &includer.path).is_none_or(|(f, _)| f != folder) => t,
            _ => tier,
        }
    }

    /// Adds `new` (names read after those of `acc`) to `acc`. A name in
    /// both is a conflict, located at the first definition when
    /// `at_first` and at the later one otherwise, unless the definitions
    /// are identical: then the later one is dropped.
    fn join(&mut self, acc: &mut Names, new: Names, at_first: bool) -> Result<(), LoadError> {
        for (s, sec) in new.into_iter().enumerate() {
            for (name, nd) in sec {
                self.join_one(&mut acc[s], s, name, nd, at_first)?;
            }
        }
        Ok(())
    }

    fn join_one(
        &mut self,
        acc: &mut BTreeMap<String, usize>,
        s: usize,
        name: String,
        nd: usize,
        at_first: bool,
    ) -> Result<(), LoadError> {
        let Some(&ad) = acc.get(&name) else {
            acc.insert(name, nd);
            return Ok(());
        };
        if ad == nd {
            return Ok(());
        }
        if resolved(&self.docs[ad], s, &name) != resolved(&self.docs[nd], s, &name) {
            return Err(conflict(self.docs, s, &name, ad, nd, at_first));
        }
        remove(&mut self.docs[nd], s, &name);
        Ok(())
    }

    /// Merges a later file of a `path` list (document `di`, with the names
    /// it includes in `file`) onto the names of the files before it: its
    /// own entries override theirs, its includes must not conflict.
    fn overlay(&mut self, names: &mut Names, file: Names, di: usize) -> Result<(), LoadError> {
        for (s, sec) in file.into_iter().enumerate() {
            for (name, nd) in sec {
                match names[s].get(&name).copied() {
                    Some(bd) if nd == di => {
                        let d = &mut self.docs[di];
                        let Some(mut over) = remove(d, s, &name) else { continue };
                        absolutize(&self.docs[di], s, &mut over);
                        if let Some(base) = entry_mut(&mut self.docs[bd], s, &name) {
                            merge(base, over);
                        }
                    }
                    _ => self.join_one(&mut names[s], s, name, nd, false)?,
                }
            }
        }
        Ok(())
    }
}

/// Parses the `include` of a document.
fn entries(d: &Doc) -> Result<Vec<Entry>, LoadError> {
    let tp = KeyPath::root().key("include");
    let items = match d.doc.get("include") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Sequence(items)) => items,
        Some(other) => {
            return Err(bad(
                d,
                &tp,
                format!(
                    "invalid type: {}, expected a list of files or of {{path, project_directory, env_file}}",
                    describe(other)
                ),
            ));
        }
    };
    let base = absolute_dir(d.path.parent().unwrap_or(Path::new(".")));
    let locate = |(s, key): (String, KeyPath)| Located {
        path: resolve(&base, &s, &|k| d.var(k)),
        line: d.lines.line(&key),
        key,
    };
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let ip = tp.index(i);
        let mut e = Entry {
            line: d.lines.line(&ip),
            paths: Vec::new(),
            project_dir: None,
            env_files: Vec::new(),
        };
        match it {
            Value::String(s) => e.paths.push(locate((s.clone(), ip.clone()))),
            Value::Mapping(m) => {
                for (k, v) in m {
                    let Some(k) = k.as_str() else {
                        return Err(bad(d, &ip, format!("invalid key: {}, expected a string", describe(k))));
                    };
                    let kp = ip.key(k);
                    match k {
                        "path" => e.paths = strings(d, v, &kp)?.into_iter().map(locate).collect(),
                        "env_file" => e.env_files = strings(d, v, &kp)?.into_iter().map(locate).collect(),
                        "project_directory" => match v {
                            Value::String(s) => e.project_dir = Some(locate((s.clone(), kp)).path),
                            other => {
                                return Err(bad(
                                    d,
                                    &kp,
                                    format!("invalid type: {}, expected a directory", describe(other)),
                                ));
                            }
                        },
                        x if x.starts_with("x-") => {}
                        other => {
                            let hint = closest(other, ["path", "project_directory", "env_file"], 3)
                                .map(|s| format!("; did you mean {s:?}?"))
                                .unwrap_or_default();
                            return Err(LoadError::new(
                                LoadErrorKind::UnknownKey,
                                &d.path,
                                format!(
                                    "unknown key {other:?} in an include entry (expected path, project_directory \
                                     or env_file){hint}"
                                ),
                            )
                            .at(d.lines.line(&kp))
                            .key(&kp));
                        }
                    }
                }
                if e.paths.is_empty() {
                    return Err(bad(d, &ip, "an include entry needs a `path`".into()));
                }
            }
            other => {
                return Err(bad(
                    d,
                    &ip,
                    format!(
                        "invalid type: {}, expected a file or {{path, project_directory, env_file}}",
                        describe(other)
                    ),
                ));
            }
        }
        out.push(e);
    }
    Ok(out)
}

fn bad(d: &Doc, at: &KeyPath, msg: String) -> LoadError {
    LoadError::new(LoadErrorKind::InvalidValue, &d.path, msg)
        .at(d.lines.line(at))
        .key(at)
}

/// A string, or a non-empty list of strings, each with its key.
fn strings(d: &Doc, v: &Value, p: &KeyPath) -> Result<Vec<(String, KeyPath)>, LoadError> {
    let expected = "a file or a list of files";
    match v {
        Value::String(s) => Ok(vec![(s.clone(), p.clone())]),
        Value::Sequence(items) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, it)| match it {
                Value::String(s) => Ok((s.clone(), p.index(i))),
                other => Err(bad(
                    d,
                    &p.index(i),
                    format!("invalid type: {}, expected a file", describe(other)),
                )),
            })
            .collect(),
        other => Err(bad(
            d,
            p,
            format!("invalid type: {}, expected {expected}", describe(other)),
        )),
    }
}

/// An included file must exist and be small enough; the error is at the
/// `include` entry.
fn check_file(d: &Doc, p: &Located) -> Result<(), LoadError> {
    let here = |kind, msg: String| LoadError::new(kind, &d.path, msg).at(p.line).key(&p.key);
    let shown = p.path.display();
    match std::fs::metadata(&p.path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(here(
            LoadErrorKind::MissingFile,
            format!("included file {shown} does not exist"),
        )),
        Err(e) => Err(here(LoadErrorKind::Io, format!("cannot read included file {shown}: {e}")).source(e)),
        Ok(m) if m.is_dir() => Err(here(
            LoadErrorKind::InvalidValue,
            format!("included path {shown} is a directory; name a Compose file"),
        )),
        Ok(m) if m.len() > MAX_FILE_BYTES => Err(here(
            LoadErrorKind::TooLarge,
            format!(
                "included file {shown} is {} bytes; the catalog reads files of at most {MAX_FILE_BYTES} bytes",
                m.len()
            ),
        )),
        Ok(_) => Ok(()),
    }
}

/// The variables of an included file: its `env_file`s (or `.env` in its
/// project directory), under the variables of the file that includes it.
fn env_vars(d: &Doc, e: &Entry, dir: &Path) -> Result<Rc<Vars>, LoadError> {
    let default = dir.join(".env");
    let files: Vec<(&Path, Option<&Located>)> = if e.env_files.is_empty() {
        if !default.is_file() {
            return Ok(d.vars.clone());
        }
        vec![(&default, None)]
    } else {
        e.env_files.iter().map(|l| (l.path.as_path(), Some(l))).collect()
    };
    let mut vars = Vars::new();
    for (f, at) in files {
        let text = read_text(f, MAX_FILE_BYTES).map_err(|err| match at {
            Some(l) if err.kind() == std::io::ErrorKind::NotFound => LoadError::new(
                LoadErrorKind::MissingFile,
                &d.path,
                format!("include env_file {} does not exist", f.display()),
            )
            .at(l.line)
            .key(&l.key),
            _ => io_err(f, err),
        })?;
        let pairs =
            parse_env(&text).map_err(|e| LoadError::new(LoadErrorKind::EnvFile, f, e.message).at(Some(e.line)))?;
        vars.extend(pairs);
    }
    vars.extend(d.vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(Rc::new(vars))
}

/// `<root>/NN-tier/...`: the tier folder a file lies in, and its tier.
fn tier_folder(root: &Path, file: &Path) -> Option<(String, Tier)> {
    let abs = absolute_dir(file);
    let first = abs.strip_prefix(root).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?;
    let numbered = name
        .split_once('-')
        .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    // A file right under the root is not in a folder.
    if !numbered || abs.parent() == Some(root) {
        return None;
    }
    Tier::from_folder(name).map(|t| (name.to_string(), t))
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| absolute_dir(p))
}

/// The names a document defines itself.
fn own_names(d: &Doc, di: usize) -> Names {
    let mut out = Names::default();
    for (s, sec) in SECTIONS.iter().enumerate() {
        if let Some(Value::Mapping(m)) = d.doc.get(*sec) {
            out[s].extend(m.keys().filter_map(Value::as_str).map(|k| (k.to_string(), di)));
        }
    }
    out
}

fn entry_mut<'a>(d: &'a mut Doc, s: usize, name: &str) -> Option<&'a mut Value> {
    d.doc.get_mut(SECTIONS[s])?.as_mapping_mut()?.get_mut(name)
}

fn remove(d: &mut Doc, s: usize, name: &str) -> Option<Value> {
    d.doc.get_mut(SECTIONS[s])?.as_mapping_mut()?.remove(name)
}

/// Makes the relative paths of an entry of section `s` of `d` absolute.
fn absolutize(d: &Doc, s: usize, v: &mut Value) {
    let env = |k: &str| d.var(k);
    match SECTIONS[s] {
        "services" => absolutize_service(v, &d.dir, &env),
        "secrets" | "configs" => absolutize_file_entry(v, &d.dir, &env),
        _ => {}
    }
}

/// An entry with its paths resolved, to compare definitions.
fn resolved(d: &Doc, s: usize, name: &str) -> Option<Value> {
    let mut v = d.doc.get(SECTIONS[s])?.as_mapping()?.get(name)?.clone();
    absolutize(d, s, &mut v);
    Some(v)
}

/// Two different definitions of one name in an include tree.
fn conflict(docs: &[Doc], s: usize, name: &str, first: usize, later: usize, at_first: bool) -> LoadError {
    let kind = SECTIONS[s].trim_end_matches('s');
    let key = KeyPath::root().key(SECTIONS[s]).key(name);
    let place = |d: &Doc| {
        let line = d.lines.line(&key).unwrap_or(1);
        match &d.included_from {
            Some((f, l)) => format!("{}:{line} (included from {}:{l})", d.path.display(), f.display()),
            None => format!("{}:{line}", d.path.display()),
        }
    };
    let (a, b) = (&docs[first], &docs[later]);
    let msg = format!(
        "{kind} {name:?} is defined both in {} and in {}; a file and the files it includes may only define the same \
         name identically (Compose refuses this too)",
        place(a),
        place(b)
    );
    let at = if at_first { a } else { b };
    let e = LoadError::new(LoadErrorKind::Duplicate, &at.path, msg).at(at.lines.line(&key));
    if s == 0 { e.service(name) } else { e.key(&key) }
}

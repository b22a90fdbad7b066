//! Key paths (`services.mng-pg.deploy.replicas`) and the scanner that maps
//! them back to line numbers.
//!
//! serde_norway's `Value` keeps no positions, so after interpolation and
//! conversion the only way to point at a line is to read the text again. An
//! indentation-based scan is enough for the block style Compose files use;
//! anything it cannot place (flow mappings, keys that came from a merge key)
//! falls back to the nearest ancestor it found, at worst the service key.

use std::collections::HashMap;
use std::fmt;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A path from the document root to a value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }
    pub fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        KeyPath(v)
    }
    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        KeyPath(v)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Line numbers (1-based) of the keys and sequence items of one file.
#[derive(Debug, Default)]
pub(crate) struct LineIndex {
    lines: HashMap<Vec<Seg>, usize>,
}

struct Entry {
    indent: usize,
    is_item: bool,
    next_item: usize,
    path: Vec<Seg>,
}

impl LineIndex {
    pub fn build(text: &str) -> Self {
        let mut lines: HashMap<Vec<Seg>, usize> = HashMap::new();
        let mut stack: Vec<Entry> = Vec::new();
        let mut root_items = 0usize;
        let mut block: Option<usize> = None;
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let content = raw.trim_start_matches(' ');
            let indent = raw.len() - content.len();
            let content = content.trim_end();
            if content.is_empty() {
                continue;
            }
            if let Some(b) = block {
                if indent > b {
                    continue;
                }
                block = None;
            }
            if content.starts_with('#') {
                continue;
            }
            if indent == 0 && (content.starts_with("---") || content.starts_with("...")) {
                stack.clear();
                continue;
            }
            let mut col = indent;
            let mut rest = content;
            while rest == "-" || rest.starts_with("- ") {
                while stack
                    .last()
                    .is_some_and(|t| t.indent > col || (t.indent == col && t.is_item))
                {
                    stack.pop();
                }
                let (mut path, idx) = match stack.last_mut() {
                    Some(t) => {
                        t.next_item += 1;
                        (t.path.clone(), t.next_item - 1)
                    }
                    None => {
                        root_items += 1;
                        (Vec::new(), root_items - 1)
                    }
                };
                path.push(Seg::Index(idx));
                lines.entry(path.clone()).or_insert(line_no);
                stack.push(Entry {
                    indent: col,
                    is_item: true,
                    next_item: 0,
                    path,
                });
                let after = &rest[1..];
                let trimmed = after.trim_start_matches(' ');
                col += 1 + (after.len() - trimmed.len());
                rest = trimmed;
            }
            if rest.is_empty() || rest.starts_with('#') {
                continue;
            }
            let Some((key, value)) = split_key(rest) else {
                continue;
            };
            while stack.last().is_some_and(|t| t.indent >= col) {
                stack.pop();
            }
            let mut path = stack.last().map(|t| t.path.clone()).unwrap_or_default();
            path.push(Seg::Key(key));
            lines.entry(path.clone()).or_insert(line_no);
            stack.push(Entry {
                indent: col,
                is_item: false,
                next_item: 0,
                path,
            });
            let value = value.split(" #").next().unwrap_or("").trim();
            if value.starts_with('|') || value.starts_with('>') {
                block = Some(col);
            }
        }
        LineIndex { lines }
    }

    /// The line of `path`, or of its nearest ancestor the scan found.
    pub fn line(&self, path: &KeyPath) -> Option<usize> {
        (0..=path.0.len())
            .rev()
            .find_map(|n| self.lines.get(&path.0[..n]).copied())
    }

    /// Every path the scan found strictly under `prefix`, rendered relative
    /// to it (`environment.POSTGRES_DB`, `ports[0]`), with its line.
    pub fn under(&self, prefix: &KeyPath) -> impl Iterator<Item = (String, usize)> + '_ {
        let n = prefix.0.len();
        let prefix = prefix.0.clone();
        self.lines
            .iter()
            .filter(move |(p, _)| p.len() > n && p[..n] == prefix[..])
            .map(move |(p, l)| (KeyPath(p[n..].to_vec()).to_string(), *l))
    }

    /// The line of exactly `path`, if the scan found it.
    pub fn exact(&self, path: &KeyPath) -> Option<usize> {
        self.lines.get(&path.0).copied()
    }
}

/// Splits `key: value` (or `key:`), handling quoted keys. Returns `None`
/// for plain scalars such as `8080:80` or `http://x`.
fn split_key(s: &str) -> Option<(String, &str)> {
    let first = s.chars().next()?;
    if first == '"' || first == '\'' {
        let end = s[1..].find(first)? + 1;
        let key = s[1..end].to_string();
        let after = &s[end + 1..];
        let value = after.strip_prefix(':')?;
        if value.is_empty() || value.starts_with(' ') {
            return Some((key, value));
        }
        return None;
    }
    if matches!(first, '{' | '[' | '&' | '*' | '!' | '|' | '>' | '%' | '@' | '`') {
        return None;
    }
    let mut search = 0;
    while let Some(pos) = s[search..].find(':') {
        let at = search + pos;
        let after = &s[at + 1..];
        if after.is_empty() || after.starts_with(' ') || after.starts_with('\t') {
            let key = s[..at].trim_end();
            if key.contains(" #") {
                return None;
            }
            return Some((key.to_string(), after));
        }
        search = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(parts: &[&str]) -> KeyPath {
        let mut k = KeyPath::root();
        for part in parts {
            k = match part.parse::<usize>() {
                Ok(n) => k.index(n),
                Err(_) => k.key(part),
            };
        }
        k
    }

    const TEXT: &str = "\
services:
  mng-pg:
    image: postgres
    command: |
      not: a key
    environment:
      POSTGRES_DB: ${DB}
    ports:
    - \"8080:80\"
    - target: 81
      published: 8081
    deploy:
      replicas: x
  \"quoted\":
    image: y
";

    #[test]
    fn scanner_finds_nested_keys_and_items() {
        let idx = LineIndex::build(TEXT);
        assert_eq!(idx.exact(&p(&["services", "mng-pg"])), Some(2));
        assert_eq!(
            idx.exact(&p(&["services", "mng-pg", "environment", "POSTGRES_DB"])),
            Some(7)
        );
        assert_eq!(idx.exact(&p(&["services", "mng-pg", "ports", "0"])), Some(9));
        assert_eq!(
            idx.exact(&p(&["services", "mng-pg", "ports", "1", "published"])),
            Some(11)
        );
        assert_eq!(idx.exact(&p(&["services", "mng-pg", "deploy", "replicas"])), Some(13));
        assert_eq!(idx.exact(&p(&["services", "quoted", "image"])), Some(15));
    }

    #[test]
    fn scanner_skips_block_scalars() {
        let idx = LineIndex::build(TEXT);
        assert_eq!(idx.exact(&p(&["services", "mng-pg", "command", "not"])), None);
        assert_eq!(idx.exact(&p(&["services", "mng-pg", "not"])), None);
    }

    #[test]
    fn unknown_paths_fall_back_to_the_nearest_ancestor() {
        let idx = LineIndex::build(TEXT);
        assert_eq!(idx.line(&p(&["services", "mng-pg", "healthcheck", "test"])), Some(2));
    }

    #[test]
    fn key_paths_render_with_dots_and_indices() {
        assert_eq!(
            p(&["services", "a", "ports", "2", "target"]).to_string(),
            "services.a.ports[2].target"
        );
    }
}

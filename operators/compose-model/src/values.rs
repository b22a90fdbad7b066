//! Helpers that read raw YAML values into plain types, with serde-like
//! messages (`invalid type: string "x", expected an integer`) and the key path
//! of the value, so errors can be located afterwards.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_norway::{Mapping, Value};

use crate::error::LoadErrorKind;
use crate::keypath::KeyPath;
use crate::units::{parse_bool_str, parse_duration, parse_size};

/// An error at a key path; the loader adds file, line and service.
#[derive(Debug)]
pub(crate) struct ConvError {
    pub kind: LoadErrorKind,
    pub path: KeyPath,
    pub message: String,
    /// Set when the error is in another file (an `env_file`).
    pub file: Option<std::path::PathBuf>,
    pub line: Option<usize>,
}

pub(crate) type R<T> = Result<T, ConvError>;

pub(crate) fn err(p: &KeyPath, message: impl Into<String>) -> ConvError {
    ConvError {
        kind: LoadErrorKind::InvalidValue,
        path: p.clone(),
        message: message.into(),
        file: None,
        line: None,
    }
}

pub(crate) fn err_kind(kind: LoadErrorKind, p: &KeyPath, message: impl Into<String>) -> ConvError {
    ConvError {
        kind,
        ..err(p, message)
    }
}

/// `string "x"`, `integer 5`, ... as serde words it.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) if n.is_f64() => format!("floating point `{n}`"),
        Value::Number(n) => format!("integer `{n}`"),
        Value::String(s) => format!("string {s:?}"),
        Value::Sequence(_) => "sequence".into(),
        Value::Mapping(_) => "map".into(),
        Value::Tagged(t) => describe(&t.value),
    }
}

pub(crate) fn type_err(v: &Value, p: &KeyPath, expected: &str) -> ConvError {
    err(p, format!("invalid type: {}, expected {expected}", describe(v)))
}

/// A scalar as a string (numbers and booleans too, as Compose accepts them).
pub(crate) fn string(v: &Value, p: &KeyPath) -> R<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(type_err(v, p, "a string")),
    }
}

pub(crate) fn opt_string(v: Option<&Value>, p: &KeyPath) -> R<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => string(v, p).map(Some),
    }
}

pub(crate) fn boolean(v: &Value, p: &KeyPath) -> R<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => parse_bool_str(s).ok_or_else(|| type_err(v, p, "a boolean")),
        _ => Err(type_err(v, p, "a boolean")),
    }
}

pub(crate) fn opt_bool(v: Option<&Value>, p: &KeyPath) -> R<Option<bool>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => boolean(v, p).map(Some),
    }
}

pub(crate) fn uint<T: TryFrom<u64>>(v: &Value, p: &KeyPath) -> R<T> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    let n = n.ok_or_else(|| type_err(v, p, "an integer"))?;
    T::try_from(n).map_err(|_| err(p, format!("invalid value: integer `{n}` is out of range")))
}

pub(crate) fn opt_uint<T: TryFrom<u64>>(v: Option<&Value>, p: &KeyPath) -> R<Option<T>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => uint(v, p).map(Some),
    }
}

pub(crate) fn int(v: &Value, p: &KeyPath) -> R<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
    .ok_or_else(|| type_err(v, p, "an integer"))
}

pub(crate) fn float(v: &Value, p: &KeyPath) -> R<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .ok_or_else(|| type_err(v, p, "a number"))
}

pub(crate) fn duration(v: &Value, p: &KeyPath) -> R<Duration> {
    match v {
        Value::String(s) => parse_duration(s).map_err(|e| err(p, e.to_string())),
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_secs)
            .ok_or_else(|| type_err(v, p, "a duration")),
        _ => Err(type_err(v, p, "a duration")),
    }
}

pub(crate) fn opt_duration(v: Option<&Value>, p: &KeyPath) -> R<Option<Duration>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => duration(v, p).map(Some),
    }
}

pub(crate) fn size(v: &Value, p: &KeyPath) -> R<u64> {
    match v {
        Value::String(s) => parse_size(s).map_err(|e| err(p, e.to_string())),
        Value::Number(n) => n.as_u64().ok_or_else(|| type_err(v, p, "a size")),
        _ => Err(type_err(v, p, "a size")),
    }
}

pub(crate) fn opt_size(v: Option<&Value>, p: &KeyPath) -> R<Option<u64>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => size(v, p).map(Some),
    }
}

pub(crate) fn mapping<'a>(v: &'a Value, p: &KeyPath) -> R<&'a Mapping> {
    v.as_mapping().ok_or_else(|| type_err(v, p, "a map"))
}

/// A mapping key as a string (YAML allows numbers and booleans as keys).
pub(crate) fn key_str(k: &Value, p: &KeyPath) -> R<String> {
    string(k, p).map_err(|_| err(p, format!("invalid key: {}, expected a string", describe(k))))
}

/// A list of scalars; a single scalar counts as a one-item list.
pub(crate) fn string_list(v: &Value, p: &KeyPath) -> R<Vec<String>> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, it)| string(it, &p.index(i)))
            .collect(),
        Value::String(_) | Value::Number(_) => Ok(vec![string(v, p)?]),
        _ => Err(type_err(v, p, "a list of strings")),
    }
}

pub(crate) fn opt_list(v: Option<&Value>, p: &KeyPath) -> R<Vec<String>> {
    v.map_or(Ok(Vec::new()), |v| string_list(v, p))
}

/// A dictionary in map form or `KEY=VALUE` list form (labels, sysctls,
/// build args); a missing value reads as empty.
pub(crate) fn dict(v: &Value, p: &KeyPath) -> R<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    match v {
        Value::Null => {}
        Value::Mapping(m) => {
            for (k, val) in m {
                let key = key_str(k, p)?;
                let kp = p.key(&key);
                let val = match val {
                    Value::Null => String::new(),
                    other => string(other, &kp)?,
                };
                out.insert(key, val);
            }
        }
        Value::Sequence(items) => {
            for (i, it) in items.iter().enumerate() {
                let s = string(it, &p.index(i))?;
                let (k, val) = s.split_once('=').unwrap_or((s.as_str(), ""));
                out.insert(k.to_string(), val.to_string());
            }
        }
        _ => return Err(type_err(v, p, "a map or a list of KEY=VALUE")),
    }
    Ok(out)
}

pub(crate) fn opt_dict(v: Option<&Value>, p: &KeyPath) -> R<BTreeMap<String, String>> {
    v.map_or(Ok(BTreeMap::new()), |v| dict(v, p))
}

/// YAML to JSON for `extensions` and `unsupported`; keys become strings.
pub(crate) fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                J::from(i)
            } else if let Some(u) = n.as_u64() {
                J::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(J::Null, J::Number)
            }
        }
        Value::String(s) => J::String(s.clone()),
        Value::Sequence(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Mapping(m) => J::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::String(s) => s.clone(),
                        other => serde_json::to_string(&to_json(other)).unwrap_or_default(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Value::Tagged(t) => to_json(&t.value),
    }
}

/// Levenshtein distance, for "did you mean".
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate within `max` edits, ties broken by order.
pub(crate) fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>, max: usize) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (distance(word, c), c))
        .filter(|(d, _)| *d <= max)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Suggestion for a misspelled name (services, profiles): within 2 edits,
/// or a third of the length for long names.
pub(crate) fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let max = (word.chars().count() / 3).max(2);
    closest(word, candidates, max).map(str::to_string)
}

/// Replaces YAML tags (`!reset`, `!override`) by their values; we do not
/// give them meaning.
pub(crate) fn strip_tags(v: &mut Value) {
    match v {
        Value::Tagged(t) => {
            let mut inner = std::mem::replace(&mut t.value, Value::Null);
            strip_tags(&mut inner);
            *v = inner;
        }
        Value::Sequence(items) => items.iter_mut().for_each(strip_tags),
        Value::Mapping(m) => m.values_mut().for_each(strip_tags),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn y(s: &str) -> Value {
        serde_norway::from_str(s).unwrap()
    }

    #[test]
    fn integers_accept_numeric_strings_and_reject_words() {
        let p = KeyPath::root().key("deploy").key("replicas");
        assert_eq!(uint::<u32>(&y("3"), &p).unwrap(), 3);
        assert_eq!(uint::<u32>(&y("'3'"), &p).unwrap(), 3);
        let e = uint::<u32>(&y("x"), &p).unwrap_err();
        assert_eq!(e.message, "invalid type: string \"x\", expected an integer");
    }

    #[test]
    fn booleans_accept_true_and_false_strings() {
        let p = KeyPath::root();
        assert!(boolean(&y("true"), &p).unwrap());
        assert!(!boolean(&y("'false'"), &p).unwrap());
        assert!(boolean(&y("'nope'"), &p).is_err());
    }

    #[test]
    fn dictionaries_accept_both_forms() {
        let p = KeyPath::root();
        let a = dict(&y("[a=1, b=x=y, c]"), &p).unwrap();
        let b = dict(&y("{a: 1, b: x=y, c: }"), &p).unwrap();
        assert_eq!(a, b);
        assert_eq!(a["b"], "x=y");
        assert_eq!(a["c"], "");
    }

    #[test]
    fn suggestions_pick_the_closest_name() {
        assert_eq!(suggest("mng-pgg", ["mng-pg", "mng-valkey"]), Some("mng-pg".into()));
        assert_eq!(suggest("zzz", ["mng-pg"]), None);
        assert_eq!(distance("depend_on", "depends_on"), 1);
    }
}

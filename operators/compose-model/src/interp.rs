//! Compose variable interpolation, stricter than Compose: a variable that is
//! unset and has no default is an error instead of an empty string, because a
//! silently empty password or image tag is worse than a refusal to start.

/// Why a string could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InterpError {
    /// The variable at fault, when there is one.
    pub var: Option<String>,
    pub message: String,
}

fn invalid(s: &str) -> InterpError {
    InterpError {
        var: None,
        message: format!("invalid interpolation format in {s:?}"),
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands `$VAR`, `${VAR}`, `${VAR:-d}`, `${VAR-d}`, `${VAR:?m}`, `${VAR?m}`,
/// `${VAR:+a}`, `${VAR+a}` and `$$`. Defaults, alternatives and messages are
/// themselves interpolated, but only when used, so an unused default may
/// name an unset variable.
pub(crate) fn interpolate(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, InterpError> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        if let Some(r) = after.strip_prefix('{') {
            let end = matching_brace(r).ok_or_else(|| invalid(s))?;
            out.push_str(&expand_braced(&r[..end], s, lookup)?);
            rest = &r[end + 1..];
            continue;
        }
        let name_len = after.find(|c| !is_name_char(c)).unwrap_or(after.len());
        let name = &after[..name_len];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(invalid(s));
        }
        out.push_str(&lookup(name).ok_or_else(|| unset(name))?);
        rest = &after[name_len..];
    }
    out.push_str(rest);
    Ok(out)
}

fn unset(name: &str) -> InterpError {
    InterpError {
        var: Some(name.to_string()),
        message: format!("variable {name:?} is not set and has no default"),
    }
}

/// Index of the `}` closing a `${`, whose body starts at `r`.
fn matching_brace(r: &str) -> Option<usize> {
    let mut depth = 1usize;
    let mut it = r.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        match c {
            '$' => {
                if let Some((_, n)) = it.peek().copied() {
                    if n == '{' {
                        depth += 1;
                        it.next();
                    } else if n == '$' {
                        it.next();
                    }
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn expand_braced(inner: &str, whole: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, InterpError> {
    let name_len = inner.find(|c| !is_name_char(c)).unwrap_or(inner.len());
    let name = &inner[..name_len];
    if name.is_empty() {
        return Err(invalid(whole));
    }
    let op = &inner[name_len..];
    let value = lookup(name);
    let set_nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
    let (colon, op) = match op.strip_prefix(':') {
        Some(o) => (true, o),
        None => (false, op),
    };
    if op.is_empty() {
        if colon {
            return Err(invalid(whole));
        }
        return value.ok_or_else(|| unset(name));
    }
    let mut chars = op.chars();
    let first = chars.next();
    let arg = chars.as_str();
    let present = if colon { set_nonempty } else { value.is_some() };
    match first {
        Some('-') => match (present, value) {
            (true, Some(v)) => Ok(v),
            _ => interpolate(arg, lookup),
        },
        Some('+') => {
            if present {
                interpolate(arg, lookup)
            } else {
                Ok(String::new())
            }
        }
        Some('?') => match (present, value) {
            (true, Some(v)) => Ok(v),
            _ => {
                let msg = interpolate(arg, lookup).unwrap_or_else(|_| arg.to_string());
                Err(InterpError {
                    var: Some(name.to_string()),
                    message: format!("required variable {name:?} is missing a value: {msg}"),
                })
            }
        },
        _ => Err(invalid(whole)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn run(s: &str) -> Result<String, InterpError> {
        let env: BTreeMap<&str, &str> = [("A", "alpha"), ("EMPTY", ""), ("N", "5")].into();
        interpolate(s, &|k| env.get(k).map(|v| v.to_string()))
    }

    #[test]
    fn plain_and_braced_variables_expand() {
        assert_eq!(run("$A-${A}x").unwrap(), "alpha-alphax");
        assert_eq!(run("pre ${N}0 post").unwrap(), "pre 50 post");
        assert_eq!(run("no vars").unwrap(), "no vars");
    }

    #[test]
    fn double_dollar_is_a_literal_dollar() {
        assert_eq!(run("$$A and $${A}").unwrap(), "$A and ${A}");
    }

    #[test]
    fn defaults_distinguish_unset_from_empty() {
        assert_eq!(run("${MISSING:-d}").unwrap(), "d");
        assert_eq!(run("${MISSING-d}").unwrap(), "d");
        assert_eq!(run("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(run("${EMPTY-d}").unwrap(), "");
        assert_eq!(run("${A:-d}").unwrap(), "alpha");
    }

    #[test]
    fn alternatives_apply_only_when_set() {
        assert_eq!(run("${A:+yes}").unwrap(), "yes");
        assert_eq!(run("${EMPTY:+yes}").unwrap(), "");
        assert_eq!(run("${EMPTY+yes}").unwrap(), "yes");
        assert_eq!(run("${MISSING+yes}").unwrap(), "");
    }

    #[test]
    fn defaults_may_nest_interpolation() {
        assert_eq!(run("${MISSING:-${A}-x}").unwrap(), "alpha-x");
        assert_eq!(run("${MISSING:-${OTHER:-deep}}").unwrap(), "deep");
        // An unused default may name an unset variable.
        assert_eq!(run("${A:-${NOPE}}").unwrap(), "alpha");
    }

    #[test]
    fn required_variables_report_their_message() {
        let err = run("${MISSING:?set the db password}").unwrap_err();
        assert_eq!(err.var.as_deref(), Some("MISSING"));
        assert!(err.message.contains("set the db password"), "{}", err.message);
        assert!(run("${EMPTY:?m}").is_err());
        assert_eq!(run("${EMPTY?m}").unwrap(), "");
    }

    #[test]
    fn unset_variable_without_default_is_an_error() {
        let err = run("${MISSING}").unwrap_err();
        assert_eq!(err.var.as_deref(), Some("MISSING"));
        assert!(run("$MISSING").is_err());
    }

    #[test]
    fn malformed_expressions_are_rejected() {
        assert!(run("${A").is_err());
        assert!(run("${}").is_err());
        assert!(run("${A:}").is_err());
        assert!(run("${A*x}").is_err());
        assert!(run("cost $5").is_err());
        assert!(run("end $").is_err());
        assert!(run("${A€x}").is_err());
        assert_eq!(run("${MISSING:-€}").unwrap(), "€");
    }
}

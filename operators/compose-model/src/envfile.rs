//! `.env` and `env_file` parsing.

/// A malformed `.env` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvFileError {
    pub line: usize,
    pub message: String,
}

/// Parses dotenv text the way Compose reads it: `KEY=VALUE` lines, blank
/// lines and `#` comments skipped, an optional `export ` prefix, single
/// quotes literal, double quotes with `\n`, `\t`, `\"` and `\\` escapes, and
/// ` #` starting a comment after an unquoted value. Values are not
/// interpolated. Order is kept so that later lines win when collected.
pub(crate) fn parse_env(text: &str) -> Result<Vec<(String, String)>, EnvFileError> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((idx, raw)) = lines.next() {
        let line_no = idx + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            // A bare `KEY` is allowed by Compose and means "unset here".
            if is_name(line) {
                continue;
            }
            return Err(EnvFileError {
                line: line_no,
                message: format!("expected KEY=VALUE, found {line:?}"),
            });
        };
        let key = key.trim();
        if !is_name(key) {
            return Err(EnvFileError {
                line: line_no,
                message: format!("invalid variable name {key:?}"),
            });
        }
        let value = value.trim_start();
        let parsed = if let Some(rest) = value.strip_prefix('\'') {
            let mut acc = rest.to_string();
            loop {
                if let Some(end) = acc.find('\'') {
                    acc.truncate(end);
                    break acc;
                }
                match lines.next() {
                    Some((_, more)) => {
                        acc.push('\n');
                        acc.push_str(more);
                    }
                    None => {
                        return Err(EnvFileError {
                            line: line_no,
                            message: "unterminated single quote".into(),
                        });
                    }
                }
            }
        } else if let Some(rest) = value.strip_prefix('"') {
            let mut acc = String::new();
            let mut chunk = rest.to_string();
            'outer: loop {
                let mut chars = chunk.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break 'outer acc,
                        '\\' => match chars.next() {
                            Some('n') => acc.push('\n'),
                            Some('t') => acc.push('\t'),
                            Some('r') => acc.push('\r'),
                            Some(o) => acc.push(o),
                            None => acc.push('\\'),
                        },
                        o => acc.push(o),
                    }
                }
                match lines.next() {
                    Some((_, more)) => {
                        acc.push('\n');
                        chunk = more.to_string();
                    }
                    None => {
                        return Err(EnvFileError {
                            line: line_no,
                            message: "unterminated double quote".into(),
                        });
                    }
                }
            }
        } else {
            let v = match value.find(" #").or_else(|| value.find("\t#")) {
                Some(i) => &value[..i],
                None => value,
            };
            v.trim_end().to_string()
        };
        out.push((key.to_string(), parsed));
    }
    Ok(out)
}

pub(crate) fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_handles_comments_export_and_quotes() {
        let text =
            "# comment\n\nexport A=1\nB = two words # trailing\nC='lit $X # no'\nD=\"x\\ny \\\"q\\\"\"\nE=\nF=a#b\n";
        let got = parse_env(text).unwrap();
        let want: Vec<(String, String)> = [
            ("A", "1"),
            ("B", "two words"),
            ("C", "lit $X # no"),
            ("D", "x\ny \"q\""),
            ("E", ""),
            ("F", "a#b"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn dotenv_quotes_may_span_lines() {
        let got = parse_env("K=\"line1\nline2\"\nN=1\n").unwrap();
        assert_eq!(got[0].1, "line1\nline2");
        assert_eq!(got[1], ("N".into(), "1".into()));
    }

    #[test]
    fn dotenv_reports_the_line_of_a_bad_entry() {
        let err = parse_env("A=1\n\n9bad=2\n").unwrap_err();
        assert_eq!(err.line, 3);
        let err = parse_env("A=1\nnot a pair\n").unwrap_err();
        assert_eq!(err.line, 2);
        let err = parse_env("A='open\n").unwrap_err();
        assert_eq!(err.line, 1);
    }
}

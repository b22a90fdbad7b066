//! Placement constraints (`deploy.placement.constraints`) with Swarm's
//! syntax: an attribute, `==` or `!=`, a value.

use std::fmt;

use super::HostView;

/// `==` or `!=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Must equal.
    Eq,
    /// Must differ (a missing label differs).
    Ne,
}

/// What a constraint looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attr {
    /// `node.hostname` (also `node.id`: hosts have no other id).
    Hostname,
    /// `node.labels.<key>` (also `engine.labels.<key>`).
    Label(String),
    /// `node.platform.os`.
    Os,
    /// `node.platform.arch`.
    Arch,
}

/// One parsed `deploy.placement.constraints` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    /// The attribute.
    pub attr: Attr,
    /// The comparison.
    pub op: Op,
    /// The value compared with.
    pub value: String,
    /// The constraint as written, for messages.
    pub text: String,
}

/// A constraint that does not parse: what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConstraintError {
    /// The constraint as written.
    pub text: String,
    /// What is wrong.
    pub why: String,
}

impl fmt::Display for ConstraintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "constraint {:?}: {}", self.text, self.why)
    }
}

impl std::error::Error for ConstraintError {}

impl Constraint {
    /// Parses `node.labels.zone == a` (Swarm's syntax: an attribute, `==` or
    /// `!=`, a value).
    pub fn parse(text: &str) -> Result<Self, ConstraintError> {
        let err = |why: String| ConstraintError {
            text: text.to_owned(),
            why,
        };
        let (lhs, op, rhs) = if let Some((l, r)) = text.split_once("!=") {
            (l, Op::Ne, r)
        } else if let Some((l, r)) = text.split_once("==") {
            (l, Op::Eq, r)
        } else {
            return Err(err("needs `==` or `!=` (e.g. `node.labels.zone == a`)".into()));
        };
        let (lhs, value) = (lhs.trim(), rhs.trim());
        if value.is_empty() {
            return Err(err("has no value after the operator".into()));
        }
        let attr = match lhs {
            "node.hostname" | "node.id" => Attr::Hostname,
            "node.platform.os" => Attr::Os,
            "node.platform.arch" => Attr::Arch,
            "node.role" => {
                return Err(err(
                    "node.role is a Swarm manager/worker role; hosts here have no roles: use node.labels.<key>".into(),
                ));
            }
            other => match other
                .strip_prefix("node.labels.")
                .or_else(|| other.strip_prefix("engine.labels."))
            {
                Some(k) if !k.is_empty() => Attr::Label(k.to_owned()),
                _ => {
                    return Err(err(format!(
                        "unknown attribute {other:?}: use node.hostname, node.id, node.labels.<key>, \
                         engine.labels.<key>, node.platform.os or node.platform.arch"
                    )));
                }
            },
        };
        Ok(Self {
            attr,
            op,
            value: value.to_owned(),
            text: text.trim().to_owned(),
        })
    }

    /// Whether `host` satisfies the constraint; on `Err`, why not.
    pub fn check(&self, host: &HostView) -> Result<(), String> {
        let (have, what): (Option<&str>, String) = match &self.attr {
            Attr::Hostname => (Some(host.name.as_str()), "hostname".into()),
            Attr::Label(k) => (host.labels.get(k).map(String::as_str), format!("label {k}")),
            Attr::Os => (Some(std::env::consts::OS), "os".into()),
            Attr::Arch => (Some(std::env::consts::ARCH), "arch".into()),
        };
        let ok = match self.op {
            Op::Eq => have == Some(self.value.as_str()),
            Op::Ne => have != Some(self.value.as_str()),
        };
        if ok {
            return Ok(());
        }
        Err(match have {
            Some(v) => format!("{what} is {v:?} ({})", self.text),
            None => format!("has no {what} ({})", self.text),
        })
    }
}

//! Tiers: which operator owns a service.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The operator tier a service belongs to.
///
/// The tier is never written in a Compose file: it comes from the folder the
/// file lives in (`compose/04-data/...`), so that moving a stack between
/// operators is a `git mv`, not an edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Edge proxies (Traefik, Nginx).
    Gateway,
    /// Identity and secrets (Keycloak, OAuth2 Proxy, Vault from `03-security`).
    Auth,
    /// Databases, caches and object storage.
    Data,
    /// Brokers (Kafka, RabbitMQ).
    Messaging,
    /// Metrics, logs and traces.
    Observability,
    /// Model serving and AI front ends.
    Ai,
    /// Workflow engines (n8n, Airflow).
    Workflow,
    /// Developer tooling (Jenkins, Harbor, ...).
    Tooling,
    /// Mail and chat.
    Communication,
}

impl Tier {
    /// Every tier, in bring-up order of the catalog folders.
    pub const ALL: [Tier; 9] = [
        Tier::Gateway,
        Tier::Auth,
        Tier::Data,
        Tier::Messaging,
        Tier::Observability,
        Tier::Workflow,
        Tier::Ai,
        Tier::Tooling,
        Tier::Communication,
    ];

    /// The lowercase name used in folders, subjects and command lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Gateway => "gateway",
            Tier::Auth => "auth",
            Tier::Data => "data",
            Tier::Messaging => "messaging",
            Tier::Observability => "observability",
            Tier::Ai => "ai",
            Tier::Workflow => "workflow",
            Tier::Tooling => "tooling",
            Tier::Communication => "communication",
        }
    }

    /// The tier of a catalog folder such as `04-data` or `03-security`.
    ///
    /// The `NN-` prefix only orders folders and is optional; `security` is the
    /// seeds' name for Vault's folder, which the auth operator owns.
    pub fn from_folder(folder: &str) -> Option<Tier> {
        let digits = folder.chars().take_while(char::is_ascii_digit).count();
        let name = if digits > 0 {
            folder[digits..].strip_prefix('-')?
        } else {
            folder
        };
        if name == "security" {
            return Some(Tier::Auth);
        }
        name.parse().ok()
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no tier; the message lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tier {input:?}; valid tiers: {}", Tier::ALL.map(Tier::as_str).join(", "))]
pub struct ParseTierError {
    /// What was given.
    pub input: String,
}

impl FromStr for Tier {
    type Err = ParseTierError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| ParseTierError { input: s.to_string() })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_tiers_are_the_contracts_list_in_its_order() {
        let ours: Vec<&str> = Tier::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(ours, infra_proto::tiers::NAMES.to_vec());
    }

    use super::*;

    #[test]
    fn every_tier_round_trips_through_its_name() {
        for t in Tier::ALL {
            assert_eq!(t.as_str().parse::<Tier>(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
        }
    }

    #[test]
    fn security_folder_belongs_to_auth() {
        assert_eq!(Tier::from_folder("03-security"), Some(Tier::Auth));
        assert_eq!(Tier::from_folder("04-data"), Some(Tier::Data));
        assert_eq!(Tier::from_folder("10-communication"), Some(Tier::Communication));
        assert_eq!(Tier::from_folder("08-ai"), Some(Tier::Ai));
        assert_eq!(Tier::from_folder("11-misc"), None);
        assert_eq!(Tier::from_folder("04data"), None);
    }

    #[test]
    fn parse_error_lists_valid_tiers() {
        let err = "dta".parse::<Tier>().unwrap_err().to_string();
        assert!(err.contains("\"dta\""), "{err}");
        assert!(err.contains("gateway, auth, data"), "{err}");
    }
}

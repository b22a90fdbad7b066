//! Subject and key names. Nothing outside this module formats one.
//!
//! Every name that becomes a subject token or a key-value key (host, tier,
//! service) must be a [`Token`]: ASCII letters, digits, `-` and `_`. Dots
//! and wildcards would change the meaning of a subject, so they are refused
//! here instead of being escaped somewhere else.

use std::fmt;

use crate::{BusError, BusErrorKind};

/// Prefix of every subject the platform uses.
pub const ROOT: &str = "infra";
/// The JetStream stream that keeps event history.
pub const EVENTS_STREAM: &str = "INFRA_EVENTS";
/// Key-value bucket of desired state, `<host>.<tier>.<service>`.
pub const DESIRED_BUCKET: &str = "infra_desired";
/// The secret-free part of every desired service
/// ([`infra_proto::spec::public_part`]), by the desired state's key: what
/// every host may read for cross-host reach, while the desired state
/// itself is readable by its own host only.
pub const DIRECTORY_BUCKET: &str = "infra_directory";
/// Key-value bucket of observed state, `<host>.<tier>.<service>`.
pub const OBSERVED_BUCKET: &str = "infra_observed";
/// Key-value bucket of the coordinator's service records (replicas,
/// placement rules, where each replica runs), `<tier>.<service>`.
pub const SERVICES_BUCKET: &str = "infra_services";
/// Key-value bucket of what the coordinator holds about hosts (drained,
/// lost), `<host>`.
pub const HOST_STATE_BUCKET: &str = "infra_host_state";
/// Key-value bucket of operator heartbeats, `<host>.<tier>`.
pub const HOSTS_BUCKET: &str = "infra_hosts";
/// Key-value bucket of secret contents, `<host>.<name>`: a secret is
/// written for each host that runs a service using it, and each host may
/// read its own keys only.
pub const SECRETS_BUCKET: &str = "infra_secrets";
/// Key-value bucket of the secrets as the catalog gives them, `<name>`:
/// the coordinator's source for the per-host copies in
/// [`SECRETS_BUCKET`]; no host may read it.
pub const SECRET_SOURCES_BUCKET: &str = "infra_secret_sources";
/// Key-value bucket of short-lived locks between processes, `<host>.<what>`.
pub const LOCKS_BUCKET: &str = "infra_locks";
/// Key-value bucket of the coordinators' leader lease: the lease itself
/// under [`LEASE_KEY`], and one record per acquisition under
/// [`term_key`], so the terms can be audited.
pub const LEADER_BUCKET: &str = "infra_leader";
/// The lease's key in [`LEADER_BUCKET`].
pub const LEASE_KEY: &str = "lease";
/// Key-value bucket of the deploys the leader has started and not
/// finished, `<deployment id>`, so a new leader can run them again.
pub const DEPLOYMENTS_BUCKET: &str = "infra_deployments";
/// Key-value bucket of join tickets, `<host>` (coordinators only).
pub const JOIN_BUCKET: &str = "infra_join";

/// A validated subject token.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(String);

impl Token {
    /// Validates `s` as a token; the error names what and which value.
    pub fn new(what: &str, s: &str) -> Result<Self, BusError> {
        let ok =
            !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(BusError::new(
                BusErrorKind::InvalidName,
                format!(
                    "{what} {s:?} is not a valid name: use ASCII letters, digits, '-' and '_' (1 to 128 characters)"
                ),
            ))
        }
    }

    /// The token as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Subject an operator answers image checks on (request/reply):
/// `infra.rpc.<host>.<tier>.images`.
pub fn image_check(host: &Token, tier: &Token) -> String {
    format!("{ROOT}.rpc.{host}.{tier}.images")
}

/// Where the operator of a host takes, lists and restores backups of its
/// services.
pub fn backup(host: &Token, tier: &Token) -> String {
    format!("{ROOT}.rpc.{host}.{tier}.backup")
}

/// Where one operator of a host is asked to upgrade the host's operators.
pub fn operators_upgrade(host: &Token, tier: &Token) -> String {
    format!("{ROOT}.rpc.{host}.{tier}.upgrade")
}

/// Where an operator answers log pulls: `infra.rpc.<host>.<tier>.logs`.
pub fn logs(host: &Token, tier: &Token) -> String {
    format!("{ROOT}.rpc.{host}.{tier}.logs")
}

/// Where the operator of a member's host runs a member-aware update
/// order's calls: `infra.rpc.<host>.<tier>.hook`.
pub fn member_hook(host: &Token, tier: &Token) -> String {
    format!("{ROOT}.rpc.{host}.{tier}.hook")
}

/// Subject of one event: `infra.events.<host>.<tier>.<service>.<kind>`.
/// Events that are not about one service use `_` as the service.
pub fn event(host: &Token, tier: &Token, service: Option<&Token>, kind: &str) -> String {
    let service = service.map_or("_", Token::as_str);
    format!("{ROOT}.events.{host}.{tier}.{service}.{kind}")
}

/// Filter over event subjects; `None` parts are wildcards.
pub fn events_filter(host: Option<&Token>, tier: Option<&Token>, service: Option<&Token>) -> String {
    let part = |t: Option<&Token>| t.map_or_else(|| "*".to_owned(), |t| t.0.clone());
    format!("{ROOT}.events.{}.{}.{}.*", part(host), part(tier), part(service))
}

/// Every event subject, for the stream.
pub fn events_all() -> String {
    format!("{ROOT}.events.>")
}

/// Subject of a heartbeat: `infra.heartbeat.<host>.<tier>`.
pub fn heartbeat(host: &Token, tier: &Token) -> String {
    format!("{ROOT}.heartbeat.{host}.{tier}")
}

/// Where a joining host asks for its credential.
pub fn join(host: &Token) -> String {
    format!("{ROOT}.join.{host}")
}

/// Every join request (the coordinators' queue subscription).
pub fn joins_all() -> String {
    format!("{ROOT}.join.*")
}

/// Every heartbeat subject.
pub fn heartbeats_all() -> String {
    format!("{ROOT}.heartbeat.>")
}

/// Key of a service in the desired and observed buckets.
pub fn service_key(host: &Token, tier: &Token, service: &Token) -> String {
    format!("{host}.{tier}.{service}")
}

/// Key filter of every service of one tier on one host.
pub fn tier_keys(host: &Token, tier: &Token) -> String {
    format!("{host}.{tier}.>")
}

/// Key of a service record in the services bucket.
pub fn record_key(tier: &Token, service: &Token) -> String {
    format!("{tier}.{service}")
}

/// Key of an operator in the hosts bucket.
pub fn operator_key(host: &Token, tier: &Token) -> String {
    format!("{host}.{tier}")
}

/// Key of the record of one leader term in [`LEADER_BUCKET`]:
/// `term.<n>`, zero-padded so keys sort by term.
pub fn term_key(term: u64) -> String {
    format!("term.{term:020}")
}

/// Key filter of every term record.
pub fn term_keys() -> String {
    "term.*".into()
}

/// Splits a service key back into host, tier and service.
pub fn parse_service_key(key: &str) -> Option<(&str, &str, &str)> {
    let mut it = key.splitn(3, '.');
    Some((it.next()?, it.next()?, it.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_refuse_dots_wildcards_and_spaces() {
        for bad in ["a.b", "*", ">", "a b", "", "é"] {
            let e = Token::new("service", bad).unwrap_err();
            assert_eq!(e.kind(), BusErrorKind::InvalidName, "{bad}");
            assert!(e.to_string().contains("service"), "{e}");
        }
        assert!(Token::new("service", "mng-pg_1").is_ok());
    }

    #[test]
    fn subjects_and_keys_have_the_documented_shape() {
        let h = Token::new("host", "h1").unwrap();
        let t = Token::new("tier", "data").unwrap();
        let s = Token::new("service", "mng-pg").unwrap();
        assert_eq!(
            event(&h, &t, Some(&s), "started"),
            "infra.events.h1.data.mng-pg.started"
        );
        assert_eq!(
            event(&h, &t, None, "reconcile_failed"),
            "infra.events.h1.data._.reconcile_failed"
        );
        assert_eq!(events_filter(None, Some(&t), None), "infra.events.*.data.*.*");
        assert_eq!(service_key(&h, &t, &s), "h1.data.mng-pg");
        assert_eq!(parse_service_key("h1.data.mng-pg"), Some(("h1", "data", "mng-pg")));
        assert_eq!(heartbeat(&h, &t), "infra.heartbeat.h1.data");
        assert_eq!(term_key(42), "term.00000000000000000042");
    }
}

//! Pulling: Compose `pull_policy`, and the pull credentials of private
//! registries, named in the catalog's `x-registries` block:
//!
//! ```yaml
//! x-registries:
//!   registry.example.com:5000:
//!     username: deploy
//!     password_secret: registry_password
//! ```
//!
//! `password_secret` names a top-level secret, or else a file of that name
//! in the catalog's `secrets/` folder (`secrets/registry_password`).
//!
//! A service whose image is from such a registry carries the bucket key of
//! its credentials ([`infra_proto::image::auth_key`]); the credentials
//! themselves travel as secret content, to the hosts that run it only.

use std::collections::BTreeMap;

use infra_compose::{Catalog, SecretSource, Service};
use infra_proto::bus::v1::RegistryLogin;
use prost::Message;

use super::{ConvertError, SecretContent, err};

/// The catalog's top-level key naming registry credentials.
pub const REGISTRIES_KEY: &str = "x-registries";

/// Compose `pull_policy` as the spec carries it: "" (missing), "always",
/// "never", or "every <seconds>" (`daily`, `weekly`, `every_<duration>`).
pub fn pull_policy(svc: &Service) -> Result<String, ConvertError> {
    let Some(p) = svc.pull_policy.as_deref() else {
        return Ok(String::new());
    };
    let every = |secs: u64| format!("every {secs}");
    Ok(match p {
        "missing" | "if_not_present" => String::new(),
        "always" | "never" => p.to_owned(),
        "daily" => every(86_400),
        "weekly" => every(7 * 86_400),
        "build" => {
            return Err(err(
                svc,
                "pull_policy",
                "build: the operators do not build images; build and push it, then name it in `image`",
            ));
        }
        other => match other.strip_prefix("every_") {
            Some(d) => {
                let d =
                    infra_compose::parse_duration(d).map_err(|e| err(svc, "pull_policy", format!("{other:?}: {e}")))?;
                if d.as_secs() == 0 {
                    return Err(err(
                        svc,
                        "pull_policy",
                        format!("{other:?}: the interval must be at least 1s"),
                    ));
                }
                every(d.as_secs())
            }
            None => {
                return Err(err(
                    svc,
                    "pull_policy",
                    format!(
                        "{other:?} is not a pull policy (always, missing, never, daily, weekly, every_<duration> such \
                         as every_12h)"
                    ),
                ));
            }
        },
    })
}

/// The interval of a normalised `every <seconds>` policy.
pub fn pull_interval(policy: &str) -> Option<std::time::Duration> {
    policy
        .strip_prefix("every ")
        .and_then(|s| s.parse().ok())
        .map(std::time::Duration::from_secs)
}

/// The login for `registry` the catalog names, if any, read from its
/// secret. Errors name the block, the registry and the field.
pub fn login(
    catalog: &Catalog,
    registry: &str,
    env: &BTreeMap<String, String>,
) -> Result<Option<RegistryLogin>, String> {
    let Some(block) = catalog.extensions.get(REGISTRIES_KEY) else {
        return Ok(None);
    };
    let at = |field: &str| format!("{REGISTRIES_KEY}.{registry:?}{field}");
    let map = block
        .as_object()
        .ok_or_else(|| format!("{REGISTRIES_KEY}: must be a mapping of registry hosts"))?;
    let Some(entry) = map.get(registry) else {
        return Ok(None);
    };
    let entry = entry
        .as_object()
        .ok_or_else(|| format!("{}: must be a mapping with username and password_secret", at("")))?;
    for k in entry.keys() {
        if !matches!(k.as_str(), "username" | "password_secret") {
            return Err(format!(
                "{}: unknown key (username, password_secret)",
                at(&format!(".{k}"))
            ));
        }
    }
    let text = |field: &str| -> Result<String, String> {
        entry
            .get(field)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| format!("{}: missing (a string)", at(&format!(".{field}"))))
    };
    let username = text("username")?;
    let secret = text("password_secret")?;
    let password = secret_text(catalog, &secret, env).map_err(|e| format!("{}: {e}", at(".password_secret")))?;
    Ok(Some(RegistryLogin {
        registry: registry.to_owned(),
        username,
        password,
    }))
}

/// The text of the secret `name` for a credential the catalog names
/// outside a service (a registry's password, a backup store's key): a
/// top-level secret (file, environment or content), or else the file of
/// that name in the catalog's `secrets/` folder (where the shipped secrets
/// live). A trailing newline (a file written by `echo`) is dropped.
pub fn secret_text(catalog: &Catalog, name: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    let in_folder = catalog.root.join("secrets").join(name);
    let folder_source = SecretSource::File(in_folder.clone());
    let source = match catalog.secrets.get(name) {
        Some(def) => &def.source,
        None if infra_bus::Token::new("secret", name).is_ok() && in_folder.is_file() => &folder_source,
        None => {
            return Err(format!(
                "secret {name:?} is not declared at top level, and there is no file {}",
                in_folder.display()
            ));
        }
    };
    let text = match source {
        SecretSource::File(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("secret {name:?}: cannot read {}: {e}", path.display()))?,
        SecretSource::Environment(var) => env
            .get(var)
            .cloned()
            .ok_or_else(|| format!("secret {name:?}: environment variable {var} is not set"))?,
        SecretSource::Content(c) => c.clone(),
        SecretSource::External => return Err(format!("secret {name:?} is external, which needs Swarm")),
    };
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// Every login the catalog names, for a plan's image checks.
pub fn logins(catalog: &Catalog, env: &BTreeMap<String, String>) -> Result<Vec<RegistryLogin>, String> {
    let Some(map) = catalog.extensions.get(REGISTRIES_KEY).and_then(|b| b.as_object()) else {
        return Ok(vec![]);
    };
    let mut out = Vec::new();
    for registry in map.keys() {
        out.extend(login(catalog, registry, env)?);
    }
    Ok(out)
}

/// The key and content of `svc`'s pull credentials, when its image's
/// registry has some in the catalog.
pub fn credentials(
    catalog: &Catalog,
    svc: &Service,
    image: &str,
    env: &BTreeMap<String, String>,
) -> Result<Option<SecretContent>, ConvertError> {
    let registry = infra_proto::image::registry(image);
    let login = login(catalog, registry, env).map_err(|m| err(svc, "image", m))?;
    Ok(login.map(|l| SecretContent {
        key: infra_proto::image::auth_key(registry),
        content: l.encode_to_vec().into(),
    }))
}

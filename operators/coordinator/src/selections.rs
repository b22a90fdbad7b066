//! Named selections (`compose/selections.yml`): the deployment sizes and
//! the local core stack, so a user can say `{"named": "core"}`.
//!
//! ```yaml
//! core:
//!   description: What runs on one machine with no registry.
//!   services: [mng-pg, rabbitmq, nginx]
//!   profiles: [nginx]
//!   exclude: [traefik]
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// One named selection.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Named {
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Every default-active service.
    #[serde(default)]
    pub all: bool,
    /// Tiers.
    #[serde(default)]
    pub tiers: Vec<String>,
    /// Profiles to activate.
    #[serde(default)]
    pub profiles: Vec<String>,
    /// Services by name.
    #[serde(default)]
    pub services: Vec<String>,
    /// Services to leave out (an error if a selected service needs one).
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// File name, in the catalog root.
pub const FILE: &str = "selections.yml";

/// Reads the named selections; a missing file means none.
pub fn load(root: &Path) -> Result<BTreeMap<String, Named>, String> {
    let path = root.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    serde_norway::from_str(&text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(":{}:{}", l.line(), l.column()))
            .unwrap_or_default();
        format!("{}{at}: {e}", path.display())
    })
}

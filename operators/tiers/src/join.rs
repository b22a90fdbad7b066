//! `infra-operator join --token TOKEN`: a new host joins the platform with
//! the token `infractl host add` printed, then runs its operators.
//!
//! On the first run it asks a coordinator for the host's own credential
//! (`infra_bus::join`) and keeps what it got in `<state-dir>/bus/`:
//! `host.creds` (the credential, mode 0600), `ca.pem` (the NATS servers'
//! CA) and `joined.json` (the host's name, the NATS addresses, its labels
//! and tiers). Every later run (the container restarted, with the same
//! command and the now used token) finds them and starts the operators at
//! once. A refused join (expired, used or forged token, no coordinator)
//! exits 64 with the reason and leaves nothing behind.
//!
//! The operators get their configuration from those files, through the
//! environment (`INFRA_HOST`, `INFRA_NATS__*`, `INFRA_LABELS__*`); the
//! host's private address is found on the host (`labels.addr = "auto"`)
//! unless the join gave one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use infra_bus::join::{JoinToken, Joined};
use operator_core::app;
use serde::{Deserialize, Serialize};

/// `infra-operator join`.
#[derive(Parser, Debug)]
#[command(
    name = "infra-operator join",
    version,
    about = "Joins this host to the platform with a token from `infractl host add`, then runs its operators."
)]
pub struct Cli {
    /// The join token.
    #[arg(long, env = "INFRA_JOIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The operators' state directory (the same path on the host and in
    /// the install container).
    #[arg(long, env = "INFRA_STATE_DIR", default_value = "/var/lib/infra/state")]
    pub state_dir: PathBuf,
    /// Seconds the operators get to drain on SIGTERM.
    #[arg(long, env = "INFRA_GRACE_SECS", default_value_t = 20)]
    pub grace_secs: u64,
    /// Arguments passed to every operator (after `--`).
    #[arg(last = true)]
    pub operator_args: Vec<String>,
}

/// What `joined.json` holds.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct JoinedFile {
    /// The host's name.
    pub host: String,
    /// NATS server addresses.
    pub nats_url: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its tiers (empty: every tier).
    pub tiers: Vec<String>,
}

/// The folder of what a join keeps.
pub fn bus_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("bus")
}

/// `main` of `infra-operator join`.
pub fn main() -> ExitCode {
    // `infra-operator join ...`: clap sees the arguments after `join`.
    let cli = Cli::parse_from(std::env::args_os().skip(1));
    let joined = match joined_or_join(&cli) {
        Ok(j) => j,
        Err(e) => return app::config_exit("infra-operator join", e),
    };
    let tiers: Vec<String> = if joined.tiers.is_empty() {
        infra_proto::tiers::NAMES.iter().map(|t| (*t).to_owned()).collect()
    } else {
        joined.tiers.clone()
    };
    let tiers = match crate::host::tiers(&tiers) {
        Ok(t) => t,
        Err(e) => return app::config_exit("infra-operator join", e),
    };
    let env = operator_env(&cli.state_dir, &joined);
    crate::host::run(&tiers, Duration::from_secs(cli.grace_secs), &cli.operator_args, &env)
}

/// The operators' environment from what the join kept.
pub fn operator_env(state_dir: &Path, j: &JoinedFile) -> Vec<(String, String)> {
    let dir = bus_dir(state_dir);
    let mut env = vec![
        ("INFRA_HOST".to_owned(), j.host.clone()),
        ("INFRA_STATE_DIR".into(), state_dir.display().to_string()),
        ("INFRA_NATS__URL".into(), j.nats_url.clone()),
        ("INFRA_NATS__CA_FILE".into(), dir.join("ca.pem").display().to_string()),
        (
            "INFRA_NATS__CREDS_FILE".into(),
            dir.join("host.creds").display().to_string(),
        ),
        ("INFRA_NATS__TLS_REQUIRED".into(), "true".into()),
    ];
    if !j.labels.contains_key(infra_bus::facts::ADDR) {
        env.push(("INFRA_LABELS__ADDR".into(), "auto".into()));
    }
    for (k, v) in &j.labels {
        env.push((format!("INFRA_LABELS__{}", k.to_uppercase()), v.clone()));
    }
    env
}

/// What an earlier join kept, or a new join with the token.
fn joined_or_join(cli: &Cli) -> Result<JoinedFile, String> {
    let dir = bus_dir(&cli.state_dir);
    let file = dir.join("joined.json");
    let token = JoinToken::decode(&cli.token)?;
    if file.exists() {
        let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let j: JoinedFile = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        if j.host != token.host {
            return Err(format!(
                "this host joined as {} already ({}); a token for {} does not apply to it",
                j.host,
                file.display(),
                token.host
            ));
        }
        eprintln!("infra-operator join: {} joined before; starting its operators", j.host);
        return Ok(j);
    }
    std::fs::create_dir_all(&cli.state_dir).map_err(|e| format!("{}: {e}", cli.state_dir.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a runtime: {e}"))?;
    let joined = rt.block_on(infra_bus::join::join(&token, operator_core::VERSION, &cli.state_dir))?;
    keep(&dir, &joined)?;
    eprintln!(
        "infra-operator join: {} joined (labels {:?}, tiers {:?})",
        joined.host, joined.labels, joined.tiers
    );
    Ok(JoinedFile {
        host: joined.host,
        nats_url: joined.nats_url,
        labels: joined.labels,
        tiers: joined.tiers,
    })
}

/// Writes what a join got into `dir`: the credential first (0600), the
/// marker last, each by rename, so a crash leaves no half-joined state
/// that a restart would take for a join.
fn keep(dir: &Path, j: &Joined) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let marker = JoinedFile {
        host: j.host.clone(),
        nats_url: j.nats_url.clone(),
        labels: j.labels.clone(),
        tiers: j.tiers.clone(),
    };
    let marker = serde_json::to_string_pretty(&marker).map_err(|e| e.to_string())?;
    for (name, text, mode) in [
        ("host.creds", j.creds.as_str(), 0o600),
        ("ca.pem", j.ca_pem.as_str(), 0o644),
        ("joined.json", marker.as_str(), 0o644),
    ] {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_environment_names_the_kept_files_labels_and_finds_the_address() {
        let j = JoinedFile {
            host: "host4".into(),
            nats_url: "tls://10.0.0.1:4222".into(),
            labels: BTreeMap::from([("zone".to_owned(), "b".to_owned())]),
            tiers: vec!["data".into()],
        };
        let env: BTreeMap<String, String> = operator_env(Path::new("/var/lib/infra/state"), &j)
            .into_iter()
            .collect();
        assert_eq!(env["INFRA_HOST"], "host4");
        assert_eq!(env["INFRA_NATS__CREDS_FILE"], "/var/lib/infra/state/bus/host.creds");
        assert_eq!(env["INFRA_NATS__CA_FILE"], "/var/lib/infra/state/bus/ca.pem");
        assert_eq!(env["INFRA_NATS__TLS_REQUIRED"], "true");
        assert_eq!(env["INFRA_LABELS__ZONE"], "b");
        assert_eq!(env["INFRA_LABELS__ADDR"], "auto");
    }

    #[test]
    fn a_kept_join_is_a_credential_only_its_owner_reads_and_a_marker_written_last() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let j = Joined {
            host: "host4".into(),
            nats_url: "tls://n:4222".into(),
            ca_pem: "CA".into(),
            creds: "CREDS".into(),
            labels: BTreeMap::new(),
            tiers: Vec::new(),
        };
        keep(dir.path(), &j).unwrap();
        let mode = |n: &str| std::fs::metadata(dir.path().join(n)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("host.creds"), 0o600);
        assert_eq!(std::fs::read_to_string(dir.path().join("host.creds")).unwrap(), "CREDS");
        let m: JoinedFile =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("joined.json")).unwrap()).unwrap();
        assert_eq!(m.host, "host4");
    }
}

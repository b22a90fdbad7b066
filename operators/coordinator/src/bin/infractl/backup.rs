//! `infractl backup run|list|restore NAME`: a service's backups (its
//! `x-backup` in the catalog), or a group's (`pg-cluster`, `galera`: the
//! members name it in `x-backup.group`), taken and restored where the data
//! is.

use clap::Subcommand;
use infra_proto::coordinator::v1 as api;

use super::Client;

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Take a backup now; prints the object, its size and how long it took.
    Run {
        /// The service (it declares `x-backup`), or the group its members name.
        service: String,
    },
    /// The backups the target holds, oldest first.
    List {
        /// The service.
        service: String,
    },
    /// Feed a backup to the service's restore command: the newest, or
    /// `--key`.
    Restore {
        /// The service.
        service: String,
        /// The object (as `list` prints it); default: the newest.
        #[arg(long, default_value = "")]
        key: String,
    },
}

/// Runs one `backup` command; true when it did what was asked.
pub async fn run(cmd: BackupCmd, mut c: Client) -> Result<bool, Box<dyn std::error::Error>> {
    match cmd {
        BackupCmd::Run { service } => {
            let r = c.backup(api::BackupRequest { service }).await?.into_inner();
            println!(
                "{}: {}/{} {} bytes in {:.1}s on {}{} (sha256 {})",
                r.service,
                r.bucket,
                r.key,
                r.size,
                r.seconds,
                r.host,
                member(&r.service, &r.member),
                &r.sha256[..r.sha256.len().min(12)]
            );
            for d in r.deleted {
                println!("  deleted {d} (retention)");
            }
        }
        BackupCmd::List { service } => {
            let r = c.list_backups(api::ListBackupsRequest { service }).await?.into_inner();
            for b in &r.backups {
                println!("{:>12}  {}  {}/{}", b.size, b.last_modified, r.bucket, b.key);
            }
            if r.backups.is_empty() {
                println!("no backups of {} in {}", r.service, r.bucket);
            }
        }
        BackupCmd::Restore { service, key } => {
            let r = c.restore(api::RestoreRequest { service, key }).await?.into_inner();
            println!(
                "{}: restored {} ({} bytes) in {:.1}s on {}{}",
                r.service,
                r.key,
                r.size,
                r.seconds,
                r.host,
                member(&r.service, &r.member)
            );
        }
    }
    Ok(true)
}

/// ` in pg-1` when a group's member did it.
fn member(name: &str, member: &str) -> String {
    if member.is_empty() || member == name {
        String::new()
    } else {
        format!(" in {member}")
    }
}

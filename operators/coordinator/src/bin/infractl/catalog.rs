//! `infractl catalog push|show`: the catalog revisions on the bus.

use clap::Subcommand;
use infra_coordinator::catalog::revision;
use infra_proto::bus::v1::CatalogHead;
use infra_proto::coordinator::v1 as api;

use super::Client;

#[derive(Subcommand)]
pub enum CatalogCmd {
    /// Publish a catalog folder as the next revision: every file under it
    /// (`.git` left out), checked by the coordinator as a deploy would
    /// load it. A bad catalog is refused with the file and line, and the
    /// current revision stays. The same files as the current revision:
    /// nothing new.
    Push {
        /// The catalog folder (a git checkout is recorded with its commit).
        #[arg(default_value = "compose")]
        dir: std::path::PathBuf,
        /// Override files merged onto it, in order (repeatable).
        #[arg(long = "override")]
        overrides: Vec<std::path::PathBuf>,
        /// A dotenv file for interpolation (default: `<dir>/.env`).
        #[arg(long)]
        env_file: Option<std::path::PathBuf>,
    },
    /// The current revision and those kept before it.
    Show,
}

fn line(h: &CatalogHead) -> String {
    let when = h.pushed_at.map_or_else(String::new, |t| {
        let ago = (infra_proto::now().seconds - t.seconds).max(0);
        format!("{ago}s ago")
    });
    let commit = if h.git_commit.is_empty() {
        String::new()
    } else {
        format!(" git {}", &h.git_commit[..h.git_commit.len().min(12)])
    };
    format!(
        "revision {:<4} {} files {:>8} bytes  from {}{commit}  by {}  {when}  sha256 {}",
        h.number,
        h.files,
        h.bytes,
        h.source,
        h.pushed_by,
        &h.digest[..h.digest.len().min(12)]
    )
}

/// Runs one `catalog` command; true when it did what was asked.
pub async fn run(cmd: CatalogCmd, mut c: Client) -> Result<bool, Box<dyn std::error::Error>> {
    match cmd {
        CatalogCmd::Push {
            dir,
            overrides,
            env_file,
        } => {
            let rev = revision::pack(&dir, &overrides, env_file.as_deref())?;
            let head = rev.head.unwrap_or_default();
            let r = c
                .push_catalog(api::PushCatalogRequest {
                    files: rev.files,
                    overrides: rev.overrides,
                    env_file: rev.env_file,
                    source: dir.display().to_string(),
                    git_commit: head.git_commit,
                })
                .await?
                .into_inner();
            let now = r.catalog.unwrap_or_default();
            if r.unchanged {
                println!("unchanged: {}", line(&now));
            } else {
                println!("published {}", line(&now));
            }
            Ok(true)
        }
        CatalogCmd::Show => {
            let r = c.get_catalog(api::GetCatalogRequest {}).await?.into_inner();
            let Some(current) = r.current else {
                println!("no catalog pushed yet: infractl catalog push DIR");
                return Ok(true);
            };
            println!("current: {}", line(&current));
            for h in r.history.iter().filter(|h| h.number != current.number) {
                println!("         {}", line(h));
            }
            Ok(true)
        }
    }
}

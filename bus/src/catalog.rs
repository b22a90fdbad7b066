//! The catalog on the bus: numbered revisions of the whole catalog (stacks,
//! selections, the files they mount, overrides, the dotenv file), so every
//! coordinator plans and deploys from the same files and no host or
//! coordinator needs a copy of its own.
//!
//! A revision is one object (`rev-<number>`, an encoded
//! [`CatalogRevision`]) in the object store [`REVISIONS_STORE`]; the
//! current one is named by the key [`HEAD_KEY`] of the bucket
//! [`HEAD_BUCKET`], written with compare-and-set, so two publishers never
//! take the same number and a revision is current only once its object is
//! whole. The key's history is the list of revisions. Coordinators only: a
//! host's credential reaches neither (the catalog holds the secrets).

use std::time::Duration;

use async_nats::jetstream::{kv, object_store};
use futures::StreamExt;
use infra_proto::bus::v1::{CatalogHead, CatalogRevision};
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::{Bus, BusError, BusErrorKind, Result};

/// Key-value bucket of the current revision's head, under [`HEAD_KEY`].
pub const HEAD_BUCKET: &str = "infra_catalog";
/// The key of the current revision in [`HEAD_BUCKET`].
pub const HEAD_KEY: &str = "head";
/// Object store of the revisions, `rev-<number>-<digest>`.
pub const REVISIONS_STORE: &str = "infra_catalog_revisions";
/// How many revisions are kept (the head's history and the objects).
pub const KEEP: usize = 32;
/// The largest catalog taken, all files together.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;

/// The object name of a revision: its number and digest, so two
/// publishers racing for one number never write the same object.
pub fn object_name(head: &CatalogHead) -> String {
    format!("rev-{}-{}", head.number, &head.digest[..head.digest.len().min(16)])
}

/// The digest of a revision's files: SHA-256 over each file's kind, path,
/// mode and content, in the order given (callers sort the catalog's).
pub fn digest(rev: &CatalogRevision) -> String {
    let mut h = Sha256::new();
    let mut add = |kind: &[u8], f: &infra_proto::bus::v1::CatalogFile| {
        h.update(kind);
        h.update((f.path.len() as u64).to_le_bytes());
        h.update(f.path.as_bytes());
        h.update(f.mode.to_le_bytes());
        h.update((f.content.len() as u64).to_le_bytes());
        h.update(&f.content);
    };
    for f in &rev.files {
        add(b"f", f);
    }
    for f in &rev.overrides {
        add(b"o", f);
    }
    if let Some(f) = &rev.env_file {
        add(b"e", f);
    }
    hex::encode(h.finalize())
}

/// The coordinators' handle on the catalog revisions.
#[derive(Clone)]
pub struct CatalogStore {
    head: kv::Store,
    objects: object_store::ObjectStore,
}

impl std::fmt::Debug for CatalogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogStore").finish_non_exhaustive()
    }
}

fn io(what: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> BusError {
    BusError::with(BusErrorKind::Io, what, e)
}

impl CatalogStore {
    /// Opens (making them if needed) the bucket and the object store, with
    /// `replicas` JetStream replicas.
    pub async fn open(bus: &Bus, replicas: usize) -> Result<Self> {
        let js = bus.jetstream();
        let head = crate::ensure_bucket(
            js,
            kv::Config {
                bucket: HEAD_BUCKET.into(),
                history: KEEP as i64,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        let objects = match js.get_object_store(REVISIONS_STORE).await {
            Ok(s) => s,
            Err(_) => match js
                .create_object_store(object_store::Config {
                    bucket: REVISIONS_STORE.into(),
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
            {
                Ok(s) => s,
                // Another coordinator made it in between.
                Err(e) => js
                    .get_object_store(REVISIONS_STORE)
                    .await
                    .map_err(|_| BusError::with(BusErrorKind::Setup, format!("object store {REVISIONS_STORE}"), e))?,
            },
        };
        Ok(Self { head, objects })
    }

    /// The current revision's head, with the key revision a
    /// compare-and-set over it names; `None` before the first push.
    async fn head_entry(&self) -> Result<Option<(CatalogHead, u64)>> {
        let e = self
            .head
            .entry(HEAD_KEY)
            .await
            .map_err(|e| io(format!("get {HEAD_BUCKET}/{HEAD_KEY}"), e))?;
        let Some(e) = e.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let head = CatalogHead::decode(e.value)
            .map_err(|err| BusError::with(BusErrorKind::Decode, format!("{HEAD_BUCKET}/{HEAD_KEY}"), err))?;
        Ok(Some((head, e.revision)))
    }

    /// The current revision's head; `None` before the first push.
    pub async fn current(&self) -> Result<Option<CatalogHead>> {
        Ok(self.head_entry().await?.map(|(h, _)| h))
    }

    /// Every revision kept, newest first.
    pub async fn history(&self) -> Result<Vec<CatalogHead>> {
        let mut out = Vec::new();
        let mut h = match self.head.history(HEAD_KEY).await {
            Ok(h) => h,
            Err(e) => return Err(io(format!("history of {HEAD_BUCKET}/{HEAD_KEY}"), e)),
        };
        let read = async {
            while let Some(e) = h.next().await {
                let e = e.map_err(|e| io(format!("history of {HEAD_BUCKET}/{HEAD_KEY}"), e))?;
                if e.operation == kv::Operation::Put
                    && let Ok(head) = CatalogHead::decode(e.value)
                {
                    out.push(head);
                }
            }
            Ok::<_, BusError>(())
        };
        // No entry at all: the history stream ends at once or never; bounded.
        match tokio::time::timeout(Duration::from_secs(10), read).await {
            Ok(r) => r?,
            Err(_) if out.is_empty() => {}
            Err(_) => return Err(BusError::new(BusErrorKind::Io, "reading the catalog history timed out")),
        }
        out.reverse();
        Ok(out)
    }

    /// Reads the revision `head` names, whole.
    pub async fn get(&self, head: &CatalogHead) -> Result<CatalogRevision> {
        let name = object_name(head);
        let mut obj = self
            .objects
            .get(&name)
            .await
            .map_err(|e| io(format!("get {REVISIONS_STORE}/{name}"), e))?;
        let mut buf = Vec::new();
        obj.read_to_end(&mut buf)
            .await
            .map_err(|e| io(format!("read {REVISIONS_STORE}/{name}"), e))?;
        CatalogRevision::decode(buf.as_slice())
            .map_err(|e| BusError::with(BusErrorKind::Decode, format!("{REVISIONS_STORE}/{name}"), e))
    }

    /// Publishes `rev` as the next revision, unless its files are those of
    /// the current one. Fills in its head's number, digest, sizes and
    /// time. Returns the current head after, and whether it is new.
    pub async fn publish(&self, mut rev: CatalogRevision) -> Result<(CatalogHead, bool)> {
        let digest = digest(&rev);
        let bytes: u64 = rev
            .files
            .iter()
            .chain(&rev.overrides)
            .chain(rev.env_file.iter())
            .map(|f| f.content.len() as u64)
            .sum();
        if bytes > MAX_BYTES {
            return Err(BusError::new(
                BusErrorKind::InvalidName,
                format!("the catalog is {bytes} bytes; at most {MAX_BYTES} are taken"),
            ));
        }
        loop {
            let current = self.head_entry().await?;
            if let Some((h, _)) = current.as_ref().filter(|(h, _)| h.digest == digest) {
                return Ok((h.clone(), false));
            }
            let number = current.as_ref().map_or(1, |(h, _)| h.number + 1);
            let mut head = rev.head.clone().unwrap_or_default();
            head.number = number;
            head.digest.clone_from(&digest);
            head.files = rev.files.len() as u32;
            head.bytes = bytes;
            head.pushed_at = Some(infra_proto::now());
            rev.head = Some(head.clone());
            let name = object_name(&head);
            let body = rev.encode_to_vec();
            self.objects
                .put(name.as_str(), &mut body.as_slice())
                .await
                .map_err(|e| io(format!("put {REVISIONS_STORE}/{name}"), e))?;
            let value: bytes::Bytes = head.encode_to_vec().into();
            let written = match &current {
                Some((_, revision)) => self.head.update(HEAD_KEY, value, *revision).await.is_ok(),
                None => self.head.create(HEAD_KEY, value).await.is_ok(),
            };
            if written {
                self.forget_before(number).await;
                return Ok((head, true));
            }
            // Another publisher took the number: ours was never current.
            if let Err(e) = self.objects.delete(&name).await {
                tracing::debug!(object = %name, error = %e, "could not delete an unpublished catalog object");
            }
            tracing::debug!(number, "another coordinator published first; trying again");
        }
    }

    /// Deletes the objects of revisions older than the [`KEEP`] newest.
    async fn forget_before(&self, newest: u64) {
        let Some(oldest_kept) = newest.checked_sub(KEEP as u64 - 1) else {
            return;
        };
        let Ok(mut list) = self.objects.list().await else {
            return;
        };
        let mut old = Vec::new();
        while let Some(Ok(info)) = list.next().await {
            let n = info
                .name
                .strip_prefix("rev-")
                .and_then(|n| n.split('-').next())
                .and_then(|n| n.parse::<u64>().ok());
            if n.is_some_and(|n| n < oldest_kept) && !info.deleted {
                old.push(info.name);
            }
        }
        for name in old {
            if let Err(e) = self.objects.delete(&name).await {
                tracing::warn!(object = %name, error = %e, "could not delete an old catalog revision");
            }
        }
    }
}

//! A small S3 client for backups: put an object from a file, get one
//! into a file, list a prefix, delete, make the bucket. Requests are
//! signed as presigned URLs (rusty-s3, AWS Signature V4) and sent with
//! hyper: over plain HTTP to a store on the hosts' private networks
//! (MinIO on `infra_net`), over HTTPS (rustls; the system's roots and the
//! target's own CA) to one anywhere else (S3, B2, a MinIO with TLS).
//!
//! # Guarantees
//! - Bodies stream from and to files: memory stays flat whatever the
//!   size of a backup.
//! - Errors name the operation, bucket and key, the HTTP status and the
//!   store's own error code; never a signed URL (it carries a signature)
//!   nor a key.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use infra_proto::bus::v1::{BackupObject, BackupTarget};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use tokio::io::AsyncWriteExt;

type Body = BoxBody<Bytes, std::io::Error>;

/// How long a signed request stays valid.
const SIGNED_FOR: Duration = Duration::from_secs(3600);

/// One bucket of one store, with its keys.
pub struct Store {
    bucket: Bucket,
    creds: Credentials,
    client: Client<HttpsConnector<HttpConnector>, Body>,
    name: String,
    part_size: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("bucket", &self.name)
            .finish_non_exhaustive()
    }
}

fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

/// The store's error code in an S3 error document (`<Code>NoSuchKey</Code>`).
fn s3_code(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| format!(": {code}"))
        .unwrap_or_default()
}

/// The default size of a multipart upload's parts.
pub const DEFAULT_PART_SIZE: u64 = 64 << 20;

/// The part size for `len` bytes: `wanted` (or the default), at least
/// S3's 5 MiB, and large enough for S3's 10,000 parts.
fn part_size(wanted: u64, len: u64) -> u64 {
    let wanted = if wanted == 0 { DEFAULT_PART_SIZE } else { wanted };
    wanted.max(5 << 20).max(len.div_ceil(10_000))
}

/// `n` bytes of the file at `path` from `offset`, as a streamed body.
async fn file_range(path: &Path, offset: u64, n: u64) -> std::io::Result<Body> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(n), 256 * 1024).map_ok(Frame::data);
    Ok(BodyExt::boxed(StreamBody::new(stream)))
}

/// An error with its causes (`client error (Connect): invalid peer
/// certificate: UnknownIssuer`).
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let said = cause.to_string();
        if !out.contains(&said) {
            out = format!("{out}: {said}");
        }
        next = cause.source();
    }
    out
}

/// TLS settings that trust the system's roots and the certificates in
/// `ca_pem` (a store's own CA).
fn tls_config(ca_pem: &str) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    // The system's roots (none when it has no store: then only `ca_pem`).
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if !ca_pem.trim().is_empty() {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("the CA certificate: {e}"))?;
            roots.add(cert).map_err(|e| format!("the CA certificate: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("the CA secret holds no PEM certificate".into());
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Store {
    /// A client for `target`: `http://` or `https://` (verified against
    /// the system's roots and the target's `ca_pem`).
    pub fn new(target: &BackupTarget) -> Result<Self, String> {
        let url: url::Url = target
            .endpoint
            .parse()
            .map_err(|e| format!("endpoint {:?}: {e}", target.endpoint))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("endpoint {:?}: http:// or https:// expected", target.endpoint));
        }
        let tls = tls_config(&target.ca_pem).map_err(|e| format!("endpoint {:?}: {e}", target.endpoint))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let region = if target.region.is_empty() {
            "us-east-1"
        } else {
            &target.region
        };
        let bucket = Bucket::new(url, UrlStyle::Path, target.bucket.clone(), region.to_owned())
            .map_err(|e| format!("bucket {:?}: {e}", target.bucket))?;
        Ok(Self {
            bucket,
            creds: Credentials::new(target.access_key.clone(), target.secret_key.clone()),
            client: Client::builder(TokioExecutor::new()).build(connector),
            name: target.bucket.clone(),
            part_size: target.part_size,
        })
    }

    async fn send(
        &self,
        what: &str,
        method: hyper::Method,
        url: url::Url,
        body: Body,
        length: Option<u64>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let mut req = hyper::Request::builder().method(method).uri(url.as_str());
        if let Some(n) = length {
            req = req.header(hyper::header::CONTENT_LENGTH, n);
        }
        let req = req.body(body).map_err(|e| format!("{what}: {e}"))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("{what}: cannot reach the store: {}", causes(&e)))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Err(format!("{what}: HTTP {status}{}", s3_code(&body)))
    }

    /// Makes the bucket if it is not there (a bucket we own already is fine).
    pub async fn ensure_bucket(&self) -> Result<(), String> {
        let url = self.bucket.create_bucket(&self.creds).sign(SIGNED_FOR);
        match self
            .send(
                &format!("create bucket {}", self.name),
                hyper::Method::PUT,
                url,
                empty(),
                Some(0),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.contains("BucketAlreadyOwnedByYou") || e.contains("BucketAlreadyExists") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Stores the file at `path` as `key`.
    /// Stores the file at `path` as `key`: in one PUT up to the part
    /// size, else as a multipart upload of parts of that size (S3 takes at
    /// most 5 GB in one PUT); the number of parts (1 for one PUT).
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<u16, String> {
        let what = format!("put {}/{key}", self.name);
        let len = tokio::fs::metadata(path)
            .await
            .map_err(|e| format!("{what}: {e}"))?
            .len();
        let part = part_size(self.part_size, len);
        if len <= part {
            let body = file_range(path, 0, len).await.map_err(|e| format!("{what}: {e}"))?;
            let url = self.bucket.put_object(Some(&self.creds), key).sign(SIGNED_FOR);
            self.send(&what, hyper::Method::PUT, url, body, Some(len)).await?;
            return Ok(1);
        }
        let url = self
            .bucket
            .create_multipart_upload(Some(&self.creds), key)
            .sign(SIGNED_FOR);
        let resp = self.send(&what, hyper::Method::POST, url, empty(), Some(0)).await?;
        let text = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{what}: {e}"))?
            .to_bytes();
        let id = rusty_s3::actions::CreateMultipartUpload::parse_response(&text)
            .map_err(|e| format!("{what}: the store's answer to a multipart upload: {e}"))?
            .upload_id()
            .to_owned();
        match self.put_parts(&what, key, &id, path, len, part).await {
            Ok(etags) => {
                let action = self.bucket.complete_multipart_upload(
                    Some(&self.creds),
                    key,
                    &id,
                    etags.iter().map(String::as_str),
                );
                let url = action.sign(SIGNED_FOR);
                let xml = Bytes::from(action.body());
                let n = xml.len() as u64;
                let body = Full::new(xml).map_err(|never| match never {}).boxed();
                self.send(&what, hyper::Method::POST, url, body, Some(n)).await?;
                Ok(u16::try_from(etags.len()).unwrap_or(u16::MAX))
            }
            Err(e) => {
                // Best effort: the store drops the parts it has.
                let url = self
                    .bucket
                    .abort_multipart_upload(Some(&self.creds), key, &id)
                    .sign(SIGNED_FOR);
                let _ = self.send(&what, hyper::Method::DELETE, url, empty(), None).await;
                Err(e)
            }
        }
    }

    /// Uploads `path` in parts of `part` bytes; their ETags in order.
    async fn put_parts(
        &self,
        what: &str,
        key: &str,
        id: &str,
        path: &Path,
        len: u64,
        part: u64,
    ) -> Result<Vec<String>, String> {
        let mut etags = Vec::new();
        let mut offset = 0;
        while offset < len {
            let n = part.min(len - offset);
            let number = u16::try_from(etags.len() + 1).map_err(|_| format!("{what}: more than 10,000 parts"))?;
            let body = file_range(path, offset, n).await.map_err(|e| format!("{what}: {e}"))?;
            let url = self
                .bucket
                .upload_part(Some(&self.creds), key, number, id)
                .sign(SIGNED_FOR);
            let resp = self
                .send(
                    &format!("{what} (part {number})"),
                    hyper::Method::PUT,
                    url,
                    body,
                    Some(n),
                )
                .await?;
            let etag = resp
                .headers()
                .get(hyper::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("{what} (part {number}): the store gave no ETag"))?;
            etags.push(etag.to_owned());
            offset += n;
        }
        Ok(etags)
    }

    /// Writes the object `key` to `path`; its size.
    pub async fn get_file(&self, key: &str, path: &Path) -> Result<u64, String> {
        let what = format!("get {}/{key}", self.name);
        let url = self.bucket.get_object(Some(&self.creds), key).sign(SIGNED_FOR);
        let resp = self.send(&what, hyper::Method::GET, url, empty(), None).await?;
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        let mut body = resp.into_body().into_data_stream();
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| format!("{what}: {e}"))?;
            n += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(|e| format!("{what}: {e}"))?;
        }
        file.flush().await.map_err(|e| format!("{what}: {e}"))?;
        Ok(n)
    }

    /// Every object under `prefix`, oldest first (by key: ours start with
    /// the time they were taken).
    pub async fn list(&self, prefix: &str) -> Result<Vec<BackupObject>, String> {
        let what = format!("list {}/{prefix}", self.name);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = self.bucket.list_objects_v2(Some(&self.creds));
            action.with_prefix(prefix);
            if let Some(t) = &token {
                action.with_continuation_token(t.clone());
            }
            let url = action.sign(SIGNED_FOR);
            let resp = self.send(&what, hyper::Method::GET, url, empty(), None).await?;
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{what}: {e}"))?
                .to_bytes();
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&body)
                .map_err(|e| format!("{what}: unexpected answer: {e}"))?;
            out.extend(page.contents.into_iter().map(|c| BackupObject {
                key: c.key,
                size: c.size,
                last_modified: c.last_modified,
            }));
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Deletes the object `key`.
    pub async fn delete(&self, key: &str) -> Result<(), String> {
        let url = self.bucket.delete_object(Some(&self.creds), key).sign(SIGNED_FOR);
        self.send(
            &format!("delete {}/{key}", self.name),
            hyper::Method::DELETE,
            url,
            empty(),
            None,
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_store_error_code_is_read_from_its_document() {
        let doc = b"<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>x</Message></Error>";
        assert_eq!(super::s3_code(doc), ": NoSuchKey");
        assert_eq!(super::s3_code(b"nope"), "");
    }

    #[test]
    fn parts_are_at_least_5_mib_and_at_most_10000() {
        use super::{DEFAULT_PART_SIZE, part_size};
        assert_eq!(part_size(0, 1 << 30), DEFAULT_PART_SIZE);
        assert_eq!(part_size(1, 100 << 20), 5 << 20);
        let huge = 2u64 << 40; // 2 TiB
        assert!(huge.div_ceil(part_size(64 << 20, huge)) <= 10_000);
    }

    #[test]
    fn a_ca_that_is_no_certificate_is_refused_by_name() {
        let e = super::tls_config("not a certificate").unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        assert!(super::tls_config("").is_ok());
    }
}

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
use http_body_util::{BodyExt, Empty, StreamBody, combinators::BoxBody};
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
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<(), String> {
        let what = format!("put {}/{key}", self.name);
        let file = tokio::fs::File::open(path).await.map_err(|e| format!("{what}: {e}"))?;
        let len = file.metadata().await.map_err(|e| format!("{what}: {e}"))?.len();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).map_ok(Frame::data);
        let body = BodyExt::boxed(StreamBody::new(stream));
        let url = self.bucket.put_object(Some(&self.creds), key).sign(SIGNED_FOR);
        self.send(&what, hyper::Method::PUT, url, body, Some(len)).await?;
        Ok(())
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
}

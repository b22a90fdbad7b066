//! A small plain-HTTP JSON client for the calls tier extensions make to the
//! services they manage (Ollama, Keycloak, Vault) over the host's container
//! networks. Built on the hyper already in the tree (through tonic and
//! bollard), so it adds no TLS stack and almost no build time.
//!
//! Every call is bounded by the client's timeout. Error messages name the
//! method, URL and status, and at most the service's own short error field,
//! never a request or response body: bodies carry passwords, tokens and
//! unseal keys.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
pub use hyper::Method;
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

/// What a call could fail with.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The request could not be built (a bad URL).
    #[error("{method} {url}: bad request: {reason}")]
    Request {
        /// Method.
        method: String,
        /// URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server could not be reached or the connection broke.
    #[error("{method} {url}: {reason}")]
    Connect {
        /// Method.
        method: String,
        /// URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No answer within the client's timeout.
    #[error("{method} {url}: no answer within {timeout:?}")]
    Timeout {
        /// Method.
        method: String,
        /// URL.
        url: String,
        /// The limit.
        timeout: Duration,
    },
    /// The server answered with a status that is not 2xx.
    #[error("{method} {url}: HTTP {status}{detail}")]
    Status {
        /// Method.
        method: String,
        /// URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The service's own short error (`error`, `errorMessage`,
        /// `errors`), prefixed with ": ", or empty.
        detail: String,
    },
    /// A 2xx answer whose body is not the JSON expected.
    #[error("{method} {url}: unexpected answer: {reason}")]
    Decode {
        /// Method.
        method: String,
        /// URL.
        url: String,
        /// Why (serde's message, which names no values).
        reason: String,
    },
}

impl HttpError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A request body.
pub enum Body {
    /// `application/json`.
    Json(serde_json::Value),
    /// `application/x-www-form-urlencoded` (OAuth token requests).
    Form(Vec<(String, String)>),
    /// JSON already written out.
    Raw(String),
}

/// An answer (2xx, from [`Http::call`]).
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Bytes,
}

impl Response {
    /// The body as JSON (`null` when empty).
    pub fn json<T: DeserializeOwned>(&self, method: &Method, url: &str) -> Result<T, HttpError> {
        let body: &[u8] = if self.body.is_empty() { b"null" } else { &self.body };
        serde_json::from_slice(body).map_err(|e| HttpError::Decode {
            method: method.to_string(),
            url: url.to_owned(),
            reason: format!("{} at line {} column {}", classify(&e), e.line(), e.column()),
        })
    }
}

fn classify(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "JSON of another shape",
        serde_json::error::Category::Eof => "truncated JSON",
    }
}

/// The client. Cheap to clone.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http").field("timeout", &self.timeout).finish()
    }
}

impl Http {
    /// A client whose every call (connect, send, read the whole body) ends
    /// within `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    /// One call, whatever status it answers with (for callers that read
    /// the status themselves).
    pub async fn exchange(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Body>,
    ) -> Result<Response, HttpError> {
        let m = method.to_string();
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let bytes = match body {
            None => Bytes::new(),
            Some(Body::Json(v)) => {
                req = req.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
            }
            Some(Body::Form(pairs)) => {
                req = req.header("content-type", "application/x-www-form-urlencoded");
                Bytes::from(form(&pairs))
            }
            Some(Body::Raw(text)) => {
                req = req.header("content-type", "application/json");
                Bytes::from(text)
            }
        };
        let req = req.body(Full::new(bytes)).map_err(|e| HttpError::Request {
            method: m.clone(),
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        let call = async {
            let resp = self.client.request(req).await.map_err(|e| HttpError::Connect {
                method: m.clone(),
                url: url.to_owned(),
                reason: connect_reason(&e),
            })?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| HttpError::Connect {
                    method: m.clone(),
                    url: url.to_owned(),
                    reason: format!("reading the answer: {e}"),
                })?
                .to_bytes();
            Ok::<_, HttpError>(Response { status, body })
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| HttpError::Timeout {
                method: m.clone(),
                url: url.to_owned(),
                timeout: self.timeout,
            })?
    }

    /// One call; a non-2xx answer is an error.
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Body>,
    ) -> Result<Response, HttpError> {
        let m = method.to_string();
        let resp = self.exchange(method, url, headers, body).await?;
        if !(200..300).contains(&resp.status) {
            return Err(HttpError::Status {
                method: m,
                url: url.to_owned(),
                status: resp.status,
                detail: error_detail(&resp.body),
            });
        }
        Ok(resp)
    }

    /// One call whose answer is JSON.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Body>,
    ) -> Result<T, HttpError> {
        let resp = self.call(method.clone(), url, headers, body).await?;
        resp.json(&method, url)
    }
}

fn connect_reason(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error as _;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// The service's own error field, short, when the body is JSON that has
/// one (Keycloak `error`/`errorMessage`, Vault `errors`, Ollama `error`).
fn error_detail(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return String::new();
    };
    let text = ["errorMessage", "error", "errors"]
        .iter()
        .find_map(|k| match v.get(*k)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(a) => Some(a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join("; ")),
            _ => None,
        })
        .unwrap_or_default();
    let text: String = text.chars().take(200).collect();
    if text.is_empty() { text } else { format!(": {text}") }
}

/// `application/x-www-form-urlencoded` of `pairs`.
pub fn form(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encoding of one form or path component (unreserved characters
/// kept).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_percent_encoded() {
        let f = form(&[
            ("password".into(), "a b&c=d/é".into()),
            ("grant_type".into(), "password".into()),
        ]);
        assert_eq!(f, "password=a%20b%26c%3Dd%2F%C3%A9&grant_type=password");
    }

    #[test]
    fn an_error_answer_keeps_only_the_services_short_error_field() {
        assert_eq!(
            error_detail(br#"{"error":"invalid_grant","password":"hunter2"}"#),
            ": invalid_grant"
        );
        assert_eq!(error_detail(br#"{"errors":["a","b"]}"#), ": a; b");
        assert_eq!(error_detail(b"<html>hunter2</html>"), "");
    }
}

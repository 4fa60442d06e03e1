//! Plain-HTTP GETs over the hyper client kube already links: relay pods' metrics, and
//! `wpex-operator probe` for `helm test`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Why a GET gave no body.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // the fields are named by the messages
pub enum HttpError {
    /// The URL does not parse.
    #[error("{url} is not a URL: {source}")]
    Url {
        url: String,
        source: http::uri::InvalidUri,
    },
    /// The request could not be sent, or no response came back.
    #[error("GET {url}: {source}")]
    Request {
        url: String,
        source: hyper_util::client::legacy::Error,
    },
    /// The body broke off, or was larger than [`MAX_BODY`].
    #[error("GET {url}: reading the answer: {source}")]
    Body {
        url: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The whole exchange took longer than the caller allowed.
    #[error("GET {url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    /// The server answered with a status other than 2xx.
    #[error("GET {url}: HTTP {status}")]
    Status {
        url: String,
        status: http::StatusCode,
    },
}

/// A plain-HTTP client, cheap to clone; connections are pooled between clones.
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

/// The most of an answer read: a relay's metrics are a few KiB per key; a pod that streams
/// more must not run the operator out of memory.
pub const MAX_BODY: usize = 4 << 20;

impl HttpClient {
    /// GETs `url` (http only) and returns its body, if the status is 2xx and the whole answer,
    /// at most [`MAX_BODY`] bytes, arrives within `timeout`.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<String, HttpError> {
        let uri: http::Uri = url.parse().map_err(|source| HttpError::Url {
            url: url.to_owned(),
            source,
        })?;
        let exchange = async {
            let response = self
                .client
                .get(uri)
                .await
                .map_err(|source| HttpError::Request {
                    url: url.to_owned(),
                    source,
                })?;
            let status = response.status();
            if !status.is_success() {
                return Err(HttpError::Status {
                    url: url.to_owned(),
                    status,
                });
            }
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|source| HttpError::Body {
                    url: url.to_owned(),
                    source,
                })?;
            Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout {
                url: url.to_owned(),
                timeout,
            })?
    }
}

//! A small HTTP client for the public API, used by the CLI (`midasflow kv`, `cluster`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::raft::network::{send, TransportError};
use crate::raft::transport::{http_client, HttpClient, NetKind};

/// Everything but unreserved characters is escaped, so any key survives the path.
const KEY_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

pub fn encode_key(key: &[u8]) -> String {
    percent_encoding::percent_encode(key, KEY_ESCAPE).to_string()
}

pub fn encode_key_str(key: &str) -> String {
    utf8_percent_encode(key, KEY_ESCAPE).to_string()
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub struct Client {
    http: HttpClient,
    endpoint: String,
    timeout: Duration,
}

impl Client {
    /// `endpoint` is a node's base URL, e.g. `http://127.0.0.1:7001`.
    pub fn new(endpoint: &str) -> Self {
        Client {
            http: http_client(NetKind::Tokio),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            timeout: Duration::from_secs(10),
        }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Reply, TransportError> {
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.endpoint));
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let request = builder.body(Full::new(body)).map_err(|e| TransportError::Decode {
            addr: self.endpoint.clone(),
            message: e.to_string(),
        })?;
        let response = send(&self.http, request, self.timeout).await?;
        let (parts, body) = response.into_parts();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get_path(&self, path: &str) -> Result<Reply, TransportError> {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }
}

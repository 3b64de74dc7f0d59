//! A small HTTP client for the public API, used by the CLI (`midasflow kv`, `cluster`).

use std::sync::Arc;
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

/// How a client proves itself and checks the node: TLS trust (for `https` endpoints) and
/// an API token.
#[derive(Clone, Default)]
pub struct ClientAuth {
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub token: Option<String>,
}

impl ClientAuth {
    fn add_token(&self, builder: hyper::http::request::Builder) -> hyper::http::request::Builder {
        match &self.token {
            Some(token) => builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}")),
            None => builder,
        }
    }
}

pub struct Client {
    http: HttpClient,
    endpoint: String,
    timeout: Duration,
    auth: ClientAuth,
}

impl Client {
    /// `endpoint` is a node's base URL, e.g. `http://127.0.0.1:7001`.
    pub fn new(endpoint: &str) -> Self {
        Self::with_auth(endpoint, ClientAuth::default())
    }

    /// A client for an `https` endpoint or a node that needs a token.
    pub fn with_auth(endpoint: &str, auth: ClientAuth) -> Self {
        Client {
            http: http_client(NetKind::Tokio, auth.tls.clone()),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            timeout: Duration::from_secs(10),
            auth,
        }
    }

    /// A client on a given network (turmoil's, in simulations) with a per-request timeout.
    pub fn with_network(endpoint: &str, net: NetKind, timeout: Duration) -> Self {
        Client {
            http: http_client(net, None),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            timeout,
            auth: ClientAuth::default(),
        }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Reply, TransportError> {
        let mut builder = self.auth.add_token(
            hyper::Request::builder()
                .method(method)
                .uri(format!("{}{path}", self.endpoint)),
        );
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

/// One shard's routing entry, parsed from `/v1/routing`.
#[derive(Debug, Clone)]
struct Route {
    start: u128,
    end: u128,
    leader_addr: Option<String>,
}

/// The cached routing table of a [`SmartClient`].
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    pub version: u64,
    routes: Vec<Route>,
}

fn parse_hex(value: &serde_json::Value) -> Option<u128> {
    u128::from_str_radix(value.as_str()?.trim_start_matches("0x"), 16).ok()
}

impl RoutingTable {
    /// Parses the JSON of `/v1/routing` (or of a 421 answer).
    pub fn from_json(body: &serde_json::Value) -> Option<Self> {
        let mut routes = Vec::new();
        for shard in body["shards"].as_array()? {
            let leader = shard["leader"].as_u64();
            let leader_addr = shard["replicas"].as_array().and_then(|replicas| {
                replicas
                    .iter()
                    .find(|r| r["node_id"].as_u64() == leader)
                    .and_then(|r| r["addr"].as_str().map(str::to_string))
            });
            routes.push(Route {
                start: parse_hex(&shard["range"]["start"])?,
                end: parse_hex(&shard["range"]["end"])?,
                leader_addr,
            });
        }
        Some(RoutingTable {
            version: body["routing_version"].as_u64()?,
            routes,
        })
    }

    /// Parses a response body that should hold a routing table.
    fn from_body(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok().and_then(|v| Self::from_json(&v))
    }

    /// The leader's address for `key`, if the table knows one.
    pub fn leader_for(&self, key: &[u8]) -> Option<&str> {
        let hash = u128::from(crate::placement::key_hash(key));
        self.routes
            .iter()
            .find(|r| r.start <= hash && hash < r.end)
            .and_then(|r| r.leader_addr.as_deref())
    }
}

/// A client that caches the routing table and sends each request to its shard's leader
/// (docs/API.md), refreshing when a node answers 421 or shows a newer routing version.
pub struct SmartClient {
    http: HttpClient,
    seeds: Vec<String>,
    table: std::sync::RwLock<RoutingTable>,
    timeout: Duration,
    auth: ClientAuth,
}

impl SmartClient {
    /// `seeds` are node addresses (`host:port`) used to fetch the routing table.
    pub async fn connect(seeds: Vec<String>) -> Result<Self, TransportError> {
        Self::connect_with(seeds, ClientAuth::default()).await
    }

    /// As [`SmartClient::connect`]; with `auth.tls`, nodes are reached over `https`.
    pub async fn connect_with(seeds: Vec<String>, auth: ClientAuth) -> Result<Self, TransportError> {
        let client = SmartClient {
            http: http_client(NetKind::Tokio, auth.tls.clone()),
            seeds,
            table: Default::default(),
            timeout: Duration::from_secs(10),
            auth,
        };
        client.refresh().await?;
        Ok(client)
    }

    pub fn routing_version(&self) -> u64 {
        self.table.read().unwrap().version
    }

    /// Fetches `/v1/routing` from the first seed that answers.
    pub async fn refresh(&self) -> Result<(), TransportError> {
        let mut last_error = None;
        for seed in &self.seeds {
            let request = self
                .auth
                .add_token(hyper::Request::get(self.http.url(seed, "/v1/routing")))
                .body(Full::new(Bytes::new()))
                .map_err(|e| TransportError::Decode {
                    addr: seed.clone(),
                    message: e.to_string(),
                })?;
            match send(&self.http, request, self.timeout).await {
                Ok(reply) if reply.status() == StatusCode::OK => {
                    if let Some(table) = RoutingTable::from_body(reply.body()) {
                        self.install(table);
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or(TransportError::Decode {
            addr: self.seeds.join(","),
            message: "no seed returned a routing table".into(),
        }))
    }

    fn install(&self, table: RoutingTable) {
        let mut current = self.table.write().unwrap();
        if table.version >= current.version {
            *current = table;
        }
    }

    /// Sends a request for `key` to its leader; `path_and_query` starts with `/v1/kv/`.
    pub async fn request(
        &self,
        method: Method,
        key: &[u8],
        path_and_query: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Reply, TransportError> {
        const ATTEMPTS: usize = 3;
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            let target = self
                .table
                .read()
                .unwrap()
                .leader_for(key)
                .map(str::to_string)
                .unwrap_or_else(|| self.seeds[attempt % self.seeds.len()].clone());
            let mut builder = self.auth.add_token(
                hyper::Request::builder()
                    .method(method.clone())
                    .uri(self.http.url(&target, path_and_query))
                    .header("x-no-forward", "1"),
            );
            for (name, value) in headers {
                builder = builder.header(*name, value);
            }
            let request = builder
                .body(Full::new(body.clone()))
                .map_err(|e| TransportError::Decode {
                    addr: target.clone(),
                    message: e.to_string(),
                })?;
            match send(&self.http, request, self.timeout).await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let reply = Reply {
                        status: parts.status,
                        headers: parts.headers,
                        body,
                    };
                    if reply.status == StatusCode::MISDIRECTED_REQUEST {
                        if let Some(table) = RoutingTable::from_body(&reply.body) {
                            self.install(table);
                        }
                        last = Some(Ok(reply));
                        continue;
                    }
                    let seen: u64 = reply
                        .header("x-routing-version")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if seen > self.routing_version() {
                        let _ = self.refresh().await;
                    }
                    return Ok(reply);
                }
                Err(e @ TransportError::Connect { .. }) => {
                    let _ = self.refresh().await;
                    last = Some(Err(e));
                }
                Err(e) => return Err(e),
            }
        }
        last.expect("at least one attempt")
    }
}

/// How the CLI reaches a node: `https` endpoints need --ca-cert; --token for API tokens.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientSecurity {
    /// CA certificate to verify `https` endpoints with.
    #[arg(long, global = true, env = "MIDASFLOW_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// File holding the API token to send (first line).
    #[arg(long, global = true, env = "MIDASFLOW_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
}

impl ClientSecurity {
    pub fn auth(&self) -> Result<ClientAuth, String> {
        let tls = match &self.ca_cert {
            Some(path) => Some(crate::security::client_config(path).map_err(|e| e.to_string())?),
            None => None,
        };
        let token = match &self.token_file {
            Some(path) => Some(
                crate::security::read_token_file(path)
                    .map_err(|e| e.to_string())?
                    .swap_remove(0),
            ),
            None => None,
        };
        Ok(ClientAuth { tls, token })
    }
}

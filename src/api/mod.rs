//! The public HTTP API (docs/API.md) and the internal routes, on one router.

pub mod client;
pub mod demo;
pub mod error;
pub mod internal;
pub mod kv;
pub mod openapi;
pub mod placement;
pub mod server;
pub mod ui;

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use tokio::time::Instant;

use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Value};

use crate::node::Node;
use crate::placement::{ShardInfo, PD_GROUP};
use error::ApiError;

pub const ROUTING_VERSION_HEADER: &str = "x-routing-version";

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once; later calls reuse it.
pub fn install_metrics() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let latency_buckets = [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency_buckets)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("midasflow_log_flush_batch_size".into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                )
            })
            .expect("valid buckets")
            .install_recorder()
            .expect("install the Prometheus recorder");
        crate::telemetry::describe();
        handle
    })
}

/// What the HTTP handlers share: the node, and the HTTP side's own bounded resources.
/// Handlers reach the node's fields and methods through it (`Deref`).
pub struct Api {
    pub node: Arc<Node>,
    /// Bytes of request bodies held at once (`Limits::max_buffered_body_bytes`).
    pub body_budget: BodyBudget,
    /// Snapshots being assembled from chunks.
    pub snapshot_receives: internal::SnapshotReceives,
    pub metrics: ApiMetrics,
}

/// Handles of the metrics the request path records, made once per node: recording through
/// a handle builds no label strings and looks nothing up in the registry.
pub struct ApiMetrics {
    pub requests: RequestMetrics,
    pub kv_writes: metrics::Counter,
    pub forwarded: metrics::Counter,
    pub follower_reads: metrics::Counter,
    pub follower_read_fallbacks: metrics::Counter,
    pub lease_reads: metrics::Counter,
    pub proposal_duration: metrics::Histogram,
    pub writes_per_proposal: metrics::Histogram,
}

impl ApiMetrics {
    fn new(node: &str) -> Self {
        let node = node.to_string();
        ApiMetrics {
            kv_writes: metrics::counter!("midasflow_kv_writes_total", "node" => node.clone()),
            forwarded: metrics::counter!("midasflow_forwarded_requests_total", "node" => node.clone()),
            follower_reads: metrics::counter!("midasflow_kv_follower_reads_total", "node" => node.clone()),
            follower_read_fallbacks: metrics::counter!("midasflow_kv_follower_read_fallbacks_total", "node" => node.clone()),
            lease_reads: metrics::counter!("midasflow_kv_lease_reads_total", "node" => node.clone()),
            proposal_duration: metrics::histogram!("midasflow_raft_proposal_duration_seconds", "node" => node.clone()),
            writes_per_proposal: metrics::histogram!("midasflow_kv_writes_per_proposal", "node" => node.clone()),
            requests: RequestMetrics {
                node,
                routes: Default::default(),
            },
        }
    }
}

/// Methods the request metrics name; any other is counted as `other`, so a client
/// inventing methods cannot make series without bound.
const METHOD_LABELS: [&str; 7] = ["GET", "PUT", "POST", "DELETE", "HEAD", "PATCH", "OPTIONS"];

/// The public request metrics' handles by route, method and status, made on first use.
/// Every label is bounded: routes are the router's (or `unmatched`), methods
/// [`METHOD_LABELS`] or `other`, statuses three digits.
pub struct RequestMetrics {
    node: String,
    routes: std::sync::RwLock<std::collections::HashMap<String, Vec<RequestHandles>>>,
}

struct RequestHandles {
    method: &'static str,
    status: u16,
    count: metrics::Counter,
    duration: metrics::Histogram,
}

impl RequestMetrics {
    fn record(&self, route: &str, method: &axum::http::Method, status: StatusCode, elapsed_secs: f64) {
        let method = METHOD_LABELS
            .into_iter()
            .find(|m| *m == method.as_str())
            .unwrap_or("other");
        let status = status.as_u16();
        let found = |handles: &RequestHandles| handles.method == method && handles.status == status;
        {
            let routes = self.routes.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(handles) = routes.get(route).and_then(|all| all.iter().find(|h| found(h))) {
                handles.count.increment(1);
                handles.duration.record(elapsed_secs);
                return;
            }
        }
        let labels = |with_status: bool| {
            let mut labels = vec![
                ("node", self.node.clone()),
                ("route", route.to_string()),
                ("method", method.to_string()),
            ];
            if with_status {
                labels.push(("status", status.to_string()));
            }
            labels
        };
        let handles = RequestHandles {
            method,
            status,
            count: metrics::counter!("midasflow_http_requests_total", &labels(true)),
            duration: metrics::histogram!("midasflow_http_request_duration_seconds", &labels(false)),
        };
        handles.count.increment(1);
        handles.duration.record(elapsed_secs);
        let mut routes = self.routes.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let all = routes.entry(route.to_string()).or_default();
        if !all.iter().any(found) {
            all.push(handles);
        }
    }
}

impl std::ops::Deref for Api {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}

pub fn router(node: Arc<Node>) -> Router {
    install_metrics();
    let node = Arc::new(Api {
        body_budget: BodyBudget::new(node.config.limits.max_buffered_body_bytes),
        snapshot_receives: Default::default(),
        metrics: ApiMetrics::new(&node.label()),
        node,
    });
    Router::new()
        .route("/v1/kv", any(empty_key))
        .route("/v1/kv/", any(empty_key))
        .route("/v1/kv/{*key}", any(kv::handle))
        .route("/v1/routing", get(routing))
        .route("/v1/cluster", get(cluster))
        .route("/v1/shards", get(shards))
        .route("/v1/shards/{id}", get(shard))
        .route("/v1/stats", get(stats))
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/v1/nodes/{id}", axum::routing::delete(placement::remove_node))
        .route(
            "/v1/nodes/{id}/drain",
            post(placement::drain_node).delete(placement::undrain_node),
        )
        .route("/v1/shards/{id}/move", post(placement::move_shard))
        .route("/v1/shards/{id}/split", post(placement::split_shard))
        .route("/v1/shards/{id}/transfer-leader", post(placement::transfer_leader))
        .route("/v1/operators", get(placement::operators))
        .route("/v1/demo/faults", get(demo::faults).post(demo::inject))
        .route("/v1/demo/load", post(demo::set_load))
        .route("/v1/schedule/explain", get(placement::explain))
        .route(
            "/v1/schedule/config",
            get(placement::get_config).put(placement::put_config),
        )
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route(crate::raft::batch::BATCH_PATH, post(internal::raft_batch))
        .route("/internal/raft/{group}/{op}", post(internal::raft_rpc))
        .route("/internal/pd/heartbeat", post(internal::pd_heartbeat))
        .route("/internal/identity", post(internal::identity_query))
        .route("/internal/admin/{group}", post(internal::admin))
        .merge(ui::routes())
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(node.clone(), observe))
        // A panic in a handler answers 500 and the node lives on.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .with_state(node)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    metrics::counter!("midasflow_http_handler_panics_total").increment(1);
    ApiError::internal("the request handler panicked; see the node's log").into_response()
}

/// Routes open without an API token: probes and metrics, as operators expect them.
const OPEN_ROUTES: [&str; 4] = ["/livez", "/readyz", "/health", "/metrics"];

/// With `--api-token-file`, public routes need `Authorization: Bearer <token>` (401
/// otherwise). Internal routes have their own checks (certificate, secret).
fn authenticated(node: &Api, request: &Request) -> bool {
    let Some(tokens) = &node.config.api_tokens else {
        return true;
    };
    let path = request.uri().path();
    if OPEN_ROUTES.contains(&path) || path.starts_with("/internal/") || ui::is_console_path(path) {
        return true;
    }
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .map(<[u8]>::trim_ascii);
    presented.is_some_and(|t| crate::security::token_matches(t, tokens))
}

/// 401 for a request without a valid API token, once its body is drained.
async fn unauthenticated(request: Request) -> Response {
    drain(request.into_body()).await;
    let mut response =
        ApiError::unauthorized("this node needs an API token: Authorization: Bearer <token>").into_response();
    response
        .headers_mut()
        .insert(axum::http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Checks the API token, adds `X-Routing-Version` to every response and records request
/// metrics. One middleware, not two: each layer costs allocations on every request.
async fn observe(State(node): State<Arc<Api>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    let method = request.method().clone();
    let mut response = if authenticated(&node, &request) {
        next.run(request).await
    } else {
        unauthenticated(request).await
    };
    let version = node.map().routing_version;
    response
        .headers_mut()
        .insert(ROUTING_VERSION_HEADER, HeaderValue::from(version));
    if !route.starts_with("/internal/") {
        let counts = &node.requests;
        let status = response.status();
        if route.starts_with("/v1/kv/") {
            let counter = if method == axum::http::Method::GET {
                &counts.kv_reads
            } else {
                &counts.kv_writes
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if status.is_client_error() {
            counts.client_errors.fetch_add(1, Ordering::Relaxed);
        } else if status.is_server_error() {
            counts.server_errors.fetch_add(1, Ordering::Relaxed);
        }
        node.metrics
            .requests
            .record(route, &method, status, started.elapsed().as_secs_f64());
    }
    response
}

/// Most bytes of an unwanted request body read and dropped before answering an error.
/// Answering while the client is still sending makes the server close with unread data,
/// and the TCP reset that follows can destroy the error response before the client reads
/// it; past this bound the connection is closed anyway.
pub const MAX_DRAIN_BYTES: usize = 8 << 20;

/// A request body as bytes if it is at most `limit` long; otherwise `None`, after reading
/// (and dropping) up to [`MAX_DRAIN_BYTES`] more of it.
pub async fn read_body(body: axum::body::Body, limit: usize) -> Option<bytes::Bytes> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut collected = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return None };
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > limit + MAX_DRAIN_BYTES {
                return None;
            }
            if seen <= limit {
                collected.extend_from_slice(&data);
            }
        }
    }
    (seen <= limit).then(|| collected.freeze())
}

/// How long an unwanted body is drained before an error answer (nothing of it is kept).
pub const DRAIN_TIMEOUT_MS: u64 = 5_000;

/// Reads and drops an unwanted request body, bounded in bytes and time, so the error
/// answered next is not lost to a TCP reset; a client still sending after that is cut off.
pub async fn drain(body: axum::body::Body) {
    let _ = tokio::time::timeout(std::time::Duration::from_millis(DRAIN_TIMEOUT_MS), read_body(body, 0)).await;
}

/// Request bodies a node holds in memory at once, in bytes: every body is charged before
/// it is read (its declared length, or the route's limit), so many large or slow bodies
/// get 429 instead of exhausting the node's memory.
pub struct BodyBudget {
    kib: tokio::sync::Semaphore,
    total_bytes: usize,
}

impl BodyBudget {
    pub fn new(total_bytes: usize) -> Self {
        BodyBudget {
            kib: tokio::sync::Semaphore::new(total_bytes.div_ceil(1024)),
            total_bytes,
        }
    }

    /// Reads a body of at most `limit` bytes within `timeout_ms`, charging the budget for
    /// as long as the returned permit lives.
    pub async fn read(
        &self,
        body: axum::body::Body,
        limit: usize,
        timeout_ms: u64,
    ) -> Result<(bytes::Bytes, tokio::sync::SemaphorePermit<'_>), ApiError> {
        // hyper knows the length: 0 without a body, Content-Length, or none if chunked.
        let declared = axum::body::HttpBody::size_hint(&body).exact();
        let charge = declared.map_or(limit, |d| d.min(limit as u64) as usize);
        let units = u32::try_from(charge.div_ceil(1024)).unwrap_or(u32::MAX);
        let Ok(permit) = self.kib.try_acquire_many(units) else {
            drain(body).await;
            return Err(ApiError::overloaded(format!(
                "request bodies on this node already hold {} bytes",
                self.total_bytes
            )));
        };
        let bytes = read_body_within(body, limit, timeout_ms).await?;
        Ok((bytes, permit))
    }
}

/// [`read_body`] bounded in time too: a body that has not arrived whole within
/// `timeout_ms` gets 408, one over `limit` gets 413.
pub async fn read_body_within(body: axum::body::Body, limit: usize, timeout_ms: u64) -> Result<bytes::Bytes, ApiError> {
    match tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), read_body(body, limit)).await {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(ApiError::value_too_large(format!(
            "the request body is over the {limit}-byte limit"
        ))),
        Err(_) => Err(ApiError::request_timeout(format!(
            "the request body did not arrive within {timeout_ms} ms"
        ))),
    }
}

async fn empty_key(request: Request) -> ApiError {
    drain(request.into_body()).await;
    ApiError::bad_request("key must not be empty: use /v1/kv/{key}")
}

async fn unknown_route(request: Request) -> ApiError {
    let error = ApiError::not_found(format!("no route for {} {}", request.method(), request.uri().path()));
    drain(request.into_body()).await;
    error
}

async fn method_not_allowed(request: Request) -> ApiError {
    let error = ApiError::method_not_allowed(format!(
        "{} is not allowed on {}",
        request.method(),
        request.uri().path()
    ));
    drain(request.into_body()).await;
    error
}

fn hex(value: u128) -> String {
    format!("{value:#018x}")
}

fn shard_json(node: &Api, shard: &ShardInfo) -> Value {
    let map = node.map();
    let replicas: Vec<Value> = shard
        .replicas
        .iter()
        .map(|id| json!({"node_id": id, "addr": map.node_addr(*id)}))
        .collect();
    json!({
        "id": shard.id,
        "range": {"start": hex(u128::from(shard.start)), "end": hex(shard.end_u128())},
        "replicas": replicas,
        "learners": shard.learners,
        "leader": node.leader_hint(shard.id),
        "epoch": shard.epoch,
    })
}

/// The routing table, as `/v1/routing` and 421 responses carry it.
pub fn routing_json(node: &Api) -> Value {
    let map = node.map();
    let shards: Vec<Value> = map.shards.values().map(|s| shard_json(node, s)).collect();
    json!({"routing_version": map.routing_version, "shards": shards})
}

async fn routing(State(node): State<Arc<Api>>) -> impl IntoResponse {
    axum::Json(routing_json(&node))
}

async fn cluster(State(node): State<Arc<Api>>) -> impl IntoResponse {
    let map = node.map();
    let view = node.cluster_view();
    let nodes: Vec<Value> = map
        .nodes
        .values()
        .map(|n| {
            let shards = map.shards_on(n.id).count();
            let leaders = view.leader_hints.values().filter(|(l, _)| *l == n.id).count();
            let incarnation = map.incarnations.get(&n.id).map(|i| crate::identity::hex(*i));
            json!({"id": n.id, "addr": n.addr, "state": node.node_state(n.id, n.state), "shards": shards, "leaders": leaders, "incarnation": incarnation})
        })
        .collect();
    let pd_leader = node.local_leader(PD_GROUP).or(view.pd_leader);
    let cluster_id = (map.cluster_id != 0).then(|| crate::identity::hex(map.cluster_id));
    axum::Json(json!({
        "cluster_id": cluster_id,
        "node_id": node.config.node_id,
        "pd_leader": pd_leader,
        "pd_voters": node.pd_voters(),
        "routing_version": map.routing_version,
        "nodes": nodes,
    }))
}

/// One shard as seen from this node: map facts plus, where a replica is local, its state.
fn shard_detail(node: &Api, shard: &ShardInfo) -> Value {
    let mut detail = shard_json(node, shard);
    if let Some(group) = node.shards.get(shard.id) {
        let metrics = group.raft.metrics().borrow().clone();
        let membership = crate::raft::membership::status(&group);
        detail["local_replica"] = json!({
            "state": format!("{:?}", metrics.state),
            "term": metrics.current_term,
            "last_log_index": metrics.last_log_index,
            "applied_index": group.applied.index(),
            "snapshot_index": metrics.snapshot.map(|s| s.index),
            "snapshot_installs": group.applied.snapshot_installs(),
            "keys": group.view.live_keys(),
            "bytes": group.view.live_bytes(),
            // The group's own membership as this replica knows it (the map's view is
            // "replicas"/"learners"; they agree once operators finish).
            "voters": membership.voters,
            "group_learners": membership.learners,
        });
        detail["term"] = json!(metrics.current_term);
        detail["applied_index"] = json!(group.applied.index());
        detail["keys"] = json!(group.view.live_keys());
        detail["bytes"] = json!(group.view.live_bytes());
    }
    detail
}

async fn shards(State(node): State<Arc<Api>>) -> impl IntoResponse {
    let map = node.map();
    let shards: Vec<Value> = map.shards.values().map(|s| shard_detail(&node, s)).collect();
    axum::Json(json!({"routing_version": map.routing_version, "shards": shards}))
}

async fn shard(State(node): State<Arc<Api>>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("shard id must be a number, got {id:?}")))?;
    let map = node.map();
    let shard = map
        .shards
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("no shard {id}")))?;
    Ok(axum::Json(shard_detail(&node, shard)))
}

async fn stats(State(node): State<Arc<Api>>) -> impl IntoResponse {
    let map = node.map();
    let mut shards = Vec::new();
    let (mut keys, mut bytes) = (0u64, 0u64);
    for group in node.shards.all().iter() {
        keys += group.view.live_keys();
        bytes += group.view.live_bytes();
        shards.push(json!({"id": group.id, "keys": group.view.live_keys(), "bytes": group.view.live_bytes(), "leader_here": group.is_leader()}));
    }
    axum::Json(json!({
        "node_id": node.config.node_id,
        "routing_version": map.routing_version,
        "node": {"replicas": shards.len(), "keys": keys, "bytes": bytes, "storage_bytes": node.shards.storage_bytes()},
        "shards": shards,
        "uptime_seconds": node.started.elapsed().as_secs(),
        "requests": {
            "kv_reads": node.requests.kv_reads.load(Ordering::Relaxed),
            "kv_writes": node.requests.kv_writes.load(Ordering::Relaxed),
            "client_errors": node.requests.client_errors.load(Ordering::Relaxed),
            "server_errors": node.requests.server_errors.load(Ordering::Relaxed),
            "in_flight": node.config.limits.max_inflight_requests - node.inflight.available_permits(),
        },
    }))
}

async fn livez() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn readyz(State(node): State<Arc<Api>>) -> Response {
    let draining = node.draining.load(std::sync::atomic::Ordering::Relaxed);
    let bootstrapped = node.map().is_bootstrapped();
    let pd = node.pd_reachable();
    let ready = !draining && bootstrapped && pd;
    let body =
        axum::Json(json!({"ready": ready, "draining": draining, "map_bootstrapped": bootstrapped, "pd_reachable": pd}));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

async fn health(State(node): State<Arc<Api>>) -> impl IntoResponse {
    let map = node.map();
    let shards: Vec<Value> = map
        .shards
        .values()
        .map(|s| {
            let leader = node.leader_hint(s.id);
            let local = node.shards.get(s.id);
            json!({
                "id": s.id,
                "leader": leader,
                "healthy": local.as_ref().map_or(leader.is_some(), |g| g.current_leader().is_some()),
                "local_replica": local.is_some(),
            })
        })
        .collect();
    let healthy = shards.iter().all(|s| s["healthy"] == json!(true));
    axum::Json(json!({"node_id": node.config.node_id, "healthy": healthy, "shards": shards}))
}

async fn metrics_text() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        install_metrics().render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    /// Methods a client invents all count as `other`: they cannot grow the node's series
    /// without bound. Known methods, routes and statuses keep their own series.
    #[test]
    fn invented_methods_share_one_request_series() {
        let prometheus = install_metrics();
        let requests = ApiMetrics::new("methods-test").requests;
        for i in 0..50 {
            let method = Method::from_bytes(format!("INVENTED{i}").as_bytes()).unwrap();
            requests.record("unmatched", &method, StatusCode::METHOD_NOT_ALLOWED, 0.001);
        }
        requests.record("/v1/kv/{*key}", &Method::GET, StatusCode::OK, 0.001);
        requests.record("/v1/kv/{*key}", &Method::GET, StatusCode::OK, 0.001);
        let text = prometheus.render();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with(concat!("midasflow_http_requests_total", "{")) && l.contains("node=\"methods-test\"")
            })
            .collect();
        assert_eq!(series.len(), 2, "{series:?}");
        assert!(
            series
                .iter()
                .any(|l| l.contains("method=\"other\"") && l.ends_with(" 50")),
            "{series:?}"
        );
        assert!(
            series.iter().any(|l| l.contains("method=\"GET\"") && l.ends_with(" 2")),
            "{series:?}"
        );
    }
}

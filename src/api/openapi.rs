//! The public v1 API as an OpenAPI 3.1 document, generated from code with `utoipa` and
//! served at `GET /v1/openapi.json`. `ops/openapi.json` is the committed copy; a test
//! fails when the two differ (`MIDASFLOW_WRITE_OPENAPI=1 cargo test --lib openapi`
//! rewrites it).
//!
//! Most handlers build their JSON with `serde_json::json!`, and the KV routes are one
//! catch-all handler (`kv::handle`), so the operations here are described on small
//! documentation-only functions ([`docs`]), with documentation-only schema types
//! ([`schema`]) that mirror what the handlers write. Types the API serializes as they are
//! (`ScheduleSettings`, `NodeState`, `Origin`, `Step`, `Health`, `Report`) derive
//! `ToSchema` where they are defined. Cross-cutting facts are added in one place
//! ([`Common`]): `X-Routing-Version` on every response, `Retry-After` on 429 and 503,
//! 401 on every route that needs the API token, 500 everywhere.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::SchemaType;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, KnownFormat, ObjectBuilder, Ref, RefOr, ResponseBuilder, Schema, SchemaFormat, Type,
};
use utoipa::{Modify, OpenApi};

/// Where the committed copy of the document lives, relative to the crate root.
pub const COMMITTED_PATH: &str = "ops/openapi.json";

/// The name of the bearer-token security scheme in the document.
const TOKEN_SCHEME: &str = "api_token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "midasflow",
        description = "The public HTTP API (v1) of midasflow, a sharded, Raft-replicated key-value store. \
            Any node answers any request: a node that cannot serve it forwards it to the shard's leader \
            (or the placement driver's leader), unless the client sent `X-No-Forward: 1` (KV routes only: \
            then `421` with the routing map). Every response carries `X-Routing-Version`. \
            With `--api-token-file`, every `/v1/...` route needs `Authorization: Bearer <token>`; \
            `/livez`, `/readyz`, `/health` and `/metrics` are always open. \
            A method a route does not serve is answered `405` (`method_not_allowed`), an unknown path `404` \
            (`not_found`), both with the error body; a request target over 65,534 bytes gets `414` with an \
            empty body from the HTTP layer.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        docs::kv_get,
        docs::kv_put,
        docs::kv_delete,
        docs::kv_history,
        docs::routing,
        docs::cluster,
        docs::shards,
        docs::shard,
        docs::stats,
        docs::remove_node,
        docs::drain_node,
        docs::undrain_node,
        docs::move_shard,
        docs::split_shard,
        docs::transfer_leader,
        docs::operators,
        docs::explain,
        docs::get_config,
        docs::put_config,
        docs::openapi_document,
        docs::demo_faults,
        docs::demo_inject,
        docs::demo_load,
        docs::livez,
        docs::readyz,
        docs::health,
        docs::metrics,
    ),
    components(schemas(schema::ErrorBody, schema::ErrorDetail)),
    security(("api_token" = [])),
    tags(
        (name = "kv", description = "Keys and values. Keys are 1-4096 bytes, percent-encoded in the path \
            (strictly: `%` must be followed by two hex digits); a key may contain `/`. A key whose last \
            segment is `history` must encode that slash as `%2F` for `GET`, since `GET /v1/kv/{key}/history` \
            is the history route (`PUT` and `DELETE` take the whole path as the key). Values are raw bytes, \
            at most `--max-value-bytes` (1 MiB by default). `/v1/kv` and `/v1/kv/` answer `400` \
            (`bad_request`: empty key) to every method; other methods than GET, PUT and DELETE on a key \
            get `405`. The body of any KV request is read (and bounded) before the request is parsed."),
        (name = "cluster", description = "The routing map, cluster membership, shards and statistics as this node sees them."),
        (name = "placement", description = "Nodes, manual operators and the scheduler. Requests that need the \
            placement driver's leader are forwarded to it (one hop; `X-No-Forward` is not honoured here). \
            Request bodies are at most 16 KiB (`413 value_too_large` above)."),
        (name = "demo", description = "Fault injection and background load, served by `midasflow demo`'s \
            nodes only (`midasflow server` answers `404`). Bodies are at most 1 KiB."),
        (name = "probes", description = "Liveness, readiness, health and metrics: open without an API token."),
        (name = "meta", description = "This document."),
    ),
    modifiers(&Common),
)]
pub struct ApiDoc;

/// The document as served and committed: pretty-printed JSON with a trailing newline.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut text = ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes");
        text.push('\n');
        text
    })
}

/// `GET /v1/openapi.json`.
pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document())
}

/// Adds what holds for every operation, so the attributes below need not repeat it.
struct Common;

impl Modify for Common {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            TOKEN_SCHEME,
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from the server's `--api-token-file` (one per line), as \
                         `Authorization: Bearer <token>`. Without `--api-token-file` no token is needed.",
                    ))
                    .build(),
            ),
        );
        components.headers.insert(
            ROUTING_VERSION.into(),
            integer_header("The routing map's version on the node that answered (on every response).").into(),
        );
        components.headers.insert(
            RETRY_AFTER.into(),
            integer_header("Seconds to wait before retrying (1).").into(),
        );
        components.responses.insert(
            UNAUTHORIZED.into(),
            error_response(
                "`unauthorized`: the server runs with `--api-token-file` and the request has no valid \
                 `Authorization: Bearer` token.",
            )
            .into(),
        );
        components.responses.insert(
            INTERNAL.into(),
            error_response("`internal`: a bug or a storage failure (a handler that panicked answers this too).").into(),
        );
        for (path, item) in api.paths.paths.iter_mut() {
            let open = super::OPEN_ROUTES.contains(&path.as_str());
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.head,
                &mut item.patch,
                &mut item.options,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                add_common(operation, open);
            }
        }
    }
}

const ROUTING_VERSION: &str = "X-Routing-Version";
const RETRY_AFTER: &str = "Retry-After";
const UNAUTHORIZED: &str = "Unauthorized";
const INTERNAL: &str = "Internal";

fn header_ref(name: &str) -> RefOr<utoipa::openapi::header::Header> {
    RefOr::Ref(Ref::new(format!("#/components/headers/{name}")))
}

fn response_ref(name: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::Ref(Ref::new(format!("#/components/responses/{name}")))
}

/// An error answer with the error body and `X-Routing-Version`.
fn error_response(description: &str) -> utoipa::openapi::Response {
    let mut response = ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build();
    response
        .headers
        .insert(ROUTING_VERSION.into(), header_ref(ROUTING_VERSION));
    response
}

fn integer_header(description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(0))
                .build(),
        ))
        .description(Some(description))
        .build()
}

fn add_common(operation: &mut Operation, open: bool) {
    // An optional header or query parameter is absent or a value, never null.
    for parameter in operation.parameters.iter_mut().flatten() {
        if let RefOr::T(parameter) = parameter {
            if let Some(RefOr::T(Schema::Object(object))) = &mut parameter.schema {
                if let SchemaType::Array(types) = &object.schema_type {
                    let types: Vec<Type> = types.iter().filter(|t| **t != Type::Null).cloned().collect();
                    if let [only] = types.as_slice() {
                        object.schema_type = SchemaType::Type(only.clone());
                    }
                }
            }
        }
    }
    let responses = &mut operation.responses.responses;
    if open {
        operation.security = Some(vec![SecurityRequirement::default()]);
    } else {
        responses
            .entry("401".into())
            .or_insert_with(|| response_ref(UNAUTHORIZED));
    }
    responses.entry("500".into()).or_insert_with(|| response_ref(INTERNAL));
    for (status, response) in responses.iter_mut() {
        let RefOr::T(response) = response else { continue };
        response
            .headers
            .insert(ROUTING_VERSION.into(), header_ref(ROUTING_VERSION));
        // `/readyz` answers 503 without `Retry-After`; every error midasflow answers 429
        // or 503 with carries it.
        if !open && (status == "429" || status == "503") {
            response.headers.insert(RETRY_AFTER.into(), header_ref(RETRY_AFTER));
        }
    }
}

/// Documentation-only schemas: the JSON the handlers build with `serde_json::json!`.
#[allow(dead_code)] // Never built: they exist to describe the API.
pub mod schema {
    use serde::Serialize;
    use utoipa::ToSchema;

    /// The body of every error midasflow answers itself (`src/api/error.rs`).
    #[derive(Serialize, ToSchema)]
    #[schema(example = json!({"error": {"code": "not_found", "message": "key not found"}}))]
    pub struct ErrorBody {
        pub error: ErrorDetail,
    }

    #[derive(Serialize, ToSchema)]
    pub struct ErrorDetail {
        /// What went wrong, for programs: `bad_request`, `unauthorized`, `not_found`,
        /// `method_not_allowed`, `request_timeout`, `conflict`, `gone`, `precondition_failed`,
        /// `key_too_large`, `value_too_large`, `overloaded`, `internal`, `unavailable`, `timeout`.
        pub code: String,
        /// What went wrong, for people; its wording may change.
        pub message: String,
    }

    /// How a read is served.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum Consistency {
        /// The shard's leader confirms its leadership with a quorum, then reads.
        Linearizable,
        /// Any replica answers from what it has applied (`X-Applied-Index` says how far).
        Stale,
    }

    /// The answer to a `PUT`.
    #[derive(Serialize, ToSchema)]
    #[schema(example = json!({"key": "user/42", "version": 3, "shard": 7}))]
    pub struct Written {
        /// The key, as UTF-8 (invalid bytes replaced by U+FFFD).
        pub key: String,
        /// The key's new version.
        pub version: u64,
        /// The shard that holds the key.
        pub shard: u64,
    }

    /// The answer to a `DELETE`.
    #[derive(Serialize, ToSchema)]
    #[schema(example = json!({"key": "user/42", "version": 4, "deleted": true, "shard": 7}))]
    pub struct Deleted {
        /// The key, as UTF-8 (invalid bytes replaced by U+FFFD).
        pub key: String,
        /// The version of the deletion (a tombstone: the next `PUT` gets the version after it).
        pub version: u64,
        /// Always true.
        pub deleted: bool,
        /// The shard that holds the key.
        pub shard: u64,
    }

    /// A key's retained versions, newest first (at most `--history-versions`).
    #[derive(Serialize, ToSchema)]
    pub struct History {
        /// The key, as UTF-8 (invalid bytes replaced by U+FFFD).
        pub key: String,
        pub versions: Vec<HistoryVersion>,
        /// The shard that holds the key.
        pub shard: u64,
    }

    #[derive(Serialize, ToSchema)]
    pub struct HistoryVersion {
        pub version: u64,
        /// True for a deletion (its value is empty).
        pub deleted: bool,
        /// The value, base64 (standard alphabet, padded).
        #[schema(content_encoding = "base64")]
        pub value_base64: String,
    }

    /// The routing map, as `GET /v1/routing` and `421` answers carry it.
    #[derive(Serialize, ToSchema)]
    pub struct RoutingMap {
        pub routing_version: u64,
        pub shards: Vec<ShardSummary>,
    }

    /// A shard as the map lists it.
    #[derive(Serialize, ToSchema)]
    pub struct ShardSummary {
        pub id: u64,
        pub range: HashRange,
        /// The voting replicas.
        pub replicas: Vec<Replica>,
        /// Nodes being added by a running operator.
        pub learners: Vec<u64>,
        /// The leader as this node last heard of it.
        pub leader: Option<u64>,
        /// Changes with every change of the shard's range or replicas.
        pub epoch: u64,
    }

    /// The half-open range `[start, end)` of key hashes (XXH3-64 of the key), in hex with at
    /// least 16 digits; the last shard's `end` is `0x10000000000000000` (2^64).
    #[derive(Serialize, ToSchema)]
    #[schema(example = json!({"start": "0x0000000000000000", "end": "0x4000000000000000"}))]
    pub struct HashRange {
        #[schema(pattern = "^0x[0-9a-f]{16,17}$")]
        pub start: String,
        #[schema(pattern = "^0x[0-9a-f]{16,17}$")]
        pub end: String,
    }

    #[derive(Serialize, ToSchema)]
    pub struct Replica {
        pub node_id: u64,
        /// The node's address; null if the map does not know it.
        pub addr: Option<String>,
    }

    /// A shard with, where this node holds a replica, that replica's state.
    #[derive(Serialize, ToSchema)]
    pub struct ShardDetail {
        #[serde(flatten)]
        pub shard: ShardSummary,
        /// The local replica's Raft term (only where this node holds a replica).
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub term: Option<u64>,
        /// The local replica's applied log index (only where this node holds a replica).
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub applied_index: Option<u64>,
        /// Live keys in the local replica (only where this node holds a replica).
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub keys: Option<u64>,
        /// Bytes of live values in the local replica (only where this node holds a replica).
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub bytes: Option<u64>,
        /// Only where this node holds a replica.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub local_replica: Option<LocalReplica>,
    }

    /// The local replica of a shard's Raft group.
    #[derive(Serialize, ToSchema)]
    pub struct LocalReplica {
        /// The Raft role: `Leader`, `Follower`, `Candidate`, `Learner` or `Shutdown`.
        pub state: String,
        pub term: u64,
        pub last_log_index: Option<u64>,
        pub applied_index: u64,
        pub snapshot_index: Option<u64>,
        pub snapshot_installs: u64,
        pub keys: u64,
        pub bytes: u64,
        /// The group's own voters as this replica knows them (the map's are `replicas`).
        pub voters: Vec<u64>,
        /// The group's own learners as this replica knows them (the map's are `learners`).
        pub group_learners: Vec<u64>,
    }

    #[derive(Serialize, ToSchema)]
    pub struct ShardList {
        pub routing_version: u64,
        pub shards: Vec<ShardDetail>,
    }

    #[derive(Serialize, ToSchema)]
    pub struct Cluster {
        /// 32 hex digits; null before the cluster is bootstrapped.
        pub cluster_id: Option<String>,
        /// The node that answered.
        pub node_id: u64,
        pub pd_leader: Option<u64>,
        pub pd_voters: Vec<u64>,
        pub routing_version: u64,
        pub nodes: Vec<ClusterNode>,
    }

    #[derive(Serialize, ToSchema)]
    pub struct ClusterNode {
        pub id: u64,
        pub addr: String,
        pub state: NodeLiveness,
        /// Shard replicas the map places on the node.
        pub shards: u64,
        /// Groups the node leads, the placement driver's included.
        pub leaders: u64,
        /// The node's registered incarnation (32 hex digits), if any.
        pub incarnation: Option<String>,
    }

    /// A node's state as this node sees it: the stored state, with `suspect` and `down`
    /// derived from heartbeats and `drained` for a draining node that holds no replica.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum NodeLiveness {
        Up,
        Suspect,
        Down,
        Draining,
        Drained,
        Removed,
    }

    #[derive(Serialize, ToSchema)]
    pub struct Stats {
        pub node_id: u64,
        pub routing_version: u64,
        pub node: NodeStats,
        /// The shard replicas on this node.
        pub shards: Vec<ShardStats>,
        pub uptime_seconds: u64,
        pub requests: RequestCounts,
    }

    #[derive(Serialize, ToSchema)]
    pub struct NodeStats {
        pub replicas: u64,
        pub keys: u64,
        pub bytes: u64,
        /// The storage engine's size on disk.
        pub storage_bytes: u64,
    }

    #[derive(Serialize, ToSchema)]
    pub struct ShardStats {
        pub id: u64,
        pub keys: u64,
        pub bytes: u64,
        pub leader_here: bool,
    }

    /// Public requests this node answered since it started.
    #[derive(Serialize, ToSchema)]
    pub struct RequestCounts {
        /// `GET`s on `/v1/kv/...`.
        pub kv_reads: u64,
        /// Other methods on `/v1/kv/...`.
        pub kv_writes: u64,
        /// 4xx answers on public routes.
        pub client_errors: u64,
        /// 5xx answers on public routes.
        pub server_errors: u64,
        /// KV requests in progress.
        pub in_flight: u64,
    }

    #[derive(Serialize, ToSchema)]
    pub struct NodeStateChange {
        pub node: u64,
        pub state: crate::placement::NodeState,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct MoveRequest {
        /// A node that holds a replica of the shard.
        pub from: u64,
        /// A node that does not.
        pub to: u64,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct TransferRequest {
        /// A replica of the shard.
        pub to: u64,
    }

    /// An empty body is the same as `{}`.
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct SplitRequest {
        /// The split point, a key hash strictly inside the shard's range. Without it: the
        /// median hash of the shard's keys, as its leader reports it.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub at: Option<SplitPoint>,
    }

    /// A key hash: a number, or a `0x`-prefixed hex string (at most 16 digits).
    #[derive(Serialize, ToSchema)]
    #[serde(untagged)]
    pub enum SplitPoint {
        Number(u64),
        Hex(String),
    }

    #[derive(Serialize, ToSchema)]
    pub struct OperatorStarted {
        /// The new operator's id (see `GET /v1/operators`).
        pub operator: u64,
    }

    #[derive(Serialize, ToSchema)]
    pub struct Operators {
        pub running: Vec<RunningOperator>,
        /// The last 32 finished, newest first.
        pub finished: Vec<FinishedOperator>,
    }

    #[derive(Serialize, ToSchema)]
    pub struct RunningOperator {
        pub id: u64,
        pub kind: OperatorKind,
        pub origin: crate::placement::operator::Origin,
        pub reason: String,
        pub step: crate::placement::operator::Step,
        pub age_ms: u64,
        pub step_age_ms: u64,
        /// Why the operator's executor is waiting, if it is (as the placement driver's
        /// leader knows it; null on other nodes).
        pub waiting_for: Option<String>,
    }

    #[derive(Serialize, ToSchema)]
    pub struct FinishedOperator {
        pub id: u64,
        pub kind: OperatorKind,
        pub origin: crate::placement::operator::Origin,
        pub reason: String,
        pub outcome: Outcome,
        pub duration_ms: u64,
        pub finished_ago_ms: u64,
    }

    /// What an operator does; `from`, `to`, `at` and `child` appear with the kinds that have them.
    #[derive(Serialize, ToSchema)]
    pub struct OperatorKind {
        #[serde(rename = "type")]
        pub kind: OperatorType,
        pub shard: u64,
        /// `move_replica`.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub from: Option<u64>,
        /// `move_replica`, `add_replica`, `transfer_leader`.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub to: Option<u64>,
        /// `split`: the split point, in hex.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false, pattern = "^0x[0-9a-f]{16}$")]
        pub at: Option<String>,
        /// `split`: the new shard's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub child: Option<u64>,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum OperatorType {
        MoveReplica,
        AddReplica,
        TransferLeader,
        Split,
    }

    #[derive(Serialize, ToSchema)]
    pub struct Outcome {
        pub outcome: OutcomeKind,
        /// Why it failed or was cancelled.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub reason: Option<String>,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum OutcomeKind {
        Succeeded,
        Failed,
        Cancelled,
    }

    #[derive(Serialize, ToSchema)]
    pub struct Explain {
        /// The node that answered: the placement driver's leader.
        pub pd_leader: u64,
        pub paused: bool,
        /// The leader is new and does not schedule yet.
        pub warming_up: bool,
        pub nodes: Vec<ExplainNode>,
        /// Every checker's findings, in order: `replica`, `split`, `balance-replicas`,
        /// `balance-leaders`, `limits`.
        pub checkers: Vec<crate::placement::scheduler::Report>,
        pub would_start: Vec<Proposal>,
        /// Operators running now.
        pub running: u64,
    }

    #[derive(Serialize, ToSchema)]
    pub struct ExplainNode {
        pub id: u64,
        pub health: crate::placement::scheduler::Health,
        /// Since the node's last heartbeat; null if none was seen.
        pub last_seen_ms: Option<u64>,
    }

    #[derive(Serialize, ToSchema)]
    pub struct Proposal {
        pub kind: OperatorKind,
        pub reason: String,
    }

    /// Any subset of the scheduler settings; the result is validated as a whole.
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct SettingsChange {
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        pub paused: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false, minimum = 1, maximum = 86400)]
        pub down_after_secs: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false, minimum = 1)]
        pub split_max_bytes: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false, minimum = 1)]
        pub split_max_keys: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false, minimum = 1)]
        pub split_qps: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false, minimum = 1, maximum = 3600)]
        pub split_qps_secs: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false, minimum = 1)]
        pub max_operators: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false, minimum = 1)]
        pub max_operators_per_node: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false, minimum = 1)]
        pub max_snapshots_per_node: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false, minimum = 1, maximum = 86400)]
        pub step_timeout_secs: Option<u64>,
    }

    #[derive(Serialize, ToSchema)]
    #[schema(example = json!({"status": "ok"}))]
    pub struct Liveness {
        /// Always `ok`.
        pub status: String,
    }

    #[derive(Serialize, ToSchema)]
    pub struct Readiness {
        /// Bootstrapped, the placement driver reachable, and not draining.
        pub ready: bool,
        pub draining: bool,
        pub map_bootstrapped: bool,
        pub pd_reachable: bool,
    }

    #[derive(Serialize, ToSchema)]
    pub struct HealthReport {
        pub node_id: u64,
        /// Every shard healthy.
        pub healthy: bool,
        pub shards: Vec<ShardHealth>,
    }

    #[derive(Serialize, ToSchema)]
    pub struct ShardHealth {
        pub id: u64,
        pub leader: Option<u64>,
        /// The shard has a leader (as the local replica knows it, or the leader hint).
        pub healthy: bool,
        /// This node holds a replica.
        pub local_replica: bool,
    }

    /// The OpenAPI 3.1 document (this one).
    #[derive(Serialize, ToSchema)]
    #[schema(value_type = Object)]
    pub struct Document(serde_json::Value);

    /// A raw value: any bytes.
    #[derive(Serialize, ToSchema)]
    #[schema(value_type = String, format = Binary)]
    pub struct RawValue(Vec<u8>);

    /// A fault to inject into the demo's cluster.
    #[derive(Serialize, ToSchema)]
    #[serde(tag = "kind", rename_all = "lowercase")]
    pub enum DemoFault {
        /// Cut every link between `node` and the others.
        Isolate { node: u64 },
        /// Cut the link between two nodes, both ways.
        Cut { nodes: [u64; 2] },
        /// Stop a node's server and replicas (its data stays).
        Crash { node: u64 },
        /// Start a crashed node again on its data.
        Restart { node: u64 },
        /// Restore every link and restart every crashed node.
        Heal,
    }

    #[derive(Serialize, ToSchema)]
    pub struct DemoLoadSwitch {
        pub enabled: bool,
    }

    #[derive(Serialize, ToSchema)]
    pub struct DemoState {
        pub nodes: Vec<u64>,
        pub isolated: Vec<u64>,
        /// Cut links, each as `[lower id, higher id]`.
        pub cut: Vec<[u64; 2]>,
        pub crashed: Vec<u64>,
        /// One line per fault in force, for people (`"node 2 isolated"`).
        pub faults: Vec<String>,
        pub load: DemoLoad,
    }

    #[derive(Serialize, ToSchema)]
    pub struct DemoLoad {
        pub enabled: bool,
        /// By node id: the background writer's successes and failures through that node.
        pub per_node: std::collections::BTreeMap<String, DemoLoadCounters>,
    }

    #[derive(Serialize, ToSchema)]
    pub struct DemoLoadCounters {
        pub ok: u64,
        pub failed: u64,
        pub last_error: Option<String>,
    }
}

/// Documentation-only operations: each function stands for a route in `super::router`.
#[allow(dead_code)] // Never called: they exist to carry `#[utoipa::path]`.
pub mod docs {
    use super::schema::*;
    use crate::placement::operator::ScheduleSettings;

    /// Read a key's value
    ///
    /// The value as raw bytes (`application/octet-stream`, whatever type it was written with).
    /// Linearizable by default: served by the shard's leader after it confirms its leadership.
    #[utoipa::path(
        get, path = "/v1/kv/{key}", tag = "kv", operation_id = "get_key",
        params(
            ("key" = String, Path, description = "The key, percent-encoded."),
            ("consistency" = inline(Option<Consistency>), Query, description = "`linearizable` (default) or `stale`: any replica answers from its applied state, and says how far with `X-Applied-Index`."),
            ("version" = Option<u64>, Query, minimum = 1, description = "Read this retained version instead of the latest (`410` if it is no longer retained)."),
            ("X-No-Forward" = Option<String>, Header, description = "`1`: answer `421` with the routing map instead of forwarding to another node."),
        ),
        responses(
            (status = 200, description = "The value.", body = RawValue, content_type = "application/octet-stream",
                headers(
                    ("X-Version" = u64, description = "The version read."),
                    ("ETag" = String, description = "The version read, quoted: `\"N\"`."),
                    ("X-Shard" = u64, description = "The shard that holds the key."),
                    ("X-Applied-Index" = u64, description = "With `consistency=stale` only: the replica's applied log index when it read."),
                )),
            (status = 400, description = "`bad_request`: malformed percent-encoding, unknown query parameter, bad `consistency`, `version` not a number or 0.", body = ErrorBody),
            (status = 404, description = "`not_found`: the key is absent (or deleted).", body = ErrorBody),
            (status = 408, description = "`request_timeout`: a request body did not arrive within `--body-read-timeout-ms`.", body = ErrorBody),
            (status = 410, description = "`gone`: `version` is no longer retained.", body = ErrorBody),
            (status = 413, description = "`key_too_large`: the key is over 4096 bytes; `value_too_large`: a request body over the value limit.", body = ErrorBody),
            (status = 421, description = "With `X-No-Forward: 1`: another node must answer; the body is the routing map.", body = RoutingMap),
            (status = 429, description = "`overloaded`: over `--max-inflight-requests` KV requests, or request bodies over `--max-buffered-body-bytes`.", body = ErrorBody),
            (status = 503, description = "`unavailable`: no leader reachable within the request timeout, the map not bootstrapped, or too many forwarding hops.", body = ErrorBody),
        ),
    )]
    pub fn kv_get() {}

    /// Write a key's value
    ///
    /// The body is the value, raw (any content type). A `200` means the write is durable on a
    /// majority of the shard's replicas, committed and applied.
    #[utoipa::path(
        put, path = "/v1/kv/{key}", tag = "kv", operation_id = "put_key",
        params(
            ("key" = String, Path, description = "The key, percent-encoded."),
            ("If-Match" = Option<String>, Header, description = "Write only if the key's current version is N (`N`, `\"N\"` or `W/\"N\"`); `0` means the key must be absent. Else `412`."),
            ("If-None-Match" = Option<String>, Header, description = "Only `*`: write only if the key is absent. Not together with `If-Match`."),
            ("X-No-Forward" = Option<String>, Header, description = "`1`: answer `421` with the routing map instead of forwarding to the leader."),
        ),
        request_body(content = RawValue, content_type = "application/octet-stream", description = "The value: raw bytes, at most `--max-value-bytes`."),
        responses(
            (status = 200, description = "Written.", body = Written,
                headers(
                    ("X-Version" = u64, description = "The new version."),
                    ("ETag" = String, description = "The new version, quoted: `\"N\"`."),
                    ("X-Shard" = u64, description = "The shard that holds the key."),
                )),
            (status = 400, description = "`bad_request`: malformed percent-encoding, a non-numeric `If-Match`, `If-None-Match` other than `*`, both preconditions, a bad query parameter.", body = ErrorBody),
            (status = 408, description = "`request_timeout`: the body did not arrive within `--body-read-timeout-ms`.", body = ErrorBody),
            (status = 412, description = "`precondition_failed`: the precondition did not hold.", body = ErrorBody,
                headers(("X-Version" = u64, description = "The key's current version (0 = absent)."))),
            (status = 413, description = "`key_too_large` or `value_too_large`.", body = ErrorBody),
            (status = 421, description = "With `X-No-Forward: 1`: another node must answer; the body is the routing map.", body = RoutingMap),
            (status = 429, description = "`overloaded`: over `--max-inflight-requests` KV requests, or request bodies over `--max-buffered-body-bytes`.", body = ErrorBody),
            (status = 503, description = "`unavailable`: no leader reachable within the request timeout, or the key's shard split and the new shard did not show in time (the write did not happen).", body = ErrorBody),
            (status = 504, description = "`timeout`: the write was proposed but not confirmed; it may or may not have happened. It is never proposed again.", body = ErrorBody),
        ),
    )]
    pub fn kv_put() {}

    /// Delete a key
    ///
    /// Leaves a tombstone version (see the history). A request body is read and ignored.
    #[utoipa::path(
        delete, path = "/v1/kv/{key}", tag = "kv", operation_id = "delete_key",
        params(
            ("key" = String, Path, description = "The key, percent-encoded."),
            ("If-Match" = Option<String>, Header, description = "Delete only if the key's current version is N (`N`, `\"N\"` or `W/\"N\"`). Else `412`."),
            ("If-None-Match" = Option<String>, Header, description = "Only `*` (the key must be absent, so the answer is `412` or `404`). Not together with `If-Match`."),
            ("X-No-Forward" = Option<String>, Header, description = "`1`: answer `421` with the routing map instead of forwarding to the leader."),
        ),
        responses(
            (status = 200, description = "Deleted (no `X-Version`, `ETag` or `X-Shard` header).", body = Deleted),
            (status = 400, description = "`bad_request`: malformed percent-encoding, a non-numeric `If-Match`, `If-None-Match` other than `*`, both preconditions, a bad query parameter.", body = ErrorBody),
            (status = 404, description = "`not_found`: the key is absent.", body = ErrorBody),
            (status = 408, description = "`request_timeout`: a request body did not arrive within `--body-read-timeout-ms`.", body = ErrorBody),
            (status = 412, description = "`precondition_failed`: the precondition did not hold.", body = ErrorBody,
                headers(("X-Version" = u64, description = "The key's current version (0 = absent)."))),
            (status = 413, description = "`key_too_large`, or `value_too_large` for a request body over the value limit.", body = ErrorBody),
            (status = 421, description = "With `X-No-Forward: 1`: another node must answer; the body is the routing map.", body = RoutingMap),
            (status = 429, description = "`overloaded`.", body = ErrorBody),
            (status = 503, description = "`unavailable`: no leader reachable within the request timeout (the delete did not happen).", body = ErrorBody),
            (status = 504, description = "`timeout`: the delete was proposed but not confirmed; it may or may not have happened.", body = ErrorBody),
        ),
    )]
    pub fn kv_delete() {}

    /// A key's retained versions
    ///
    /// Newest first, deletions included, at most `--history-versions` of them.
    #[utoipa::path(
        get, path = "/v1/kv/{key}/history", tag = "kv", operation_id = "get_key_history",
        params(
            ("key" = String, Path, description = "The key, percent-encoded (its last `/` before `history` as `%2F` if the key itself ends in `/history`)."),
            ("consistency" = inline(Option<Consistency>), Query, description = "As for a read: `linearizable` (default) or `stale`."),
            ("version" = Option<u64>, Query, description = "Accepted (must be a number) and ignored."),
            ("X-No-Forward" = Option<String>, Header, description = "`1`: answer `421` with the routing map instead of forwarding to another node."),
        ),
        responses(
            (status = 200, description = "The versions.", body = History,
                headers(
                    ("X-Shard" = u64, description = "The shard that holds the key."),
                    ("X-Applied-Index" = u64, description = "With `consistency=stale` only: the replica's applied log index when it read."),
                )),
            (status = 400, description = "`bad_request`: malformed percent-encoding, a bad query parameter.", body = ErrorBody),
            (status = 404, description = "`not_found`: the key has no retained version.", body = ErrorBody),
            (status = 408, description = "`request_timeout`.", body = ErrorBody),
            (status = 413, description = "`key_too_large`, or `value_too_large` for a request body over the value limit.", body = ErrorBody),
            (status = 421, description = "With `X-No-Forward: 1`: another node must answer; the body is the routing map.", body = RoutingMap),
            (status = 429, description = "`overloaded`.", body = ErrorBody),
            (status = 503, description = "`unavailable`: no leader reachable within the request timeout.", body = ErrorBody),
        ),
    )]
    pub fn kv_history() {}

    /// The routing map
    #[utoipa::path(get, path = "/v1/routing", tag = "cluster", operation_id = "get_routing",
        responses((status = 200, description = "Shards with their hash ranges, replicas, leaders and epochs.", body = RoutingMap)))]
    pub fn routing() {}

    /// The cluster
    ///
    /// Its id, nodes, and the placement driver's leader and voters.
    #[utoipa::path(get, path = "/v1/cluster", tag = "cluster", operation_id = "get_cluster",
        responses((status = 200, description = "The cluster as this node sees it.", body = Cluster)))]
    pub fn cluster() {}

    /// Every shard
    #[utoipa::path(get, path = "/v1/shards", tag = "cluster", operation_id = "list_shards",
        responses((status = 200, description = "Every shard in the map; local replicas' state where this node holds one.", body = ShardList)))]
    pub fn shards() {}

    /// One shard
    #[utoipa::path(get, path = "/v1/shards/{id}", tag = "cluster", operation_id = "get_shard",
        params(("id" = u64, Path, description = "The shard's id.")),
        responses(
            (status = 200, description = "The shard; its local replica's state where this node holds one.", body = ShardDetail),
            (status = 400, description = "`bad_request`: the id is not a number.", body = ErrorBody),
            (status = 404, description = "`not_found`: no such shard.", body = ErrorBody),
        ))]
    pub fn shard() {}

    /// This node's statistics
    #[utoipa::path(get, path = "/v1/stats", tag = "cluster", operation_id = "get_stats",
        responses((status = 200, description = "Keys and bytes per local replica and in all, request counts.", body = Stats)))]
    pub fn stats() {}

    /// Remove a node for good
    ///
    /// For a drained or down node (or one holding no replica).
    #[utoipa::path(delete, path = "/v1/nodes/{id}", tag = "placement", operation_id = "remove_node",
        params(("id" = u64, Path, description = "The node's id.")),
        responses(
            (status = 200, description = "Removed: `{\"node\": id, \"state\": \"removed\"}`.", body = NodeStateChange),
            (status = 400, description = "`bad_request`: the id is not a number.", body = ErrorBody),
            (status = 404, description = "`not_found`: not a member.", body = ErrorBody),
            (status = 408, description = "`request_timeout`: a request body did not arrive in time.", body = ErrorBody),
            (status = 409, description = "`conflict`: it still holds replicas and is up, or is a placement-driver voter not yet replaced.", body = ErrorBody),
            (status = 413, description = "`value_too_large`: a request body over 16 KiB.", body = ErrorBody),
            (status = 503, description = "`unavailable`: no known placement-driver leader, or it did not commit.", body = ErrorBody),
        ))]
    pub fn remove_node() {}

    /// Drain a node
    ///
    /// Every replica and leadership leaves it.
    #[utoipa::path(post, path = "/v1/nodes/{id}/drain", tag = "placement", operation_id = "drain_node",
        params(("id" = u64, Path, description = "The node's id.")),
        responses(
            (status = 202, description = "Draining: `{\"node\": id, \"state\": \"draining\"}`.", body = NodeStateChange),
            (status = 400, description = "`bad_request`: the id is not a number.", body = ErrorBody),
            (status = 404, description = "`not_found`: not a member.", body = ErrorBody),
            (status = 408, description = "`request_timeout`: a request body did not arrive in time.", body = ErrorBody),
            (status = 409, description = "`conflict`: the placement driver refused (the reason says why).", body = ErrorBody),
            (status = 413, description = "`value_too_large`: a request body over 16 KiB.", body = ErrorBody),
            (status = 503, description = "`unavailable`: no known placement-driver leader, or it did not commit.", body = ErrorBody),
        ))]
    pub fn drain_node() {}

    /// Cancel a drain
    #[utoipa::path(delete, path = "/v1/nodes/{id}/drain", tag = "placement", operation_id = "undrain_node",
        params(("id" = u64, Path, description = "The node's id.")),
        responses(
            (status = 200, description = "Up again: `{\"node\": id, \"state\": \"up\"}`.", body = NodeStateChange),
            (status = 400, description = "`bad_request`: the id is not a number.", body = ErrorBody),
            (status = 404, description = "`not_found`: not a member.", body = ErrorBody),
            (status = 408, description = "`request_timeout`: a request body did not arrive in time.", body = ErrorBody),
            (status = 409, description = "`conflict`: the placement driver refused (the reason says why).", body = ErrorBody),
            (status = 413, description = "`value_too_large`: a request body over 16 KiB.", body = ErrorBody),
            (status = 503, description = "`unavailable`: no known placement-driver leader, or it did not commit.", body = ErrorBody),
        ))]
    pub fn undrain_node() {}

    /// Move a replica of a shard
    #[utoipa::path(post, path = "/v1/shards/{id}/move", tag = "placement", operation_id = "move_shard",
        params(("id" = u64, Path, description = "The shard's id.")),
        request_body = MoveRequest,
        responses(
            (status = 202, description = "The operator started.", body = OperatorStarted),
            (status = 400, description = "`bad_request`: the id is not a number, bad JSON, an unknown field.", body = ErrorBody),
            (status = 404, description = "`not_found`: no such shard.", body = ErrorBody),
            (status = 408, description = "`request_timeout`: the body did not arrive in time.", body = ErrorBody),
            (status = 409, description = "`conflict`: it does not fit the shard (`to` holds it, `from` does not, an operator runs).", body = ErrorBody),
            (status = 413, description = "`value_too_large`: a body over 16 KiB.", body = ErrorBody),
            (status = 503, description = "`unavailable`: no known placement-driver leader, or it did not commit.", body = ErrorBody),
        ))]
    pub fn move_shard() {}

    /// Split a shard
    #[utoipa::path(post, path = "/v1/shards/{id}/split", tag = "placement", operation_id = "split_shard",
        params(("id" = u64, Path, description = "The shard's id.")),
        request_body(content = Option<SplitRequest>, description = "Optional: `{\"at\": \"0x…\"}`."),
        responses(
            (status = 202, description = "The operator started.", body = OperatorStarted),
            (status = 400, description = "`bad_request`: the id is not a number, bad JSON, an unknown field, `at` not a hash.", body = ErrorBody),
            (status = 404, description = "`not_found`: no such shard.", body = ErrorBody),
            (status = 408, description = "`request_timeout`: the body did not arrive in time.", body = ErrorBody),
            (status = 409, description = "`conflict`: no split point from the data (fewer than two keys, or no leader answered), `at` not strictly inside the range, or an operator runs.", body = ErrorBody),
            (status = 413, description = "`value_too_large`: a body over 16 KiB.", body = ErrorBody),
            (status = 503, description = "`unavailable`: no known placement-driver leader, or it did not commit.", body = ErrorBody),
        ))]
    pub fn split_shard() {}

    /// Move a shard's leadership
    #[utoipa::path(post, path = "/v1/shards/{id}/transfer-leader", tag = "placement", operation_id = "transfer_leader",
        params(("id" = u64, Path, description = "The shard's id.")),
        request_body = TransferRequest,
        responses(
            (status = 202, description = "The operator started.", body = OperatorStarted),
            (status = 400, description = "`bad_request`: the id is not a number, bad JSON, an unknown field.", body = ErrorBody),
            (status = 404, description = "`not_found`: no such shard.", body = ErrorBody),
            (status = 408, description = "`request_timeout`: the body did not arrive in time.", body = ErrorBody),
            (status = 409, description = "`conflict`: `to` is not a replica, or an operator runs.", body = ErrorBody),
            (status = 413, description = "`value_too_large`: a body over 16 KiB.", body = ErrorBody),
            (status = 503, description = "`unavailable`: no known placement-driver leader, or it did not commit.", body = ErrorBody),
        ))]
    pub fn transfer_leader() {}

    /// Faults in force in the demo, and its background load
    #[utoipa::path(get, path = "/v1/demo/faults", tag = "demo", operation_id = "get_demo_faults",
        responses(
            (status = 200, description = "The faults in force and the load's counters.", body = DemoState),
            (status = 404, description = "`not_found`: not a demo node.", body = ErrorBody),
        ))]
    pub fn demo_faults() {}

    /// Inject a fault into the demo's cluster
    ///
    /// Isolating a node or cutting a link drops the requests between nodes on purpose; a
    /// crash stops a node's server and replicas, and returns once it has.
    #[utoipa::path(post, path = "/v1/demo/faults", tag = "demo", operation_id = "inject_demo_fault",
        request_body = DemoFault,
        responses(
            (status = 200, description = "The faults now in force.", body = DemoState),
            (status = 400, description = "`bad_request`: not a fault, an unknown node, or a restart of a running node.", body = ErrorBody),
            (status = 503, description = "`unavailable`: a node did not restart, or the demo is stopping (network faults are applied first).", body = ErrorBody),
            (status = 404, description = "`not_found`: not a demo node.", body = ErrorBody),
            (status = 408, description = "`request_timeout`: the body did not arrive in time.", body = ErrorBody),
            (status = 413, description = "`value_too_large`: a body over 1 KiB.", body = ErrorBody),
            (status = 415, description = "`unsupported_media_type`: the body is not declared `application/json` (a cross-site form post cannot break the demo).", body = ErrorBody),
        ))]
    pub fn demo_inject() {}

    /// Start or stop the demo's background load
    #[utoipa::path(post, path = "/v1/demo/load", tag = "demo", operation_id = "set_demo_load",
        request_body = DemoLoadSwitch,
        responses(
            (status = 200, description = "The demo's state, with the load switched.", body = DemoState),
            (status = 400, description = "`bad_request`: not `{\"enabled\": bool}`.", body = ErrorBody),
            (status = 404, description = "`not_found`: not a demo node.", body = ErrorBody),
            (status = 408, description = "`request_timeout`: the body did not arrive in time.", body = ErrorBody),
            (status = 413, description = "`value_too_large`: a body over 1 KiB.", body = ErrorBody),
            (status = 415, description = "`unsupported_media_type`: the body is not declared `application/json` (a cross-site form post cannot break the demo).", body = ErrorBody),
        ))]
    pub fn demo_load() {}

    /// Operators running and finished
    #[utoipa::path(get, path = "/v1/operators", tag = "placement", operation_id = "list_operators",
        responses((status = 200, description = "Running operators with step and ages; the last finished ones with outcome and duration.", body = Operators)))]
    pub fn operators() {}

    /// What the scheduler would do, and why
    ///
    /// Served by the placement driver's leader (forwarded to it).
    #[utoipa::path(get, path = "/v1/schedule/explain", tag = "placement", operation_id = "explain_schedule",
        responses(
            (status = 200, description = "Every checker's findings, the nodes' health, what would start.", body = Explain),
            (status = 408, description = "`request_timeout`: a request body did not arrive in time.", body = ErrorBody),
            (status = 413, description = "`value_too_large`: a request body over 16 KiB.", body = ErrorBody),
            (status = 503, description = "`unavailable`: no known placement-driver leader, or leadership moved.", body = ErrorBody),
        ))]
    pub fn explain() {}

    /// The scheduler settings
    #[utoipa::path(get, path = "/v1/schedule/config", tag = "placement", operation_id = "get_schedule_config",
        responses((status = 200, description = "The settings in force.", body = ScheduleSettings)))]
    pub fn get_config() {}

    /// Change scheduler settings
    #[utoipa::path(put, path = "/v1/schedule/config", tag = "placement", operation_id = "put_schedule_config",
        request_body = SettingsChange,
        responses(
            (status = 200, description = "The settings now in force.", body = ScheduleSettings),
            (status = 400, description = "`bad_request`: bad JSON, an unknown setting, a value of the wrong type or out of range.", body = ErrorBody),
            (status = 408, description = "`request_timeout`: the body did not arrive in time.", body = ErrorBody),
            (status = 409, description = "`conflict`: the placement driver refused.", body = ErrorBody),
            (status = 413, description = "`value_too_large`: a body over 16 KiB.", body = ErrorBody),
            (status = 503, description = "`unavailable`: no known placement-driver leader, or it did not commit.", body = ErrorBody),
        ))]
    pub fn put_config() {}

    /// This document
    #[utoipa::path(get, path = "/v1/openapi.json", tag = "meta", operation_id = "get_openapi",
        responses((status = 200, description = "The OpenAPI 3.1 document of the v1 API (`ops/openapi.json` in the source).", body = Document)))]
    pub fn openapi_document() {}

    /// Liveness
    #[utoipa::path(get, path = "/livez", tag = "probes", operation_id = "livez",
        responses((status = 200, description = "The process answers.", body = Liveness)))]
    pub fn livez() {}

    /// Readiness
    #[utoipa::path(get, path = "/readyz", tag = "probes", operation_id = "readyz",
        responses(
            (status = 200, description = "Ready: the map is bootstrapped, the placement driver reachable, the node not draining.", body = Readiness),
            (status = 503, description = "Not ready (the same body, `ready` false; no `Retry-After`).", body = Readiness),
        ))]
    pub fn readyz() {}

    /// Per-shard health
    #[utoipa::path(get, path = "/health", tag = "probes", operation_id = "health",
        responses((status = 200, description = "Whether every shard has a leader (always 200).", body = HealthReport)))]
    pub fn health() {}

    /// Prometheus metrics
    #[utoipa::path(get, path = "/metrics", tag = "probes", operation_id = "metrics",
        responses((status = 200, description = "The process-wide metrics in the Prometheus text format (see the metrics table in the API docs).", body = String, content_type = "text/plain; version=0.0.4")))]
    pub fn metrics() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn committed_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(COMMITTED_PATH)
    }

    /// `ops/openapi.json` is the generated document, byte for byte. To regenerate it after
    /// changing the API or its description:
    /// `MIDASFLOW_WRITE_OPENAPI=1 cargo test --lib openapi`.
    #[test]
    fn committed_openapi_document_is_current() {
        let path = committed_path();
        if std::env::var_os("MIDASFLOW_WRITE_OPENAPI").is_some() {
            std::fs::write(&path, document()).expect("write ops/openapi.json");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == document(),
            "{COMMITTED_PATH} differs from the OpenAPI document generated from src/api/openapi.rs; \
             regenerate it with `MIDASFLOW_WRITE_OPENAPI=1 cargo test --lib openapi` and commit it"
        );
    }

    /// `GET /v1/openapi.json` answers the document (and so the committed file).
    #[tokio::test]
    async fn served_openapi_document_is_the_generated_one() {
        use http_body_util::BodyExt;
        let response = serve().await.into_response();
        assert_eq!(response.status(), axum::http::StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let served: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(served, serde_json::to_value(ApiDoc::openapi()).unwrap());
        assert_eq!(served["openapi"], "3.1.0");
        assert_eq!(body, document().as_bytes());
    }

    /// The `.route("...", ...)` paths of `super::router`, from its source.
    fn router_paths() -> BTreeSet<String> {
        let source = include_str!("mod.rs");
        let router = &source[source.find("pub fn router(").unwrap()..];
        let router = &router[..router.find("\n}\n").unwrap()];
        router
            .split(".route(")
            .skip(1)
            .filter_map(|call| {
                let rest = call.trim_start().strip_prefix('"')?;
                Some(rest[..rest.find('"')?].to_string())
            })
            .collect()
    }

    /// Every public route of the router is documented, and nothing else is. The KV
    /// catch-all stands for `/v1/kv/{key}` and `/v1/kv/{key}/history`; `/v1/kv` and
    /// `/v1/kv/` (always 400, empty key) are described in the `kv` tag instead.
    #[test]
    fn every_public_route_is_documented() {
        let mut expected: BTreeSet<String> = router_paths()
            .into_iter()
            .filter(|p| !p.starts_with("/internal/"))
            .filter(|p| p != "/v1/kv" && p != "/v1/kv/")
            .collect();
        assert!(expected.remove("/v1/kv/{*key}"), "the KV catch-all route moved");
        expected.insert("/v1/kv/{key}".into());
        expected.insert("/v1/kv/{key}/history".into());
        assert!(expected.contains("/v1/openapi.json"), "the document is not served");
        let documented: BTreeSet<String> = ApiDoc::openapi().paths.paths.keys().cloned().collect();
        assert_eq!(documented, expected);
    }

    /// Open routes need no token; every other route declares the bearer token and 401.
    #[test]
    fn security_follows_the_open_routes() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let open = crate::api::OPEN_ROUTES.contains(&path.as_str());
                if open {
                    assert_eq!(operation["security"], serde_json::json!([{}]), "{method} {path}");
                    assert!(operation["responses"].get("401").is_none(), "{method} {path}");
                } else {
                    assert!(operation.get("security").is_none(), "{method} {path}: global");
                    assert!(operation["responses"].get("401").is_some(), "{method} {path}");
                }
            }
        }
        assert_eq!(doc["security"], serde_json::json!([{TOKEN_SCHEME: []}]));
    }

    /// The error schema is what `ApiError` writes.
    #[test]
    fn error_schema_matches_api_error() {
        let error = crate::api::error::ApiError::not_found("key not found");
        let written: serde_json::Value = serde_json::from_slice(&error.json_body()).unwrap();
        let described = schema::ErrorBody {
            error: schema::ErrorDetail {
                code: error.code.into(),
                message: error.message.clone(),
            },
        };
        assert_eq!(written, serde_json::to_value(described).unwrap());
    }

    /// Every `$ref` in the document points at something the document defines.
    #[test]
    fn every_reference_resolves() {
        fn visit(value: &serde_json::Value, doc: &serde_json::Value, seen: &mut usize) {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::String(target)) = map.get("$ref") {
                        let pointer = target.strip_prefix('#').expect("a local reference");
                        assert!(doc.pointer(pointer).is_some(), "{target} is not defined");
                        *seen += 1;
                    }
                    map.values().for_each(|v| visit(v, doc, seen));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| visit(v, doc, seen)),
                _ => {}
            }
        }
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut seen = 0;
        visit(&doc, &doc, &mut seen);
        assert!(seen > 0);
    }

    fn property_names(schema_name: &str) -> BTreeSet<String> {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        doc["components"]["schemas"][schema_name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no properties in {schema_name}"))
            .keys()
            .cloned()
            .collect()
    }

    /// `PUT /v1/schedule/config` takes any of the settings' fields, and only those.
    #[test]
    fn settings_change_has_the_settings_fields() {
        let settings = serde_json::to_value(crate::placement::operator::ScheduleSettings::default()).unwrap();
        let fields: BTreeSet<String> = settings.as_object().unwrap().keys().cloned().collect();
        assert_eq!(property_names("ScheduleSettings"), fields);
        assert_eq!(property_names("SettingsChange"), fields);
    }
}

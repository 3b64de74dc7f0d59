//! The placement driver's public routes: nodes (drain, remove), manual operators,
//! operators in flight and finished, the scheduler's explanation, and its settings.
//! Reads of the replicated PD state are served by any node; everything that needs the
//! PD leader (proposals, liveness, the scheduler's view) is forwarded to it, one hop.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::error::ApiError;
use super::kv::{forward_to, forwarded_hops, Forward};
use super::Api;
use crate::placement::executor::{self, propose};
use crate::placement::operator::{OperatorKind, Origin, ScheduleSettings};
use crate::placement::scheduler::{self, Health};
use crate::placement::server::PdHost;
use crate::placement::{NodeId, NodeState, PdCommand, PdResult, ShardId, PD_GROUP};

/// Largest body a placement request may carry (its JSON is a few fields).
pub const MAX_PLACEMENT_BODY_BYTES: usize = 16 << 10;

/// Serves `request` here if this node leads the PD, else forwards it to the PD leader.
async fn on_pd_leader<F, Fut>(node: &Arc<Api>, request: Request, serve: F) -> Result<Response, ApiError>
where
    F: FnOnce(Arc<Api>, bytes::Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<Response, ApiError>>,
{
    let (parts, body) = request.into_parts();
    let body = super::read_body_within(body, MAX_PLACEMENT_BODY_BYTES, node.config.limits.body_read_timeout_ms).await?;
    if node.leads_pd() {
        return serve(node.clone(), body).await;
    }
    let hops = forwarded_hops(&parts.headers);
    let leader = node
        .local_leader(PD_GROUP)
        .or(node.cluster_view().pd_leader)
        .filter(|l| *l != node.config.node_id && hops == 0)
        .ok_or_else(|| ApiError::unavailable("the placement driver has no known leader; retry"))?;
    let forward = Forward {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
    };
    let deadline = Instant::now() + Duration::from_millis(node.config.limits.request_timeout_ms);
    forward_to(node, leader, &forward, hops + 1, deadline)
        .await
        .map_err(|e| ApiError::unavailable(format!("forwarding to the placement driver's leader: {}", e.message)))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

/// Proposes and maps the PD's verdict onto HTTP: a refusal is a 409 with its reason.
async fn propose_checked(node: &Api, command: PdCommand) -> Result<PdResult, ApiError> {
    match propose(node.node.as_ref(), command).await {
        Ok(PdResult::Rejected { reason }) => Err(ApiError::conflict(reason)),
        Ok(result) => Ok(result),
        Err(e) => Err(ApiError::unavailable(format!(
            "the placement driver did not commit it: {e}"
        ))),
    }
}

fn parse_id(text: &str, what: &str) -> Result<u64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("{what} {text:?} is not a number")))
}

/// Proposes a node's new state on the PD leader and answers `status` with it.
async fn set_node_state(node: &Api, id: NodeId, state: NodeState, status: StatusCode) -> Result<Response, ApiError> {
    if !node.map().nodes.contains_key(&id) {
        return Err(ApiError::not_found(format!("node {id} is not a member")));
    }
    propose_checked(node, PdCommand::SetNodeState { node: id, state }).await?;
    Ok((status, axum::Json(json!({"node": id, "state": state}))).into_response())
}

/// `POST /v1/nodes/{id}/drain`: every replica and leader leaves the node.
pub async fn drain_node(
    State(node): State<Arc<Api>>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "node id")?;
    on_pd_leader(&node, request, |node, _| async move {
        set_node_state(&node, id, NodeState::Draining, StatusCode::ACCEPTED).await
    })
    .await
}

/// `DELETE /v1/nodes/{id}/drain`: cancels a drain (the node takes replicas again).
pub async fn undrain_node(
    State(node): State<Arc<Api>>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "node id")?;
    on_pd_leader(&node, request, |node, _| async move {
        set_node_state(&node, id, NodeState::Up, StatusCode::OK).await
    })
    .await
}

/// `DELETE /v1/nodes/{id}`: retires a drained or down node for good.
pub async fn remove_node(
    State(node): State<Arc<Api>>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "node id")?;
    on_pd_leader(&node, request, |node, _| async move {
        let snap =
            executor::snapshot(node.node.as_ref()).ok_or_else(|| ApiError::unavailable("leadership moved; retry"))?;
        if !snap.map.nodes.contains_key(&id) {
            return Err(ApiError::not_found(format!("node {id} is not a member")));
        }
        let replicas = snap.map.shards_on(id).count();
        let health = scheduler::health(&snap.view(), id);
        if replicas > 0 && !matches!(health, Health::Down | Health::Removed) {
            return Err(ApiError::conflict(format!(
                "node {id} still holds {replicas} replicas and is {health:?}: drain it first (or wait until it is down)"
            )));
        }
        set_node_state(&node, id, NodeState::Removed, StatusCode::OK).await
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveBody {
    from: NodeId,
    to: NodeId,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    to: NodeId,
}

async fn start_manual(node: &Api, kind: OperatorKind, reason: String) -> Result<Response, ApiError> {
    let shard = node
        .map()
        .shards
        .get(&kind.shard())
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("shard {} does not exist", kind.shard())))?;
    let command = PdCommand::StartOperator {
        kind,
        origin: Origin::Manual,
        reason,
        shard_epoch: shard.epoch,
        now_ms: node.now_ms(),
    };
    match propose_checked(node, command).await? {
        PdResult::OperatorStarted { id } => {
            Ok((StatusCode::ACCEPTED, axum::Json(json!({"operator": id}))).into_response())
        }
        other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}

/// `POST /v1/shards/{id}/move` `{"from": A, "to": B}`.
pub async fn move_shard(
    State(node): State<Arc<Api>>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let shard: ShardId = parse_id(&id, "shard id")?;
    on_pd_leader(&node, request, |node, body| async move {
        let MoveBody { from, to } = parse(&body)?;
        let kind = OperatorKind::MoveReplica { shard, from, to };
        start_manual(
            &node,
            kind,
            format!("asked for: move shard {shard} from node {from} to node {to}"),
        )
        .await
    })
    .await
}

/// `POST /v1/shards/{id}/transfer-leader` `{"to": N}`.
pub async fn transfer_leader(
    State(node): State<Arc<Api>>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let shard: ShardId = parse_id(&id, "shard id")?;
    on_pd_leader(&node, request, |node, body| async move {
        let TransferBody { to } = parse(&body)?;
        let kind = OperatorKind::TransferLeader { shard, to };
        start_manual(&node, kind, format!("asked for: shard {shard}'s leader to node {to}")).await
    })
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SplitBody {
    /// The split point as a hash: a number, or a `0x…` hex string.
    at: Option<Value>,
}

fn parse_hash(value: &Value) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "\"at\" must be a hash: a number or a 0x-prefixed hex string, not {value}"
        ))
    };
    match value {
        Value::Number(n) => n.as_u64().ok_or_else(bad),
        Value::String(s) => s
            .strip_prefix("0x")
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// `POST /v1/shards/{id}/split` `{"at": HASH}` (optional): splits at `at`, or at the
/// median hash of the shard's keys as its leader reports it.
pub async fn split_shard(
    State(node): State<Arc<Api>>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let shard: ShardId = parse_id(&id, "shard id")?;
    on_pd_leader(&node, request, |node, body| async move {
        let SplitBody { at } = if body.is_empty() {
            SplitBody::default()
        } else {
            parse(&body)?
        };
        let at = match at {
            Some(value) => parse_hash(&value)?,
            None => {
                let point = executor::split_point(node.node.as_ref(), shard).await;
                point.ok_or_else(|| {
                    ApiError::conflict(format!(
                        "shard {shard} has no split point from its data (fewer than two keys, or no leader answered); \
                         give one: {{\"at\": \"0x…\"}}"
                    ))
                })?
            }
        };
        let kind = OperatorKind::Split { shard, at, child: 0 };
        start_manual(&node, kind, format!("asked for: split shard {shard} at {at:#018x}")).await
    })
    .await
}

/// `GET /v1/operators`: running operators with step and age, and the last finished ones.
pub async fn operators(State(node): State<Arc<Api>>) -> impl IntoResponse {
    let map = node.map();
    let now = node.now_ms();
    let waiting = node.pd_server.executor().lock().unwrap().waiting.clone();
    let running: Vec<Value> = map
        .operators
        .values()
        .map(|op| {
            json!({
                "id": op.id, "kind": op.kind.to_json(), "origin": op.origin, "reason": op.reason,
                "step": op.step, "age_ms": now.saturating_sub(op.created_ms),
                "step_age_ms": now.saturating_sub(op.step_ms), "waiting_for": waiting.get(&op.id),
            })
        })
        .collect();
    let finished: Vec<Value> = map
        .finished
        .iter()
        .rev()
        .map(|f| {
            json!({
                "id": f.operator.id, "kind": f.operator.kind.to_json(), "origin": f.operator.origin,
                "reason": f.operator.reason, "outcome": f.outcome.to_json(),
                "duration_ms": f.finished_ms.saturating_sub(f.operator.created_ms),
                "finished_ago_ms": now.saturating_sub(f.finished_ms),
            })
        })
        .collect();
    axum::Json(json!({"running": running, "finished": finished}))
}

/// `GET /v1/schedule/explain`: what every checker would do now, and why (or why not).
pub async fn explain(State(node): State<Arc<Api>>, request: Request) -> Result<Response, ApiError> {
    on_pd_leader(&node, request, |node, _| async move {
        let snap = executor::snapshot(node.node.as_ref()).ok_or_else(|| ApiError::unavailable("leadership moved; retry"))?;
        let plan = scheduler::plan(&snap.view());
        let nodes: Vec<Value> = snap
            .map
            .nodes
            .keys()
            .map(|id| json!({"id": id, "health": scheduler::health(&snap.view(), *id), "last_seen_ms": snap.last_seen_ms.get(id)}))
            .collect();
        let warming_up = snap.leading_for_ms < executor::SCHEDULE_WARMUP_MS;
        Ok(axum::Json(json!({
            "pd_leader": node.config.node_id,
            "paused": snap.map.settings.paused,
            "warming_up": warming_up,
            "nodes": nodes,
            "checkers": plan.reports,
            "would_start": plan.proposals.iter().map(|p| json!({"kind": p.kind.to_json(), "reason": p.reason})).collect::<Vec<_>>(),
            "running": snap.map.operators.len(),
        }))
        .into_response())
    })
    .await
}

/// `GET /v1/schedule/config`.
pub async fn get_config(State(node): State<Arc<Api>>) -> impl IntoResponse {
    axum::Json(node.map().settings.clone())
}

/// `PUT /v1/schedule/config`: a JSON object with any of the settings' fields.
pub async fn put_config(State(node): State<Arc<Api>>, request: Request) -> Result<Response, ApiError> {
    on_pd_leader(&node, request, |node, body| async move {
        let changes: serde_json::Map<String, Value> = parse(&body)?;
        let mut merged = serde_json::to_value(&node.map().settings).map_err(|e| ApiError::internal(e.to_string()))?;
        for (name, value) in changes {
            if merged.get(&name).is_none() {
                return Err(ApiError::bad_request(format!("unknown setting {name:?}")));
            }
            merged[&name] = value;
        }
        let settings: ScheduleSettings =
            serde_json::from_value(merged).map_err(|e| ApiError::bad_request(e.to_string()))?;
        settings.validate().map_err(ApiError::bad_request)?;
        propose_checked(
            &node,
            PdCommand::SetSettings {
                settings: settings.clone(),
            },
        )
        .await?;
        Ok(axum::Json(settings).into_response())
    })
    .await
}

//! Internal routes: Raft RPCs for every group, and the PD heartbeat (DESIGN §3.5).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;

use super::error::ApiError;
use crate::codec;
use crate::node::{Heartbeat, Node};
use crate::raft::network::SECRET_HEADER;
use crate::raft::registry::RegistryError;
use crate::raft::{GroupId, TypeConfig};

/// Largest internal request body: an append of `MAX_PAYLOAD_ENTRIES` full-size values, or a
/// snapshot chunk, with room for framing.
pub const MAX_INTERNAL_BODY_BYTES: usize = 96 << 20;

fn check_secret(node: &Node, request: &Request) -> Result<(), ApiError> {
    match &node.config.cluster_secret {
        None => Ok(()),
        Some(secret) => match request.headers().get(SECRET_HEADER) {
            Some(given) if given.as_bytes() == secret.as_bytes() => Ok(()),
            _ => Err(ApiError::unauthorized("missing or wrong cluster secret")),
        },
    }
}

async fn body_bytes(request: Request) -> Result<bytes::Bytes, ApiError> {
    super::read_body(request.into_body(), MAX_INTERNAL_BODY_BYTES)
        .await
        .ok_or_else(|| ApiError::value_too_large("internal request body over the limit"))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    codec::decode(bytes).map_err(|e| ApiError::bad_request(format!("undecodable body: {e}")))
}

fn encoded<T: Serialize>(value: &T) -> Response {
    match codec::encode(value) {
        Ok(bytes) => (StatusCode::OK, Body::from(bytes)).into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

pub async fn raft_rpc(
    State(node): State<Arc<Node>>,
    Path((group, op)): Path<(GroupId, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    check_secret(&node, &request)?;
    let body = body_bytes(request).await?;
    let group = match node.registry.get(group) {
        Some(g) => g,
        None if node.may_host(group) => node.registry.ensure(group, None).await.map_err(|e| match e {
            RegistryError::Tombstoned(_) => ApiError::not_found(e.to_string()),
            other => ApiError::unavailable(other.to_string()),
        })?,
        None => return Err(ApiError::not_found(format!("group {group} is not hosted here"))),
    };
    Ok(match op.as_str() {
        "append" => {
            let rpc: AppendEntriesRequest<TypeConfig> = decode(&body)?;
            encoded(&group.raft.append_entries(rpc).await)
        }
        "vote" => {
            let rpc: VoteRequest<u64> = decode(&body)?;
            encoded(&group.raft.vote(rpc).await)
        }
        "snapshot" => {
            let rpc: InstallSnapshotRequest<TypeConfig> = decode(&body)?;
            encoded(&group.raft.install_snapshot(rpc).await)
        }
        other => return Err(ApiError::not_found(format!("unknown raft operation {other:?}"))),
    })
}

pub async fn pd_heartbeat(State(node): State<Arc<Node>>, request: Request) -> Result<Response, ApiError> {
    check_secret(&node, &request)?;
    let hb: Heartbeat = decode(&body_bytes(request).await?)?;
    match node.handle_heartbeat(&hb) {
        Some(reply) => Ok(encoded(&reply)),
        None => Err(ApiError::unavailable("this node does not lead the placement driver")),
    }
}

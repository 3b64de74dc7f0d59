//! Internal routes: Raft RPCs for every group, and the PD heartbeat (docs/ARCHITECTURE.md).
//!
//! Everything here comes from the network, so each request is, in order: authenticated
//! (a verified client certificate under TLS, the cluster secret when one is set), read
//! within its route's body limit and the body timeout, admitted under the internal
//! concurrency limit, decoded with bounded allocation, and checked by `raft::validate`
//! before openraft sees it.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest};
use openraft::storage::Snapshot;
use openraft::Vote;
use serde::Serialize;
use tokio::time::Instant;

use super::error::ApiError;
use super::server::PeerInfo;
use super::Api;
use crate::codec;
use crate::identity::{self, IdentityAnswer, IdentityQuery};
use crate::node::PlantedBug;
use crate::node::{Heartbeat, MAX_HEARTBEAT_BODY_BYTES, MAX_VOTE_BODY_BYTES, SNAPSHOT_FRAMING_BYTES};
use crate::placement::PD_GROUP;
use crate::raft::batch::{self, BatchItem, ItemAnswer, RaftOp};
use crate::raft::membership::AdminRequest;
use crate::raft::network::{
    CLUSTER_HEADER, ELECTION_TIMEOUTS_HEADER, INCARNATION_HEADER, NODE_HEADER, SECRET_HEADER, TARGET_HEADER,
};
use crate::raft::read_batch::{Confirmed, ReadRefused};
use crate::raft::registry::{FirstEntry, Group, Registry, RegistryError, Wake};
use crate::raft::state_machine::check_snapshot_data;
use crate::raft::validate::{self, Local};
use crate::raft::{Config, GroupId, GroupKind, SnapshotMeta};
use crate::security::credential_matches;

/// Largest snapshot a node assembles from chunks.
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;
/// Snapshots being received at once (one per group at most); another must wait.
pub const MAX_SNAPSHOT_RECEIVES: usize = 4;
/// A snapshot receive with no chunk for this long may be dropped to make room.
pub const SNAPSHOT_RECEIVE_IDLE_MS: u64 = 30_000;

/// A snapshot arriving in chunks, assembled here so it is checked whole before openraft
/// installs it (openraft would write a chunk at any offset it is told: a huge allocation).
pub struct SnapshotReceive {
    snapshot_id: String,
    data: Vec<u8>,
    updated: Instant,
}

/// Why a chunk was not taken: an API error, or a position the leader should resume from.
enum ChunkRefused {
    Api(ApiError),
    Mismatch(openraft::error::SnapshotMismatch),
}

/// Snapshot receives in progress, by group.
#[derive(Default)]
pub struct SnapshotReceives(std::sync::Mutex<BTreeMap<GroupId, SnapshotReceive>>);

fn authorize(node: &Api, request: &Request) -> Result<(), ApiError> {
    if node.config.tls.is_some() {
        let verified = request
            .extensions()
            .get::<PeerInfo>()
            .is_some_and(|p| p.client_cert_verified);
        if !verified {
            return Err(ApiError::unauthorized(
                "internal routes need a client certificate signed by the cluster CA",
            ));
        }
    }
    if let Some(secret) = &node.config.cluster_secret {
        let given = request.headers().get(SECRET_HEADER).map_or(&[][..], |v| v.as_bytes());
        if !credential_matches(given, secret.as_bytes()) {
            return Err(ApiError::unauthorized("missing or wrong cluster secret"));
        }
    }
    Ok(())
}

/// Why a peer's request was refused on identity, as counted in
/// `midasflow_rpc_rejected_total{reason}`.
fn reject(node: &Api, reason: &'static str, message: String) -> ApiError {
    count_rejection(node, reason, &message);
    ApiError::forbidden(reason, message)
}

/// Counts and logs a refused internal request (`midasflow_rpc_rejected_total{reason}`).
fn count_rejection(node: &Api, reason: &'static str, message: &str) {
    metrics::counter!("midasflow_rpc_rejected_total", "node" => node.label(), "reason" => reason).increment(1);
    tracing::warn!(reason, "refused an internal request: {message}");
    node.config
        .probe()
        .emit(|| crate::raft::probe::NodeEvent::InternalRequestRefused { reason });
}

/// Who sent an internal request, as its headers say and [`check_sender`] verified.
#[derive(Debug, Clone, Copy)]
struct Sender {
    node: u64,
    incarnation: u128,
}

/// Every internal request names its sender (node id, incarnation, cluster). A sender of
/// another cluster, or a node id that comes with an incarnation the cluster does not know
/// for it (a wiped disk, an impostor), is refused and nothing it sent is applied.
fn check_sender(node: &Api, request: &Request) -> Result<Sender, ApiError> {
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
    let sender: Option<u64> = header(NODE_HEADER).and_then(|v| v.parse().ok());
    let incarnation = header(INCARNATION_HEADER).and_then(identity::parse_hex);
    let (Some(sender), Some(incarnation)) = (sender, incarnation) else {
        return Err(reject(
            node,
            "missing_identity",
            "no sender node id or incarnation".into(),
        ));
    };
    // Meant for another node: this address has changed hands (a node replaced on the same
    // host and port under a new id). Answering would let the sender count this node's
    // answer (an accepted append, a vote) as the other's. Checked before the sender's
    // identity: a node that was not addressed does not judge it (a `wrong_incarnation`
    // verdict stops the sender for good).
    if let Some(raw) = request.headers().get(TARGET_HEADER) {
        let me = node.config.node_id;
        // Present but unreadable counts as meant for someone else, never as absent.
        if raw.to_str().ok().and_then(|to| to.parse::<u64>().ok()) != Some(me) {
            let to = String::from_utf8_lossy(raw.as_bytes());
            let message = format!("node {sender} sent this to node {to:?}; this is node {me}");
            count_rejection(node, "misdirected", &message);
            return Err(ApiError::misdirected(message));
        }
    }
    let theirs = match header(CLUSTER_HEADER) {
        None => None,
        Some(text) => Some(
            identity::parse_hex(text)
                .ok_or_else(|| reject(node, "missing_identity", format!("unreadable cluster id {text:?}")))?,
        ),
    };
    if let (Some(mine), Some(theirs)) = (node.shards.credentials().cluster_id(), theirs) {
        if mine != theirs {
            return Err(reject(
                node,
                "wrong_cluster",
                format!(
                    "node {sender} belongs to cluster {}, this node to {}",
                    identity::hex(theirs),
                    identity::hex(mine)
                ),
            ));
        }
    }
    if let Some(known) = node.map().incarnations.get(&sender) {
        if *known != incarnation && !node.config.has_planted_bug(crate::node::PlantedBug::NoIdentityGuard) {
            return Err(reject(
                node,
                "wrong_incarnation",
                format!(
                    "node {sender} sent incarnation {}, but the cluster knows it as {}: it lost its disk, or is \
                     not node {sender}",
                    identity::hex(incarnation),
                    identity::hex(*known)
                ),
            ));
        }
    }
    Ok(Sender {
        node: sender,
        incarnation,
    })
}

/// Authenticates the request and its sender, reads the body within `limit` bytes, and
/// admits it.
async fn admit(node: &Api, request: Request, limit: usize) -> Result<(bytes::Bytes, Admitted<'_>), ApiError> {
    admit_checked(node, request, limit, true).await
}

async fn admit_checked(
    node: &Api,
    request: Request,
    limit: usize,
    check_identity: bool,
) -> Result<(bytes::Bytes, Admitted<'_>), ApiError> {
    let checked = authorize(node, &request).and_then(|()| {
        if check_identity {
            check_sender(node, &request).map(Some)
        } else {
            Ok(None)
        }
    });
    let sender = match checked {
        Ok(sender) => sender,
        Err(e) => {
            // Nothing of a stranger's body is kept: drained (bounded in bytes and time)
            // only so the refusal is not lost to a reset.
            super::drain(request.into_body()).await;
            return Err(e);
        }
    };
    let (body, budget) = node
        .body_budget
        .read(request.into_body(), limit, node.config.limits.body_read_timeout_ms)
        .await?;
    let permit = node.internal_inflight.try_acquire().map_err(|_| {
        ApiError::overloaded(format!(
            "more than {} internal requests in flight on this node",
            node.config.limits.max_inflight_internal
        ))
    })?;
    Ok((
        body,
        Admitted {
            sender,
            _request: permit,
            _body: budget,
        },
    ))
}

/// An admitted internal request: its verified sender (unless the route takes anyone) and
/// the permits it holds until it is answered.
struct Admitted<'a> {
    sender: Option<Sender>,
    _request: tokio::sync::SemaphorePermit<'a>,
    _body: tokio::sync::SemaphorePermit<'a>,
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    codec::decode(bytes).map_err(|e| ApiError::bad_request(format!("undecodable body: {e}")))
}

fn refused(e: validate::Invalid) -> ApiError {
    ApiError::bad_request(format!("refused: {e}"))
}

fn encode_answer<T: Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    codec::encode(value).map_err(|e| ApiError::internal(e.to_string()))
}

fn encoded<T: Serialize>(value: &T) -> Response {
    match encode_answer(value) {
        Ok(bytes) => (StatusCode::OK, Body::from(bytes)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn local<K: GroupKind>(node: &Api, group: Option<&Group<K>>) -> Local {
    Local {
        node_id: node.config.node_id,
        vote: group.map_or_else(Vote::default, |g| g.raft.metrics().borrow().vote),
        max_entries: node.config.limits.max_payload_entries(),
        limits: node.config.limits.command_limits(),
    }
}

/// Whether this replica may grant votes. A replica that joined as a learner (or came back
/// after moving away, its log gone) must not vote until its own configuration makes it
/// a voter: a stale candidate whose old configuration still lists this node would
/// otherwise win with an empty log's vote and overwrite committed entries (simulation
/// seed 55). A replica with no configuration at all votes only in a group the bootstrap
/// or a split created (epoch 1), where every replica starts that way.
fn may_vote<K: GroupKind>(node: &Api, group: &Group<K>) -> bool {
    let membership = group.raft.metrics().borrow().membership_config.clone();
    let membership = membership.membership();
    if membership.nodes().next().is_none() {
        return node.map().group(group.id).is_none_or(|s| s.epoch == 1);
    }
    membership.voter_ids().any(|v| v == node.config.node_id)
}

/// The group's replica, created on its first RPC if the map assigns it here.
async fn hosted_group<K: GroupKind>(
    node: &Api,
    registry: &Registry<K>,
    group: GroupId,
) -> Result<Arc<Group<K>>, ApiError> {
    match registry.get(group) {
        Some(g) => Ok(g),
        None => match node.assignment(group) {
            Some(epoch) => {
                let map = node.map();
                let first = match map.shards.get(&group) {
                    Some(shard) => {
                        node.note_missing_split_state(shard);
                        // A message from a peer: the group already runs elsewhere, and a
                        // campaign here would only compete with it.
                        match node.first_entry(&map, shard) {
                            FirstEntry::Campaign(members)
                                if !node.config.has_planted_bug(PlantedBug::SplitChildEveryReplicaCampaigns) =>
                            {
                                FirstEntry::Written(members)
                            }
                            other => other,
                        }
                    }
                    _ => FirstEntry::Empty,
                };
                registry.ensure(group, first, epoch).await.map_err(|e| match e {
                    RegistryError::Tombstoned(_) => ApiError::not_found(e.to_string()),
                    other => ApiError::unavailable(other.to_string()),
                })
            }
            None => Err(ApiError::not_found(format!("group {group} is not hosted here"))),
        },
    }
}

pub async fn raft_rpc(
    State(node): State<Arc<Api>>,
    Path((group_id, op)): Path<(GroupId, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let op = match op.as_str() {
        "append" => Some(RaftOp::Append),
        "vote" => Some(RaftOp::Vote),
        "snapshot" => None,
        other => return Err(ApiError::not_found(format!("unknown raft operation {other:?}"))),
    };
    let limit = match op {
        Some(op) => message_limit(&node, op),
        None => node.config.raft.snapshot_chunk_bytes as usize + SNAPSHOT_FRAMING_BYTES,
    };
    let (body, _permit) = admit(&node, request, limit).await?;
    match op {
        Some(op) => raft_message(&node, group_id, op, &body)
            .await
            .map(|answer| (StatusCode::OK, Body::from(answer)).into_response()),
        None if group_id == PD_GROUP => snapshot_rpc(&node, &node.pd, group_id, &body).await,
        None => snapshot_rpc(&node, &node.shards, group_id, &body).await,
    }
}

/// The largest body of one append or vote, alone or inside a batch.
fn message_limit(node: &Api, op: RaftOp) -> usize {
    match op {
        RaftOp::Append => node.config.limits.max_append_body_bytes(),
        RaftOp::Vote => MAX_VOTE_BODY_BYTES,
        RaftOp::ReadIndex => 0,
    }
}

/// Appends and votes from one peer, for any groups, in one request (`raft::batch`). Each
/// message is checked and answered on its own, all of them at once and in the order
/// sent: one group's refusal or slow flush never changes another's answer.
pub async fn raft_batch(State(node): State<Arc<Api>>, request: Request) -> Result<Response, ApiError> {
    let limit = node.config.limits.max_raft_batch_body_bytes();
    let (body, _permit) = admit(&node, request, limit).await?;
    let items = batch::decode_request(body).map_err(|e| ApiError::bad_request(format!("undecodable batch: {e}")))?;
    let answer = |item: BatchItem| {
        let node = &node;
        async move {
            let limit = message_limit(node, item.op);
            let result = if item.body.len() > limit {
                Err(ApiError::payload_too_large(format!(
                    "a raft {} of {} bytes is over its limit of {limit} bytes",
                    item.op.name(),
                    item.body.len(),
                )))
            } else {
                raft_message(node, item.group, item.op, &item.body).await
            };
            match result {
                Ok(body) => ItemAnswer::Ok(body.into()),
                Err(e) => ItemAnswer::Refused {
                    status: e.status.as_u16(),
                    body: e.json_body().into(),
                },
            }
        }
    };
    let answers: Vec<ItemAnswer> = if node.config.has_planted_bug(PlantedBug::BatchAnswersInCompletionOrder) {
        use futures::StreamExt;
        items
            .into_iter()
            .map(answer)
            .collect::<futures::stream::FuturesUnordered<_>>()
            .collect()
            .await
    } else {
        futures::future::join_all(items.into_iter().map(answer)).await
    };
    // A peer's read lease counts on this node's election timers (`raft::read_batch`).
    Ok((
        StatusCode::OK,
        [(ELECTION_TIMEOUTS_HEADER, node.config.election_timeouts().header_value())],
        Body::from(batch::encode_response(&answers)),
    )
        .into_response())
}

/// One append or vote for a group of either kind; the answer is openraft's, encoded.
async fn raft_message(node: &Api, group_id: GroupId, op: RaftOp, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    if group_id == PD_GROUP {
        raft_message_of(node, &node.pd, group_id, op, body).await
    } else {
        raft_message_of(node, &node.shards, group_id, op, body).await
    }
}

async fn raft_message_of<K: GroupKind>(
    node: &Api,
    registry: &Registry<K>,
    group_id: GroupId,
    op: RaftOp,
    body: &[u8],
) -> Result<Vec<u8>, ApiError> {
    let existing = registry.get(group_id);
    match op {
        RaftOp::Append => {
            let rpc: AppendEntriesRequest<Config<K>> = decode(body)?;
            validate::check_append(&rpc, &local(node, existing.as_deref())).map_err(refused)?;
            let group = hosted_group(node, registry, group_id).await?;
            // A split child without the split's data takes a snapshot first (its leader
            // purged the log behind one); entries alone would leave it an empty shard.
            if rpc.prev_log_id.is_none() && !rpc.entries.is_empty() && registry.awaiting_snapshot(&group) {
                return Err(ApiError::unavailable(format!(
                    "group {group_id} starts here from a snapshot, not from an empty log"
                )));
            }
            encode_answer(&group.raft.append_entries(rpc).await)
        }
        RaftOp::Vote => {
            let rpc: VoteRequest<u64> = decode(body)?;
            validate::check_vote_request(&rpc, &local(node, existing.as_deref())).map_err(refused)?;
            let refusal_ms = node.config.vote_refusal_after_start_ms();
            if node.started.elapsed() < Duration::from_millis(refusal_ms) {
                return Err(ApiError::unavailable(format!(
                    "this node started less than {refusal_ms} ms ago: it refuses votes while a leader it acknowledged before may still hold a read lease"
                )));
            }
            let group = hosted_group(node, registry, group_id).await?;
            if group.holds_votes() {
                return Err(ApiError::unavailable(format!(
                    "this replica of group {group_id} was reopened or re-created lately: it refuses votes while a leader its earlier self acknowledged may still hold a read lease"
                )));
            }
            if !may_vote(node, &group) {
                return Err(ApiError::unavailable(format!(
                    "this replica of group {group_id} is not a voter of its own configuration"
                )));
            }
            encode_answer(&group.raft.vote(rpc).await)
        }
        RaftOp::ReadIndex => {
            // Never creates a replica: only a leader has a read index to give.
            let group = existing.ok_or_else(|| ApiError::not_found(format!("group {group_id} is not hosted here")))?;
            // A quiet leader wakes, so its heartbeats reach the asker too. Not a follower:
            // its leader is quiet, its timer long run out, and woken it would campaign
            // against that live leader (a stale hint sends the asker here).
            if group.is_leader() {
                group.touch(Wake::Request);
            }
            match group.reads.confirm(&group.raft, node.config.read_policy()).await {
                Ok((index, how)) => {
                    if how == Confirmed::Lease {
                        node.metrics.lease_reads.increment(1);
                    }
                    // The asker waits to have applied up to the index: a commit point its
                    // stream holds goes out now, not with the next heartbeat.
                    group.send_held_commits().await;
                    Ok(index.to_le_bytes().to_vec())
                }
                Err(ReadRefused::ForwardToLeader(leader)) => Err(ApiError::unavailable(format!(
                    "this replica of group {group_id} does not lead it (leader: {leader:?})"
                ))),
                Err(ReadRefused::QuorumNotEnough) => Err(ApiError::unavailable(format!(
                    "this replica of group {group_id} could not hear from a quorum"
                ))),
                Err(ReadRefused::Failed(e)) => Err(ApiError::unavailable(format!(
                    "cannot confirm leadership of group {group_id}: {e}"
                ))),
            }
        }
    }
}

/// One snapshot chunk for a group of kind `K`.
async fn snapshot_rpc<K: GroupKind>(
    node: &Api,
    registry: &Registry<K>,
    group_id: GroupId,
    body: &[u8],
) -> Result<Response, ApiError> {
    let existing = registry.get(group_id);
    let rpc: InstallSnapshotRequest<Config<K>> = decode(body)?;
    validate::check_snapshot_meta(&rpc.vote, &rpc.meta, &local(node, existing.as_deref())).map_err(refused)?;
    let group = hosted_group(node, registry, group_id).await?;
    install_snapshot_chunk(node, &group, rpc).await
}

/// Adds one chunk to the group's receive; on the last, checks the whole snapshot and
/// hands it to openraft in one piece.
async fn install_snapshot_chunk<K: GroupKind>(
    node: &Api,
    group: &Group<K>,
    rpc: InstallSnapshotRequest<Config<K>>,
) -> Result<Response, ApiError> {
    let InstallSnapshotRequest {
        vote,
        meta,
        offset,
        data,
        done,
    } = rpc;
    let end = offset.saturating_add(data.len() as u64);
    if end > MAX_SNAPSHOT_BYTES {
        return Err(ApiError::value_too_large(format!(
            "a snapshot over {MAX_SNAPSHOT_BYTES} bytes"
        )));
    }
    type SnapshotResult = Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>;
    let assembled = match node.snapshot_receives.add_chunk(group.id, &meta, offset, data, done) {
        Ok(assembled) => assembled,
        Err(ChunkRefused::Api(e)) => return Err(e),
        Err(ChunkRefused::Mismatch(mismatch)) => {
            let answer: SnapshotResult = Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(mismatch)));
            return Ok(encoded(&answer));
        }
    };
    let Some(data) = assembled else {
        let vote = group.raft.metrics().borrow().vote;
        return Ok(encoded(&Ok::<
            _,
            openraft::error::RaftError<u64, openraft::error::InstallSnapshotError>,
        >(InstallSnapshotResponse { vote })));
    };
    check_snapshot_data::<K>(&data).map_err(|e| ApiError::bad_request(format!("refused snapshot: {e}")))?;
    let snapshot = Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(data)),
    };
    let result = group
        .raft
        .install_full_snapshot(vote, snapshot)
        .await
        .map(|r| InstallSnapshotResponse { vote: r.vote })
        .map_err(RaftError::<u64, InstallSnapshotError>::Fatal);
    Ok(encoded(&result))
}

impl SnapshotReceives {
    /// Adds a chunk; returns the whole snapshot once the last chunk is in.
    fn add_chunk(
        &self,
        group: GroupId,
        meta: &SnapshotMeta,
        offset: u64,
        data: Vec<u8>,
        done: bool,
    ) -> Result<Option<Vec<u8>>, ChunkRefused> {
        let mut receives = self.0.lock().unwrap();
        let now = Instant::now();
        if offset == 0 {
            if !receives.contains_key(&group) && receives.len() >= MAX_SNAPSHOT_RECEIVES {
                let idle = Duration::from_millis(SNAPSHOT_RECEIVE_IDLE_MS);
                receives.retain(|_, r| now.duration_since(r.updated) < idle);
                if receives.len() >= MAX_SNAPSHOT_RECEIVES {
                    return Err(ChunkRefused::Api(ApiError::overloaded(format!(
                        "{MAX_SNAPSHOT_RECEIVES} snapshots are being received already"
                    ))));
                }
            }
            receives.insert(
                group,
                SnapshotReceive {
                    snapshot_id: meta.snapshot_id.clone(),
                    data: Vec::new(),
                    updated: now,
                },
            );
        }
        // A chunk of a snapshot not being received (this node restarted, or dropped an idle
        // receive), or one past a hole: tell the leader where to resume, as openraft does,
        // so it restarts the stream at once instead of retrying the same chunk.
        let received = receives
            .get(&group)
            .filter(|r| r.snapshot_id == meta.snapshot_id)
            .map(|r| r.data.len() as u64);
        if received.is_none_or(|received| offset > received) {
            return Err(ChunkRefused::Mismatch(openraft::error::SnapshotMismatch {
                expect: openraft::SnapshotSegmentId {
                    id: meta.snapshot_id.clone(),
                    offset: received.unwrap_or(0),
                },
                got: openraft::SnapshotSegmentId {
                    id: meta.snapshot_id.clone(),
                    offset,
                },
            }));
        }
        let receive = receives
            .get_mut(&group)
            .ok_or(ChunkRefused::Api(ApiError::internal("receive vanished")))?;
        receive.data.truncate(offset as usize);
        receive.data.extend_from_slice(&data);
        receive.updated = now;
        if !done {
            return Ok(None);
        }
        Ok(receives.remove(&group).map(|r| r.data))
    }
}

/// The placement driver's executor asks a replica for its group's status, or (on the
/// leader) for a membership change or a leadership transfer.
pub async fn admin(
    State(node): State<Arc<Api>>,
    Path(group_id): Path<GroupId>,
    request: Request,
) -> Result<Response, ApiError> {
    let (body, _permit) = admit(&node, request, MAX_VOTE_BODY_BYTES).await?;
    let call: AdminRequest = decode(&body)?;
    call.validate().map_err(ApiError::bad_request)?;
    let reply = node
        .admin_local(group_id, call)
        .await
        .ok_or_else(|| ApiError::not_found(format!("group {group_id} is not hosted here")))?;
    Ok(encoded(&reply))
}

/// A starting node asks whether a cluster exists and what it knows of the asker. No
/// identity headers are checked here: the asker may be new.
pub async fn identity_query(State(node): State<Arc<Api>>, request: Request) -> Result<Response, ApiError> {
    let (body, _permit) = admit_checked(&node, request, MAX_VOTE_BODY_BYTES, false).await?;
    let query: IdentityQuery = decode(&body)?;
    let mut answer = IdentityAnswer::from_map(&node.map(), query.node_id);
    // Before the map arrives, this node's own record still names its cluster.
    answer.cluster_id = answer.cluster_id.or(node.shards.credentials().cluster_id());
    Ok(encoded(&answer))
}

pub async fn pd_heartbeat(State(node): State<Arc<Api>>, request: Request) -> Result<Response, ApiError> {
    let (body, admitted) = admit(&node, request, MAX_HEARTBEAT_BODY_BYTES).await?;
    let hb: Heartbeat = decode(&body)?;
    hb.validate().map_err(ApiError::bad_request)?;
    // A heartbeat speaks for its sender only: its body must name the node and incarnation
    // that `check_sender` verified, or a peer could register another node's incarnation.
    if admitted
        .sender
        .is_none_or(|s| (s.node, s.incarnation) != (hb.node_id, hb.incarnation))
    {
        return Err(reject(
            &node,
            "missing_identity",
            format!("a heartbeat for node {} sent under another identity", hb.node_id),
        ));
    }
    match node.handle_heartbeat(&hb) {
        Ok(Some(reply)) => Ok(encoded(&reply)),
        // Not the PD leader: point the sender at the one this node knows of.
        Ok(None) => match node.pd_leader_addr() {
            Some(addr) => Ok(encoded(&crate::node::HeartbeatReply {
                redirect: Some(addr),
                ..Default::default()
            })),
            None => Err(ApiError::unavailable("this node does not lead the placement driver")),
        },
        Err(e) => Err(ApiError::bad_request(e)),
    }
}

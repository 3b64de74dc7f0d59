//! `/v1/kv/...`: reads and writes, served on the shard leader or forwarded to it.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use openraft::error::{ClientWriteError, RaftError};
use serde_json::json;

use super::error::ApiError;
use super::routing_json;
use super::Api;
use crate::node::PlantedBug;
use crate::raft::network::send;
use crate::raft::read_batch::{Confirmed, ReadRefused};
use crate::raft::registry::Wake;
use crate::raft::GroupId;
use crate::shard::propose::Unknown;
use crate::shard::store::{write_outcome, ShardCommand, ShardGroup, ShardProposer};
use crate::shard::{read, KeyRecord, KvOp, KvResult, Precondition, ReadOutcome};

pub const HOPS_HEADER: &str = "x-midasflow-hops";
pub const NO_FORWARD_HEADER: &str = "x-no-forward";
const KV_PREFIX: &str = "/v1/kv/";
const HISTORY_SUFFIX: &str = "/history";
/// How long to wait between looks for a leader while one is being elected.
const LEADER_POLL_MS: u64 = 25;
/// Under the planted re-propose bug, a proposal not confirmed this fast is proposed again.
const PLANTED_REPROPOSE_AFTER_MS: u64 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consistency {
    Linearizable,
    Stale,
}

#[derive(Debug)]
enum KvCall {
    Write(KvOp),
    Read {
        key: Vec<u8>,
        consistency: Consistency,
        version: Option<u64>,
    },
    History {
        key: Vec<u8>,
        consistency: Consistency,
    },
}

impl KvCall {
    fn key(&self) -> &[u8] {
        match self {
            KvCall::Write(op) => op.key(),
            KvCall::Read { key, .. } | KvCall::History { key, .. } => key,
        }
    }

    fn needs_leader(&self) -> bool {
        match self {
            KvCall::Write(_) => true,
            KvCall::Read { consistency, .. } | KvCall::History { consistency, .. } => {
                *consistency == Consistency::Linearizable
            }
        }
    }
}

/// Strict percent-decoding: a `%` not followed by two hex digits is an error.
pub fn percent_decode_strict(raw: &str) -> Result<Vec<u8>, ApiError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ApiError::bad_request(format!("malformed percent-encoding at byte {i} of the path")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn parse_version_header(headers: &HeaderMap, name: header::HeaderName) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(&name) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::bad_request(format!("{name} is not ASCII")))?
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"');
    text.parse::<u64>()
        .map(Some)
        .map_err(|_| ApiError::bad_request(format!("{name} must be a version number, got {text:?}")))
}

fn precondition(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    let if_match = parse_version_header(headers, header::IF_MATCH)?;
    let if_none_match = match headers.get(header::IF_NONE_MATCH) {
        None => false,
        Some(v) if v.as_bytes().trim_ascii() == b"*" => true,
        Some(_) => return Err(ApiError::bad_request("If-None-Match supports only *")),
    };
    match (if_match, if_none_match) {
        (Some(_), true) => Err(ApiError::bad_request("use If-Match or If-None-Match, not both")),
        (Some(version), false) => Ok(Precondition::IfMatch(version)),
        (None, true) => Ok(Precondition::IfAbsent),
        (None, false) => Ok(Precondition::None),
    }
}

fn parse_query(query: Option<&str>) -> Result<(Consistency, Option<u64>), ApiError> {
    let mut consistency = Consistency::Linearizable;
    let mut version = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "consistency" => {
                consistency = match value {
                    "linearizable" => Consistency::Linearizable,
                    "stale" => Consistency::Stale,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "consistency must be linearizable or stale, got {other:?}"
                        )))
                    }
                }
            }
            "version" => {
                version =
                    Some(value.parse::<u64>().map_err(|_| {
                        ApiError::bad_request(format!("version must be a positive number, got {value:?}"))
                    })?)
            }
            other => return Err(ApiError::bad_request(format!("unknown query parameter {other:?}"))),
        }
    }
    Ok((consistency, version))
}

/// Parses the call from method, path, query, headers and body, enforcing every limit.
/// The body is read first, so an error never answers a client that is still sending.
async fn parse_call(
    node: &Api,
    request: Request,
) -> Result<(KvCall, HeaderMap, Bytes, tokio::sync::SemaphorePermit<'_>), ApiError> {
    let limits = &node.config.limits;
    let (parts, body) = request.into_parts();
    let limit = limits.max_value_bytes;
    let (body, budget) = node.body_budget.read(body, limit, limits.body_read_timeout_ms).await?;
    let path = parts.uri.path();
    let raw = path.strip_prefix(KV_PREFIX).unwrap_or("");
    let (raw_key, history) = match raw.strip_suffix(HISTORY_SUFFIX) {
        Some(k) if parts.method == Method::GET => (k, true),
        _ => (raw, false),
    };
    // Percent-encoding at most triples a key; a longer raw path cannot be a legal key.
    if raw_key.len() > limits.max_key_bytes * 3 {
        return Err(ApiError::key_too_large(format!(
            "key is over {} bytes",
            limits.max_key_bytes
        )));
    }
    let key = percent_decode_strict(raw_key)?;
    if key.is_empty() {
        return Err(ApiError::bad_request("key must not be empty"));
    }
    if key.len() > limits.max_key_bytes {
        return Err(ApiError::key_too_large(format!(
            "key is {} bytes; the limit is {}",
            key.len(),
            limits.max_key_bytes
        )));
    }
    let (consistency, version) = parse_query(parts.uri.query())?;
    let history_versions = node.config.history_versions;
    let call = match parts.method {
        Method::GET if history => KvCall::History { key, consistency },
        Method::GET => {
            if version == Some(0) {
                return Err(ApiError::bad_request("version must be at least 1"));
            }
            KvCall::Read {
                key,
                consistency,
                version,
            }
        }
        Method::PUT => KvCall::Write(KvOp::Put {
            key,
            value: Vec::new(),
            precondition: precondition(&parts.headers)?,
            history_versions,
        }),
        Method::DELETE => KvCall::Write(KvOp::Delete {
            key,
            precondition: precondition(&parts.headers)?,
            history_versions,
        }),
        _ => return Err(ApiError::method_not_allowed("use GET, PUT or DELETE on /v1/kv/{key}")),
    };
    let call = match call {
        KvCall::Write(KvOp::Put {
            key,
            precondition,
            history_versions,
            ..
        }) => KvCall::Write(KvOp::Put {
            key,
            value: body.to_vec(),
            precondition,
            history_versions,
        }),
        other => other,
    };
    Ok((call, parts.headers, body, budget))
}

pub async fn handle(State(node): State<Arc<Api>>, request: Request) -> Response {
    let method = request.method().clone();
    // A shared clone (no copy): only a forwarded request needs it.
    let uri = request.uri().clone();
    // The body is read (bounded in size and time) before a permit is taken: a client that
    // sends slowly holds only its own connection, never a slot other clients need.
    let (call, headers, body, _body_budget) = match parse_call(&node, request).await {
        Ok(parsed) => parsed,
        Err(e) => return e.into_response(),
    };
    let Ok(_permit) = node.inflight.try_acquire() else {
        return ApiError::overloaded(format!(
            "more than {} requests in flight on this node",
            node.config.limits.max_inflight_requests
        ))
        .into_response();
    };
    let forward = Forward {
        method,
        uri,
        headers,
        body,
    };
    let timeout = Duration::from_millis(node.config.limits.request_timeout_ms);
    match execute(&node, call, &forward, Instant::now() + timeout).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// How many nodes forwarded this request already.
pub(super) fn forwarded_hops(headers: &HeaderMap) -> u32 {
    headers
        .get(HOPS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What is needed to replay the request on another node.
pub(super) struct Forward {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Forward {
    fn path_and_query(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }
}

enum Attempt {
    Done(Response),
    /// Ask this node instead.
    Redirect(u64),
    /// No leader known yet: wait and look again.
    Wait,
}

async fn execute(node: &Arc<Api>, call: KvCall, forward: &Forward, deadline: Instant) -> Result<Response, ApiError> {
    let hash = crate::placement::key_hash(call.key());
    let mut shard = node
        .map()
        .shard_for_hash(hash)
        .ok_or_else(|| ApiError::unavailable("the cluster map is not bootstrapped yet"))?
        .id;
    let hops = forwarded_hops(&forward.headers);
    let no_forward = forward
        .headers
        .get(NO_FORWARD_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1");
    let mut proposed = false;
    let range_checked = range_checked(node);
    loop {
        // A split moves keys to a new shard: follow the newest map on every round.
        let map = node.map();
        if let Some(current) = map.shard_for_hash(hash) {
            shard = current.id;
        }
        let attempt = match node.shards.get(shard) {
            // This replica already split the key away; the map will follow.
            Some(group) if range_checked && !group.view.covers(hash) => Attempt::Wait,
            Some(group) if !call.needs_leader() => serve_local(&group, &call, false, range_checked)
                .await?
                .map_or(Attempt::Wait, Attempt::Done),
            Some(group)
                if node.config.has_planted_bug(PlantedBug::FollowerReads) && !matches!(call, KvCall::Write(_)) =>
            {
                serve_local(&group, &call, true, range_checked)
                    .await?
                    .map_or(Attempt::Wait, Attempt::Done)
            }
            Some(group)
                if group.is_leader()
                    && group.is_quiet()
                    && !matches!(call, KvCall::Write(_))
                    && node.config.has_planted_bug(PlantedBug::QuietReadsWithoutQuorum) =>
            {
                serve_local(&group, &call, true, range_checked)
                    .await?
                    .map_or(Attempt::Wait, Attempt::Done)
            }
            Some(group) if group.is_leader() && !(group.proposals_paused() && call.needs_leader()) => {
                group.view.count_op();
                group.touch(Wake::Request);
                let remaining = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(remaining, serve_on_leader(node, &group, &call, &mut proposed)).await {
                    Ok(result) => result?,
                    Err(_) => break,
                }
            }
            // A follower asks the leader for a read index instead of forwarding the read.
            Some(group) if !matches!(call, KvCall::Write(_)) && !group.is_leader() => {
                match node.leader_hint(shard).filter(|leader| *leader != node.config.node_id) {
                    Some(leader) => read_on_follower(node, &group, &call, leader, deadline).await?,
                    None => Attempt::Wait,
                }
            }
            _ => match node.leader_hint(shard) {
                Some(leader) if leader != node.config.node_id => Attempt::Redirect(leader),
                _ if !call.needs_leader() => Attempt::Redirect(map.shards[&shard].replicas[0]),
                _ => Attempt::Wait,
            },
        };
        match attempt {
            Attempt::Done(response) => return Ok(response),
            Attempt::Redirect(target) if target != node.config.node_id => {
                if no_forward {
                    return Ok(misdirected(node));
                }
                if hops >= node.config.limits.max_forward_hops {
                    return Err(ApiError::unavailable(format!(
                        "gave up after {hops} forwarding hops; the shard's leadership is changing"
                    )));
                }
                match forward_to(node, target, forward, hops + 1, deadline).await {
                    Ok(response) => return Ok(response),
                    Err(e) if matches!(call, KvCall::Write(_)) && !e.retryable_for_write => {
                        return Err(ApiError::timeout(format!(
                            "forwarded write's outcome is unknown: {}",
                            e.message
                        )))
                    }
                    Err(e) => {
                        tracing::debug!(target, error = %e.message, "forward failed; retrying");
                        // A quiet follower runs no election timer: a leader that could not
                        // even be reached may be gone. (A slow answer is no such sign.)
                        if e.retryable_for_write {
                            if let Some(group) = node.shards.get(shard) {
                                group.touch(Wake::Request);
                            }
                        }
                    }
                }
            }
            Attempt::Redirect(_) | Attempt::Wait => {}
        }
        if Instant::now() + Duration::from_millis(LEADER_POLL_MS) >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(LEADER_POLL_MS)).await;
    }
    if proposed {
        proposal_failed(node, "timeout");
        Err(ApiError::timeout(
            "the write was proposed but not confirmed in time; it may or may not have happened",
        ))
    } else {
        Err(ApiError::unavailable(format!("shard {shard} has no reachable leader")))
    }
}

/// On the (believed) leader: propose the write, or confirm leadership and read.
///
/// A write is proposed at most once. Once `client_write` was called, the entry may be in
/// the log of other replicas whatever openraft answers, and with more than 3 voters or a
/// joint configuration it can still commit after this node lost leadership; proposing it
/// again could apply it twice (or make a CAS report 412 for its own success). So every
/// outcome but a confirmed result is "unknown" (504).
async fn serve_on_leader(
    node: &Api,
    group: &ShardGroup,
    call: &KvCall,
    proposed: &mut bool,
) -> Result<Attempt, ApiError> {
    match call {
        KvCall::Write(op) => {
            let _timer = ProposalTimer {
                started: Instant::now(),
                duration: &node.metrics.proposal_duration,
            };
            *proposed = true;
            let outcome = if node.config.has_planted_bug(PlantedBug::ReproposeWrites) {
                // The planted "repropose" bug keeps the direct, one-write-per-entry path it
                // was written against: give up on a slow proposal, or follow a new leader,
                // and propose the same write again.
                let write = group.raft.client_write(ShardCommand::Kv(op.clone()));
                match tokio::time::timeout(Duration::from_millis(PLANTED_REPROPOSE_AFTER_MS), write).await {
                    Err(_) => {
                        *proposed = false;
                        return Ok(Attempt::Wait);
                    }
                    Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                        *proposed = false;
                        return Ok(f.leader_id.map_or(Attempt::Wait, Attempt::Redirect));
                    }
                    Ok(written) => write_outcome(written, 1).and_then(|results| {
                        results
                            .into_iter()
                            .next()
                            .ok_or_else(|| Unknown::Error("no result for the write".into()))
                    }),
                }
            } else {
                let planted = node.config.has_planted_bug(PlantedBug::BatchResultsMisrouted);
                let proposer = ShardProposer {
                    raft: group.raft.clone(),
                    writes_per_proposal: node.metrics.writes_per_proposal.clone(),
                    planted_unbounded_wait: node.config.has_planted_bug(PlantedBug::UnboundedWriteWait),
                };
                group
                    .view
                    .proposals
                    .submit(op.clone(), proposer, node.config.limits.command_limits(), planted)
                    .await
            };
            match outcome {
                // Refused at apply, so certainly not applied: it may go to the new shard.
                Ok(KvResult::WrongShard) => {
                    *proposed = false;
                    Ok(Attempt::Wait)
                }
                Ok(result) => {
                    if matches!(result, KvResult::Written { .. } | KvResult::Deleted { .. }) {
                        node.metrics.kv_writes.increment(1);
                    }
                    Ok(Attempt::Done(write_response(op, group.id, result)))
                }
                Err(Unknown::LeaderChanged(leader)) => {
                    proposal_failed(node, "leader_changed");
                    Err(ApiError::timeout(format!(
                        "leadership moved to {leader:?} while the write was proposed; it may or may not have happened"
                    )))
                }
                Err(Unknown::Error(e)) => {
                    proposal_failed(node, "error");
                    Err(ApiError::timeout(format!("write outcome unknown: {e}")))
                }
            }
        }
        _ => {
            let confirmed = group.reads.confirm(&group.raft, node.config.read_policy()).await;
            if let Ok((_, Confirmed::Lease)) = confirmed {
                node.metrics.lease_reads.increment(1);
            }
            match confirmed {
                // Applied up to the read index: if that includes a split of the key away,
                // the new shard answers.
                Ok(_) if !group.view.covers(crate::placement::key_hash(call.key())) => Ok(Attempt::Wait),
                Ok(_) => Ok(serve_local(group, call, true, range_checked(node))
                    .await?
                    .map_or(Attempt::Wait, Attempt::Done)),
                Err(ReadRefused::ForwardToLeader(leader)) => Ok(leader.map_or(Attempt::Wait, Attempt::Redirect)),
                Err(ReadRefused::QuorumNotEnough) => Ok(Attempt::Wait),
                Err(ReadRefused::Failed(e)) => Err(ApiError::unavailable(format!("cannot confirm leadership: {e}"))),
            }
        }
    }
}

/// How long a follower read waits for its replica to apply the leader's read index before
/// the read is forwarded to the leader instead (a replica far behind, or one its group
/// removed, which will never get there).
pub const FOLLOWER_READ_APPLY_WAIT_MS: u64 = 250;

/// A linearizable read on a follower (Raft's ReadIndex): the leader confirms it still leads
/// after the read arrived and names its commit index, then this replica answers from its
/// own applied state once it has applied that far. Whatever was acknowledged before the
/// read began is committed at or below that index, and a split of the key away at or
/// below it has narrowed this replica's range (the read then waits for the new map). Any
/// failure forwards the read to `leader`, as before follower reads.
async fn read_on_follower(
    node: &Api,
    group: &ShardGroup,
    call: &KvCall,
    leader: u64,
    deadline: Instant,
) -> Result<Attempt, ApiError> {
    let fallback = |why: &dyn std::fmt::Display| {
        tracing::debug!(group = group.id, leader, %why, "follower read forwarded");
        node.metrics.follower_read_fallbacks.increment(1);
        Ok(Attempt::Redirect(leader))
    };
    let Some(addr) = node.addr_of(leader) else {
        return fallback(&"no address for the leader");
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    let index = match node.shards.read_index(leader, &addr, group.id, remaining).await {
        Ok(index) => index,
        Err(e) => return fallback(&e),
    };
    if group.applied.index() < index && !node.config.has_planted_bug(PlantedBug::FollowerReadsWithoutApplyWait) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let wait = remaining.min(Duration::from_millis(FOLLOWER_READ_APPLY_WAIT_MS));
        let applied = group
            .raft
            .wait(Some(wait))
            .applied_index_at_least(Some(index), "follower read")
            .await;
        // openraft counts an entry applied once the state machine returned from it, after
        // the replica published its writes: the check below is what the read relies on.
        if applied.is_err() || group.applied.index() < index {
            return fallback(&format_args!("not applied up to the read index {index} in time"));
        }
    }
    node.metrics.follower_reads.increment(1);
    Ok(serve_local(group, call, true, range_checked(node))
        .await?
        .map_or(Attempt::Wait, Attempt::Done))
}

/// Records a proposal's duration when it ends, also when the request's deadline drops it
/// (the slowest proposals are the ones an alert on this histogram is for).
struct ProposalTimer<'a> {
    started: Instant,
    duration: &'a metrics::Histogram,
}

impl Drop for ProposalTimer<'_> {
    fn drop(&mut self) {
        self.duration.record(self.started.elapsed().as_secs_f64());
    }
}

/// A proposal whose outcome this node could not confirm (`reason` is one of
/// [`crate::telemetry::PROPOSAL_FAILURE_REASONS`]).
fn proposal_failed(node: &Api, reason: &'static str) {
    metrics::counter!("midasflow_raft_proposals_failed_total", "node" => node.label(), "reason" => reason).increment(1);
}

/// The body of a write's answer. Fields in name order, as the JSON maps elsewhere print
/// them; serialized straight from the struct, without building a JSON value first.
#[derive(serde::Serialize)]
struct WriteReply<'a> {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    key: std::borrow::Cow<'a, str>,
    shard: GroupId,
    version: u64,
}

fn write_response(op: &KvOp, shard: GroupId, result: KvResult) -> Response {
    let reply = |version, deleted| WriteReply {
        deleted,
        key: String::from_utf8_lossy(op.key()),
        shard,
        version,
    };
    match result {
        KvResult::Written { version } => {
            let mut response = axum::Json(reply(version, false)).into_response();
            set_version_headers(response.headers_mut(), version);
            response.headers_mut().insert("x-shard", HeaderValue::from(shard));
            response
        }
        KvResult::Deleted { version } => axum::Json(reply(version, true)).into_response(),
        KvResult::PreconditionFailed { current } => {
            let mut response =
                ApiError::precondition_failed(format!("the key's current version is {current}")).into_response();
            response.headers_mut().insert("x-version", HeaderValue::from(current));
            response
        }
        KvResult::NotFound => ApiError::not_found("key not found").into_response(),
        KvResult::WrongShard => ApiError::unavailable("the shard split; retry").into_response(),
    }
}

/// `X-Version` and its `ETag`.
fn set_version_headers(headers: &mut HeaderMap, version: u64) {
    headers.insert("x-version", HeaderValue::from(version));
    // `"` + at most 20 digits + `"`, written on the stack: one allocation, not two.
    let mut etag = [0u8; 22];
    let mut cursor = &mut etag[..];
    if write!(cursor, "\"{version}\"").is_ok() {
        let written = 22 - cursor.len();
        if let Ok(value) = HeaderValue::from_bytes(&etag[..written]) {
            headers.insert(header::ETAG, value);
        }
    }
}

/// Headers of a value read's response: content type and length, version, ETag, shard,
/// applied index and routing version.
const VALUE_RESPONSE_HEADERS: usize = 7;

/// Whether requests check the replica's range (off only for the planted bug that skips it).
fn range_checked(node: &Api) -> bool {
    !node.config.has_planted_bug(PlantedBug::SplitWithoutRangeCheck)
}

/// The three loads of a local read, as a shard replica offers them.
trait AppliedState {
    fn applied_index(&self) -> u64;
    fn record(&self, key: &[u8]) -> Result<Option<KeyRecord>, ApiError>;
    fn covers(&self, hash: u64) -> bool;
}

impl AppliedState for ShardGroup {
    fn applied_index(&self) -> u64 {
        self.applied.index()
    }
    fn record(&self, key: &[u8]) -> Result<Option<KeyRecord>, ApiError> {
        self.view
            .get(key)
            .map_err(|e| ApiError::internal(format!("reading the key: {e}")))
    }
    fn covers(&self, hash: u64) -> bool {
        self.view.covers(hash)
    }
}

/// The applied index, then the record, then the range; `None` if the replica no longer
/// serves the key.
/// - An apply landing between the first two loads can only make the record newer than the
///   index says, so `X-Applied-Index` never claims more than what was read.
/// - A split narrows the replica's range before its records leave (see
///   `ShardState::stage`), so a record read before the range is checked cannot be one
///   that had already moved to the child: a read racing a split waits for the new map
///   instead of answering "not found".
fn read_applied<S: AppliedState>(
    state: &S,
    key: &[u8],
    range_checked: bool,
) -> Result<Option<(u64, Option<KeyRecord>)>, ApiError> {
    let applied = state.applied_index();
    let record = state.record(key)?;
    if range_checked && !state.covers(crate::placement::key_hash(key)) {
        return Ok(None);
    }
    Ok(Some((applied, record)))
}

/// Reads from this replica's applied state (after the leader check, for linearizable
/// reads); `None` if a split took the key away meanwhile (the new shard answers).
async fn serve_local(
    group: &ShardGroup,
    call: &KvCall,
    linearizable: bool,
    range_checked: bool,
) -> Result<Option<Response>, ApiError> {
    let Some((applied, mut record)) = read_applied(group, call.key(), range_checked)? else {
        return Ok(None);
    };
    let mut response = match call {
        KvCall::Read { version, .. } => match read(record.as_ref(), *version) {
            ReadOutcome::Value { version, .. } => {
                // The record is ours: its value becomes the body without a copy.
                let value = record
                    .as_mut()
                    .and_then(|r| r.versions.iter_mut().find(|v| v.version == version))
                    .map(|v| std::mem::take(&mut v.value))
                    .ok_or_else(|| ApiError::internal(format!("version {version} vanished from the record read")))?;
                let mut response = Response::new(Body::from(value));
                // Room for every header this response gets (ours, the routing version and
                // the content length): the map is allocated once, not grown twice.
                response.headers_mut().reserve(VALUE_RESPONSE_HEADERS);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                set_version_headers(response.headers_mut(), version);
                response
            }
            ReadOutcome::NotFound => ApiError::not_found("key not found").into_response(),
            ReadOutcome::Gone => {
                ApiError::gone(format!("version {} is no longer retained", version.unwrap_or_default())).into_response()
            }
        },
        KvCall::History { key, .. } => match &record {
            None => ApiError::not_found("key not found").into_response(),
            Some(record) => {
                let engine = base64::engine::general_purpose::STANDARD;
                let versions: Vec<serde_json::Value> = record
                    .versions
                    .iter()
                    .map(|v| json!({"version": v.version, "deleted": v.deleted, "value_base64": engine.encode(&v.value)}))
                    .collect();
                axum::Json(json!({"key": String::from_utf8_lossy(key), "versions": versions, "shard": group.id}))
                    .into_response()
            }
        },
        KvCall::Write(_) => return Err(ApiError::internal("write routed to the read path")),
    };
    if !linearizable {
        response
            .headers_mut()
            .insert("x-applied-index", HeaderValue::from(applied));
    }
    response.headers_mut().insert("x-shard", HeaderValue::from(group.id));
    Ok(Some(response))
}

/// 421 with the current map, for clients that asked not to be forwarded.
fn misdirected(node: &Api) -> Response {
    (StatusCode::MISDIRECTED_REQUEST, axum::Json(routing_json(node))).into_response()
}

pub(super) struct ForwardError {
    pub message: String,
    /// True when the request certainly never reached a node that could have applied it.
    retryable_for_write: bool,
}

/// Headers a forwarded request keeps; everything else is hop-by-hop or ours to set.
const FORWARDED_HEADERS: [header::HeaderName; 4] = [
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::CONTENT_TYPE,
    header::AUTHORIZATION,
];
/// Response headers relayed back from the node that served a forwarded request.
const RELAYED_HEADERS: [&str; 6] = [
    "x-version",
    "etag",
    "x-shard",
    "x-applied-index",
    "retry-after",
    "content-type",
];

pub(super) async fn forward_to(
    node: &Api,
    target: u64,
    forward: &Forward,
    hops: u32,
    deadline: Instant,
) -> Result<Response, ForwardError> {
    let addr = node.addr_of(target).ok_or_else(|| ForwardError {
        message: format!("no address for node {target}"),
        retryable_for_write: true,
    })?;
    let mut builder = hyper::Request::builder()
        .method(forward.method.clone())
        .uri(node.shards.client().url(&addr, forward.path_and_query()))
        .header(HOPS_HEADER, hops);
    for name in FORWARDED_HEADERS {
        if let Some(value) = forward.headers.get(&name) {
            builder = builder.header(name, value);
        }
    }
    let request = builder
        .body(Full::new(forward.body.clone()))
        .map_err(|e| ForwardError {
            message: e.to_string(),
            retryable_for_write: true,
        })?;
    let remaining = deadline.saturating_duration_since(Instant::now());
    let response = send(node.shards.client(), request, remaining)
        .await
        .map_err(|e| ForwardError {
            retryable_for_write: matches!(e, crate::raft::network::TransportError::Connect { .. }),
            message: e.to_string(),
        })?;
    node.metrics.forwarded.increment(1);
    let (parts, body) = response.into_parts();
    let mut relayed = Response::new(Body::from(body));
    *relayed.status_mut() = parts.status;
    for name in RELAYED_HEADERS {
        if let Some(value) = parts.headers.get(name) {
            relayed.headers_mut().insert(name, value.clone());
        }
    }
    Ok(relayed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_percent_decoding() {
        assert_eq!(percent_decode_strict("a%2Fb%20c").unwrap(), b"a/b c");
        assert_eq!(percent_decode_strict("%ff").unwrap(), vec![0xff]);
        assert!(percent_decode_strict("%zz").is_err());
        assert!(percent_decode_strict("abc%2").is_err());
        assert!(percent_decode_strict("%").is_err());
    }

    #[test]
    fn query_parsing() {
        assert_eq!(parse_query(None).unwrap(), (Consistency::Linearizable, None));
        assert_eq!(
            parse_query(Some("consistency=stale&version=3")).unwrap(),
            (Consistency::Stale, Some(3))
        );
        assert!(parse_query(Some("consistency=eventual")).is_err());
        assert!(parse_query(Some("version=x")).is_err());
    }

    #[test]
    fn preconditions_from_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(precondition(&headers).unwrap(), Precondition::None);
        headers.insert(header::IF_MATCH, HeaderValue::from_static("\"7\""));
        assert_eq!(precondition(&headers).unwrap(), Precondition::IfMatch(7));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("seven"));
        assert!(precondition(&headers).is_err());
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert_eq!(precondition(&headers).unwrap(), Precondition::IfAbsent);
    }

    /// A view where an apply lands between the two loads of a read: each record load
    /// first moves the state on by one version and one index.
    struct ApplyingMeanwhile(std::cell::Cell<u64>);

    impl AppliedState for ApplyingMeanwhile {
        fn applied_index(&self) -> u64 {
            self.0.get()
        }
        fn record(&self, _key: &[u8]) -> Result<Option<KeyRecord>, ApiError> {
            let version = self.0.get();
            self.0.set(version + 1);
            Ok(Some(KeyRecord {
                versions: vec![crate::shard::VersionEntry {
                    version,
                    deleted: false,
                    value: vec![],
                }],
            }))
        }
        fn covers(&self, _hash: u64) -> bool {
            true
        }
    }

    /// A split of the key away lands while the record is read: the record may already be
    /// gone (it moved to the child), so the read must not answer from it.
    struct SplitMeanwhile(std::cell::Cell<bool>);

    impl AppliedState for SplitMeanwhile {
        fn applied_index(&self) -> u64 {
            7
        }
        fn record(&self, _key: &[u8]) -> Result<Option<KeyRecord>, ApiError> {
            self.0.set(true);
            Ok(None)
        }
        fn covers(&self, _hash: u64) -> bool {
            !self.0.get()
        }
    }

    #[test]
    fn a_read_racing_a_split_of_its_key_is_not_answered() {
        let state = SplitMeanwhile(std::cell::Cell::new(false));
        assert!(
            read_applied(&state, b"k", true).unwrap().is_none(),
            "no \"not found\" for a moved key"
        );
        // The planted bug that skips range checks skips this one too.
        let state = SplitMeanwhile(std::cell::Cell::new(false));
        assert!(read_applied(&state, b"k", false).unwrap().is_some());
    }

    /// The reply struct prints what the JSON value it replaced printed, byte for byte,
    /// also for a key that is not UTF-8.
    #[test]
    fn write_replies_keep_their_json() {
        let written = WriteReply {
            deleted: false,
            key: String::from_utf8_lossy(b"k\xff1"),
            shard: 7,
            version: 3,
        };
        let deleted = WriteReply {
            deleted: true,
            key: written.key.clone(),
            ..written
        };
        assert_eq!(
            serde_json::to_string(&written).unwrap(),
            serde_json::to_string(&json!({"key": "k\u{fffd}1", "version": 3, "shard": 7})).unwrap()
        );
        assert_eq!(
            serde_json::to_string(&deleted).unwrap(),
            serde_json::to_string(&json!({"key": "k\u{fffd}1", "version": 3, "deleted": true, "shard": 7})).unwrap()
        );
    }

    /// The stale-read finding: the record was loaded before the applied index, so an
    /// apply in between made `X-Applied-Index` claim a state newer than the value read.
    /// Here version N is what index N holds: the index returned must not exceed it.
    #[test]
    fn stale_read_index_never_claims_more_than_was_read() {
        let state = ApplyingMeanwhile(std::cell::Cell::new(5));
        let (applied, record) = read_applied(&state, b"k", true).unwrap().unwrap();
        assert!(
            applied <= record.unwrap().latest().version,
            "index {applied} is ahead of the value read"
        );
    }

    proptest::proptest! {
        /// The strict percent-decoder never panics, and decodes what `encode_key` wrote.
        #[test]
        fn percent_decoding_is_total_and_inverts_encoding(
            raw in "[ -~]{0,64}",
            key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let _ = percent_decode_strict(&raw);
            let encoded = crate::client::encode_key(&key);
            proptest::prop_assert_eq!(percent_decode_strict(&encoded).unwrap(), key);
        }

        /// Header and query parsers answer Ok or a 400 for anything, never panic.
        #[test]
        fn header_and_query_parsers_never_panic(value in "[ -~]{0,40}", query in "[ -~]{0,80}") {
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(header::IF_MATCH, v.clone());
                let _ = precondition(&headers);
                headers.insert(header::IF_NONE_MATCH, v);
                let _ = precondition(&headers);
            }
            if let Err(e) = parse_query(Some(&query)) {
                proptest::prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
            }
        }
    }
}

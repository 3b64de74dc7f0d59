//! The group-tagged Raft network over HTTP (docs/ARCHITECTURE.md).
//!
//! openraft's `new_client` is not told the group, so each group gets its own factory
//! carrying its id; all share the node's one [`RaftSender`], which coalesces appends and
//! votes to one peer into `POST /internal/raft/batch` (see `batch.rs`). A snapshot chunk
//! is `POST /internal/raft/{group}/snapshot` alone. Bodies are versioned bincode, and
//! every RPC has a timeout, because a partition drops bytes silently.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, EntryPayload, LogId};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::batch::{BatchItem, ItemAnswer, RaftOp, RaftSender};
use super::probe::NodeEvent;
use super::read_batch::FollowerAcks;
use super::state_machine::GroupState;
use super::transport::HttpClient;
use super::{Config, GroupId, GroupKind};
use crate::codec;

/// Header carrying the cluster secret on internal requests.
pub const SECRET_HEADER: &str = "x-midasflow-secret";
/// Headers naming the sender of every internal request: its node id, its data dir's
/// incarnation, and its cluster (absent until the node knows it).
pub const NODE_HEADER: &str = "x-midasflow-node";
pub const INCARNATION_HEADER: &str = "x-midasflow-incarnation";
pub const CLUSTER_HEADER: &str = "x-midasflow-cluster";
/// The node id a Raft message is meant for. An address can come to belong to another
/// node (a node replaced by a new one on the same host and port, under a new id); the
/// receiver refuses what was meant for an id other than its own, so a leader never counts
/// the new node's answer as the old node's.
pub const TARGET_HEADER: &str = "x-midasflow-to";
/// Header on a Raft batch's answer: the answering node's election timeouts,
/// `{min},{max}` in ms. Its maximum is how long it refuses votes after accepting a
/// leader's append; its minimum, how soon a candidate of its tries again. A leader's read
/// lease counts only followers whose timeouts are at least its own, so a node run with
/// shorter ones (or one that does not say) costs the lease, not its safety.
pub const ELECTION_TIMEOUTS_HEADER: &str = "x-midasflow-election-timeouts-ms";

/// A node's election timeouts, as [`ELECTION_TIMEOUTS_HEADER`] carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionTimeouts {
    pub min_ms: u64,
    pub max_ms: u64,
}

impl ElectionTimeouts {
    pub fn header_value(&self) -> String {
        format!("{},{}", self.min_ms, self.max_ms)
    }

    pub fn parse(value: &str) -> Option<Self> {
        let (min, max) = value.split_once(',')?;
        Some(ElectionTimeouts {
            min_ms: min.trim().parse().ok()?,
            max_ms: max.trim().parse().ok()?,
        })
    }

    /// Whether a follower with these timeouts waits at least as long as `leader`'s lease
    /// assumes (both bounds).
    pub fn at_least(&self, leader: &ElectionTimeouts) -> bool {
        self.min_ms >= leader.min_ms && self.max_ms >= leader.max_ms
    }
}

/// What a node presents on every internal request.
#[derive(Debug)]
pub struct Credentials {
    pub secret: Option<String>,
    pub node_id: u64,
    pub incarnation: u128,
    cluster_id: std::sync::RwLock<Option<u128>>,
    /// Set when a peer refused this node's identity (its disk was wiped, or it is not
    /// the node it claims): the node stops acting as a member.
    refused: tokio::sync::watch::Sender<Option<String>>,
}

impl Credentials {
    pub fn new(secret: Option<String>, node_id: u64, incarnation: u128, cluster_id: Option<u128>) -> Self {
        Credentials {
            secret,
            node_id,
            incarnation,
            cluster_id: std::sync::RwLock::new(cluster_id),
            refused: tokio::sync::watch::channel(None).0,
        }
    }

    /// Records that a peer refused this node's identity; the first reason is kept.
    pub fn mark_refused(&self, reason: String) {
        self.refused.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        });
    }

    /// Resolves with the reason once a peer refused this node's identity.
    pub fn refusal(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.refused.subscribe()
    }

    /// Notes a peer's answer that refuses this node itself (not a transient error).
    fn notice(&self, error: &TransportError) {
        if let TransportError::Status { status, body, addr } = error {
            if *status == StatusCode::FORBIDDEN && body.contains("wrong_incarnation") {
                self.mark_refused(format!("{addr} refused this node's identity: {body}"));
            }
        }
    }

    pub fn cluster_id(&self) -> Option<u128> {
        *self.cluster_id.read().unwrap()
    }

    pub fn set_cluster_id(&self, cluster_id: u128) {
        *self.cluster_id.write().unwrap() = Some(cluster_id);
    }

    fn add_to(&self, mut builder: hyper::http::request::Builder) -> hyper::http::request::Builder {
        if let Some(secret) = &self.secret {
            builder = builder.header(SECRET_HEADER, secret);
        }
        builder = builder
            .header(NODE_HEADER, self.node_id)
            .header(INCARNATION_HEADER, crate::identity::hex(self.incarnation));
        if let Some(cluster) = self.cluster_id() {
            builder = builder.header(CLUSTER_HEADER, crate::identity::hex(cluster));
        }
        builder
    }
}
/// Upper bound on any one Raft RPC, whatever openraft asks for.
pub const MAX_RPC_TIMEOUT_MS: u64 = 10_000;

/// The first wait before a new group's vote request goes again to a peer that has no
/// replica of the group yet; each wait doubles, within the RPC's time (openraft gives a
/// vote `election_timeout_min`).
pub const FIRST_VOTE_RETRY_MS: u64 = 5;

#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("request to {addr} timed out after {timeout_ms} ms")]
    Timeout { addr: String, timeout_ms: u128 },
    #[error("request to {addr}: {message}")]
    Io { addr: String, message: String },
    #[error("{addr} answered {status}: {body}")]
    Status {
        addr: String,
        status: StatusCode,
        body: String,
    },
    #[error("bad response from {addr}: {message}")]
    Decode { addr: String, message: String },
}

/// Sends one HTTP request through the node's pooled client, bounded by `timeout`.
pub async fn send(
    client: &HttpClient,
    request: hyper::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<hyper::Response<Bytes>, TransportError> {
    let addr = request.uri().authority().map(|a| a.to_string()).unwrap_or_default();
    if client.link_cut(&addr) {
        return Err(TransportError::Connect {
            addr,
            message: "the link is cut (demo fault injection)".into(),
        });
    }
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            if e.is_connect() {
                TransportError::Connect {
                    addr: addr.clone(),
                    message: e.to_string(),
                }
            } else {
                TransportError::Io {
                    addr: addr.clone(),
                    message: e.to_string(),
                }
            }
        })?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| TransportError::Io {
            addr: addr.clone(),
            message: e.to_string(),
        })?;
        Ok(hyper::Response::from_parts(parts, body.to_bytes()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| TransportError::Timeout {
            addr: addr.clone(),
            timeout_ms: timeout.as_millis(),
        })?
}

/// POSTs a versioned bincode body to another node's internal route and decodes the answer.
pub async fn post_internal<Req: Serialize, Resp: DeserializeOwned>(
    client: &HttpClient,
    addr: &str,
    to: Option<u64>,
    path: &str,
    credentials: &Credentials,
    body: &Req,
    timeout: Duration,
) -> Result<Resp, TransportError> {
    let decode_error = |message: String| TransportError::Decode {
        addr: addr.to_string(),
        message,
    };
    let body = codec::encode(body).map_err(|e| decode_error(e.to_string()))?;
    let answer = post_bytes(client, addr, to, path, credentials, Bytes::from(body), timeout).await?;
    codec::decode(answer.body()).map_err(|e| decode_error(e.to_string()))
}

/// POSTs bytes to another node's internal route with this node's credentials, meant for
/// node `to` when given ([`TARGET_HEADER`]); anything but 200 is an error carrying the
/// start of the peer's answer.
pub async fn post_bytes(
    client: &HttpClient,
    addr: &str,
    to: Option<u64>,
    path: &str,
    credentials: &Credentials,
    body: Bytes,
    timeout: Duration,
) -> Result<hyper::Response<Bytes>, TransportError> {
    let mut builder = credentials.add_to(
        hyper::Request::builder()
            .method(Method::POST)
            .uri(client.url(addr, path))
            .header(hyper::header::CONTENT_TYPE, "application/octet-stream"),
    );
    if let Some(to) = to {
        builder = builder.header(TARGET_HEADER, to);
    }
    let request = builder.body(Full::new(body)).map_err(|e| TransportError::Decode {
        addr: addr.to_string(),
        message: e.to_string(),
    })?;
    let response = send(client, request, timeout).await?;
    if response.status() != StatusCode::OK {
        let error = status_error(addr, response.status(), response.body());
        credentials.notice(&error);
        return Err(error);
    }
    Ok(response)
}

fn status_error(addr: &str, status: StatusCode, body: &[u8]) -> TransportError {
    TransportError::Status {
        addr: addr.to_string(),
        status,
        body: String::from_utf8_lossy(body).chars().take(400).collect(),
    }
}

/// Longest node address accepted (in the map, heartbeats and admin requests).
pub const MAX_NODE_ADDR_BYTES: usize = 256;

/// Whether an append about to go to a follower may be answered here instead: a bare
/// commit-point update that the follower can learn from the stream's next message.
///
/// openraft 0.9 follows every commit with an empty append to each follower whose stream
/// has nothing else to send, so at one write per entry a follower handles two messages per
/// entry. A follower needs the commit point only to apply, and every later append or
/// heartbeat carries it, so the stream answers such an update "accepted" itself and lets
/// the next message deliver it: the next entries, or the next heartbeat, at most one
/// heartbeat interval later. Only an update that repeats the log id the follower last
/// confirmed on this client is held, so the answer claims nothing the follower has not
/// said (openraft's progress does not move). Held at most one at a time: an empty append
/// while one is held goes out, so a heartbeat always reaches the follower.
///
/// Never held:
/// - anything sent by a client the follower has not answered before: openraft's
///   leadership check for a linearizable read (`ensure_linearizable`) makes a client per
///   check and sends one empty append through it, and answering that without the
///   follower would confirm a leader that no longer leads;
/// - a commit point that may cover an entry followers should apply at once (a split, a
///   membership change, a new leader's blank entry: `urgent`) until the follower
///   confirmed learning it.
///
/// Pure: the stream's [`GroupNetwork`] keeps one and tells it what it sends and what the
/// follower answered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CommitHold {
    /// The follower has accepted a message of this client: it is a replication stream's.
    answered: bool,
    /// The last log id the follower confirmed holding, by its latest acceptance here.
    confirmed: Option<LogId<u64>>,
    /// The commit point the follower learned, by its acceptances here.
    known_commit: Option<LogId<u64>>,
    /// The last urgent entry sent.
    urgent_upto: Option<LogId<u64>>,
    /// The commit point answered here and not yet sent.
    held: Option<LogId<u64>>,
}

/// The parts of an append [`CommitHold`] decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    pub entries: usize,
    pub prev_log_id: Option<LogId<u64>>,
    /// The last log id the append covers: its last entry's, or `prev_log_id`.
    pub last_log_id: Option<LogId<u64>>,
    /// Its last urgent entry, if any.
    pub urgent: Option<LogId<u64>>,
    pub leader_commit: Option<LogId<u64>>,
}

/// Planted bugs of [`CommitHold`] (simulation only).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum PlantedHold {
    #[default]
    Off,
    /// Bare updates from any client are held, openraft's leadership checks included.
    AnswersChecks,
    /// Every empty append is held while one is: the held commit point never goes out.
    KeepsHeartbeats,
}

impl CommitHold {
    /// Decides for an append about to go out: `true` holds it (answer it here), `false`
    /// sends it.
    pub fn hold(&mut self, out: &Outgoing, planted: PlantedHold) -> bool {
        // While one is held, every later message carries a commit point past
        // `known_commit` too: under `KeepsHeartbeats` it is held as well.
        let bare_update = out.entries == 0 && out.leader_commit > self.known_commit;
        let repeats_confirmed = self.answered && out.prev_log_id == self.confirmed;
        let one_at_a_time = self.held.is_none() || planted == PlantedHold::KeepsHeartbeats;
        if bare_update
            && (repeats_confirmed || planted == PlantedHold::AnswersChecks)
            && one_at_a_time
            && self.urgent_upto <= self.known_commit
        {
            self.held = self.held.max(out.leader_commit);
            return true;
        }
        self.urgent_upto = self.urgent_upto.max(out.urgent);
        self.held = None;
        false
    }

    /// The follower accepted `out`, holding its log up to `matching` (the append's last
    /// log id, or less for a partial success).
    pub fn accepted(&mut self, out: &Outgoing, matching: Option<LogId<u64>>) {
        self.answered = true;
        self.confirmed = matching;
        self.known_commit = self.known_commit.max(out.leader_commit.min(matching));
    }

    /// Whether a commit point is held (answered here, not yet sent).
    pub fn holding(&self) -> bool {
        self.held.is_some()
    }
}

/// How many of a group's replication streams hold a commit point ([`CommitHold`]): while
/// any does, a follower's read index sends a heartbeat first, so the asker applies
/// promptly.
#[derive(Debug, Default)]
pub struct HeldCommits(AtomicUsize);

impl HeldCommits {
    pub fn any(&self) -> bool {
        self.0.load(Ordering::Acquire) > 0
    }
}

/// Builds clients for one group.
pub struct GroupNetworkFactory<K> {
    pub group: GroupId,
    pub sender: RaftSender,
    /// Where accepted appends are recorded for the read lease.
    pub acks: Arc<FollowerAcks>,
    /// Counts the streams holding a commit point.
    pub held_commits: Arc<HeldCommits>,
    /// Planted bugs (simulation only): see `crate::node::PlantedBug::CommitHoldAnswersChecks`
    /// and `CommitHoldKeepsHeartbeats`.
    pub planted_hold: PlantedHold,
    pub kind: std::marker::PhantomData<fn() -> K>,
}

pub struct GroupNetwork<K> {
    group: GroupId,
    target: u64,
    addr: String,
    sender: RaftSender,
    acks: Arc<FollowerAcks>,
    hold: CommitHold,
    held_commits: Arc<HeldCommits>,
    planted_hold: PlantedHold,
    kind: std::marker::PhantomData<fn() -> K>,
}

impl<K> GroupNetwork<K> {
    /// Keeps the group's count of holding streams in step with this stream's hold.
    fn set_holding(&mut self, was_holding: bool) {
        match (was_holding, self.hold.holding()) {
            (false, true) => {
                self.held_commits.0.fetch_add(1, Ordering::AcqRel);
            }
            (true, false) => {
                self.held_commits.0.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        }
    }
}

impl<K> Drop for GroupNetwork<K> {
    fn drop(&mut self) {
        if self.hold.holding() {
            self.held_commits.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<K: GroupKind> RaftNetworkFactory<Config<K>> for GroupNetworkFactory<K> {
    type Network = GroupNetwork<K>;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        GroupNetwork {
            group: self.group,
            target,
            addr: node.addr.clone(),
            sender: self.sender.clone(),
            acks: self.acks.clone(),
            hold: CommitHold::default(),
            held_commits: self.held_commits.clone(),
            planted_hold: self.planted_hold,
            kind: std::marker::PhantomData,
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

impl<K> GroupNetwork<K> {
    /// Appends and votes travel in the peer's next batch.
    async fn call<Req, Resp, E>(&self, op: RaftOp, rpc: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let timeout = option.hard_ttl().min(Duration::from_millis(MAX_RPC_TIMEOUT_MS));
        Self::outcome(self.target, self.call_within(op, rpc, timeout).await)
    }

    async fn call_within<Req, Resp, E>(
        &self,
        op: RaftOp,
        rpc: &Req,
        timeout: Duration,
    ) -> Result<Result<Resp, RaftError<u64, E>>, TransportError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = codec::encode(rpc).map_err(|e| TransportError::Decode {
            addr: self.addr.clone(),
            message: e.to_string(),
        })?;
        let item = BatchItem {
            group: self.group,
            op,
            body: Bytes::from(body),
        };
        match self.sender.call(self.target, &self.addr, item, timeout).await? {
            ItemAnswer::Ok(body) => codec::decode(&body).map_err(|e| TransportError::Decode {
                addr: self.addr.clone(),
                message: e.to_string(),
            }),
            ItemAnswer::Refused { status, body } => Err(status_error(
                &self.addr,
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                &body,
            )),
        }
    }

    /// Snapshot chunks are large: each travels alone rather than holding up a batch.
    async fn call_alone<Req, Resp, E>(&self, op: &str, rpc: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let timeout = option.hard_ttl().min(Duration::from_millis(MAX_RPC_TIMEOUT_MS));
        let path = format!("/internal/raft/{}/{op}", self.group);
        let (client, credentials) = (self.sender.client(), self.sender.credentials());
        Self::outcome(
            self.target,
            post_internal(client, &self.addr, Some(self.target), &path, credentials, rpc, timeout).await,
        )
    }

    fn outcome<Resp, E>(
        target: u64,
        answer: Result<Result<Resp, RaftError<u64, E>>, TransportError>,
    ) -> RpcResult<Resp, E>
    where
        E: std::error::Error,
    {
        match answer {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(target, remote))),
            Err(e @ TransportError::Connect { .. }) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl<K: GroupKind> RaftNetwork<Config<K>> for GroupNetwork<K> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Config<K>>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, openraft::error::Infallible> {
        let outgoing = Outgoing {
            entries: rpc.entries.len(),
            prev_log_id: rpc.prev_log_id,
            last_log_id: rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id),
            urgent: rpc.entries.iter().rev().find_map(|entry| {
                let urgent = match &entry.payload {
                    EntryPayload::Normal(command) => K::State::is_barrier(command),
                    EntryPayload::Blank | EntryPayload::Membership(_) => true,
                };
                urgent.then_some(entry.log_id)
            }),
            leader_commit: rpc.leader_commit,
        };
        if K::HOLDS_COMMIT_UPDATES {
            let was_holding = self.hold.holding();
            let hold = self.hold.hold(&outgoing, self.planted_hold);
            self.set_holding(was_holding);
            if hold {
                self.sender.metrics().commit_updates_held.increment(1);
                self.sender.probe().emit(|| NodeEvent::CommitUpdateHeld);
                return Ok(AppendEntriesResponse::Success);
            }
        }
        if rpc.entries.is_empty() {
            // A heartbeat (or a bare commit-point update): what quiet groups save.
            self.sender.metrics().heartbeats.increment(1);
        }
        // Taken before the request leaves: the follower accepts it later.
        let sent = tokio::time::Instant::now();
        let term = rpc.vote.leader_id().get_term();
        let answer = self.call(RaftOp::Append, &rpc, &option).await;
        // Any answer but a higher vote means the follower took this leader's vote, and
        // with it the timer that has it refuse votes (`read_batch`), if that is as long
        // as the lease assumes.
        let accepted = matches!(
            &answer,
            Ok(AppendEntriesResponse::Success
                | AppendEntriesResponse::PartialSuccess(_)
                | AppendEntriesResponse::Conflict)
        );
        let for_lease = self.sender.times_like_this_node(self.target);
        if !for_lease {
            // Restarted with shorter timeouts, say: what it accepted before no longer counts.
            self.acks.forget(self.target);
        }
        if accepted {
            self.acks.record(self.target, term, sent, for_lease);
        }
        match &answer {
            Ok(AppendEntriesResponse::Success) => self.hold.accepted(&outgoing, outgoing.last_log_id),
            Ok(AppendEntriesResponse::PartialSuccess(matching)) => self.hold.accepted(&outgoing, *matching),
            _ => {}
        }
        answer
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Config<K>>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        let last_chunk = rpc.done;
        let answer = self.call_alone("snapshot", &rpc, &option).await;
        if last_chunk && answer.is_ok() {
            self.sender.metrics().snapshot_sends.increment(1);
        }
        answer
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, openraft::error::Infallible> {
        // A new group's first campaign (its log is the first entry alone) starts as soon
        // as its first replica exists, and the others exist milliseconds later: a peer
        // that answers 404 (no replica of the group yet) is asked again, at growing
        // intervals, until the RPC's time runs out. Asking again is harmless: a voter
        // grants one candidate per term, and answers a repeat the same way.
        // A removed replica answers 404 as well, for good: the asking stops at the deadline.
        let first_campaign = rpc.last_log_id.is_none_or(|id| id.index == 0);
        let deadline = tokio::time::Instant::now() + option.hard_ttl().min(Duration::from_millis(MAX_RPC_TIMEOUT_MS));
        let mut retry_in = Duration::from_millis(FIRST_VOTE_RETRY_MS);
        self.sender.metrics().votes.increment(1);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let answer = self.call_within(RaftOp::Vote, &rpc, left).await;
            let absent =
                matches!(&answer, Err(TransportError::Status { status, .. }) if *status == StatusCode::NOT_FOUND);
            if !(first_campaign && absent) || tokio::time::Instant::now() + retry_in >= deadline {
                return Self::outcome(self.target, answer);
            }
            tokio::time::sleep(retry_in).await;
            retry_in *= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn id(index: u64) -> Option<LogId<u64>> {
        Some(LogId::new(CommittedLeaderId::new(1, 1), index))
    }

    /// An append of entries `first..=last` (none if `first > last`) after `prev`.
    fn append(prev: u64, last: u64, commit: u64) -> Outgoing {
        Outgoing {
            entries: (last - prev) as usize,
            prev_log_id: id(prev),
            last_log_id: id(last),
            urgent: None,
            leader_commit: id(commit),
        }
    }

    /// Sends `out` unless held; a sent one is accepted whole.
    fn send(hold: &mut CommitHold, out: Outgoing) -> bool {
        let held = hold.hold(&out, PlantedHold::Off);
        if !held {
            hold.accepted(&out, out.last_log_id);
        }
        held
    }

    /// A replication stream at one write per entry: entries, then the bare update that
    /// commits them.
    #[test]
    fn a_streams_bare_commit_update_waits_for_its_next_message() {
        let mut hold = CommitHold::default();
        assert!(!send(&mut hold, append(0, 1, 0)), "entries always go");
        assert!(
            send(&mut hold, append(1, 1, 1)),
            "the bare update that commits them waits"
        );
        assert!(hold.holding());
        assert!(!send(&mut hold, append(1, 2, 1)), "the next entries carry it");
        assert!(!hold.holding());
        assert!(send(&mut hold, append(2, 2, 2)));
        assert!(
            !send(&mut hold, append(2, 2, 2)),
            "a heartbeat while one is held goes out"
        );
        assert!(!hold.holding());
        assert!(
            !send(&mut hold, append(2, 2, 2)),
            "a heartbeat with nothing new goes out"
        );
    }

    /// openraft's leadership check sends one empty append through a client of its own:
    /// answered here, it would confirm a leader the followers no longer follow.
    #[test]
    fn a_client_the_follower_never_answered_holds_nothing() {
        let mut check = CommitHold::default();
        assert!(!check.hold(&append(5, 5, 5), PlantedHold::Off));
        let mut stream = CommitHold::default();
        assert!(
            !stream.hold(&append(5, 5, 5), PlantedHold::Off),
            "unanswered, nothing is held"
        );
        stream.accepted(&append(5, 5, 5), id(5));
        assert!(
            stream.hold(&append(5, 5, 6), PlantedHold::Off),
            "answered, a bare update waits"
        );
        let mut planted = CommitHold::default();
        assert!(
            planted.hold(&append(5, 5, 5), PlantedHold::AnswersChecks),
            "the planted bug answers the check itself"
        );
    }

    /// An empty append from anywhere but the follower's confirmed log id (a probe after
    /// a conflict) goes out: its answer says something new.
    #[test]
    fn only_an_update_at_the_confirmed_log_id_is_held() {
        let mut hold = CommitHold::default();
        send(&mut hold, append(0, 4, 0));
        assert!(
            !hold.hold(&append(3, 3, 4), PlantedHold::Off),
            "a probe behind the confirmed id"
        );
        let mut partial = CommitHold::default();
        let out = append(0, 4, 0);
        partial.hold(&out, PlantedHold::Off);
        partial.accepted(&out, id(2));
        assert!(
            !partial.hold(&append(4, 4, 2), PlantedHold::Off),
            "past what the follower confirmed"
        );
        assert!(partial.hold(&append(2, 2, 2), PlantedHold::Off));
    }

    /// A failed send teaches nothing: the update after it is sent, not held.
    #[test]
    fn a_commit_point_the_follower_never_confirmed_is_not_assumed() {
        let mut hold = CommitHold::default();
        send(&mut hold, append(0, 3, 0));
        assert!(send(&mut hold, append(3, 3, 3)));
        let heartbeat = append(3, 3, 3);
        assert!(
            !hold.hold(&heartbeat, PlantedHold::Off),
            "the heartbeat goes out; its send fails"
        );
        assert!(!hold.holding());
        assert!(
            hold.hold(&append(3, 3, 3), PlantedHold::Off),
            "still unknown to the follower: held once"
        );
        assert!(
            !hold.hold(&append(3, 3, 3), PlantedHold::Off),
            "and the next one goes out"
        );
    }

    /// Held at most one at a time: two bare updates in a row send the second.
    #[test]
    fn two_bare_updates_in_a_row_send_the_second() {
        let mut hold = CommitHold::default();
        send(&mut hold, append(0, 3, 0));
        assert!(send(&mut hold, append(3, 3, 2)));
        assert!(!send(&mut hold, append(3, 3, 3)));
        assert!(!send(&mut hold, append(3, 4, 3)));
        assert!(send(&mut hold, append(4, 4, 4)));
    }

    /// A split, a membership change or a leader's blank entry: followers apply it at once.
    #[test]
    fn the_commit_of_an_urgent_entry_is_sent() {
        let mut hold = CommitHold::default();
        let mut with_split = append(0, 2, 0);
        with_split.urgent = id(2);
        assert!(!send(&mut hold, with_split));
        assert!(!send(&mut hold, append(2, 2, 1)), "may cover the urgent entry 2: sent");
        assert!(!send(&mut hold, append(2, 2, 2)), "covers it: sent");
        assert!(!send(&mut hold, append(2, 3, 2)));
        assert!(
            send(&mut hold, append(3, 3, 3)),
            "past it, plain entries' updates wait again"
        );
    }
}

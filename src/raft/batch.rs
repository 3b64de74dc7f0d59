//! Coalesced Raft traffic: appends and votes to one peer, from every group on this node,
//! travel together in one `POST /internal/raft/batch` (docs/ARCHITECTURE.md).
//!
//! Each peer has a queue and a sender task. The task takes whatever is queued (up to
//! [`MAX_BATCH_ITEMS`] messages and one full append's bytes) and sends it while at most
//! `--raft-batches-in-flight` batches to that peer are unanswered. Nothing waits for a
//! batch to fill: with nothing in flight, a message leaves at once. With a batch in
//! flight, the next waits for it to return (at most [`HOLD_BEHIND_IN_FLIGHT_MS`]), taking
//! along whatever arrived meanwhile. So the number of requests follows the number of
//! round trips, not the number of active groups, and a batch stuck behind one slow group
//! (its answer waits for that group) delays the others only briefly.
//!
//! The peer answers every message in the order sent, each with its own status: one
//! group's refusal (unknown group, bad body) never fails the others. Snapshots are not
//! batched: their chunks are large and would hold up the small messages behind them.
//!
//! The placement driver's group has a lane of its own to each peer ([`Lane`]): its own
//! queue, sender task and batches. Node liveness, leader hints and quiet groups all
//! depend on the PD having a leader; in an election storm of thousands of shards its
//! votes, queued behind theirs, timed out (300 ms) again and again, and without a PD
//! leader no shard leader could go quiet to end the storm.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

use super::network::{post_bytes, Credentials, ElectionTimeouts, TransportError, ELECTION_TIMEOUTS_HEADER};
use super::probe::{NodeEvent, Probe};
use super::transport::HttpClient;
use super::GroupId;
use crate::codec;

/// Messages in one batch request. A batch is answered when its slowest message is (a vote
/// for a replica still being created, an append behind a flush), so this bounds how many
/// messages one slow group holds up; under load more batches go out instead.
pub const MAX_BATCH_ITEMS: usize = 64;
/// Batch requests to one peer in flight at once, by default. Many, so batches held up by
/// one slow group do not hold up the rest; under light load a batch waits behind the one
/// in flight anyway (`HOLD_BEHIND_IN_FLIGHT_MS`), so batches stay large
/// (`--raft-batches-in-flight`, at most the maximum).
pub const DEFAULT_BATCHES_IN_FLIGHT_PER_PEER: usize = 16;
pub const MAX_BATCHES_IN_FLIGHT_PER_PEER: usize = 64;
/// Messages queued for one peer; past this a message fails at once (openraft retries
/// it). A group has at most one append and one vote to a peer unanswered, so this holds
/// every group of a node with tens of thousands of shards: a smaller queue turned the
/// start of 10,000 shards into an election storm of failed votes.
pub const MAX_QUEUED_PER_PEER: usize = 65_536;
/// While a batch to a peer is in flight, the next one waits for it to return, at most this
/// long: messages meanwhile join it (one batch per round trip under load), and a batch
/// stuck behind one slow group holds up the others for no longer than this.
pub const HOLD_BEHIND_IN_FLIGHT_MS: u64 = 5;
/// A peer's sender task ends after this long with nothing to send (a new message starts
/// it again), so peers that left the cluster leave no task behind.
pub const PEER_IDLE_EXIT_MS: u64 = 60_000;
/// Bytes of framing per message (group, operation, length) and per batch (format, count).
pub const ITEM_FRAMING_BYTES: usize = 8 + 1 + 4;
pub const BATCH_FRAMING_BYTES: usize = 1 + 4;
/// The most framing a batch can add to the bytes of its messages.
pub const MAX_FRAMING_BYTES: usize = BATCH_FRAMING_BYTES + MAX_BATCH_ITEMS * ITEM_FRAMING_BYTES;

pub const BATCH_PATH: &str = "/internal/raft/batch";

/// The Raft messages that travel in batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftOp {
    Append,
    Vote,
    /// A follower asks the leader for a read index (empty body; the answer is the index,
    /// 8 bytes little-endian): see `api::kv`'s follower reads.
    ReadIndex,
}

impl RaftOp {
    fn code(self) -> u8 {
        match self {
            RaftOp::Append => 1,
            RaftOp::Vote => 2,
            RaftOp::ReadIndex => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(RaftOp::Append),
            2 => Some(RaftOp::Vote),
            3 => Some(RaftOp::ReadIndex),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RaftOp::Append => "append",
            RaftOp::Vote => "vote",
            RaftOp::ReadIndex => "read index",
        }
    }
}

/// One message of a batch: a group's encoded openraft request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchItem {
    pub group: GroupId,
    pub op: RaftOp,
    pub body: Bytes,
}

/// The answer to one message: the encoded openraft reply, or why the peer refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemAnswer {
    Ok(Bytes),
    Refused { status: u16, body: Bytes },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("unknown format version {0}")]
    Format(u8),
    #[error("truncated batch")]
    Truncated,
    #[error("{0} messages in one batch (at most {MAX_BATCH_ITEMS})")]
    TooManyItems(usize),
    #[error("unknown raft operation code {0}")]
    UnknownOp(u8),
    #[error("{0} trailing bytes after the batch")]
    Trailing(usize),
}

fn put_header(out: &mut BytesMut, count: usize) {
    out.put_u8(codec::FORMAT);
    out.put_u32_le(count as u32);
}

/// Reads the header; the count is checked before anything is allocated for it.
fn take_header(input: &mut Bytes) -> Result<usize, FrameError> {
    if input.remaining() < BATCH_FRAMING_BYTES {
        return Err(FrameError::Truncated);
    }
    let format = input.get_u8();
    if format != codec::FORMAT {
        return Err(FrameError::Format(format));
    }
    let count = input.get_u32_le() as usize;
    if count > MAX_BATCH_ITEMS {
        return Err(FrameError::TooManyItems(count));
    }
    Ok(count)
}

/// Takes `len` bytes without copying: the items share the request's buffer.
fn take_bytes(input: &mut Bytes) -> Result<Bytes, FrameError> {
    if input.remaining() < 4 {
        return Err(FrameError::Truncated);
    }
    let len = input.get_u32_le() as usize;
    if input.remaining() < len {
        return Err(FrameError::Truncated);
    }
    Ok(input.split_to(len))
}

fn finish<T>(input: &Bytes, value: T) -> Result<T, FrameError> {
    match input.remaining() {
        0 => Ok(value),
        n => Err(FrameError::Trailing(n)),
    }
}

pub fn encode_request(items: &[BatchItem]) -> Bytes {
    let bytes: usize = items.iter().map(|i| i.body.len() + ITEM_FRAMING_BYTES).sum();
    let mut out = BytesMut::with_capacity(BATCH_FRAMING_BYTES + bytes);
    put_header(&mut out, items.len());
    for item in items {
        out.put_u64_le(item.group);
        out.put_u8(item.op.code());
        out.put_u32_le(item.body.len() as u32);
        out.put_slice(&item.body);
    }
    out.freeze()
}

/// Decodes a batch from the network; allocates nothing beyond one small record per
/// message (at most [`MAX_BATCH_ITEMS`]).
pub fn decode_request(mut input: Bytes) -> Result<Vec<BatchItem>, FrameError> {
    let count = take_header(&mut input)?;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        if input.remaining() < 9 {
            return Err(FrameError::Truncated);
        }
        let group = input.get_u64_le();
        let code = input.get_u8();
        let op = RaftOp::from_code(code).ok_or(FrameError::UnknownOp(code))?;
        let body = take_bytes(&mut input)?;
        items.push(BatchItem { group, op, body });
    }
    finish(&input, items)
}

pub fn encode_response(answers: &[ItemAnswer]) -> Bytes {
    let mut out = BytesMut::new();
    put_header(&mut out, answers.len());
    for answer in answers {
        let (status, body) = match answer {
            ItemAnswer::Ok(body) => (200, body),
            ItemAnswer::Refused { status, body } => (*status, body),
        };
        out.put_u16_le(status);
        out.put_u32_le(body.len() as u32);
        out.put_slice(body);
    }
    out.freeze()
}

pub fn decode_response(mut input: Bytes) -> Result<Vec<ItemAnswer>, FrameError> {
    let count = take_header(&mut input)?;
    let mut answers = Vec::with_capacity(count);
    for _ in 0..count {
        if input.remaining() < 2 {
            return Err(FrameError::Truncated);
        }
        let status = input.get_u16_le();
        let body = take_bytes(&mut input)?;
        answers.push(match status {
            200 => ItemAnswer::Ok(body),
            status => ItemAnswer::Refused { status, body },
        });
    }
    finish(&input, answers)
}

/// Which queue to a peer a message takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// The placement driver's group: never behind the shards' traffic.
    Control,
    Data,
    /// Read-index requests: a batch is answered when its slowest message is, and one of
    /// these takes a quorum round on the peer, which appends must not wait for.
    Reads,
}

impl Lane {
    pub fn of(item: &BatchItem) -> Lane {
        if item.group == crate::placement::PD_GROUP {
            Lane::Control
        } else if item.op == RaftOp::ReadIndex {
            Lane::Reads
        } else {
            Lane::Data
        }
    }

    fn index(self) -> usize {
        match self {
            Lane::Control => 0,
            Lane::Data => 1,
            Lane::Reads => 2,
        }
    }
}

/// A message waiting to be sent, and where its answer goes.
struct Queued {
    item: BatchItem,
    timeout: Duration,
    reply: oneshot::Sender<Result<ItemAnswer, TransportError>>,
}

/// Queues to peers: by node id, then address.
type PeerQueues = HashMap<u64, HashMap<String, mpsc::Sender<Queued>>>;

/// The node's batching sender, shared by every group of every kind.
#[derive(Clone)]
pub struct RaftSender {
    inner: Arc<Inner>,
}

struct Inner {
    client: HttpClient,
    credentials: Arc<Credentials>,
    probe: Probe,
    /// Bytes of messages a batch packs beyond its first message: at most one full append,
    /// so a batch never exceeds what a peer accepts (its limit adds [`MAX_FRAMING_BYTES`]).
    max_batch_bytes: usize,
    batches_in_flight: usize,
    /// Each lane's queue to each peer, by node id, then address (indexed by
    /// [`Lane::index`]). The id is part of the key: a batch names the node it is meant
    /// for, and an address may come to belong to another node.
    peers: [Mutex<PeerQueues>; 3],
    metrics: SenderMetrics,
    /// This node's election timeouts: a read lease counts on a follower only if its own
    /// are at least these.
    election_timeouts: ElectionTimeouts,
    /// What each peer node said in its latest batch answer (`ELECTION_TIMEOUTS_HEADER`).
    peer_timeouts: Mutex<HashMap<u64, ElectionTimeouts>>,
}

/// Handles of the metrics of Raft messages this node sends, made once.
pub struct SenderMetrics {
    batches: metrics::Counter,
    batched_messages: metrics::Counter,
    pub heartbeats: metrics::Counter,
    /// Bare commit-point updates answered by the leader's stream (`network::CommitHold`).
    pub commit_updates_held: metrics::Counter,
    pub votes: metrics::Counter,
    pub snapshot_sends: metrics::Counter,
}

impl SenderMetrics {
    fn new(node: u64) -> Self {
        let node = node.to_string();
        SenderMetrics {
            batches: metrics::counter!("midasflow_raft_batches_total", "node" => node.clone()),
            batched_messages: metrics::counter!("midasflow_raft_batched_messages_total", "node" => node.clone()),
            heartbeats: metrics::counter!("midasflow_raft_heartbeat_rpcs_total", "node" => node.clone()),
            commit_updates_held: metrics::counter!("midasflow_raft_commit_updates_held_total", "node" => node.clone()),
            votes: metrics::counter!("midasflow_raft_vote_rpcs_total", "node" => node.clone()),
            snapshot_sends: metrics::counter!("midasflow_raft_snapshot_sends_total", "node" => node),
        }
    }
}

impl RaftSender {
    pub fn new(
        client: HttpClient,
        credentials: Arc<Credentials>,
        probe: Probe,
        max_batch_bytes: usize,
        batches_in_flight: usize,
        election_timeouts: ElectionTimeouts,
    ) -> Self {
        RaftSender {
            inner: Arc::new(Inner {
                client,
                metrics: SenderMetrics::new(credentials.node_id),
                credentials,
                probe,
                max_batch_bytes,
                batches_in_flight,
                peers: Default::default(),
                election_timeouts,
                peer_timeouts: Mutex::default(),
            }),
        }
    }

    /// Whether node `peer` said, in its latest batch answer, that its election timeouts
    /// are at least this node's (see `ELECTION_TIMEOUTS_HEADER`).
    pub fn times_like_this_node(&self, peer: u64) -> bool {
        let said = self.inner.peer_timeouts.lock().unwrap_or_else(|e| e.into_inner());
        said.get(&peer)
            .is_some_and(|t| t.at_least(&self.inner.election_timeouts))
    }

    pub fn client(&self) -> &HttpClient {
        &self.inner.client
    }

    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.inner.credentials
    }

    pub fn metrics(&self) -> &SenderMetrics {
        &self.inner.metrics
    }

    pub fn probe(&self) -> &Probe {
        &self.inner.probe
    }

    /// Sends one message to node `to` at `addr` in the next batch, and waits for its
    /// answer (the caller bounds the wait; `timeout` bounds the batch request carrying it).
    pub async fn call(
        &self,
        to: u64,
        addr: &str,
        item: BatchItem,
        timeout: Duration,
    ) -> Result<ItemAnswer, TransportError> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(to, addr, Queued { item, timeout, reply })?;
        answer.await.unwrap_or_else(|_| {
            Err(TransportError::Io {
                addr: addr.to_string(),
                message: "the batch carrying this message was dropped".into(),
            })
        })
    }

    fn enqueue(&self, to: u64, addr: &str, queued: Queued) -> Result<(), TransportError> {
        let lane = Lane::of(&queued.item);
        let mut peers = self.inner.peers[lane.index()].lock().unwrap();
        let peer = peers.entry(to).or_default();
        // Looked up by `&str` first: no allocation per message on the hot path.
        if !peer.contains_key(addr) {
            let (tx, rx) = mpsc::channel(MAX_QUEUED_PER_PEER);
            tokio::spawn(run_peer(self.inner.clone(), lane, to, addr.to_string(), rx));
            peer.insert(addr.to_string(), tx);
        }
        peer[addr].try_send(queued).map_err(|e| TransportError::Io {
            addr: addr.to_string(),
            message: match e {
                mpsc::error::TrySendError::Full(_) => {
                    format!("{MAX_QUEUED_PER_PEER} raft messages already queued for this peer")
                }
                mpsc::error::TrySendError::Closed(_) => "the peer's sender stopped".into(),
            },
        })
    }
}

/// One peer's sender: takes what is queued, a batch at a time, within the in-flight bound.
async fn run_peer(inner: Arc<Inner>, lane: Lane, to: u64, addr: String, mut queue: mpsc::Receiver<Queued>) {
    let in_flight = Arc::new(Semaphore::new(inner.batches_in_flight));
    let returned = Arc::new(Notify::new());
    let idle = Duration::from_millis(PEER_IDLE_EXIT_MS);
    let mut carried: Option<Queued> = None;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(first) => first,
            None => match tokio::time::timeout(idle, queue.recv()).await {
                Ok(Some(first)) if first.reply.is_closed() => continue,
                Ok(Some(first)) => first,
                Ok(None) => return,
                Err(_) => {
                    // Leave only if nothing arrived meanwhile: senders enqueue under
                    // this lock, so no message can slip in between the check and removal.
                    let mut peers = inner.peers[lane.index()].lock().unwrap();
                    if queue.is_empty() {
                        if let Some(peer) = peers.get_mut(&to) {
                            peer.remove(&addr);
                            if peer.is_empty() {
                                peers.remove(&to);
                            }
                        }
                        return;
                    }
                    continue;
                }
            },
        };
        if in_flight.available_permits() + 1 < inner.batches_in_flight {
            tokio::select! {
                _ = returned.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(HOLD_BEHIND_IN_FLIGHT_MS)) => {}
            }
        }
        let mut batch = vec![first];
        let mut bytes = batch[0].item.body.len();
        while batch.len() < MAX_BATCH_ITEMS {
            let Ok(next) = queue.try_recv() else { break };
            if next.reply.is_closed() {
                continue; // its caller gave up: do not send what nobody waits for
            }
            if bytes + next.item.body.len() > inner.max_batch_bytes {
                carried = Some(next);
                break;
            }
            bytes += next.item.body.len();
            batch.push(next);
        }
        let (inner, addr, returned) = (inner.clone(), addr.clone(), returned.clone());
        tokio::spawn(async move {
            send_batch(inner, to, addr, batch, permit).await;
            returned.notify_waiters();
        });
    }
}

async fn send_batch(
    inner: Arc<Inner>,
    to: u64,
    addr: String,
    batch: Vec<Queued>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let timeout = batch.iter().map(|q| q.timeout).max().unwrap_or_default();
    let (items, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|q| (q.item, q.reply)).unzip();
    inner.metrics.batches.increment(1);
    inner.metrics.batched_messages.increment(items.len() as u64);
    inner.probe.emit(|| NodeEvent::RaftBatch { messages: items.len() });
    let body = encode_request(&items);
    let answers = post_bytes(
        &inner.client,
        &addr,
        Some(to),
        BATCH_PATH,
        &inner.credentials,
        body,
        timeout,
    )
    .await
    .and_then(|answer| {
        // Before the answers go out: they are what a lease counts.
        let said = answer
            .headers()
            .get(ELECTION_TIMEOUTS_HEADER)
            .and_then(|v| ElectionTimeouts::parse(v.to_str().ok()?));
        let mut peers = inner.peer_timeouts.lock().unwrap_or_else(|e| e.into_inner());
        match said {
            Some(timeouts) => peers.insert(to, timeouts),
            None => peers.remove(&to),
        };
        drop(peers);
        decode_response(answer.into_body())
            .map_err(|e| e.to_string())
            .and_then(|answers| {
                if answers.len() == replies.len() {
                    Ok(answers)
                } else {
                    Err(format!("{} answers to {} messages", answers.len(), replies.len()))
                }
            })
            .map_err(|message| TransportError::Decode {
                addr: addr.clone(),
                message,
            })
    });
    match answers {
        Ok(answers) => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(group: GroupId, op: RaftOp, body: &[u8]) -> BatchItem {
        BatchItem {
            group,
            op,
            body: Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn requests_and_answers_round_trip_in_order() {
        let items = vec![
            item(7, RaftOp::Append, b"abc"),
            item(0, RaftOp::Vote, b""),
            item(u64::MAX, RaftOp::Append, &[9; 300]),
        ];
        assert_eq!(decode_request(encode_request(&items)).unwrap(), items);
        let answers = vec![
            ItemAnswer::Ok(Bytes::from_static(b"ok")),
            ItemAnswer::Refused {
                status: 404,
                body: Bytes::from_static(b"{\"error\":{}}"),
            },
            ItemAnswer::Ok(Bytes::new()),
        ];
        assert_eq!(decode_response(encode_response(&answers)).unwrap(), answers);
    }

    #[test]
    fn hostile_batches_are_refused_without_allocating_for_their_claims() {
        let valid = encode_request(&[item(1, RaftOp::Append, b"abcdef")]);
        for cut in 0..valid.len() {
            assert!(
                decode_request(valid.slice(..cut)).is_err(),
                "a batch cut at {cut} bytes decoded"
            );
        }
        let mut trailing = BytesMut::from(&valid[..]);
        trailing.put_u8(0);
        assert_eq!(decode_request(trailing.freeze()), Err(FrameError::Trailing(1)));

        let mut many = BytesMut::new();
        many.put_u8(codec::FORMAT);
        many.put_u32_le(u32::MAX);
        assert_eq!(
            decode_request(many.freeze()),
            Err(FrameError::TooManyItems(u32::MAX as usize))
        );

        let mut huge_item = BytesMut::new();
        put_header(&mut huge_item, 1);
        huge_item.put_u64_le(1);
        huge_item.put_u8(1);
        huge_item.put_u32_le(u32::MAX);
        assert_eq!(decode_request(huge_item.freeze()), Err(FrameError::Truncated));

        let mut bad_op = BytesMut::from(&valid[..]);
        bad_op[BATCH_FRAMING_BYTES + 8] = 99;
        assert_eq!(decode_request(bad_op.freeze()), Err(FrameError::UnknownOp(99)));

        let mut old = BytesMut::from(&valid[..]);
        old[0] = 1;
        assert_eq!(decode_request(old.freeze()), Err(FrameError::Format(1)));
    }

    /// A peer that answers the placement driver's messages and read-index requests at once
    /// and never answers a shard's appends: neither is held behind the shards' batches in
    /// flight.
    #[tokio::test]
    async fn the_placement_drivers_messages_and_read_indexes_do_not_wait_behind_the_shards() {
        use axum::{body::Bytes as Body, routing::post, Router};
        let (held_tx, mut held_rx) = mpsc::unbounded_channel();
        let app = Router::new().route(
            BATCH_PATH,
            post(|body: Body| async move {
                let items = decode_request(body).unwrap();
                if items.iter().any(|i| Lane::of(i) == Lane::Data) {
                    let _ = held_tx.send(items.len());
                    std::future::pending::<()>().await;
                }
                let answers: Vec<ItemAnswer> = items.iter().map(|i| ItemAnswer::Ok(i.body.clone())).collect();
                encode_response(&answers).to_vec()
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client = crate::raft::transport::http_client(crate::raft::transport::NetKind::Tokio, None);
        let credentials = Arc::new(Credentials::new(None, 1, 1, None));
        let one_batch_in_flight = 1;
        let timeouts = ElectionTimeouts {
            min_ms: 300,
            max_ms: 600,
        };
        let sender = RaftSender::new(
            client,
            credentials,
            Probe::default(),
            1 << 20,
            one_batch_in_flight,
            timeouts,
        );
        let held = Duration::from_secs(3_600);
        let mut shards = Vec::new();
        for group in 1..=3 {
            let (sender, addr) = (sender.clone(), addr.clone());
            shards.push(tokio::spawn(async move {
                sender.call(2, &addr, item(group, RaftOp::Append, b"shard"), held).await
            }));
        }
        // The shards' first batch is out and held: the lane's one batch in flight.
        held_rx.recv().await.unwrap();
        let pd_wait = Duration::from_secs(30);
        let answer = tokio::time::timeout(pd_wait, sender.call(2, &addr, item(0, RaftOp::Vote, b"pd"), pd_wait))
            .await
            .expect("the PD's vote waited behind the shards' batch");
        assert_eq!(answer.unwrap(), ItemAnswer::Ok(Bytes::from_static(b"pd")));
        let read_index = sender.call(2, &addr, item(2, RaftOp::ReadIndex, b"read"), pd_wait);
        let answer = tokio::time::timeout(pd_wait, read_index)
            .await
            .expect("the read index waited behind the shards' batch");
        assert_eq!(answer.unwrap(), ItemAnswer::Ok(Bytes::from_static(b"read")));
        assert!(
            shards.iter().all(|s| !s.is_finished()),
            "the shards' messages are still held"
        );
        for shard in shards {
            shard.abort();
        }
        server.abort();
    }

    /// A read lease counts on a follower only if its batch answers say its election
    /// timeouts are at least this node's, both of them.
    #[tokio::test]
    async fn a_peer_counts_for_the_lease_only_if_its_election_timeouts_are_at_least_ours() {
        use axum::{body::Bytes as Body, extract::State, routing::post, Router};
        // None: the peer sends no header (an older node).
        let says: Arc<Mutex<Option<String>>> = Arc::default();
        let app = Router::new()
            .route(
                BATCH_PATH,
                post(
                    |State(says): State<Arc<Mutex<Option<String>>>>, body: Body| async move {
                        let items = decode_request(body).unwrap();
                        let answers: Vec<ItemAnswer> = items.iter().map(|i| ItemAnswer::Ok(i.body.clone())).collect();
                        let body = encode_response(&answers).to_vec();
                        let said = says.lock().unwrap().clone();
                        match said {
                            None => axum::response::IntoResponse::into_response(body),
                            Some(value) => {
                                axum::response::IntoResponse::into_response(([(ELECTION_TIMEOUTS_HEADER, value)], body))
                            }
                        }
                    },
                ),
            )
            .with_state(says.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client = crate::raft::transport::http_client(crate::raft::transport::NetKind::Tokio, None);
        let credentials = Arc::new(Credentials::new(None, 1, 1, None));
        let ours = ElectionTimeouts {
            min_ms: 300,
            max_ms: 600,
        };
        let sender = RaftSender::new(client, credentials, Probe::default(), 1 << 20, 1, ours);
        assert!(!sender.times_like_this_node(2), "nothing heard yet");
        let cases = [
            (Some("300,600"), true),
            (Some("300,500"), false),
            (Some("400,900"), true),
            (Some("200,600"), false),
            (Some("600"), false),
            (None, false),
        ];
        for (value, counts) in cases {
            *says.lock().unwrap() = value.map(str::to_string);
            let answer = sender
                .call(2, &addr, item(1, RaftOp::Append, b"x"), Duration::from_secs(30))
                .await;
            assert!(answer.is_ok());
            assert_eq!(sender.times_like_this_node(2), counts, "a peer saying {value:?}");
        }
        server.abort();
    }

    #[test]
    fn a_full_batch_of_framing_fits_the_named_bound() {
        let items: Vec<_> = (0..MAX_BATCH_ITEMS as u64)
            .map(|g| item(g, RaftOp::Vote, b""))
            .collect();
        assert_eq!(encode_request(&items).len(), MAX_FRAMING_BYTES);
    }
}

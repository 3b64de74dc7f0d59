//! A midasflow node: one sled database, the groups it hosts, the HTTP server, and the
//! loops that keep it in step with the placement driver.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::BasicNode;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::identity::{self, Identity, IdentityAnswer, IdentityQuery};
use crate::placement::operator::ScheduleSettings;
// The PD server's wire types, where the node's clients (and tests) have always found them.
pub use crate::placement::server::{Heartbeat, HeartbeatReply, LedGroup, PdLeaderState};
use crate::placement::store::{publish_map, PdKind, PdState};
use crate::placement::{pd_voters, ClusterMap, NodeId, NodeState, PdCommand, PD_GROUP, REPLICATION_FACTOR};
use crate::raft::log_store::{DurableFiles, FlushMode, Flusher};
use crate::raft::membership::{self, AdminReply, AdminRequest};
use crate::raft::network::post_internal;
use crate::raft::network::Credentials;
use crate::raft::probe::{NodeEvent, Observer, Probe};
use crate::raft::registry::{Registry, RegistryConfig, RegistryError};
use crate::raft::transport::{http_client, NetKind, NetListener};
use crate::raft::{GroupId, GroupKind};
use crate::security::NodeTls;
use crate::shard::store::{ShardGroup, ShardKind, ShardState};
use crate::shard::DEFAULT_HISTORY_VERSIONS;

/// How often a leader recomputes a split point for a shard over a threshold.
pub const SPLIT_POINT_REFRESH_MS: u64 = 10_000;
/// How often a node reconciles its replicas with the map even without a map change (a
/// split child waits for its parent replica to apply the split).
pub const RECONCILE_INTERVAL_MS: u64 = 1_000;

/// How often a node reports to the PD leader and picks up map changes.
pub const PD_HEARTBEAT_INTERVAL_MS: u64 = 400;
/// A node not heard from for this long is `suspect`; for [`DOWN_AFTER_MS`], `down`.
pub const SUSPECT_AFTER_MS: u64 = 2_000;
pub const DOWN_AFTER_MS: u64 = 6_000;
/// PD contact older than this makes `/readyz` fail.
pub const PD_STALE_AFTER_MS: u64 = 5_000;

/// Everything a node is configured with; the CLI fills it from flags and env vars.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub listen: String,
    /// The address other nodes and clients use; defaults to `listen`.
    pub advertise: String,
    pub data_dir: PathBuf,
    /// Empty for a node started with `--join`.
    pub initial_cluster: BTreeMap<NodeId, String>,
    /// Addresses of existing members to join through (`--join`); empty for initial members.
    pub join: Vec<String>,
    pub initial_shards: u32,
    /// Scheduler settings the bootstrap records (later changed through the PD).
    pub schedule: ScheduleSettings,
    pub history_versions: u32,
    pub limits: Limits,
    pub raft: RaftTimings,
    pub cluster_secret: Option<String>,
    /// TLS for the public API and internal RPC (mutual between nodes); `None` runs in the
    /// clear, which the CLI allows only with `--insecure`.
    pub tls: Option<NodeTls>,
    /// Bearer tokens the public API requires; `None` leaves it open.
    pub api_tokens: Option<Vec<String>>,
    pub net: NetKind,
    pub flush_mode: FlushMode,
    pub rng_seed: Option<u64>,
    /// Watches the node from outside (simulation checkers); `None` in production.
    pub observer: Option<Arc<dyn Observer>>,
    /// A deliberate bug for proving the simulation's checkers can fail. Honoured only in
    /// debug builds (`cfg!(debug_assertions)`); no CLI flag of `server` or `demo` sets it.
    pub planted_bug: Option<PlantedBug>,
}

/// Bugs the simulation plants to show its checkers catch them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// Serve linearizable reads from any replica's applied state, without a leader check.
    FollowerReads,
    /// Propose a write again when its first proposal is not confirmed quickly or meets a
    /// leader change: the "retry after a possible proposal" bug (a write applied twice).
    ReproposeWrites,
    /// No identity guard: a node that lost its disk starts as its old self, and peers
    /// accept it (a voter that forgot its votes and its log).
    NoIdentityGuard,
    /// The placement executor records a move's new replicas in the map as soon as the
    /// target is listed, without adding it to the group or changing the group's voters:
    /// the source deletes its replica while the group still counts on it.
    MapBeforeMembership,
    /// A shard applies writes for keys its split gave away (no range check at apply): a
    /// write routed with an old map lands where no read will look.
    SplitWithoutRangeCheck,
}

impl std::fmt::Debug for dyn Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// Named bounds on what a client or a peer may send or queue (documented in docs/API.md).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Public key requests worked on at once (after their bodies are read); more get 429.
    pub max_inflight_requests: usize,
    /// Internal requests (Raft RPCs, PD heartbeats) worked on at once; more get 429. Kept
    /// apart from the public limit so clients cannot starve replication, nor it them.
    pub max_inflight_internal: usize,
    /// Open connections a node serves at once; further connections are closed at accept.
    pub max_connections: usize,
    /// A connection that has not sent a whole request head this long after it opened or
    /// after its last response is closed (slow-header clients).
    pub header_read_timeout_ms: u64,
    /// A request body must arrive whole within this time (slow-body clients); else 408.
    pub body_read_timeout_ms: u64,
    /// A TLS handshake must finish within this time.
    pub tls_handshake_timeout_ms: u64,
    /// Request bodies held in memory at once, in bytes (each charged its declared length
    /// or its route's limit before it is read); more get 429.
    pub max_buffered_body_bytes: usize,
    pub request_timeout_ms: u64,
    pub max_forward_hops: u32,
}

/// The largest `--max-value-bytes` a node accepts: every append RPC must hold at least one
/// full-size entry within [`MAX_APPEND_BODY_BYTES`].
pub const MAX_VALUE_BYTES_CEILING: usize = 32 << 20;
/// Largest key, in bytes (1 to 4096).
pub const MAX_KEY_BYTES: usize = 4096;
/// Bytes one log entry may take beyond its key and value (framing, log id, op fields).
pub const ENTRY_OVERHEAD_BYTES: usize = 1024;
/// The byte budget of one append RPC: the entries per append are derived from it and the
/// value limit, so a full append always fits the internal body limit.
pub const MAX_APPEND_BODY_BYTES: usize = 64 << 20;
/// Most log entries in one append RPC, when values are small.
pub const MAX_PAYLOAD_ENTRIES: u64 = 64;
/// Body limits of the internal routes that carry no log entries.
pub const MAX_VOTE_BODY_BYTES: usize = 4 << 10;
pub const MAX_HEARTBEAT_BODY_BYTES: usize = 1 << 20;
/// Framing around a snapshot chunk's data (meta, membership, ids).
pub const SNAPSHOT_FRAMING_BYTES: usize = 1 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: MAX_KEY_BYTES,
            max_value_bytes: 1 << 20,
            max_inflight_requests: 4096,
            max_inflight_internal: 4096,
            max_connections: 4096,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            tls_handshake_timeout_ms: 10_000,
            max_buffered_body_bytes: 1 << 30,
            request_timeout_ms: 5_000,
            max_forward_hops: 3,
        }
    }
}

impl Limits {
    /// The largest log entry a client write can produce.
    pub fn max_entry_bytes(&self) -> usize {
        self.max_value_bytes + self.max_key_bytes + ENTRY_OVERHEAD_BYTES
    }

    /// Entries per append RPC: as many full-size entries as fit the append budget, at
    /// most [`MAX_PAYLOAD_ENTRIES`], at least one.
    pub fn max_payload_entries(&self) -> u64 {
        ((MAX_APPEND_BODY_BYTES / self.max_entry_bytes()) as u64).clamp(1, MAX_PAYLOAD_ENTRIES)
    }

    /// The body limit of an append RPC: a full append of full-size entries always fits, so
    /// a group never stalls on a 413 from its own followers.
    pub fn max_append_body_bytes(&self) -> usize {
        self.max_payload_entries() as usize * self.max_entry_bytes() + ENTRY_OVERHEAD_BYTES
    }

    /// Checks the limits at start-up, with a message naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_value_bytes > MAX_VALUE_BYTES_CEILING {
            return Err(format!(
                "--max-value-bytes {} is over the ceiling of {MAX_VALUE_BYTES_CEILING} bytes",
                self.max_value_bytes
            ));
        }
        let min_header_ms = 2 * crate::raft::transport::POOL_IDLE_TIMEOUT_MS;
        if self.header_read_timeout_ms < min_header_ms {
            return Err(format!(
                "--header-read-timeout-ms must be at least {min_header_ms} (twice the idle time of pooled \
                 connections between nodes)"
            ));
        }
        if self.max_buffered_body_bytes < self.max_append_body_bytes() {
            return Err(format!(
                "--max-buffered-body-bytes must hold at least one full append ({} bytes)",
                self.max_append_body_bytes()
            ));
        }
        if self.max_key_bytes == 0 || self.max_key_bytes > MAX_KEY_BYTES {
            return Err(format!("the key limit must be 1 to {MAX_KEY_BYTES} bytes"));
        }
        for (value, flag) in [
            (self.max_inflight_requests, "--max-inflight-requests"),
            (self.max_inflight_internal, "--max-inflight-internal"),
            (self.max_connections, "--max-connections"),
        ] {
            if value == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        for (value, flag) in [
            (self.request_timeout_ms, "--request-timeout-ms"),
            (self.header_read_timeout_ms, "--header-read-timeout-ms"),
            (self.body_read_timeout_ms, "--body-read-timeout-ms"),
            (self.tls_handshake_timeout_ms, "--tls-handshake-timeout-ms"),
        ] {
            if value == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct RaftTimings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_interval_entries: u64,
    pub log_keep_entries: u64,
    pub snapshot_chunk_bytes: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        RaftTimings {
            // A follower of a healthy leader waits its lease (election_timeout_max) plus a
            // random election timeout before campaigning: 0.9 to 1.2 s here, well inside
            // the 3 s failover goal even with a second round.
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            snapshot_interval_entries: 10_000,
            log_keep_entries: 1_000,
            snapshot_chunk_bytes: 4 << 20,
        }
    }
}

impl NodeConfig {
    pub fn new(node_id: NodeId, listen: String, data_dir: PathBuf, initial_cluster: BTreeMap<NodeId, String>) -> Self {
        NodeConfig {
            node_id,
            advertise: listen.clone(),
            listen,
            data_dir,
            initial_cluster,
            join: Vec::new(),
            initial_shards: crate::placement::DEFAULT_INITIAL_SHARDS,
            schedule: ScheduleSettings::default(),
            history_versions: DEFAULT_HISTORY_VERSIONS,
            limits: Limits::default(),
            raft: RaftTimings::default(),
            cluster_secret: None,
            tls: None,
            api_tokens: None,
            net: NetKind::Tokio,
            flush_mode: FlushMode::Thread,
            rng_seed: None,
            observer: None,
            planted_bug: None,
        }
    }

    /// Checks every setting that could make the node misbehave later, with a message
    /// naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        self.limits.validate()?;
        if let Some(secret) = &self.cluster_secret {
            crate::security::check_secret(secret)?;
        }
        if self.api_tokens.as_ref().is_some_and(|t| t.is_empty()) {
            return Err("the API token list is empty".into());
        }
        if !(1..=crate::shard::MAX_HISTORY_VERSIONS).contains(&self.history_versions) {
            return Err(format!(
                "--history-versions must be 1 to {}",
                crate::shard::MAX_HISTORY_VERSIONS
            ));
        }
        match (self.initial_cluster.is_empty(), self.join.is_empty()) {
            (true, true) => return Err("give --initial-cluster (a new cluster) or --join (an existing one)".into()),
            (false, false) => return Err("--initial-cluster and --join exclude each other".into()),
            (false, true) if !self.initial_cluster.contains_key(&self.node_id) => {
                return Err(format!("--initial-cluster does not name this node ({})", self.node_id))
            }
            _ => {}
        }
        if self.join.len() > crate::placement::MAX_NODES
            || self
                .join
                .iter()
                .any(|a| a.is_empty() || a.len() > crate::placement::MAX_NODE_ADDR_BYTES)
        {
            return Err("--join: too many addresses, or an empty or overlong one".into());
        }
        if self.initial_cluster.is_empty() {
            self.schedule
                .validate()
                .map_err(|e| format!("scheduler settings: {e}"))?;
        } else {
            PdCommand::Bootstrap {
                nodes: self.initial_cluster.iter().map(|(i, a)| (*i, a.clone())).collect(),
                initial_shards: self.initial_shards,
                cluster_id: 1,
                settings: self.schedule.clone(),
            }
            .validate()
            .map_err(|e| format!("--initial-shards / --initial-cluster / scheduler settings: {e}"))?;
        }
        if self.raft.snapshot_chunk_bytes == 0 || self.raft.snapshot_chunk_bytes > 64 << 20 {
            return Err("the snapshot chunk size must be 1 byte to 64 MiB".into());
        }
        Ok(())
    }

    pub fn probe(&self) -> Probe {
        Probe::new(self.node_id, self.observer.clone())
    }

    /// Whether `bug` is planted; always false in release builds.
    pub fn has_planted_bug(&self, bug: PlantedBug) -> bool {
        cfg!(debug_assertions) && self.planted_bug == Some(bug)
    }

    fn raft_config(&self) -> Result<openraft::Config, String> {
        let t = &self.raft;
        openraft::Config {
            cluster_name: "midasflow".into(),
            heartbeat_interval: t.heartbeat_interval_ms,
            election_timeout_min: t.election_timeout_min_ms,
            election_timeout_max: t.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.snapshot_interval_entries),
            max_in_snapshot_log_to_keep: t.log_keep_entries,
            snapshot_max_chunk_size: t.snapshot_chunk_bytes,
            install_snapshot_timeout: 2_000,
            // Bounds one append RPC: this many entries of at most --max-value-bytes each
            // stay under the append body limit (`Limits::max_append_body_bytes`).
            max_payload_entries: self.limits.max_payload_entries(),
            ..Default::default()
        }
        .validate()
        .map_err(|e| e.to_string())
    }
}

/// This node's latest picture of the cluster beyond the map itself.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub pd_leader: Option<NodeId>,
    pub leader_hints: BTreeMap<GroupId, NodeId>,
    pub last_seen_ms: BTreeMap<NodeId, u64>,
    pub last_pd_contact: Option<Instant>,
}

pub struct Node {
    pub config: NodeConfig,
    /// The shard replicas this node hosts.
    pub shards: Arc<Registry<ShardKind>>,
    /// This node's replica of the placement driver's group, if it hosts one.
    pub pd: Arc<Registry<PdKind>>,
    pub map_rx: watch::Receiver<Arc<ClusterMap>>,
    map_tx: watch::Sender<Arc<ClusterMap>>,
    pub(crate) pd_state: Arc<std::sync::Mutex<PdLeaderState>>,
    pub(crate) executor: Arc<std::sync::Mutex<crate::placement::executor::ExecutorState>>,
    view: RwLock<ClusterView>,
    pub inflight: Semaphore,
    /// Internal requests in progress (Raft RPCs, heartbeats), apart from the public API's.
    pub internal_inflight: Semaphore,
    pub snapshot_receives: crate::api::internal::SnapshotReceives,
    /// The cluster id the identity record on disk names (none until recorded).
    recorded_cluster: std::sync::Mutex<Option<u128>>,
    refused_tx: watch::Sender<Option<String>>,
    /// Bytes of request bodies held at once (`Limits::max_buffered_body_bytes`).
    pub body_budget: crate::api::BodyBudget,
    pub draining: AtomicBool,
    /// Set once this node has a map at least as new as the PD leader's (see `reconcile`).
    pd_synced: AtomicBool,
    pub started: Instant,
    pub requests: RequestCounts,
}

/// Public-API request counts since start, for `/v1/stats`.
#[derive(Default)]
pub struct RequestCounts {
    pub kv_reads: AtomicU64,
    pub kv_writes: AtomicU64,
    pub client_errors: AtomicU64,
    pub server_errors: AtomicU64,
}

impl Node {
    pub fn map(&self) -> Arc<ClusterMap> {
        self.map_rx.borrow().clone()
    }

    pub fn cluster_view(&self) -> ClusterView {
        self.view.read().unwrap().clone()
    }

    pub fn label(&self) -> String {
        self.config.node_id.to_string()
    }

    /// The PD group's voters: the map's, or before it arrives, the initial cluster's.
    pub fn pd_voters(&self) -> Vec<NodeId> {
        let map = self.map();
        if map.is_bootstrapped() {
            map.pd_voters().to_vec()
        } else {
            pd_voters(&self.config.initial_cluster)
        }
    }

    /// The address of `node`, from the map or, before bootstrap, the initial cluster.
    pub fn addr_of(&self, node: NodeId) -> Option<String> {
        self.map()
            .node_addr(node)
            .map(str::to_string)
            .or_else(|| self.config.initial_cluster.get(&node).cloned())
    }

    /// The node believed to lead `group`: the local replica's knowledge first, then the
    /// PD's hints, then the shard's first replica.
    pub fn leader_hint(&self, group: GroupId) -> Option<NodeId> {
        if let Some(leader) = self.local_leader(group) {
            return Some(leader);
        }
        if let Some(hint) = self.view.read().unwrap().leader_hints.get(&group) {
            return Some(*hint);
        }
        self.map().shards.get(&group).and_then(|s| s.replicas.first().copied())
    }

    /// The leader this node's own replica of `group` knows of.
    pub fn local_leader(&self, group: GroupId) -> Option<NodeId> {
        if group == PD_GROUP {
            self.pd.get(group).and_then(|g| g.current_leader())
        } else {
            self.shards.get(group).and_then(|g| g.current_leader())
        }
    }

    /// Performs an admin request on this node's replica of `group`; `None` if it hosts none.
    pub async fn admin_local(&self, group: GroupId, request: AdminRequest) -> Option<AdminReply> {
        let timeout = Duration::from_millis(membership::ADMIN_TIMEOUT_MS);
        if group == PD_GROUP {
            let replica = self.pd.get(group)?;
            Some(membership::perform(&self.pd, replica, request, timeout).await)
        } else {
            let replica = self.shards.get(group)?;
            Some(membership::perform(&self.shards, replica, request, timeout).await)
        }
    }

    /// Whether this node leads the placement driver.
    pub fn leads_pd(&self) -> bool {
        self.pd.get(PD_GROUP).is_some_and(|g| g.is_leader())
    }

    /// A node's state as `/v1/cluster` shows it: stored state, refined by liveness.
    pub fn node_state(&self, node: NodeId, stored: NodeState) -> &'static str {
        match stored {
            NodeState::Draining if self.map().shards_on(node).next().is_none() => return "drained",
            NodeState::Draining => return "draining",
            NodeState::Removed => return "removed",
            NodeState::Up => {}
        }
        if node == self.config.node_id {
            return "up";
        }
        match self.view.read().unwrap().last_seen_ms.get(&node) {
            Some(ms) if *ms < SUSPECT_AFTER_MS => "up",
            Some(ms) if *ms < DOWN_AFTER_MS => "suspect",
            Some(_) => "down",
            None => "suspect",
        }
    }

    /// The PD leader's address as this node knows it (itself excluded).
    pub fn pd_leader_addr(&self) -> Option<String> {
        let leader = self.local_leader(PD_GROUP).or(self.view.read().unwrap().pd_leader)?;
        (leader != self.config.node_id).then(|| self.addr_of(leader)).flatten()
    }

    pub fn pd_reachable(&self) -> bool {
        let view = self.view.read().unwrap();
        view.last_pd_contact
            .is_some_and(|t| t.elapsed() < Duration::from_millis(PD_STALE_AFTER_MS))
    }

    fn heartbeat(&self) -> Heartbeat {
        let credentials = self.shards.credentials();
        let pd_led = self.pd.all().into_iter().filter(|g| g.is_leader()).map(|g| LedGroup {
            group: g.id,
            term: g.term(),
            keys: 0,
            bytes: 0,
            ops_total: 0,
            split_at: None,
        });
        Heartbeat {
            node_id: self.config.node_id,
            incarnation: credentials.incarnation,
            cluster_id: credentials.cluster_id(),
            addr: self.config.advertise.clone(),
            revision: self.map().revision,
            joining: !self.config.join.is_empty() && !self.map().is_active_member(self.config.node_id),
            leading: self
                .shards
                .all()
                .iter()
                .filter(|g| g.is_leader())
                .map(|g| LedGroup {
                    group: g.id,
                    term: g.term(),
                    keys: g.view.live_keys(),
                    bytes: g.view.live_bytes(),
                    ops_total: g.view.ops_served(),
                    split_at: self.split_point(g),
                })
                .chain(pd_led)
                .collect(),
        }
    }

    /// Sends the heartbeat to the PD leader: the known leader first, then every PD voter,
    /// then the `--join` addresses, each tried once; a peer that knows the leader
    /// redirects there.
    async fn heartbeat_remote(&self, hb: &Heartbeat) -> Option<HeartbeatReply> {
        let mut candidates: Vec<NodeId> = Vec::new();
        if let Some(leader) = self.local_leader(PD_GROUP) {
            candidates.push(leader);
        }
        if let Some(leader) = self.view.read().unwrap().pd_leader {
            candidates.push(leader);
        }
        candidates.extend(self.pd_voters());
        let mut addrs: Vec<String> = candidates
            .into_iter()
            .filter(|c| *c != self.config.node_id)
            .filter_map(|c| self.addr_of(c))
            .collect();
        addrs.extend(self.config.join.iter().cloned());
        let mut tried = std::collections::BTreeSet::new();
        let timeout = Duration::from_millis(PD_HEARTBEAT_INTERVAL_MS * 2);
        let mut next = 0;
        while next < addrs.len() && tried.len() < 2 * REPLICATION_FACTOR + self.config.join.len() {
            let addr = addrs[next].clone();
            next += 1;
            if !tried.insert(addr.clone()) {
                continue;
            }
            let answer = post_internal::<Heartbeat, HeartbeatReply>(
                self.shards.client(),
                &addr,
                "/internal/pd/heartbeat",
                self.shards.credentials(),
                hb,
                timeout,
            )
            .await;
            match answer {
                Ok(HeartbeatReply {
                    redirect: Some(leader), ..
                }) => addrs.insert(next, leader),
                Ok(reply) => return Some(reply),
                Err(e) => tracing::trace!(%addr, error = %e, "pd heartbeat failed"),
            }
        }
        None
    }

    /// Where a shard this node leads should split, while it is over a size threshold (or
    /// busy): computed from its keys at most every [`SPLIT_POINT_REFRESH_MS`].
    fn split_point(&self, group: &ShardGroup) -> Option<u64> {
        let map = self.map();
        let settings = &map.settings;
        let over = group.view.live_keys() > settings.split_max_keys
            || group.view.live_bytes() > settings.split_max_bytes
            || group.view.ops_rate() > settings.split_qps;
        if !over {
            return None;
        }
        group
            .view
            .cached_split_point(Duration::from_millis(SPLIT_POINT_REFRESH_MS), || {
                group.view.median_key_hash(crate::raft::membership::SPLIT_POINT_SAMPLES)
            })
    }

    /// One round of reporting to the PD leader.
    async fn sync_with_pd(&self) {
        let hb = self.heartbeat();
        let reply = match self.handle_heartbeat(&hb) {
            Ok(Some(reply)) => {
                // This node leads the PD: its map is the cluster's once its state machine
                // has applied everything committed.
                if !self.pd_synced.load(Ordering::Acquire) {
                    if let Some(pd) = self.pd.get(PD_GROUP) {
                        if pd.raft.ensure_linearizable().await.is_ok() {
                            self.pd_synced.store(true, Ordering::Release);
                        }
                    }
                }
                Some(reply)
            }
            Err(e) => {
                tracing::warn!(error = %e, "this node's own heartbeat was refused");
                None
            }
            Ok(None) => {
                let reply = self.heartbeat_remote(&hb).await;
                if let Some(map) = reply.as_ref().and_then(|r| r.map.as_ref()) {
                    publish_map(&self.map_tx, map);
                }
                // A reply carries the leader's map whenever it is newer than ours.
                if reply.is_some() {
                    self.pd_synced.store(true, Ordering::Release);
                }
                reply
            }
        };
        if let Some(reply) = reply {
            if let Some(map) = &reply.map {
                publish_map(&self.map_tx, map);
            }
            let mut view = self.view.write().unwrap();
            view.pd_leader = Some(reply.pd_leader);
            view.leader_hints = reply.leader_hints;
            view.last_seen_ms = reply.last_seen_ms;
            view.last_pd_contact = Some(Instant::now());
        }
    }

    /// Once the map names the cluster, this node's identity record names it too (durably),
    /// and every internal request it sends carries it.
    async fn adopt_cluster_id(&self, map: &ClusterMap) {
        let credentials = self.shards.credentials();
        if map.cluster_id == 0 || *self.recorded_cluster.lock().unwrap() == Some(map.cluster_id) {
            return;
        }
        if let Some(mine) = credentials.cluster_id().filter(|mine| *mine != map.cluster_id) {
            tracing::error!(mine = %identity::hex(mine), map = %identity::hex(map.cluster_id), "the map names another cluster; keeping this node's");
            return;
        }
        // The record of the hosted replicas must be durable before the identity names the
        // cluster: a restart reads "cluster named, nothing hosted" as a lost database.
        let hosts_nothing = self.shards.all().is_empty() && self.pd.all().is_empty();
        if hosts_nothing || self.shards.flush().await.is_err() {
            return;
        }
        let record = Identity {
            node_id: self.config.node_id,
            incarnation: credentials.incarnation,
            cluster_id: Some(map.cluster_id),
        };
        match identity::store(&self.config.data_dir, &record) {
            Ok(()) => {
                credentials.set_cluster_id(map.cluster_id);
                *self.recorded_cluster.lock().unwrap() = Some(map.cluster_id);
                tracing::info!(cluster = %identity::hex(map.cluster_id), "this node's identity now names its cluster");
            }
            Err(e) => tracing::error!(error = %e, "could not record the cluster id; will retry"),
        }
    }

    /// Creates the replicas the map assigns to this node (and removes ones it no longer does).
    async fn reconcile(&self, map: &ClusterMap) {
        if !map.is_bootstrapped() {
            return;
        }
        let me = self.config.node_id;
        for shard in map.shards_on(me) {
            if self.shards.get(shard.id).is_some()
                || self.shards.is_blocked(shard.id, Some(shard.epoch))
                || self.split_pending(shard)
            {
                continue;
            }
            let members: BTreeMap<u64, BasicNode> = shard
                .replicas
                .iter()
                .filter_map(|r| map.node_addr(*r).map(|a| (*r, BasicNode::new(a))))
                .collect();
            // Only a shard the bootstrap created (epoch 1, never changed) is initialized
            // here; a replica added later learns everything from the group's leader (an
            // initialize would write a second, conflicting first entry). A split child is
            // initialized by every replica that holds the split's data (same membership,
            // so the same first entry); one without it waits for a snapshot.
            let designated = match shard.parent {
                Some(_) => shard.epoch == 1 && self.shards.has_state(shard.id),
                None => shard.epoch == 1 && shard.replicas.first() == Some(&me),
            };
            self.note_missing_split_state(shard);
            if let Err(e) = self
                .shards
                .ensure(shard.id, designated.then_some(members), Some(shard.epoch))
                .await
            {
                tracing::warn!(shard = shard.id, error = %e, "could not create replica");
            }
        }
        let pd = &map.pd_group;
        if pd.hosts(me) && self.pd.get(PD_GROUP).is_none() && !self.pd.is_blocked(PD_GROUP, Some(pd.epoch)) {
            if let Err(e) = self.pd.ensure(PD_GROUP, None, Some(pd.epoch)).await {
                tracing::warn!(error = %e, "could not create the placement driver replica");
            }
        }
        // Removal deletes data, so it follows only a map known to be current: after a
        // restart, this node's own PD replica may publish an older map than the one it
        // acted on before (one that predates a replica moving here), and deleting by it
        // would wipe a voter.
        if !self.pd_synced.load(Ordering::Acquire) {
            return;
        }
        remove_unassigned(&self.shards, map, me).await;
        remove_unassigned(&self.pd, map, me).await;
    }

    /// A split child whose parent replica here has not applied the split yet: its data
    /// is still in the parent, so the child must not start empty (a stray RPC or the map
    /// would create it too early). Once the parent's range ends before the child's start,
    /// by applying the split or from a snapshot taken after it, the child may start.
    fn split_pending(&self, shard: &crate::placement::ShardInfo) -> bool {
        let Some(parent) = shard.parent.and_then(|p| self.shards.get(p)) else {
            return false;
        };
        parent.view.covers(shard.start)
    }

    /// A split child about to start here without the split's data must not take entries
    /// from an empty log (it would serve an empty shard): it waits for a snapshot.
    pub fn note_missing_split_state(&self, shard: &crate::placement::ShardInfo) {
        if shard.parent.is_some() && self.shards.get(shard.id).is_none() && !self.shards.has_state(shard.id) {
            self.shards.mark_awaiting_snapshot(shard.id);
        }
    }

    /// May this node create `group` on its first RPC? `Some(epoch)`: yes, assigned at that
    /// shard epoch (`None` for the PD group).
    pub fn assignment(&self, group: GroupId) -> Option<Option<u64>> {
        let map = self.map();
        if group == PD_GROUP && !map.is_bootstrapped() {
            return self.pd_voters().contains(&self.config.node_id).then_some(None);
        }
        if group == PD_GROUP {
            let pd = &map.pd_group;
            return pd.hosts(self.config.node_id).then_some(Some(pd.epoch));
        }
        map.shards
            .get(&group)
            .filter(|s| s.hosts(self.config.node_id) && !self.split_pending(s))
            .map(|s| Some(s.epoch))
    }

    /// On a PD voter: proposes the bootstrap map once this node leads the PD.
    async fn bootstrap_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let command = PdCommand::Bootstrap {
            nodes: self
                .config
                .initial_cluster
                .iter()
                .map(|(id, a)| (*id, a.clone()))
                .collect(),
            initial_shards: self.config.initial_shards,
            cluster_id: new_random_id(self.config.rng_seed, self.config.node_id, 0xc105),
            settings: self.config.schedule.clone(),
        };
        loop {
            if self.map().is_bootstrapped() || *stop.borrow() {
                return;
            }
            if let Some(pd) = self.pd.get(PD_GROUP) {
                if pd.is_leader() {
                    match pd.raft.client_write(command.clone()).await {
                        Ok(resp) => tracing::info!(result = ?resp.data, "bootstrap proposed"),
                        Err(e) => tracing::debug!(error = %e, "bootstrap proposal failed"),
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// When a peer refuses this node's identity (it lost its disk while no peer could tell
    /// it at start-up), stop every replica at once: it must not act as that member.
    async fn refusal_watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut refusal = self.shards.credentials().refusal();
        let reason = tokio::select! {
            changed = refusal.wait_for(Option::is_some) => match changed {
                Ok(reason) => reason.clone().unwrap_or_default(),
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        tracing::error!("{reason}; this node stops acting as node {}", self.config.node_id);
        self.draining.store(true, Ordering::Relaxed);
        self.shutdown_replicas().await;
        let _ = self.refused_tx.send(Some(reason));
    }

    /// Stops every replica (data stays on disk).
    pub async fn shutdown_replicas(&self) {
        self.shards.shutdown().await;
        self.pd.shutdown().await;
    }

    /// Resolves with the reason if the node stopped because peers refused its identity.
    pub fn refused(&self) -> watch::Receiver<Option<String>> {
        self.refused_tx.subscribe()
    }

    async fn heartbeat_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(PD_HEARTBEAT_INTERVAL_MS));
        let label = self.label();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            self.sync_with_pd().await;
            metrics::gauge!("midasflow_storage_size_bytes", "node" => label.clone())
                .set(self.shards.storage_bytes() as f64);
        }
    }

    async fn reconcile_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut map_rx = self.map_rx.clone();
        let mut emitted_revision = None;
        loop {
            let map = map_rx.borrow_and_update().clone();
            // The periodic pass re-reads the same map: report each map once.
            let new_map = emitted_revision.replace(map.revision) != Some(map.revision);
            self.config.probe().emit_if(new_map, || NodeEvent::MapInstalled {
                routing_version: map.routing_version,
                tiling: map.check_tiling(),
                epochs: map
                    .is_bootstrapped()
                    .then_some(&map.pd_group)
                    .into_iter()
                    .chain(map.shards.values())
                    .map(|s| (s.id, s.epoch))
                    .collect(),
            });
            // Replicas first: a node whose record names a cluster always hosts something,
            // which is how a restart tells a lost database from a new one.
            self.reconcile(&map).await;
            self.adopt_cluster_id(&map).await;
            tokio::select! {
                changed = map_rx.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(Duration::from_millis(RECONCILE_INTERVAL_MS)) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// Removes the replicas of kind `K` the map no longer assigns to `me`, leaving a
/// tombstone at the epoch that dropped each.
async fn remove_unassigned<K: GroupKind>(registry: &Registry<K>, map: &ClusterMap, me: NodeId) {
    for group in registry.all() {
        let assigned = map.group(group.id);
        if !assigned.is_some_and(|s| s.hosts(me)) {
            tracing::info!(group = group.id, "map no longer assigns this replica; removing");
            let epoch = assigned.map_or(u64::MAX, |s| s.epoch);
            if let Err(e) = registry.remove(group.id, epoch).await {
                tracing::warn!(group = group.id, error = %e, "could not remove replica");
            }
        }
    }
}

/// A started node; dropping it does not stop it: call [`RunningNode::shutdown`].
pub struct RunningNode {
    pub node: Arc<Node>,
    pub local_addr: SocketAddr,
    stop_tx: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("opening the database in {path}: {source}")]
    Storage { path: String, source: sled::Error },
    #[error("binding {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("{0}")]
    Registry(#[from] crate::raft::registry::RegistryError),
    #[error("{0}")]
    Identity(String),
}

/// How long a starting node waits for each peer's answer about the cluster.
pub const IDENTITY_QUERY_TIMEOUT_MS: u64 = 1_000;

/// Loads (or creates) the data dir's identity and checks it with every reachable peer
/// of `--initial-cluster` before the node acts as any member. Refuses a data dir that
/// belongs to another node or cluster, that lost its database, or whose incarnation the
/// cluster does not know as this node's (the disk was wiped or replaced).
async fn check_identity(
    config: &NodeConfig,
    client: &crate::raft::transport::HttpClient,
    db_path: &std::path::Path,
) -> Result<(Identity, Option<u128>), StartError> {
    let refuse = StartError::Identity;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| refuse(format!("creating {}: {e}", config.data_dir.display())))?;
    let guard = !config.has_planted_bug(PlantedBug::NoIdentityGuard);
    let has_database = db_path.join("conf").exists();
    let mut identity = match identity::load(&config.data_dir).map_err(|e| refuse(e.to_string()))? {
        Some(found) if found.node_id != config.node_id => {
            return Err(refuse(format!(
                "{} belongs to node {}, not to node {}: wrong --data-dir or --node-id",
                identity::path(&config.data_dir).display(),
                found.node_id,
                config.node_id
            )))
        }
        Some(found) if found.cluster_id.is_some() && !has_database => {
            return Err(refuse(format!(
                "{} says this is node {} of cluster {}, but its database ({}) is gone: the data dir lost its \
                 data. Recover as for a lost disk (docs/operations.md).",
                identity::path(&config.data_dir).display(),
                found.node_id,
                identity::hex(found.cluster_id.unwrap_or_default()),
                db_path.display()
            )))
        }
        Some(found) => found,
        None if has_database => {
            return Err(refuse(format!(
                "{} holds a database but no identity record ({}): refusing a data dir this node cannot verify",
                config.data_dir.display(),
                identity::IDENTITY_FILE
            )))
        }
        None => {
            let fresh = Identity {
                node_id: config.node_id,
                incarnation: new_random_id(config.rng_seed, config.node_id, 0x1dc0),
                cluster_id: None,
            };
            identity::store(&config.data_dir, &fresh).map_err(|e| refuse(e.to_string()))?;
            if let Some(parent) = config.data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                let _ = crate::raft::log_store::sync_dir(parent);
            }
            tracing::info!(node = config.node_id, incarnation = %identity::hex(fresh.incarnation), "new data dir");
            fresh
        }
    };
    let credentials = Credentials::new(
        config.cluster_secret.clone(),
        config.node_id,
        identity.incarnation,
        identity.cluster_id,
    );
    let query = IdentityQuery {
        node_id: identity.node_id,
        incarnation: identity.incarnation,
        cluster_id: identity.cluster_id,
    };
    // A joining node does not know its peers' ids: their answers are numbered 0.
    let peers: Vec<(NodeId, &String)> = config
        .initial_cluster
        .iter()
        .filter(|(id, _)| **id != config.node_id)
        .map(|(id, addr)| (*id, addr))
        .chain(config.join.iter().map(|addr| (0, addr)))
        .collect();
    let asks = peers.into_iter().map(|(id, addr)| {
        let (credentials, query) = (&credentials, &query);
        async move {
            let answer = post_internal::<IdentityQuery, IdentityAnswer>(
                client,
                addr,
                "/internal/identity",
                credentials,
                query,
                Duration::from_millis(IDENTITY_QUERY_TIMEOUT_MS),
            )
            .await;
            (id, answer)
        }
    });
    let mut answers = Vec::new();
    for (peer, answer) in futures::future::join_all(asks).await {
        match answer {
            Ok(answer) => answers.push((peer, answer)),
            Err(e) => tracing::debug!(peer, error = %e, "peer did not answer the identity query"),
        }
    }
    let judged = match identity::judge(&identity, &answers, !config.join.is_empty()) {
        Err(refusal) if !guard => {
            tracing::warn!("planted bug: ignoring the identity refusal: {refusal}");
            answers
                .iter()
                .find_map(|(_, a)| a.cluster_id)
                .filter(|_| identity.cluster_id.is_none())
        }
        judged => judged.map_err(refuse)?,
    };
    let recorded = identity.cluster_id;
    if let Some(cluster) = judged {
        // Carried on every request from now on; recorded on disk once this node hosts a
        // replica (`adopt_cluster_id`), so a record naming a cluster always comes with data.
        identity.cluster_id = Some(cluster);
        tracing::info!(node = config.node_id, cluster = %identity::hex(cluster), "joining the existing cluster");
    }
    Ok((identity, recorded))
}

/// A random non-zero id; derived from the seed under simulation (determinism), with a
/// count of ids drawn in this process so a node whose disk is wiped gets a new one.
fn new_random_id(seed: Option<u64>, node: NodeId, salt: u64) -> u128 {
    use rand::{Rng, SeedableRng};
    static DRAWN: AtomicU64 = AtomicU64::new(0);
    let id: u128 = match seed {
        Some(seed) => {
            let drawn = DRAWN.fetch_add(1, Ordering::Relaxed);
            rand::rngs::SmallRng::seed_from_u64(
                seed ^ node.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt ^ drawn.wrapping_mul(0xD1B5_4A32_D192_ED03),
            )
            .gen()
        }
        None => rand::random(),
    };
    id.max(1)
}

#[allow(clippy::result_large_err)] // the state openers return openraft's storage error
pub async fn start(config: NodeConfig) -> Result<RunningNode, StartError> {
    config.validate().map_err(StartError::Config)?;
    let raft_config = Arc::new(config.raft_config().map_err(StartError::Config)?);
    let db_path = config.data_dir.join("db");
    let client = http_client(config.net, config.tls.as_ref().map(|t| t.client.clone()));
    // Before anything opens a Raft group: is this data dir the node it claims to be?
    let (identity, recorded_cluster) = check_identity(&config, &client, &db_path).await?;
    // No background flushing: durability comes only from the group-commit flusher, and a
    // background thread would make simulations nondeterministic.
    let db = sled::Config::new()
        .path(&db_path)
        .flush_every_ms(None)
        .open()
        .map_err(|source| StartError::Storage {
            path: db_path.display().to_string(),
            source,
        })?;
    let (map_tx, map_rx) = watch::channel(Arc::new(ClusterMap::default()));
    let files = DurableFiles::open(&db_path)
        .map_err(|e| RegistryError::Storage(format!("making {} durable: {e}", db_path.display())))?;
    // One flusher for every group of every kind: one group commit per node.
    let flusher = Flusher::start(db.clone(), files, config.flush_mode, config.node_id.to_string());
    let registry_config = Arc::new(RegistryConfig {
        node_id: config.node_id,
        raft_config,
        rng_seed: config.rng_seed,
        credentials: Arc::new(Credentials::new(
            config.cluster_secret.clone(),
            config.node_id,
            identity.incarnation,
            identity.cluster_id,
        )),
        probe: config.probe(),
    });
    let skip_range_check = config.has_planted_bug(PlantedBug::SplitWithoutRangeCheck);
    let shards = Arc::new(Registry::<ShardKind>::new(
        db.clone(),
        flusher.clone(),
        client.clone(),
        registry_config.clone(),
        Arc::new(move |db, group| ShardState::open(db, group, skip_range_check)),
    )?);
    let pd_map_tx = map_tx.clone();
    let pd = Arc::new(Registry::<PdKind>::new(
        db,
        flusher,
        client,
        registry_config,
        Arc::new(move |db, group| PdState::open(db, group, pd_map_tx.clone())),
    )?);
    let hosted = shards.hosted_on_disk()?;
    // A node whose replicas all moved away keeps their tombstones: only a store with
    // neither lost its data.
    if let (Some(cluster), true) = (recorded_cluster, hosted.is_empty() && !shards.has_tombstones()) {
        return Err(StartError::Identity(format!(
            "{} says this is node {} of cluster {}, but the database in {} holds no replica: it lost its data \
             (an unreadable or empty store is never started as a fresh one). Recover as for a lost disk \
             (docs/operations.md).",
            identity::path(&config.data_dir).display(),
            config.node_id,
            identity::hex(cluster),
            db_path.display()
        )));
    }
    for group in hosted {
        match group {
            _ if shards.is_tombstoned(group) => {}
            PD_GROUP => drop(pd.ensure(group, None, None).await?),
            _ => drop(shards.ensure(group, None, None).await?),
        }
    }
    let voters = pd_voters(&config.initial_cluster);
    // An initial PD voter whose PD replica moved away keeps its tombstone.
    if voters.contains(&config.node_id) && pd.get(PD_GROUP).is_none() && !pd.is_tombstoned(PD_GROUP) {
        let members: BTreeMap<u64, BasicNode> = voters
            .iter()
            .map(|v| (*v, BasicNode::new(&config.initial_cluster[v])))
            .collect();
        let designated = voters.first() == Some(&config.node_id);
        pd.ensure(PD_GROUP, designated.then_some(members), None).await?;
    }
    let listener = NetListener::bind(config.net, &config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let local_addr = axum::serve::Listener::local_addr(&listener).map_err(|source| StartError::Bind {
        addr: config.listen.clone(),
        source,
    })?;
    let inflight = Semaphore::new(config.limits.max_inflight_requests);
    let internal_inflight = Semaphore::new(config.limits.max_inflight_internal);
    let node_body_budget = config.limits.max_buffered_body_bytes;
    let node = Arc::new(Node {
        config,
        shards,
        pd,
        map_rx,
        map_tx,
        pd_state: Default::default(),
        executor: Default::default(),
        view: Default::default(),
        inflight,
        internal_inflight,
        snapshot_receives: Default::default(),
        recorded_cluster: std::sync::Mutex::new(recorded_cluster),
        refused_tx: watch::channel(None).0,
        body_budget: crate::api::BodyBudget::new(node_body_budget),
        draining: AtomicBool::new(false),
        pd_synced: AtomicBool::new(false),
        started: Instant::now(),
        requests: RequestCounts::default(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let router = crate::api::router(node.clone());
    let server = tokio::spawn(crate::api::server::serve(
        listener,
        router,
        node.config.tls.as_ref().map(|t| t.server.clone()),
        node.config.limits.clone(),
        node.label(),
        stop_rx.clone(),
    ));
    let mut loops = vec![
        tokio::spawn(node.clone().refusal_watch(stop_rx.clone())),
        tokio::spawn(node.clone().heartbeat_loop(stop_rx.clone())),
        tokio::spawn(node.clone().reconcile_loop(stop_rx.clone())),
        tokio::spawn(crate::placement::executor::run(node.clone(), stop_rx.clone())),
    ];
    if voters.contains(&node.config.node_id) {
        loops.push(tokio::spawn(node.clone().bootstrap_loop(stop_rx.clone())));
    }
    tracing::info!(node = node.config.node_id, addr = %local_addr, "node started");
    Ok(RunningNode {
        node,
        local_addr,
        stop_tx,
        server,
        loops,
    })
}

impl RunningNode {
    /// Stops serving, stops every group and flushes the database.
    pub async fn shutdown(self) {
        self.node.draining.store(true, Ordering::Relaxed);
        let _ = self.stop_tx.send(true);
        for handle in self.loops {
            let _ = handle.await;
        }
        // Open keep-alive connections can hold graceful shutdown; don't wait on them forever.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.server).await;
        self.node.shutdown_replicas().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stalled-group finding: 64 entries of a 2 MiB value did not fit the fixed 96 MiB
    /// internal body limit, so a full append got 413 forever. Now entries per append are
    /// derived from the value limit, and a full append always fits the append body limit.
    #[test]
    fn a_full_append_always_fits_its_body_limit() {
        for max_value_bytes in [0, 1, 1 << 10, 1 << 20, 3 << 20, 16 << 20, MAX_VALUE_BYTES_CEILING] {
            let limits = Limits {
                max_value_bytes,
                ..Limits::default()
            };
            assert!(limits.validate().is_ok());
            let entries = limits.max_payload_entries();
            assert!((1..=MAX_PAYLOAD_ENTRIES).contains(&entries));
            assert!(entries as usize * limits.max_entry_bytes() <= limits.max_append_body_bytes());
            assert!(
                limits.max_append_body_bytes()
                    <= MAX_APPEND_BODY_BYTES + limits.max_entry_bytes() + ENTRY_OVERHEAD_BYTES
            );
        }
        let too_big = Limits {
            max_value_bytes: MAX_VALUE_BYTES_CEILING + 1,
            ..Limits::default()
        };
        assert!(too_big.validate().unwrap_err().contains("--max-value-bytes"));
    }
}

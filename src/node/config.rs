//! What a node is configured with: identity, addresses, limits, Raft timings, security,
//! and the bugs the simulation may plant. The CLI fills it from flags and env vars.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::placement::operator::ScheduleSettings;
use crate::placement::{NodeId, PdCommand};
use crate::raft::log_store::FlushMode;
use crate::raft::probe::{Observer, Probe};
use crate::raft::transport::NetKind;
use crate::security::NodeTls;
use crate::shard::DEFAULT_HISTORY_VERSIONS;

/// sled's page cache unless `--cache-capacity-bytes` says otherwise (sled's own default is
/// 1 GiB, too much for several small nodes on one machine), and its bounds.
pub const DEFAULT_CACHE_CAPACITY_BYTES: u64 = 64 << 20;
pub const CACHE_CAPACITY_MIN_BYTES: u64 = 1 << 20;
pub const CACHE_CAPACITY_MAX_BYTES: u64 = 64 << 30;
/// Bounds of `--quiet-after-ms` (besides 0): long enough for a few heartbeats to carry the
/// commit point, short enough that idle groups do go quiet.
pub const QUIET_AFTER_MIN_MS: u64 = 500;
pub const QUIET_AFTER_MAX_MS: u64 = 3_600_000;

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
    /// sled's page cache (`--cache-capacity-bytes`).
    pub cache_capacity_bytes: u64,
    pub rng_seed: Option<u64>,
    /// Watches the node from outside (simulation checkers); `None` in production.
    pub observer: Option<Arc<dyn Observer>>,
    /// `midasflow demo`'s fault injection: its link filter and `/v1/demo/*` routes.
    pub demo: Option<Arc<crate::demo::DemoControl>>,
    /// A deliberate bug for proving the simulation's checkers can fail. Honoured only in
    /// debug builds (`cfg!(debug_assertions)`); no CLI flag of `server` or `demo` sets it.
    pub planted_bug: Option<PlantedBug>,
}

/// Bugs the simulation plants to show its checkers catch them (`midasflow sim
/// --planted-bug NAME`, debug builds only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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
    /// A quiet leader serves reads from its applied state without confirming it still
    /// leads, reads do not wake it ("nothing happened while it was quiet"), and it stays
    /// quiet when its own node loses touch with the cluster: isolated, it keeps answering
    /// while the majority elects another leader and moves on.
    QuietReadsWithoutQuorum,
    /// A node answers the messages of a Raft batch in the order they finish, not the order
    /// sent: the sender hands one group's answer (an accepted append, a granted vote) to
    /// another group.
    BatchAnswersInCompletionOrder,
    /// The read lease ignores when the followers last accepted the leader's appends, so
    /// it runs for as long as the leader's Raft core says it leads (a lease without the
    /// clock bound that makes one safe): a leader cut off keeps answering from its applied
    /// state while the majority elects another and moves on.
    LeaseIgnoresAcknowledgements,
    /// A batched proposal hands each write its neighbour's result: a client is told its
    /// write made a version that belongs to another.
    BatchResultsMisrouted,
    /// A reopened replica that knows no leader waits on the placement driver's hint even
    /// after the hinted node stopped reporting the group: a restarted group whose hinted
    /// node lost its election stays quiet behind it, and never elects again.
    LastingLeaderHints,
    /// A replica given one of the node's campaign slots is not woken if it is quiet: only a
    /// replica that was already ticking campaigns, so a group whose replicas all went quiet
    /// or were reopened after a restart (and which no request touches) never elects.
    CampaignSlotsWithoutWake,
    /// A follower answers a linearizable read once the leader gave it a read index,
    /// without waiting to have applied up to it: it can miss a write acknowledged before
    /// the read began.
    FollowerReadsWithoutApplyWait,
    /// A shard's leader waits on each proposal until openraft answers, which it never does
    /// for an entry a new leader's snapshot covered: that shard's proposal queue on the
    /// node waits for good, and the shard takes no write there again.
    UnboundedWriteWait,
    /// The PD leader's snapshot of the cluster (what the scheduler, the executor and node
    /// removal judge from) counts a removed node as live, up and heard just now: the
    /// replicas a removed node held are never re-created elsewhere, and the map keeps
    /// listing them on a node that is gone.
    RemovedNodesLookLive,
    /// A leaderless replica waiting for a campaign slot is held back only by its tick
    /// being off, not by its campaign gate: a request wakes the tick, and the replica
    /// campaigns past the node's bound on campaigns (what every replica a client reached
    /// did before the gate).
    CampaignGateByTickOnly,
    /// Every replica that does not campaign this pass keeps its campaign gate open as if
    /// it followed a leader, leaderless ones included: a reopened replica waiting for its
    /// group's first candidate, or one that follows only the placement driver's hint,
    /// campaigns as soon as a request wakes its tick, outside the node's bound.
    LeaderlessGatesOpen,
    /// A replica that follows only the placement driver's hint never asks that leader to
    /// make itself known: after a restart, a quiet leader that counts the replica caught up
    /// (its matched index is from before) sends it nothing, and the replica never learns
    /// its leader.
    HintFollowersNeverAsk,
    /// The node rations campaign slots by its configured bound, not by the budget adapted
    /// to how campaigns end: while campaigns run out of time (a node cut off from the
    /// majority, an overloaded machine), it keeps opening as many as the bound allows.
    CampaignBudgetIgnored,
    /// A leader's replication stream answers bare commit-point updates itself from any
    /// client, not only from one that has sent entries: openraft's leadership check for a
    /// linearizable read is answered "accepted" without asking the follower, so a leader
    /// cut off from the majority keeps confirming itself and answering reads.
    CommitHoldAnswersChecks,
    /// A leader's replication stream holds every empty append while it holds a commit
    /// point, heartbeats included: the commit point waits for the group's next entries,
    /// so followers never apply a group's last writes.
    CommitHoldKeepsHeartbeats,
    /// A split child's replicas start their logs with a configuration of their own node
    /// alone (its first entry, written or by `initialize`): each is a group of one voter
    /// that elects itself, so the child has a leader on every node at once.
    SplitChildAloneInItsFirstEntry,
    /// Every replica of a split child that holds the split's data campaigns as it starts,
    /// not only the map's first replica: each votes for itself in the group's
    /// first term, no one wins it, and writes to the child's range wait for an election
    /// timer.
    SplitChildEveryReplicaCampaigns,
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
/// Largest key record the limits may produce: `--history-versions` values of
/// `--max-value-bytes` each. Every write to a key reads, decodes and rewrites its whole
/// record, and a record travels whole in a shard's snapshot (at most
/// [`crate::api::internal::MAX_SNAPSHOT_BYTES`], 1 GiB), so the two limits are bounded
/// together.
pub const MAX_RECORD_BYTES: u64 = 256 << 20;
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

    /// What a command in the log may hold (a leader's own, and a peer's entry).
    pub fn command_limits(&self) -> crate::raft::validate::Limits {
        crate::raft::validate::Limits {
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
        }
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

    /// The body limit of a Raft batch: one full append's bytes (what a sender packs at
    /// most) plus the batch's framing.
    pub fn max_raft_batch_body_bytes(&self) -> usize {
        self.max_append_body_bytes() + crate::raft::batch::MAX_FRAMING_BYTES
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
        if self.max_buffered_body_bytes < self.max_raft_batch_body_bytes() {
            return Err(format!(
                "--max-buffered-body-bytes must hold at least one full batch of appends ({} bytes)",
                self.max_raft_batch_body_bytes()
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

/// The longest read lease for `election_timeout_min_ms`: three quarters of it. Every voter
/// but the leader refuses votes for `election_timeout_max` after accepting its append, so
/// no campaign wins on a first try; a second try comes from a candidate's election timer,
/// at least `election_timeout_min` after its first (`crate::raft::read_batch`). The other
/// quarter is the margin for clocks running at different rates.
pub fn max_read_lease_ms(election_timeout_min_ms: u64) -> u64 {
    election_timeout_min_ms * 3 / 4
}

/// The most `--max-campaigning-replicas` accepts.
pub const MAX_CAMPAIGNING_REPLICAS_LIMIT: usize = 65_536;

#[derive(Debug, Clone)]
pub struct RaftTimings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_interval_entries: u64,
    pub log_keep_entries: u64,
    pub snapshot_chunk_bytes: u64,
    /// An idle shard group goes quiet after this long (`crate::raft::quiet`); 0: never.
    pub quiet_after_ms: u64,
    /// Batches of Raft messages in flight to one peer (`crate::raft::batch`).
    pub batches_in_flight_per_peer: usize,
    /// How long after the oldest of its followers' latest acknowledgements a shard's
    /// leader answers linearizable reads without a quorum round
    /// (`crate::raft::read_batch`); 0: a round for every batch of reads. At most
    /// [`max_read_lease_ms`].
    pub read_lease_ms: u64,
    /// Shard replicas of this node that campaign at once, at most (`crate::raft::quiet`).
    pub max_campaigning_replicas: usize,
    /// Encoded entry bytes one append RPC carries at most, or its first entry alone
    /// (`crate::raft::log_store::APPEND_PAYLOAD_BYTES_MAX`; the simulation sets it small so
    /// catch-up appends are split).
    pub append_payload_bytes_max: usize,
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
            quiet_after_ms: 2_000,
            batches_in_flight_per_peer: crate::raft::batch::DEFAULT_BATCHES_IN_FLIGHT_PER_PEER,
            // The most `max_read_lease_ms` allows; heartbeats (100 ms) keep it fresh.
            read_lease_ms: 225,
            max_campaigning_replicas: crate::raft::quiet::DEFAULT_MAX_CAMPAIGNING_REPLICAS,
            append_payload_bytes_max: crate::raft::log_store::APPEND_PAYLOAD_BYTES_MAX,
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
            cache_capacity_bytes: DEFAULT_CACHE_CAPACITY_BYTES,
            rng_seed: None,
            observer: None,
            demo: None,
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
        let record_bytes = u64::from(self.history_versions) * self.limits.max_value_bytes as u64;
        if record_bytes > MAX_RECORD_BYTES {
            return Err(format!(
                "--history-versions {} × --max-value-bytes {} allows a key record of {record_bytes} bytes, over \
                 {MAX_RECORD_BYTES}: every write rewrites its key's record whole",
                self.history_versions, self.limits.max_value_bytes
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
        let quiet = self.raft.quiet_after_ms;
        if quiet != 0 && !(QUIET_AFTER_MIN_MS..=QUIET_AFTER_MAX_MS).contains(&quiet) {
            return Err(format!(
                "--quiet-after-ms must be 0 (never quiet) or {QUIET_AFTER_MIN_MS} to {QUIET_AFTER_MAX_MS}"
            ));
        }
        // A leader's last commit point reaches its followers with a heartbeat
        // (`network::CommitHold`): one must go out before the group goes quiet.
        if quiet != 0 && quiet < 2 * self.raft.heartbeat_interval_ms {
            return Err("--quiet-after-ms must be at least twice --heartbeat-interval-ms".into());
        }
        if !(1..=MAX_CAMPAIGNING_REPLICAS_LIMIT).contains(&self.raft.max_campaigning_replicas) {
            return Err(format!(
                "--max-campaigning-replicas must be 1 to {MAX_CAMPAIGNING_REPLICAS_LIMIT}"
            ));
        }
        let in_flight = self.raft.batches_in_flight_per_peer;
        if !(1..=crate::raft::batch::MAX_BATCHES_IN_FLIGHT_PER_PEER).contains(&in_flight) {
            return Err(format!(
                "--raft-batches-in-flight must be 1 to {}",
                crate::raft::batch::MAX_BATCHES_IN_FLIGHT_PER_PEER
            ));
        }
        if !(CACHE_CAPACITY_MIN_BYTES..=CACHE_CAPACITY_MAX_BYTES).contains(&self.cache_capacity_bytes) {
            return Err(format!(
                "--cache-capacity-bytes must be {CACHE_CAPACITY_MIN_BYTES} to {CACHE_CAPACITY_MAX_BYTES}"
            ));
        }
        if self.raft.read_lease_ms > max_read_lease_ms(self.raft.election_timeout_min_ms) {
            return Err(format!(
                "--read-lease-ms must be at most {} (three quarters of --election-timeout-min-ms), or 0 for no lease",
                max_read_lease_ms(self.raft.election_timeout_min_ms)
            ));
        }
        if self.raft.snapshot_chunk_bytes == 0 || self.raft.snapshot_chunk_bytes > 64 << 20 {
            return Err("the snapshot chunk size must be 1 byte to 64 MiB".into());
        }
        Ok(())
    }

    pub fn probe(&self) -> Probe {
        Probe::new(self.node_id, self.observer.clone())
    }

    /// How linearizable reads may be confirmed (`crate::raft::read_batch`).
    pub fn read_policy(&self) -> crate::raft::read_batch::ReadPolicy {
        crate::raft::read_batch::ReadPolicy {
            lease_ms: self.raft.read_lease_ms,
            planted_ignore_acks: self.has_planted_bug(PlantedBug::LeaseIgnoresAcknowledgements),
        }
    }

    /// How long after start this node refuses votes: it forgot which leaders it heard
    /// from, and a leader may hold a read lease counting on its refusal. Whatever this
    /// node's own lease setting: a peer's lease counts on it.
    pub fn vote_refusal_after_start_ms(&self) -> u64 {
        self.raft.election_timeout_max_ms
    }

    /// What this node tells its peers of its election timeouts (`raft::network`).
    pub fn election_timeouts(&self) -> crate::raft::network::ElectionTimeouts {
        crate::raft::network::ElectionTimeouts {
            min_ms: self.raft.election_timeout_min_ms,
            max_ms: self.raft.election_timeout_max_ms,
        }
    }

    /// Whether `bug` is planted; always false in release builds.
    pub fn has_planted_bug(&self, bug: PlantedBug) -> bool {
        cfg!(debug_assertions) && self.planted_bug == Some(bug)
    }

    pub(crate) fn raft_config(&self) -> Result<openraft::Config, String> {
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

    /// The record bound: the defaults and either limit at its own ceiling with the other
    /// small pass; both large together are refused.
    #[test]
    fn retained_versions_times_the_value_limit_is_bounded() {
        let cluster = BTreeMap::from([(1, "127.0.0.1:1".to_string())]);
        let mut config = NodeConfig::new(1, "127.0.0.1:1".into(), "/tmp/x".into(), cluster);
        assert!(config.validate().is_ok());
        config.history_versions = crate::shard::MAX_HISTORY_VERSIONS;
        config.limits.max_value_bytes = (MAX_RECORD_BYTES / u64::from(config.history_versions)) as usize;
        assert!(config.validate().is_ok());
        config.limits.max_value_bytes = 1 << 20;
        assert!(config
            .validate()
            .unwrap_err()
            .contains("--history-versions 1024 × --max-value-bytes"));
        config.history_versions = 8;
        config.limits.max_value_bytes = MAX_VALUE_BYTES_CEILING;
        assert!(config.validate().is_ok());
    }

    /// A leader's last commit point reaches its followers with a heartbeat, so a group
    /// may go quiet only after two heartbeat intervals of idleness.
    #[test]
    fn a_group_goes_quiet_only_after_heartbeats_carried_its_commit_point() {
        let cluster = BTreeMap::from([(1, "127.0.0.1:1".to_string())]);
        let mut config = NodeConfig::new(1, "127.0.0.1:1".into(), "/tmp/x".into(), cluster);
        config.raft.quiet_after_ms = 2 * config.raft.heartbeat_interval_ms;
        config.raft.quiet_after_ms = config.raft.quiet_after_ms.max(QUIET_AFTER_MIN_MS);
        assert!(config.validate().is_ok());
        config.raft.heartbeat_interval_ms = config.raft.quiet_after_ms / 2 + 1;
        config.raft.election_timeout_min_ms = 10 * config.raft.heartbeat_interval_ms;
        config.raft.election_timeout_max_ms = 20 * config.raft.heartbeat_interval_ms;
        let refused = config.validate().unwrap_err();
        assert!(refused.contains("at least twice --heartbeat-interval-ms"), "{refused}");
        config.raft.quiet_after_ms = 0;
        assert!(config.validate().is_ok(), "never quiet");
    }

    /// A read lease is safe only while no campaign can win: within three quarters of the
    /// shortest time a candidate waits before it tries again.
    #[test]
    fn the_read_lease_must_end_before_a_candidate_tries_again() {
        let cluster = BTreeMap::from([(1, "127.0.0.1:1".to_string())]);
        let mut config = NodeConfig::new(1, "127.0.0.1:1".into(), "/tmp/x".into(), cluster);
        assert!(config.validate().is_ok());
        assert!(config.raft.read_lease_ms > 0, "on by default");
        config.raft.read_lease_ms = 0;
        assert!(config.validate().is_ok(), "0 turns it off");
        config.raft.read_lease_ms = max_read_lease_ms(config.raft.election_timeout_min_ms);
        assert!(config.validate().is_ok());
        assert!(config.raft.read_lease_ms < config.raft.election_timeout_min_ms);
        assert!(config.vote_refusal_after_start_ms() > config.raft.read_lease_ms);
        config.raft.read_lease_ms += 1;
        assert!(config.validate().unwrap_err().contains("--read-lease-ms"));
        config.raft.election_timeout_min_ms = 400;
        assert!(
            config.validate().is_ok(),
            "longer election timeouts allow a longer lease"
        );
    }
}

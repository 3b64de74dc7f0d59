//! A midasflow node: one sled database, the groups it hosts (shards and, on PD voters,
//! the placement driver), and the loops that keep it in step with the placement driver.
//! Starting one (identity check, storage, HTTP) is `crate::launch`.

mod config;

pub use config::*;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::BasicNode;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::identity::{self, Identity};
// The PD server's wire types, where the node's clients (and tests) have always found them.
pub use crate::placement::server::{Heartbeat, HeartbeatReply, LedGroup, PdLeaderState, PD_HEARTBEAT_INTERVAL_MS};
use crate::placement::server::{PdHost, PdServer};
use crate::placement::store::PdGroup;
use crate::placement::store::{publish_map, PdKind};
use crate::placement::{pd_voters, ClusterMap, NodeId, NodeState, PdCommand, PD_GROUP, REPLICATION_FACTOR};
use crate::raft::membership::{self, AdminReply, AdminRequest};
use crate::raft::network::post_internal;
use crate::raft::network::Credentials;
use crate::raft::probe::NodeEvent;
use crate::raft::quiet::{LeaderHint, Liveness, NodeView};
use crate::raft::registry::{FirstEntry, Registry, TEND_INTERVAL_MS};
use crate::raft::transport::HttpClient;
use crate::raft::{GroupId, GroupKind};
use crate::shard::store::{ShardGroup, ShardKind};

/// How often a leader recomputes a split point for a shard over a threshold.
pub const SPLIT_POINT_REFRESH_MS: u64 = 10_000;
/// How often a node reconciles its replicas with the map even without a map change (a
/// split child waits for its parent replica to apply the split).
pub const RECONCILE_INTERVAL_MS: u64 = 1_000;

/// A node not heard from for this long is `suspect`; for [`DOWN_AFTER_MS`], `down`.
pub const SUSPECT_AFTER_MS: u64 = 2_000;
pub const DOWN_AFTER_MS: u64 = 6_000;
/// PD contact older than this makes `/readyz` fail.
pub const PD_STALE_AFTER_MS: u64 = 5_000;

/// This node's latest picture of the cluster beyond the map itself.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub pd_leader: Option<NodeId>,
    /// Each group's leader as the PD last heard of it, and its term then.
    pub leader_hints: BTreeMap<GroupId, (NodeId, u64)>,
    /// Hints whose leader no longer reports leading the group: routing may still try
    /// them, a quiet replica does not follow them.
    pub lapsed_hints: std::collections::BTreeSet<GroupId>,
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
    /// The placement driver's state here (used while this node leads the PD).
    pub pd_server: PdServer,
    view: RwLock<ClusterView>,
    pub inflight: Semaphore,
    /// Internal requests in progress (Raft RPCs, heartbeats), apart from the public API's.
    pub internal_inflight: Semaphore,
    /// The cluster id the identity record on disk names (none until recorded).
    recorded_cluster: std::sync::Mutex<Option<u128>>,
    refused_tx: watch::Sender<Option<String>>,
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
    /// A node around its opened registries; `map_tx` is the channel the PD replica
    /// publishes its map on, and `recorded_cluster` what the identity record names.
    pub fn new(
        config: NodeConfig,
        shards: Arc<Registry<ShardKind>>,
        pd: Arc<Registry<PdKind>>,
        map_tx: watch::Sender<Arc<ClusterMap>>,
        recorded_cluster: Option<u128>,
    ) -> Self {
        Node {
            inflight: Semaphore::new(config.limits.max_inflight_requests),
            internal_inflight: Semaphore::new(config.limits.max_inflight_internal),
            config,
            shards,
            pd,
            map_rx: map_tx.subscribe(),
            map_tx,
            pd_server: PdServer::default(),
            view: Default::default(),
            recorded_cluster: std::sync::Mutex::new(recorded_cluster),
            refused_tx: watch::channel(None).0,
            draining: AtomicBool::new(false),
            pd_synced: AtomicBool::new(false),
            started: Instant::now(),
            requests: RequestCounts::default(),
        }
    }

    /// Starts the node's loops (heartbeat, reconcile, refusal watch, the placement
    /// executor, and on initial PD voters the bootstrap); they end when `stop` turns true.
    pub fn spawn_loops(self: &Arc<Self>, stop: &watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut loops = vec![
            tokio::spawn(self.clone().refusal_watch(stop.clone())),
            tokio::spawn(self.clone().heartbeat_loop(stop.clone())),
            tokio::spawn(self.clone().reconcile_loop(stop.clone())),
            tokio::spawn(self.clone().tend_loop(stop.clone())),
            tokio::spawn(crate::placement::executor::run(self.clone(), stop.clone())),
        ];
        if pd_voters(&self.config.initial_cluster).contains(&self.config.node_id) {
            loops.push(tokio::spawn(self.clone().bootstrap_loop(stop.clone())));
        }
        loops
    }

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
        if let Some((hint, _)) = self.view.read().unwrap().leader_hints.get(&group) {
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

    /// Handles a heartbeat if this node leads the PD (see `placement::server`).
    pub fn handle_heartbeat(&self, hb: &Heartbeat) -> Result<Option<HeartbeatReply>, String> {
        crate::placement::server::handle_heartbeat(self, hb)
    }

    /// The clock operators are stamped with: wall-clock ms, or under simulation the
    /// simulated time since the process's first call (deterministic).
    pub fn now_ms(&self) -> u64 {
        if self.config.rng_seed.is_some() {
            static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
            let origin = *ORIGIN.get_or_init(Instant::now);
            return Instant::now().duration_since(origin).as_millis() as u64;
        }
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
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
        let pd_led = self.pd.all().into_iter().filter_map(|g| {
            g.leading_term().map(|term| LedGroup {
                group: g.id,
                term,
                keys: 0,
                bytes: 0,
                ops_total: 0,
                split_at: None,
            })
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
                .filter_map(|g| {
                    g.leading_term().map(|term| LedGroup {
                        group: g.id,
                        term,
                        keys: g.view.live_keys(),
                        bytes: g.view.live_bytes(),
                        ops_total: g.view.ops_served(),
                        split_at: self.split_point(g),
                    })
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
                None,
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
            view.lapsed_hints = reply.lapsed_hints;
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
            // Retried on the next map change; a busy disk at start is no reason to alarm.
            Err(e) => tracing::warn!(error = %e, "could not record the cluster id; will retry"),
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
            let first = self.first_entry(map, shard);
            self.note_missing_split_state(shard);
            if let Err(e) = self.shards.ensure(shard.id, first, Some(shard.epoch)).await {
                tracing::warn!(shard = shard.id, error = %e, "could not create replica");
            }
        }
        let pd = &map.pd_group;
        if pd.hosts(me) && self.pd.get(PD_GROUP).is_none() && !self.pd.is_blocked(PD_GROUP, Some(pd.epoch)) {
            if let Err(e) = self.pd.ensure(PD_GROUP, FirstEntry::Empty, Some(pd.epoch)).await {
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

    /// How a new replica of `shard` starts its log here. Only a shard the bootstrap
    /// created (epoch 1, never changed) or a split child is initialized here; a replica
    /// added later learns everything from the group's leader (an initialize would write a
    /// second, conflicting first entry).
    /// - A bootstrap shard: its first replica in the map campaigns; the others start
    ///   empty.
    /// - A split child: every replica that holds the split's data starts with the same
    ///   first entry (the map's members), and only the map's first replica campaigns at
    ///   once (the placement driver lists first the least-led node's replica,
    ///   `driver::split_campaigner`). If every one campaigned, each would vote for itself
    ///   and no one win until an election timer ran out (about 0.5 s of writes to the
    ///   child's range held up per split). A replica without the data starts empty and
    ///   waits for a snapshot.
    pub fn first_entry(&self, map: &ClusterMap, shard: &crate::placement::ShardInfo) -> FirstEntry {
        let me = self.config.node_id;
        if shard.epoch != 1 {
            return FirstEntry::Empty;
        }
        let mut members: BTreeMap<u64, BasicNode> = shard
            .replicas
            .iter()
            .filter_map(|r| map.node_addr(*r).map(|a| (*r, BasicNode::new(a))))
            .collect();
        let campaigns = shard.replicas.first() == Some(&me);
        match shard.parent {
            None if campaigns => FirstEntry::Campaign(members),
            None => FirstEntry::Empty,
            Some(_) if !self.shards.has_state(shard.id) => FirstEntry::Empty,
            Some(_) => {
                if self.config.has_planted_bug(PlantedBug::SplitChildAloneInItsFirstEntry) {
                    members.retain(|id, _| *id == me);
                }
                match campaigns || self.config.has_planted_bug(PlantedBug::SplitChildEveryReplicaCampaigns) {
                    true => FirstEntry::Campaign(members),
                    false => FirstEntry::Written(members),
                }
            }
        }
    }

    /// A split child whose parent replica here has not applied the split yet: its data
    /// is still in the parent, so the child must not start empty (a stray RPC or the map
    /// would create it too early). Once the parent's range ends before the child's start,
    /// by applying the split or from a snapshot taken after it, the child may start.
    fn split_pending(&self, shard: &crate::placement::ShardInfo) -> bool {
        let Some(parent) = shard.parent.and_then(|p| self.shards.get(p)) else {
            return false;
        };
        parent.view.applied_covers(shard.start)
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
                    match crate::raft::await_write(pd.raft.server_metrics(), pd.raft.client_write(command.clone()))
                        .await
                    {
                        Ok(Ok(resp)) => tracing::info!(result = ?resp.data, "bootstrap proposed"),
                        Ok(Err(e)) => tracing::debug!(error = %e, "bootstrap proposal failed"),
                        Err(_) => tracing::debug!("bootstrap proposal's outcome lost with the leadership"),
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
            crate::telemetry::record_disk(&label, &self.config.data_dir, self.shards.storage_bytes());
        }
    }

    /// What node liveness says of `node`, from this node's last PD reply: lost once the PD
    /// leader has not heard from it for [`SUSPECT_AFTER_MS`]. `Unknown` when that reply is
    /// older than [`FRESH_VIEW_MS`] (this node's view would be a guess).
    pub fn liveness_of(&self, node: NodeId) -> Liveness {
        if node == self.config.node_id {
            return Liveness::Live;
        }
        let view = self.view.read().unwrap();
        if !view_is_fresh(&view) {
            return Liveness::Unknown;
        }
        match view.last_seen_ms.get(&node) {
            Some(ms) if *ms >= SUSPECT_AFTER_MS => Liveness::Lost,
            Some(_) => Liveness::Live,
            None => Liveness::Unknown,
        }
    }

    /// Runs the registries' periodic pass: quiet groups (shards only; the PD group always
    /// ticks) and split-child compaction.
    async fn tend_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(TEND_INTERVAL_MS));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let quiet_after_ms = self.config.raft.quiet_after_ms;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            let quiet = (quiet_after_ms > 0).then_some((self.as_ref() as &dyn NodeView, quiet_after_ms));
            let quiet_groups = self.shards.tend(quiet);
            metrics::gauge!("midasflow_raft_quiet_groups", "node" => self.label()).set(quiet_groups as f64);
            self.pd.tend(None);
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

impl PdHost for Node {
    fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    fn label(&self) -> String {
        Node::label(self)
    }

    fn map(&self) -> Arc<ClusterMap> {
        Node::map(self)
    }

    fn initial_cluster(&self) -> &BTreeMap<NodeId, String> {
        &self.config.initial_cluster
    }

    fn pd_replica(&self) -> Option<Arc<PdGroup>> {
        self.pd.get(PD_GROUP)
    }

    fn pd_server(&self) -> &PdServer {
        &self.pd_server
    }

    fn leader_hint(&self, group: GroupId) -> Option<NodeId> {
        Node::leader_hint(self, group)
    }

    fn addr_of(&self, node: NodeId) -> Option<String> {
        Node::addr_of(self, node)
    }

    async fn admin_local(&self, group: GroupId, request: AdminRequest) -> Option<AdminReply> {
        Node::admin_local(self, group, request).await
    }

    fn client(&self) -> &HttpClient {
        self.shards.client()
    }

    fn credentials(&self) -> &Arc<Credentials> {
        self.shards.credentials()
    }

    fn now_ms(&self) -> u64 {
        Node::now_ms(self)
    }

    fn planted(&self, bug: PlantedBug) -> bool {
        self.config.has_planted_bug(bug)
    }
}

/// A PD reply older than this makes this node's liveness view stale: two heartbeat
/// rounds missed.
pub const FRESH_VIEW_MS: u64 = 2 * PD_HEARTBEAT_INTERVAL_MS + 200;

fn view_is_fresh(view: &ClusterView) -> bool {
    view.last_pd_contact
        .is_some_and(|t| t.elapsed() < Duration::from_millis(FRESH_VIEW_MS))
}

impl NodeView for Node {
    fn liveness(&self, node: u64) -> Liveness {
        self.liveness_of(node)
    }

    fn fresh(&self) -> bool {
        view_is_fresh(&self.view.read().unwrap())
    }

    fn leader_hint(&self, group: u64) -> Option<LeaderHint> {
        let view = self.view.read().unwrap();
        view.leader_hints.get(&group).map(|&(node, term)| LeaderHint {
            node,
            term,
            current: !view.lapsed_hints.contains(&group),
        })
    }

    fn campaigns_first(&self, group: u64) -> bool {
        let map = self.map();
        let first_live = map.group(group).and_then(|g| {
            g.replicas
                .iter()
                .copied()
                .find(|r| self.liveness_of(*r) == Liveness::Live)
        });
        first_live == Some(self.config.node_id)
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

/// A random non-zero id; derived from the seed under simulation (determinism), with a
/// count of ids drawn in this process so a node whose disk is wiped gets a new one.
pub(crate) fn new_random_id(seed: Option<u64>, node: NodeId, salt: u64) -> u128 {
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

//! The groups a node hosts: creation (eager from the map, or lazily on a group's first
//! RPC), recovery after restart, removal with tombstones, and RPC dispatch.
//!
//! Invariant: a replica exists only for a group the cluster map assigns to this node (or
//! the PD group on a PD voter), and a removed group's tombstone keeps stale messages from
//! resurrecting it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::Rng;

use openraft::{BasicNode, ServerState};

use super::batch::{BatchItem, ItemAnswer, RaftOp, RaftSender};
use super::log_store::{Flusher, LogStore};
use super::network::{Credentials, GroupNetworkFactory, HeldCommits, PlantedHold};
use super::probe::{NodeEvent, Probe};
use super::quiet::{
    adapt_campaign_budget, decide, gate_without_campaign, leader_to_follow, ration_campaigns, Campaign, CampaignBudget,
    Decision, Gate, Inputs, Liveness, NodeView, Role, SlotOutcomes, CAMPAIGN_SLOT_MS,
};
use super::read_batch::{FollowerAcks, ReadBatcher};
use super::runtime::{group_seed, seed_thread_rng, SeamRng};
use super::state_machine::{self, Applied, AppliedView, StateMachineStore};
use super::transport::HttpClient;
use super::{group_prefix, GroupId, GroupKind, Raft, StorageError};

/// One hosted replica.
pub struct Group<K: GroupKind> {
    pub id: GroupId,
    pub raft: Raft<K>,
    pub applied: Arc<Applied>,
    pub view: Arc<K::View>,
    /// Linearizable reads waiting for a shared leadership confirmation.
    pub reads: ReadBatcher<K>,
    /// Whether this leader's streams hold commit points its followers have not heard.
    held_commits: Arc<HeldCommits>,
    /// The term this replica last saw, shifted left by one, with the low bit set while it
    /// leads: one word, so a reader never pairs a new term with an old role (a node's
    /// heartbeat would report a leader that just stepped down as leading the new term).
    leadership: AtomicU64,
    /// Set while leadership is being handed over: new proposals wait.
    proposals_paused: AtomicBool,
    /// Held by the one leadership transfer running (`membership::transfer_leader`): its
    /// pause, heartbeats and lease are switched back on when it ends, which must not
    /// happen while another runs.
    pub transfer: tokio::sync::Mutex<()>,
    /// Quiet groups (see `quiet.rs`): ticking is off while `quiet` is set. Activity is
    /// measured in ms since `clock`, the registry's start.
    quiet: AtomicBool,
    quiet_lock: std::sync::Mutex<()>,
    /// Reopened from disk and not yet judged on a fresh view of the cluster.
    starting: AtomicBool,
    created_at_ms: u64,
    /// A replica that forgot which leader it heard from (reopened after a restart, or
    /// re-created where it was removed) neither votes nor campaigns until this clears,
    /// `election_timeout_max` after it was opened: a leader's read lease may count on
    /// the refusal its earlier self owed (`read_batch`).
    vote_hold: AtomicBool,
    active_at_ms: AtomicU64,
    seen_log_index: AtomicU64,
    /// When this replica last asked the leader the placement driver names to make itself
    /// known (see `tend`; 0: never).
    introduced_at_ms: AtomicU64,
    /// Since when this replica holds one of the node's campaign slots ([`NO_SLOT`]: it
    /// holds none), and when its last slot ended (`quiet::ration_campaigns`).
    campaign_since_ms: AtomicU64,
    campaign_ended_ms: AtomicU64,
    /// Its current slot ran out of time and was counted so (`quiet::SlotOutcomes`).
    campaign_slot_expired: AtomicBool,
    /// Whether this replica may start an election on its own, and why (a `quiet::Gate`).
    campaign_gate: AtomicU8,
    /// Planted bug (simulation only): see `crate::node::PlantedBug::CampaignGateByTickOnly`.
    planted_gate_by_tick_only: bool,
    /// Planted bug (simulation only): see `crate::node::PlantedBug::LeaderlessGatesOpen`.
    planted_leaderless_gates_open: bool,
    clock: tokio::time::Instant,
    /// A snapshot-and-purge after a split is running (see `tend`).
    compacting: Arc<AtomicBool>,
    /// Resolves once openraft dropped the group's state machine (see
    /// `StateMachineStore::stopped`); taken by `Registry::remove`.
    state_machine_stopped: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    label: String,
    probe: Probe,
}

/// Why a quiet group woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A client request or an admin request reached it.
    Request,
    /// A follower's leader's node was lost.
    LeaderLost,
    /// Log growth, or a leader, term or membership change.
    Activity,
    /// A replica that knows no leader was given one of the node's campaign slots (its
    /// turn to campaign after waiting, see `quiet::ration_campaigns`).
    CampaignSlot,
}

impl Wake {
    pub const ALL: [Wake; 4] = [Wake::Request, Wake::LeaderLost, Wake::Activity, Wake::CampaignSlot];

    pub fn name(self) -> &'static str {
        match self {
            Wake::Request => "request",
            Wake::LeaderLost => "leader_lost",
            Wake::Activity => "activity",
            Wake::CampaignSlot => "campaign_slot",
        }
    }
}

/// Pauses a group's proposals until dropped.
pub struct PauseGuard<'a>(&'a AtomicBool);

impl Drop for PauseGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl<K: GroupKind> Group<K> {
    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Records activity; a quiet replica starts ticking again at once.
    pub fn touch(&self, why: Wake) {
        // On every client request: no lock unless quiet. A `tend` that decided "quiet"
        // from an older activity time backs off if it sees this store; if it wins the race
        // instead, its next pass (500 ms) sees recent activity and wakes the group.
        self.active_at_ms.store(self.now_ms(), Ordering::SeqCst);
        if self.quiet.load(Ordering::SeqCst) {
            let _guard = self.quiet_lock.lock().unwrap();
            self.set_quiet(false, why);
        }
    }

    /// Whether this replica may neither vote nor campaign yet (see `vote_hold`).
    pub fn holds_votes(&self) -> bool {
        self.vote_hold.load(Ordering::SeqCst)
    }

    /// Ends the vote hold (`vote_hold`).
    fn end_vote_hold(&self) {
        let _guard = self.quiet_lock.lock().unwrap();
        self.vote_hold.store(false, Ordering::SeqCst);
        self.raft.runtime_config().elect(self.may_campaign());
    }

    fn campaign_gate(&self) -> Gate {
        Gate::from_u8(self.campaign_gate.load(Ordering::SeqCst))
    }

    /// Whether the replica may start an election on its own (its timer or our nudge).
    fn may_campaign(&self) -> bool {
        (self.campaign_gate().is_open() || self.planted_gate_by_tick_only) && !self.holds_votes()
    }

    /// Sets the campaign gate (`quiet::Gate`). It is openraft's `enable_elect`, which the
    /// Raft core reads as it handles each tick, so no tick already queued slips past a
    /// closed gate. Explicit triggers are not bound by it: a leadership transfer's, and a
    /// nudge that checked the gate just before it closed (the simulation's checker allows
    /// for that).
    fn set_campaign_gate(&self, gate: Gate) {
        // `tend` calls this for every replica twice a second: no lock unless it changes.
        if self.campaign_gate() == gate {
            return;
        }
        let _guard = self.quiet_lock.lock().unwrap();
        // Judged from metrics read earlier: a replica that lost its leader since (the
        // monitor closed its gate meanwhile) must not open it again as a follower.
        let gate = match gate {
            Gate::Leader | Gate::Follower if self.current_leader().is_none() && !self.planted_leaderless_gates_open => {
                Gate::Closed
            }
            gate => gate,
        };
        self.store_campaign_gate(gate);
    }

    /// Call with `quiet_lock` held.
    fn store_campaign_gate(&self, gate: Gate) {
        if Gate::from_u8(self.campaign_gate.swap(gate as u8, Ordering::SeqCst)) != gate {
            self.raft.runtime_config().elect(self.may_campaign());
            self.probe.emit(|| NodeEvent::CampaignGate {
                group: self.id,
                gate: gate.name(),
            });
        }
    }

    /// Closes a leader's or follower's gate once its Raft state names no leader, under
    /// the lock, so a slot `tend` just gave is left alone.
    fn close_campaign_gate_without_leader(&self) {
        if !matches!(self.campaign_gate(), Gate::Leader | Gate::Follower) {
            return;
        }
        let _guard = self.quiet_lock.lock().unwrap();
        if matches!(self.campaign_gate(), Gate::Leader | Gate::Follower) && self.current_leader().is_none() {
            self.store_campaign_gate(Gate::Closed);
        }
    }

    /// The target of a leadership transfer: its campaign is the point, whatever `tend`
    /// judged before (its next pass judges it again, and may close the gate).
    pub fn open_campaign_gate_for_transfer(&self) {
        self.set_campaign_gate(Gate::Transfer);
    }

    /// Whether ticking is off (no heartbeats, no election timer).
    pub fn is_quiet(&self) -> bool {
        self.quiet.load(Ordering::Relaxed)
    }

    /// Takes a campaign slot, or keeps the one it holds.
    fn hold_campaign_slot(&self) {
        let started =
            self.campaign_since_ms
                .compare_exchange(NO_SLOT, self.now_ms(), Ordering::Relaxed, Ordering::Relaxed);
        if started.is_ok() {
            self.campaign_slot_expired.store(false, Ordering::Relaxed);
        }
    }

    /// Whether it held a slot.
    fn release_campaign_slot(&self) -> bool {
        let held = self.campaign_since_ms.swap(NO_SLOT, Ordering::Relaxed) != NO_SLOT;
        if held {
            self.campaign_ended_ms.store(self.now_ms(), Ordering::Relaxed);
        }
        held
    }

    /// True once per slot, on the first pass that finds it held for [`CAMPAIGN_SLOT_MS`].
    fn slot_expires_now(&self, campaign: &Campaign) -> bool {
        campaign.held_for_ms.is_some_and(|ms| ms >= CAMPAIGN_SLOT_MS)
            && !self.campaign_slot_expired.swap(true, Ordering::Relaxed)
    }

    /// Active within the last [`CAMPAIGN_SLOT_MS`], as of `seen_active_at`.
    fn wanted(&self, seen_active_at: u64) -> bool {
        // 0 is a reopened replica's "never active", not activity at the clock's start.
        seen_active_at > 0 && self.now_ms().saturating_sub(seen_active_at) < CAMPAIGN_SLOT_MS
    }

    /// Whether this replica may ask its hinted leader to make itself known now: at most
    /// once per [`CAMPAIGN_SLOT_MS`].
    fn due_for_introduction(&self) -> bool {
        let now = self.now_ms();
        let last = self.introduced_at_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= CAMPAIGN_SLOT_MS;
        if due {
            self.introduced_at_ms.store(now.max(1), Ordering::Relaxed);
        }
        due
    }

    fn campaign(&self, inputs: &Inputs) -> Campaign {
        let now = self.now_ms();
        let since = self.campaign_since_ms.load(Ordering::Relaxed);
        Campaign {
            wanted: inputs.wanted,
            first_candidate: inputs.first_candidate,
            held_for_ms: (since != NO_SLOT).then(|| now.saturating_sub(since)),
            last_slot_ended_ms: self.campaign_ended_ms.load(Ordering::Relaxed),
        }
    }

    /// Applies `tend`'s decision. A touch since `seen_active_at` (what the decision was
    /// computed from) cancels going quiet. Under the lock, so the flag and openraft's
    /// tick always agree, whatever raced.
    fn apply(&self, decision: Decision, why: Wake, seen_active_at: u64) {
        let _guard = self.quiet_lock.lock().unwrap();
        match decision {
            Decision::Quiet if self.active_at_ms.load(Ordering::Relaxed) == seen_active_at => self.set_quiet(true, why),
            Decision::Active => self.set_quiet(false, why),
            Decision::Quiet | Decision::Keep => {}
        }
        self.raft.runtime_config().tick(!self.is_quiet());
    }

    /// Call with `quiet_lock` held.
    fn set_quiet(&self, quiet: bool, why: Wake) {
        if self.quiet.swap(quiet, Ordering::SeqCst) == quiet {
            return;
        }
        self.raft.runtime_config().tick(!quiet);
        if !quiet {
            metrics::counter!("midasflow_raft_group_wakeups_total", "node" => self.label.clone(), "reason" => why.name())
                .increment(1);
        }
        tracing::trace!(group = self.id, quiet, reason = why.name(), "group tick changed");
        self.probe.emit(|| NodeEvent::Quiet {
            group: self.id,
            quiet,
            reason: why.name(),
        });
    }

    pub fn pause_proposals(&self) -> PauseGuard<'_> {
        self.proposals_paused.store(true, Ordering::Release);
        PauseGuard(&self.proposals_paused)
    }

    pub fn proposals_paused(&self) -> bool {
        self.proposals_paused.load(Ordering::Acquire)
    }

    /// Sends a heartbeat now if this leader's streams hold commit points their followers
    /// have not heard (`network::CommitHold`). Not during a leadership transfer: its
    /// leader keeps silent so that its followers' vote refusal runs out.
    /// Sends a heartbeat now if this leader's streams hold commit points their followers
    /// have not heard (`network::CommitHold`). Not during a leadership transfer: its
    /// leader keeps silent so that its followers' vote refusal runs out. Awaited, not
    /// spawned: a task spawned per call made simulation replays differ.
    pub async fn send_held_commits(&self) {
        if self.held_commits.any() && !self.proposals_paused() {
            let _ = self.raft.trigger().heartbeat().await;
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leadership.load(Ordering::Relaxed) & 1 == 1
    }

    /// The term this replica leads in, if it leads (both from one observation).
    pub fn leading_term(&self) -> Option<u64> {
        let word = self.leadership.load(Ordering::Relaxed);
        (word & 1 == 1).then_some(word >> 1)
    }

    /// The leader this replica currently knows of.
    pub fn current_leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }
}

/// See [`Registry::read_index`].
async fn read_index(
    sender: &RaftSender,
    leader: u64,
    addr: &str,
    group: GroupId,
    timeout: Duration,
) -> Result<u64, String> {
    let item = BatchItem {
        group,
        op: RaftOp::ReadIndex,
        body: bytes::Bytes::new(),
    };
    match sender
        .call(leader, addr, item, timeout)
        .await
        .map_err(|e| e.to_string())?
    {
        ItemAnswer::Ok(body) => body
            .as_ref()
            .try_into()
            .map(u64::from_le_bytes)
            .map_err(|_| format!("a read index of {} bytes", body.len())),
        ItemAnswer::Refused { status, body } => Err(format!(
            "refused ({status}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
    }
}

/// How often the node runs [`Registry::tend`].
pub const TEND_INTERVAL_MS: u64 = 500;

/// `Group::campaign_since_ms` of a replica that holds no campaign slot.
const NO_SLOT: u64 = u64::MAX;

/// How long removing a replica waits for its state machine to finish the applies queued to
/// it before deleting its data. Applies are bounded by local disk writes; this only keeps
/// a wedged disk from holding replica creation and removal for ever.
pub const STATE_MACHINE_STOP_WAIT_MS: u64 = 30_000;

/// Everything needed to create a group's Raft instance.
pub struct RegistryConfig {
    pub node_id: u64,
    pub raft_config: Arc<openraft::Config>,
    /// Set under simulation: seeds each group's RNG from (seed, node, group).
    pub rng_seed: Option<u64>,
    pub credentials: Arc<Credentials>,
    pub probe: Probe,
    /// Planted bug (simulation only): a leader goes quiet even when its own node's view
    /// of the cluster is stale (see `crate::node::PlantedBug::QuietReadsWithoutQuorum`).
    pub planted_quiet_ignores_own_view: bool,
    /// Planted bug (simulation only): see `crate::node::PlantedBug::LastingLeaderHints`.
    pub planted_lasting_leader_hints: bool,
    /// Replicas of this node that may campaign at once (`quiet::ration_campaigns`).
    pub max_campaigning_replicas: usize,
    /// Entry bytes per append RPC, or its first entry alone (`LogStore`).
    pub append_payload_bytes_max: usize,
    /// Planted bug (simulation only): see `crate::node::PlantedBug::CampaignSlotsWithoutWake`.
    pub planted_campaign_slots_without_wake: bool,
    /// Planted bug (simulation only): see `crate::node::PlantedBug::CampaignGateByTickOnly`.
    pub planted_campaign_gate_by_tick_only: bool,
    /// Planted bug (simulation only): see `crate::node::PlantedBug::LeaderlessGatesOpen`.
    pub planted_leaderless_gates_open: bool,
    /// Planted bug (simulation only): see `crate::node::PlantedBug::HintFollowersNeverAsk`.
    pub planted_hint_followers_never_ask: bool,
    /// Planted bug (simulation only): see `crate::node::PlantedBug::CampaignBudgetIgnored`.
    pub planted_campaign_budget_ignored: bool,
    /// Planted bugs (simulation only): see `crate::node::PlantedBug::CommitHoldAnswersChecks`
    /// and `CommitHoldKeepsHeartbeats`.
    pub planted_hold: PlantedHold,
}

/// How a replica that has never been initialized starts its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstEntry {
    /// Empty: it learns the group from a leader, or a snapshot.
    Empty,
    /// openraft's `initialize` with these members: the first entry, then a campaign at
    /// once.
    Campaign(BTreeMap<u64, BasicNode>),
    /// The same first entry `initialize` would write, without the campaign: the replica
    /// elects only if its timer runs out with no leader heard. Every replica of a new
    /// group that starts this way or by `Campaign` with the same members holds the same
    /// first entry, so one campaign elects a leader instead of several colliding; and
    /// each holds the configuration, so the group elects even if the one that campaigned
    /// dies before its first append (a replica that voted can no longer `initialize`).
    Written(BTreeMap<u64, BasicNode>),
}

/// The entry openraft's `initialize(members)` writes first (openraft 0.9
/// `RaftCore::handle_initialize`): the members' configuration at the default log id.
fn first_entry<K: GroupKind>(members: &BTreeMap<u64, BasicNode>) -> openraft::Entry<super::Config<K>> {
    use openraft::entry::RaftEntry;
    openraft::Entry::new_membership(openraft::LogId::default(), openraft::Membership::from(members.clone()))
}

/// Opens a group's state of kind `K` from the node's database.
pub type OpenState<K> = Arc<dyn Fn(&sled::Db, GroupId) -> Result<<K as GroupKind>::State, StorageError> + Send + Sync>;

/// The hosted groups of one kind. The kinds share the database, the flusher (one group
/// commit for the whole node) and the hosted-group and tombstone records, which are keyed
/// by group id.
pub struct Registry<K: GroupKind> {
    pub node_id: u64,
    label: String,
    db: sled::Db,
    flusher: Flusher,
    sender: RaftSender,
    config: Arc<RegistryConfig>,
    open_state: OpenState<K>,
    groups: RwLock<BTreeMap<GroupId, Arc<Group<K>>>>,
    /// Serializes creation and removal so a group is never built twice.
    lifecycle: tokio::sync::Mutex<()>,
    hosted: sled::Tree,
    tombstones: sled::Tree,
    /// Split children created here without the split's data (this node's parent replica
    /// skipped the split through a snapshot): they must start from a snapshot of the
    /// child, never from an empty log (see `api::internal`).
    awaiting_snapshot: std::sync::Mutex<std::collections::BTreeSet<GroupId>>,
    clock: tokio::time::Instant,
    /// How many replicas may hold campaign slots now (`quiet::adapt_campaign_budget`).
    campaign_budget: std::sync::Mutex<CampaignBudget>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("group {0} was removed from this node")]
    Tombstoned(GroupId),
    #[error("storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
}

impl<K: GroupKind> Registry<K> {
    pub fn new(
        db: sled::Db,
        flusher: Flusher,
        sender: RaftSender,
        config: Arc<RegistryConfig>,
        open_state: OpenState<K>,
    ) -> Result<Self, RegistryError> {
        let storage = |e: sled::Error| RegistryError::Storage(e.to_string());
        let label = config.node_id.to_string();
        let campaign_budget = std::sync::Mutex::new(CampaignBudget::new(config.max_campaigning_replicas));
        Ok(Registry {
            node_id: config.node_id,
            label,
            hosted: db.open_tree("hosted_groups").map_err(storage)?,
            tombstones: db.open_tree("tombstones").map_err(storage)?,
            db,
            flusher,
            sender,
            config,
            open_state,
            groups: RwLock::new(BTreeMap::new()),
            lifecycle: tokio::sync::Mutex::new(()),
            awaiting_snapshot: Default::default(),
            clock: tokio::time::Instant::now(),
            campaign_budget,
        })
    }

    pub fn election_timeout_max_ms(&self) -> u64 {
        self.config.raft_config.election_timeout_max
    }

    /// ms since the registry started: the clock its groups' times are on.
    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    pub fn heartbeat_interval_ms(&self) -> u64 {
        self.config.raft_config.heartbeat_interval
    }

    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.config.credentials
    }

    pub fn client(&self) -> &HttpClient {
        self.sender.client()
    }

    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Asks node `leader` at `addr` (believed to lead `group`) for a read index: the log
    /// index a replica must have applied to answer a linearizable read that began before
    /// this call. It travels in the peer's next batch of read-index requests.
    pub async fn read_index(&self, leader: u64, addr: &str, group: GroupId, timeout: Duration) -> Result<u64, String> {
        read_index(&self.sender, leader, addr, group, timeout).await
    }

    pub fn get(&self, group: GroupId) -> Option<Arc<Group<K>>> {
        self.groups.read().unwrap().get(&group).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Group<K>>> {
        self.groups.read().unwrap().values().cloned().collect()
    }

    /// Whether any replica was ever removed from this node.
    pub fn has_tombstones(&self) -> bool {
        !self.tombstones.is_empty()
    }

    /// Makes everything written so far durable (one group-commit round).
    pub async fn flush(&self) -> std::io::Result<()> {
        self.flusher.flush().await
    }

    pub fn is_tombstoned(&self, group: GroupId) -> bool {
        self.tombstones.contains_key(group_prefix(group)).unwrap_or(true)
    }

    /// The shard epoch at which this node's replica of `group` was removed, if it was:
    /// only an assignment at a later epoch may bring the group back (a replica moved
    /// away can move back; a stale message cannot resurrect it).
    pub fn tombstone_epoch(&self, group: GroupId) -> Option<u64> {
        match self.tombstones.get(group_prefix(group)) {
            Ok(None) => None,
            Ok(Some(value)) => Some(<[u8; 8]>::try_from(value.as_ref()).map_or(u64::MAX, u64::from_be_bytes)),
            Err(_) => Some(u64::MAX),
        }
    }

    /// Whether an assignment at `epoch` (`None`: a reopen or the PD group) is blocked by a
    /// tombstone.
    pub fn is_blocked(&self, group: GroupId, epoch: Option<u64>) -> bool {
        match (self.tombstone_epoch(group), epoch) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(removed_at), Some(epoch)) => removed_at >= epoch,
        }
    }

    /// Groups this node hosted before a restart, to reopen from disk. A record it cannot
    /// read is an error: skipping it would silently drop a replica.
    pub fn hosted_on_disk(&self) -> Result<Vec<GroupId>, RegistryError> {
        self.hosted
            .iter()
            .keys()
            .map(|k| {
                let k = k.map_err(|e| RegistryError::Storage(e.to_string()))?;
                <[u8; 8]>::try_from(k.as_ref())
                    .map(u64::from_be_bytes)
                    .map_err(|_| RegistryError::Storage(format!("a hosted-group record of {} bytes", k.len())))
            })
            .collect()
    }

    /// Returns the group, creating (or reopening) it if needed; `first` says how a replica
    /// that has never been initialized starts its log (see [`FirstEntry`]). `epoch` is the
    /// shard epoch of the map assignment that asks for the replica (`None` for a reopen
    /// after restart, or the PD group); a tombstone at that epoch or later refuses it.
    pub async fn ensure(
        &self,
        group: GroupId,
        first: FirstEntry,
        epoch: Option<u64>,
    ) -> Result<Arc<Group<K>>, RegistryError> {
        if let Some(existing) = self.get(group) {
            return Ok(existing);
        }
        let _guard = self.lifecycle.lock().await;
        if let Some(existing) = self.get(group) {
            return Ok(existing);
        }
        if self.is_blocked(group, epoch) {
            return Err(RegistryError::Tombstoned(group));
        }
        let storage = |e: openraft::StorageError<u64>| RegistryError::Storage(e.to_string());
        if let FirstEntry::Written(members) = &first {
            self.write_first_entry(group, members).await?;
        }
        let log_store = LogStore::<K>::open(
            self.flusher.wal().clone(),
            group,
            self.flusher.clone(),
            self.config.probe.clone(),
            self.config.append_payload_bytes_max,
        );
        state_machine::finish_interrupted_apply(&self.db, group).map_err(storage)?;
        let state = (self.open_state)(&self.db, group).map_err(storage)?;
        let mut state_machine = StateMachineStore::<K>::open(
            &self.db,
            group,
            state,
            self.flusher.clone(),
            self.label.clone(),
            self.config.probe.clone(),
        )
        .map_err(storage)?;
        let (applied, view) = (state_machine.applied(), state_machine.view());
        let state_machine_stopped = state_machine.stopped();
        // A replica reopened after a restart starts quiet: its group most likely has a
        // quiet leader, which sends no heartbeat to hold off this replica's election
        // timer. `tend` wakes it if no one leads the group (see `quiet.rs`).
        let reopened = matches!(first, FirstEntry::Empty) && epoch.is_none();
        let acks = Arc::new(FollowerAcks::default());
        let held_commits = Arc::new(HeldCommits::default());
        let network = GroupNetworkFactory::<K> {
            group,
            sender: self.sender.clone(),
            acks: acks.clone(),
            held_commits: held_commits.clone(),
            planted_hold: self.config.planted_hold,
            kind: std::marker::PhantomData,
        };
        if let Some(seed) = self.config.rng_seed {
            // openraft draws this group's election timeout inside Raft::new.
            seed_thread_rng(group_seed(seed, self.node_id, group));
        }
        let raft = Raft::<K>::new(
            self.node_id,
            self.config.raft_config.clone(),
            network,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| RegistryError::Raft(e.to_string()))?;
        // The key is the record; the value carries nothing.
        self.hosted
            .insert(group_prefix(group), &[])
            .map_err(|e| RegistryError::Storage(e.to_string()))?;
        // Hosted first: a crash in between leaves both records, and a tombstone wins
        // until the map assigns the group again.
        let recreated = self
            .tombstones
            .remove(group_prefix(group))
            .map_err(|e| RegistryError::Storage(e.to_string()))?
            .is_some();
        // Both records must be durable before the group's first log entry is.
        self.flusher.mark_db_dirty();
        // A reopened replica knows no leader: its gate opens once `tend` sees it follow
        // one or gives it a slot. A reopened or re-created one holds its votes, and with
        // them its campaigns, for a while (`vote_hold`). Reported before `initialize`,
        // whose election (not bound by the gate) the simulation checks against it.
        let vote_hold = reopened || recreated;
        let campaign_gate = if reopened { Gate::Closed } else { Gate::Created };
        raft.runtime_config().elect(campaign_gate.is_open() && !vote_hold);
        self.config.probe.emit(|| NodeEvent::CampaignGate {
            group,
            gate: campaign_gate.name(),
        });
        if let FirstEntry::Campaign(members) = first {
            let initialized = raft
                .is_initialized()
                .await
                .map_err(|e| RegistryError::Raft(e.to_string()))?;
            if !initialized {
                if let Err(e) = raft.initialize(members).await {
                    // NotAllowed means another path already initialized it: nothing to do.
                    tracing::debug!(group, error = %e, "initialize skipped");
                }
            }
        }
        if reopened {
            raft.runtime_config().tick(false);
        }
        let last_log_index = raft.metrics().borrow().last_log_index.unwrap_or(0);
        let created = Arc::new(Group {
            id: group,
            raft,
            applied,
            view,
            reads: ReadBatcher::new(self.node_id, acks, self.config.probe.clone()),
            held_commits,
            leadership: AtomicU64::new(0),
            proposals_paused: AtomicBool::new(false),
            transfer: tokio::sync::Mutex::new(()),
            quiet: AtomicBool::new(reopened),
            quiet_lock: std::sync::Mutex::new(()),
            starting: AtomicBool::new(reopened),
            created_at_ms: self.now_ms(),
            vote_hold: AtomicBool::new(vote_hold),
            // A reopened replica has been idle as far as anyone knows.
            active_at_ms: AtomicU64::new(if reopened { 0 } else { self.now_ms() }),
            // A reopened log is not growth: counted as such, every reopened replica would
            // look wanted on the first pass.
            seen_log_index: AtomicU64::new(last_log_index),
            introduced_at_ms: AtomicU64::new(0),
            campaign_since_ms: AtomicU64::new(NO_SLOT),
            campaign_ended_ms: AtomicU64::new(0),
            campaign_slot_expired: AtomicBool::new(false),
            campaign_gate: AtomicU8::new(campaign_gate as u8),
            planted_gate_by_tick_only: self.config.planted_campaign_gate_by_tick_only,
            planted_leaderless_gates_open: self.config.planted_leaderless_gates_open,
            clock: self.clock,
            compacting: Arc::new(AtomicBool::new(false)),
            state_machine_stopped: std::sync::Mutex::new(Some(state_machine_stopped)),
            label: self.label.clone(),
            probe: self.config.probe.clone(),
        });
        if vote_hold {
            let weak = Arc::downgrade(&created);
            let hold_ms = self.config.raft_config.election_timeout_max;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(hold_ms)).await;
                if let Some(group) = weak.upgrade() {
                    group.end_vote_hold();
                }
            });
        }
        self.groups.write().unwrap().insert(group, created.clone());
        self.spawn_monitor(created.clone());
        metrics::gauge!("midasflow_raft_groups", "node" => self.label.clone(), "kind" => K::NAME)
            .set(self.groups.read().unwrap().len() as f64);
        tracing::info!(group, kind = K::NAME, "replica started");
        Ok(created)
    }

    /// Follows a group's server metrics (vote, state, leader, membership; openraft
    /// reports them only when they change, so an idle group costs this task nothing):
    /// leadership for routing, leader changes for /metrics, activity for quiet groups,
    /// and the election nudge.
    ///
    /// Why the nudge: openraft 0.9 draws a replica's election timeout once, in `Raft::new`,
    /// and checks it on a tick of 1.5 heartbeats, so the effective timeouts fall into a few
    /// tick-sized buckets. Two candidates in the same bucket can split the vote round after
    /// round (seen: 5-6 s with no leader). A voter that has had no leader for
    /// `election_timeout_max` plus a random part of it starts an election itself, which
    /// breaks the lockstep. A normal election finishes well before that.
    fn spawn_monitor(&self, group: Arc<Group<K>>) {
        let label = self.label.clone();
        let node_id = self.node_id;
        let probe = self.config.probe.clone();
        let stall_ms = self.config.raft_config.election_timeout_max;
        let mut metrics_rx = group.raft.server_metrics();
        tokio::spawn(async move {
            let mut last_leader = None;
            let mut last_membership = None;
            let mut first = true;
            let mut nudge_at: Option<tokio::time::Instant> = None;
            loop {
                let (leader, term, leading, voter, membership) = {
                    let m = metrics_rx.borrow_and_update();
                    let voter = m.membership_config.membership().voter_ids().any(|v| v == node_id);
                    (
                        m.current_leader,
                        m.vote.leader_id.term,
                        m.state == ServerState::Leader,
                        voter,
                        m.membership_config.log_id().map(|l| l.index),
                    )
                };
                let leader_changed = leader != last_leader;
                let before = group
                    .leadership
                    .swap((term << 1) | u64::from(leading), Ordering::Relaxed);
                let changed = before >> 1 != term || leader_changed;
                let was_leading = before & 1 == 1;
                // The first observation is the replica's starting state, not activity. A
                // new term alone (a candidate's vote request) wakes nobody: a replica woken
                // by every candidate campaigns itself when that candidate is slow, and at
                // 10,000 shards a restart's candidates woke every replica into a storm of
                // elections that never settled. The candidate's own timer keeps it going.
                let woken =
                    (leader_changed && leader.is_some()) || was_leading != leading || membership != last_membership;
                if woken && !first {
                    group.touch(Wake::Activity);
                }
                // A leader or follower that lost its leader (a candidate's new term, a step
                // down) waits for a slot like any leaderless replica, rather than
                // campaigning against that candidate until the next pass judges it.
                if leader.is_none() {
                    group.close_campaign_gate_without_leader();
                }
                (last_membership, first) = (membership, false);
                if was_leading != leading {
                    let delta = if leading { 1.0 } else { -1.0 };
                    metrics::gauge!("midasflow_raft_leaders", "node" => label.clone(), "kind" => K::NAME)
                        .increment(delta);
                }
                if changed || was_leading != leading {
                    probe.emit(|| NodeEvent::Leadership {
                        group: group.id,
                        term,
                        leader,
                        leading,
                    });
                }
                if leader != last_leader {
                    if leader.is_some() {
                        metrics::counter!("midasflow_raft_leader_changes_total", "node" => label.clone()).increment(1);
                        tracing::debug!(group = group.id, node = node_id, ?leader, term, "leader changed");
                    }
                    last_leader = leader;
                }
                nudge_at = match (leader, voter, nudge_at) {
                    (None, true, None) => {
                        let jitter_ms = SeamRng.gen_range(0..stall_ms.max(1));
                        Some(tokio::time::Instant::now() + Duration::from_millis(stall_ms + jitter_ms))
                    }
                    (None, true, pending) => pending,
                    _ => None,
                };
                let stopped = match nudge_at {
                    None => metrics_rx.changed().await.is_err(),
                    Some(at) => tokio::select! {
                        changed = metrics_rx.changed() => changed.is_err(),
                        _ = tokio::time::sleep_until(at) => {
                            // A quiet replica is waiting on purpose (a restart's replicas
                            // let one candidate per group go first): `tend` wakes it.
                            // Still no leader: a heartbeat may have arrived as the timer
                            // fired, and a follower of a fresh leader must not campaign.
                            let leaderless = group.raft.metrics().borrow().current_leader.is_none();
                            if leaderless && !group.is_quiet() && group.may_campaign() {
                                tracing::debug!(group = group.id, node = node_id, term, "no leader for a while; starting an election");
                                metrics::counter!("midasflow_raft_election_nudges_total", "node" => label.clone()).increment(1);
                                let _ = group.raft.trigger().elect().await;
                            }
                            nudge_at = None;
                            false
                        }
                    },
                };
                if stopped {
                    if group.leadership.fetch_and(!1, Ordering::Relaxed) & 1 == 1 {
                        metrics::gauge!("midasflow_raft_leaders", "node" => label.clone(), "kind" => K::NAME)
                            .decrement(1.0);
                    }
                    return;
                }
            }
        });
    }

    /// The periodic pass over every replica (the node runs it every
    /// [`TEND_INTERVAL_MS`]): notes log growth as activity, makes idle groups quiet and
    /// wakes them (`quiet`: the liveness of a node and the idle threshold; `None` keeps
    /// every group ticking), and has a split child's first leader snapshot it and purge
    /// the log behind, so replicas added later start from the snapshot. Returns how many
    /// replicas are quiet.
    pub fn tend(&self, quiet: Option<(&dyn NodeView, u64)>) -> usize {
        let mut quiet_count = 0;
        let mut without_leader = 0;
        let mut campaigners = Vec::new();
        let mut introductions = Vec::new();
        let mut slots = SlotOutcomes::default();
        for group in self.all() {
            let (inputs, seen_active_at, compact, voter, raft_names_leader, introduce) = {
                let m = group.raft.metrics();
                let m = m.borrow();
                let last_log = m.last_log_index.unwrap_or(0);
                if group.seen_log_index.swap(last_log, Ordering::Relaxed) != last_log {
                    group.active_at_ms.store(group.now_ms(), Ordering::Relaxed);
                }
                let leading = m.state == ServerState::Leader;
                let membership = m.membership_config.membership();
                // From the configs directly: `voter_ids` and `learner_ids` build sets, and
                // this runs for every replica twice a second.
                let configs = membership.get_joint_config();
                let voter = configs.iter().any(|c| c.contains(&self.node_id));
                let settled = configs.len() == 1 && membership.nodes().count() == configs[0].len();
                let view = quiet.map(|(view, _)| view);
                // After a restart the vote comes back uncommitted: no leader is known until
                // the leader speaks, which a quiet one does not. The PD knows who leads.
                let hint = view.filter(|v| v.fresh()).and_then(|v| v.leader_hint(group.id));
                let leader = if self.config.planted_lasting_leader_hints {
                    m.current_leader.or(hint.map(|h| h.node))
                } else {
                    leader_to_follow(m.current_leader, hint, m.current_term)
                };
                let role = match leader {
                    _ if leading => Role::Leader,
                    // A leader outside its own configuration is about to step down.
                    Some(leader) if leader != self.node_id && voter && configs.iter().any(|c| c.contains(&leader)) => {
                        Role::Follower
                    }
                    _ => Role::Other,
                };
                let liveness = |node: u64| view.map_or(Liveness::Unknown, |v| v.liveness(node));
                let replicas_caught_up = m.replication.as_ref().is_none_or(|r| {
                    r.iter().all(|(id, matched)| {
                        matched.map(|l| l.index) == Some(last_log) || liveness(*id) == Liveness::Lost
                    })
                });
                let seen_active_at = group.active_at_ms.load(Ordering::Relaxed);
                let view_fresh = view.is_some_and(|v| v.fresh()) || self.config.planted_quiet_ignores_own_view;
                let starting = group.starting.load(Ordering::Relaxed);
                let inputs = Inputs {
                    role,
                    idle_ms: group.now_ms().saturating_sub(seen_active_at),
                    replicas_caught_up,
                    membership_settled: settled,
                    leader: leader.map_or(Liveness::Unknown, liveness),
                    wanted: group.wanted(seen_active_at),
                    view_fresh,
                    starting,
                    starting_for_ms: group.now_ms().saturating_sub(group.created_at_ms),
                    first_candidate: starting && view.is_some_and(|v| v.campaigns_first(group.id)),
                };
                // Starting ends once a leader is known. Past the grace, a replica that is
                // not its group's first candidate may campaign too, but first candidates
                // keep their place ahead of it in the rationed wakes.
                if role != Role::Other {
                    group.starting.store(false, Ordering::Relaxed);
                }
                without_leader += usize::from(!leading && leader.is_none());
                let applied = m.last_applied.map_or(0, |l| l.index);
                (
                    inputs,
                    seen_active_at,
                    leading && m.snapshot.is_none() && applied >= 1,
                    voter,
                    m.current_leader.is_some(),
                    // Follows only the placement driver's hint: see below.
                    leader
                        .filter(|l| {
                            role == Role::Follower && m.current_leader.is_none() && liveness(*l) == Liveness::Live
                        })
                        .and_then(|l| membership.get_node(&l).map(|n| (l, n.addr.clone()))),
                )
            };
            // A replica that follows only the placement driver's hint (its Raft state names
            // no leader: reopened, say) waits with its gate closed, and a quiet leader sends
            // it nothing: the leader's matched index for it is from before the restart, so
            // it counts it caught up. It asks that leader for a read index, which wakes the
            // leader's group; the heartbeats that follow make the leader known here.
            if let Some((leader, addr)) = introduce {
                // Bounded by the flag, not the adapted budget: an introduction is one read
                // index to a live leader, not an election, and must not wait behind one.
                if introductions.len() < self.config.max_campaigning_replicas
                    && !self.config.planted_hint_followers_never_ask
                    && group.due_for_introduction()
                {
                    introductions.push((group.id, leader, addr));
                }
            }
            if compact && group.view.range().is_some() && !group.compacting.swap(true, Ordering::AcqRel) {
                let group = group.clone();
                tokio::spawn(async move {
                    compact_after_split(group.clone()).await;
                    group.compacting.store(false, Ordering::Release);
                });
            }
            let decision = match quiet {
                Some((_, quiet_after_ms)) => decide(&inputs, quiet_after_ms),
                None => Decision::Active,
            };
            tracing::trace!(group = group.id, ?inputs, ?decision, "tend");
            let why = match inputs.role {
                Role::Follower if inputs.leader == Liveness::Lost => Wake::LeaderLost,
                _ => Wake::Activity,
            };
            // A ticking voter that knows no leader, or follows a lost one, campaigns:
            // those are rationed.
            let campaigns = decision == Decision::Active
                && voter
                && match inputs.role {
                    Role::Leader => false,
                    Role::Follower => inputs.leader == Liveness::Lost,
                    Role::Other => true,
                };
            if campaigns {
                let campaign = group.campaign(&inputs);
                slots.expired += usize::from(group.slot_expires_now(&campaign));
                campaigners.push((campaign, group, why, seen_active_at));
                continue;
            }
            if group.release_campaign_slot() && raft_names_leader {
                slots.won += 1;
            }
            let gate = match self.config.planted_leaderless_gates_open {
                true if inputs.role != Role::Leader && voter => Gate::Follower,
                _ => gate_without_campaign(inputs.role, raft_names_leader),
            };
            group.set_campaign_gate(gate);
            group.apply(decision, why, seen_active_at);
            quiet_count += usize::from(group.is_quiet());
        }
        let wants: Vec<Campaign> = campaigners.iter().map(|c| c.0).collect();
        let budget = {
            let mut budget = self.campaign_budget.lock().unwrap();
            *budget = adapt_campaign_budget(*budget, self.config.max_campaigning_replicas, slots, self.now_ms());
            budget.slots
        };
        let rationed = match self.config.planted_campaign_budget_ignored {
            true => self.config.max_campaigning_replicas,
            false => budget,
        };
        let chosen = ration_campaigns(&wants, rationed);
        // Those that lose their slot close their gates before others open theirs, so no
        // more than the budget are open for a slot at any moment.
        let (chosen, waiting): (Vec<_>, Vec<_>) = campaigners.into_iter().zip(chosen).partition(|(_, chosen)| *chosen);
        for ((_, group, why, seen_active_at), _) in waiting {
            // No campaign until its turn, whatever wakes its tick meanwhile.
            group.release_campaign_slot();
            group.set_campaign_gate(Gate::Closed);
            group.apply(Decision::Quiet, why, seen_active_at);
            self.config
                .probe
                .emit(|| NodeEvent::CampaignDeferred { group: group.id });
            quiet_count += usize::from(group.is_quiet());
        }
        // After the losers' gates closed and before the winners' open: the slots open at
        // any moment are within the budget last reported.
        self.config.probe.emit(|| NodeEvent::CampaignBudget {
            kind: K::NAME,
            slots: budget,
        });
        let campaigning = chosen.len();
        for ((_, group, why, seen_active_at), _) in chosen {
            group.hold_campaign_slot();
            group.set_campaign_gate(Gate::Slot);
            let wake = match self.config.planted_campaign_slots_without_wake {
                true => Decision::Keep,
                false => Decision::Active,
            };
            // A follower of a lost leader keeps its reason; a leaderless replica's turn is
            // not activity, so slot rotation stays apart in the counters.
            let why = match why {
                Wake::Activity => Wake::CampaignSlot,
                other => other,
            };
            group.apply(wake, why, seen_active_at);
            quiet_count += usize::from(group.is_quiet());
        }
        let timeout = Duration::from_millis(self.config.raft_config.election_timeout_max);
        for (group, leader, addr) in introductions {
            let sender = self.sender.clone();
            tokio::spawn(async move {
                // Any answer will do: the request woke the leader's group.
                if let Err(e) = read_index(&sender, leader, &addr, group, timeout).await {
                    tracing::debug!(group, leader, error = %e, "asking the hinted leader to make itself known");
                }
            });
        }
        metrics::gauge!("midasflow_raft_campaigning_replicas", "node" => self.label.clone(), "kind" => K::NAME)
            .set(campaigning as f64);
        metrics::gauge!("midasflow_raft_campaign_budget", "node" => self.label.clone(), "kind" => K::NAME)
            .set(budget as f64);
        metrics::gauge!("midasflow_raft_campaigns_waiting", "node" => self.label.clone(), "kind" => K::NAME)
            .set((wants.len() - campaigning) as f64);
        metrics::gauge!("midasflow_raft_groups_without_leader", "node" => self.label.clone(), "kind" => K::NAME)
            .set(without_leader as f64);
        // Commit points go out with the next log record; on an idle node there may be
        // none for a long time. A failure here fails every later log call too.
        if let Err(e) = self.flusher.wal().write_commits() {
            tracing::warn!(error = %e, "writing commit points to the log");
        }
        quiet_count
    }

    /// Stops a replica, deletes its data and leaves a tombstone at `epoch`, the shard epoch
    /// of the map that no longer assigns it here.
    pub async fn remove(&self, group: GroupId, epoch: u64) -> Result<(), RegistryError> {
        let _guard = self.lifecycle.lock().await;
        let storage = |e: sled::Error| RegistryError::Storage(e.to_string());
        self.tombstones
            .insert(group_prefix(group), &epoch.to_be_bytes())
            .map_err(storage)?;
        let removed = self.groups.write().unwrap().remove(&group);
        if let Some(removed) = removed {
            let _ = removed.raft.shutdown().await;
            // Applies already queued still run after the shutdown: the data goes only once
            // the state machine is gone, or a late apply would leave part of its state
            // behind for the next replica of the group here.
            let stopped = removed.state_machine_stopped.lock().unwrap().take();
            if let Some(stopped) = stopped {
                let wait = Duration::from_millis(STATE_MACHINE_STOP_WAIT_MS);
                if tokio::time::timeout(wait, stopped).await.is_err() {
                    tracing::error!(
                        group,
                        "the state machine did not stop in time; deleting its data anyway"
                    );
                }
            }
        }
        self.config.probe.emit(|| NodeEvent::ReplicaRemoved { group });
        self.destroy(group).await?;
        metrics::gauge!("midasflow_raft_groups", "node" => self.label.clone(), "kind" => K::NAME)
            .set(self.groups.read().unwrap().len() as f64);
        Ok(())
    }

    /// Deletes a stopped replica's data and its hosted record (its tombstone stays).
    async fn destroy(&self, group: GroupId) -> Result<(), RegistryError> {
        let storage = |e: sled::Error| RegistryError::Storage(e.to_string());
        // Its vote stays in the log: a replica created here again must not vote twice in a term.
        self.flusher
            .wal()
            .drop_group(group)
            .map_err(|e| RegistryError::Storage(e.to_string()))?;
        state_machine::destroy_state(&self.db, group).map_err(storage)?;
        self.hosted.remove(group_prefix(group)).map_err(storage)?;
        self.flusher
            .flush()
            .await
            .map_err(|e| RegistryError::Storage(e.to_string()))
    }

    /// Finishes, at start, the removal of a tombstoned replica that a crash cut short: its
    /// data must not wait for a replica of the group made here again, which would finish
    /// its last apply call (a split's redo record names the child's records) over state
    /// the group's other replicas have moved on from.
    pub async fn finish_removal(&self, group: GroupId) -> Result<(), RegistryError> {
        let _guard = self.lifecycle.lock().await;
        tracing::info!(group, "finishing the removal of a replica cut short by a restart");
        self.destroy(group).await
    }

    /// Stops every replica (clean shutdown); data stays on disk.
    pub async fn shutdown(&self) {
        let groups: Vec<Arc<Group<K>>> = std::mem::take(&mut *self.groups.write().unwrap())
            .into_values()
            .collect();
        for group in groups {
            let _ = group.raft.shutdown().await;
        }
        let _ = self.flusher.wal().write_commits();
        let _ = self.flusher.flush().await;
    }

    /// Writes [`first_entry`] into a new replica's log, durably, before openraft opens it
    /// ([`FirstEntry::Written`]). A log or vote already there (an earlier start got this
    /// far, or the replica was initialized) is left as it is. The hosted record goes
    /// first, as for any first entry: a crash after the write reopens the replica rather
    /// than leaving a log nothing removes.
    async fn write_first_entry(&self, group: GroupId, members: &BTreeMap<u64, BasicNode>) -> Result<(), RegistryError> {
        let wal = self.flusher.wal();
        let io = |e: std::io::Error| RegistryError::Storage(e.to_string());
        if wal.last(group).map_err(io)?.is_some() || wal.vote(group).is_some() || wal.purged(group).is_some() {
            return Ok(());
        }
        self.hosted
            .insert(group_prefix(group), &[])
            .map_err(|e| RegistryError::Storage(e.to_string()))?;
        // The sync below flushes the database first.
        self.flusher.mark_db_dirty();
        let entry =
            crate::codec::encode(&first_entry::<K>(members)).map_err(|e| RegistryError::Storage(e.to_string()))?;
        wal.append(group, &[(0, entry)]).map_err(io)?;
        self.flusher.sync_log().await.map_err(io)
    }

    /// Whether this node holds a whole state for `group` already.
    pub fn has_state(&self, group: GroupId) -> bool {
        state_machine::has_state::<K>(&self.db, group)
    }

    pub fn mark_awaiting_snapshot(&self, group: GroupId) {
        self.awaiting_snapshot.lock().unwrap().insert(group);
    }

    /// Whether `group` must refuse appends that would start its log from nothing.
    pub fn awaiting_snapshot(&self, group: &Group<K>) -> bool {
        let mut waiting = self.awaiting_snapshot.lock().unwrap();
        if waiting.contains(&group.id) && group.applied.snapshot_installs() > 0 {
            waiting.remove(&group.id);
        }
        waiting.contains(&group.id)
    }

    /// Bytes the database occupies on disk.
    pub fn storage_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// Snapshots a group and purges its log up to the snapshot (see `spawn_monitor`).
async fn compact_after_split<K: GroupKind>(group: Arc<Group<K>>) {
    const WAIT_FOR_SNAPSHOT_MS: u64 = 10_000;
    if group.raft.trigger().snapshot().await.is_err() {
        return;
    }
    let mut metrics = group.raft.metrics();
    let built = tokio::time::timeout(Duration::from_millis(WAIT_FOR_SNAPSHOT_MS), async {
        metrics
            .wait_for(|m| m.snapshot.is_some())
            .await
            .ok()
            .and_then(|m| m.snapshot.map(|s| s.index))
    })
    .await;
    let upto = built.ok().flatten();
    if let Some(upto) = upto {
        let _ = group.raft.trigger().purge_log(upto).await;
        tracing::debug!(group = group.id, upto, "split child snapshotted; log purged");
    }
}

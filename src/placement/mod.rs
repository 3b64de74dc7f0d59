//! The placement driver's state: the cluster map (docs/ARCHITECTURE.md), and the pure function that
//! applies PD commands to it.
//!
//! Invariants: shard ranges tile the ring `[0, 2^64)` with no gap and no overlap; the
//! routing version grows on every change to the map and never decreases; each shard's
//! epoch grows whenever its range or replicas change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod driver;
pub mod executor;
pub mod operator;
pub mod scheduler;
pub mod server;
pub mod store;

use operator::{
    FinishedOperator, Operator, OperatorKind, Outcome, ScheduleSettings, Step, MAX_FINISHED_OPERATORS,
    MAX_REASON_BYTES, MAX_RUNNING_OPERATORS,
};

pub type NodeId = u64;
pub type ShardId = u64;

/// The PD's own Raft group. Shard groups use their shard id, which starts at 1.
pub const PD_GROUP: u64 = 0;
/// Default number of shards cut at bootstrap (`--initial-shards`).
pub const DEFAULT_INITIAL_SHARDS: u32 = 8;
/// Bounds on a bootstrap command (`--initial-shards`, `--initial-cluster`), checked at
/// start-up and on every command a peer sends.
pub const MAX_INITIAL_SHARDS: u32 = 65_536;
pub const MAX_NODES: usize = 1_024;
/// Most shards a map may hold (splits stop proposing beyond it).
pub const MAX_SHARDS: usize = 1 << 20;

pub use crate::raft::network::MAX_NODE_ADDR_BYTES;
/// Replicas per shard, and the most PD voters.
pub const REPLICATION_FACTOR: usize = 3;

pub use crate::shard::key_hash;

/// The stored part of a node's state; `suspect` and `down` are derived from liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Up,
    Draining,
    Removed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub addr: String,
    pub state: NodeState,
}

/// A shard: the half-open hash range `[start, end)`, where `end == None` means `2^64`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub id: ShardId,
    pub start: u64,
    pub end: Option<u64>,
    pub replicas: Vec<NodeId>,
    /// A node being added by a running operator: it may host the group (and catch up)
    /// before it votes.
    pub learners: Vec<NodeId>,
    /// Grows on every change of the shard's range or membership (replicas or learners).
    pub epoch: u64,
    /// The shard this one was split from: a node holding a replica of the parent creates
    /// its replica of this one only once its parent replica has applied the split.
    pub parent: Option<ShardId>,
}

impl ShardInfo {
    pub fn contains(&self, hash: u64) -> bool {
        hash >= self.start && self.end.is_none_or(|end| hash < end)
    }

    /// `end` as a number, with the ring's end as `2^64`.
    pub fn end_u128(&self) -> u128 {
        self.end.map_or(1u128 << 64, u128::from)
    }

    /// Whether `node` holds (or is receiving) a replica of this shard.
    pub fn hosts(&self, node: NodeId) -> bool {
        self.replicas.contains(&node) || self.learners.contains(&node)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// Grows on every change that routing depends on (nodes, shards, PD voters).
    pub routing_version: u64,
    /// Grows on every change at all (operators and settings too): nodes install a copy
    /// only if its revision is newer.
    pub revision: u64,
    /// Chosen at bootstrap, never changed: every internal RPC carries it (0 = not yet).
    pub cluster_id: u128,
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Each member's incarnation (its data dir's random id), recorded when it first
    /// registers and never overwritten: a node that comes back with another one lost its
    /// disk and must not act as that member again.
    pub incarnations: BTreeMap<NodeId, u128>,
    pub shards: BTreeMap<ShardId, ShardInfo>,
    pub next_shard_id: ShardId,
    /// The PD group itself, as a pseudo-shard (id 0, no range): its voters (chosen at
    /// bootstrap: the lowest ids, up to three), learners and epoch, so the operators that
    /// move shard replicas also replace PD voters.
    pub pd_group: ShardInfo,
    pub settings: ScheduleSettings,
    pub operators: BTreeMap<u64, Operator>,
    /// The last finished operators, oldest first, at most [`MAX_FINISHED_OPERATORS`].
    pub finished: Vec<FinishedOperator>,
    pub next_operator_id: u64,
    /// The shards' starts, sorted, for routing by binary search; built on first use.
    #[serde(skip)]
    range_index: RangeIndex,
}

/// Shard starts in ring order, each with its shard, built once from a map. Routing checks
/// what it finds against the map and scans the map when the index is stale (a map changed
/// in place after the index was built), so a stale index costs time, never a wrong shard.
/// Not part of the map's value: a clone starts without one and every two are equal.
#[derive(Default)]
struct RangeIndex(std::sync::OnceLock<Vec<(u64, ShardId)>>);

impl Clone for RangeIndex {
    fn clone(&self) -> Self {
        RangeIndex::default()
    }
}

impl PartialEq for RangeIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for RangeIndex {}

impl std::fmt::Debug for RangeIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RangeIndex")
    }
}

/// Commands replicated through the PD group's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PdCommand {
    /// Records the initial nodes and cuts the ring into `initial_shards` equal shards.
    /// Applied once; later copies (from another PD leader racing to bootstrap) change nothing.
    Bootstrap {
        nodes: Vec<(NodeId, String)>,
        initial_shards: u32,
        /// Random, drawn by the proposing PD leader.
        cluster_id: u128,
        settings: ScheduleSettings,
    },
    /// Records a member's incarnation, once.
    Register {
        node: NodeId,
        incarnation: u128,
    },
    /// Adds a node started with `--join` (or updates the address of one that joined before
    /// with the same incarnation). A removed id is never reused.
    Join {
        node: NodeId,
        addr: String,
        incarnation: u128,
    },
    /// Drain a node (`Draining`), cancel a drain (`Up`), or retire it for good (`Removed`).
    SetNodeState {
        node: NodeId,
        state: NodeState,
    },
    /// Records a new operator; refused if the shard already has one or the shard changed
    /// since the operator was planned.
    StartOperator {
        kind: OperatorKind,
        origin: operator::Origin,
        reason: String,
        shard_epoch: u64,
        now_ms: u64,
    },
    /// Lists the operator's target as a learner of its shard, so the target may host it.
    ListLearner {
        operator: u64,
        now_ms: u64,
    },
    /// Moves an operator to a later step.
    AdvanceOperator {
        operator: u64,
        step: Step,
        now_ms: u64,
    },
    /// The group's voters are now `replicas` (committed in the group itself): the map
    /// follows, the learner list empties, and the shard's epoch grows.
    SetReplicas {
        operator: u64,
        replicas: Vec<NodeId>,
        now_ms: u64,
    },
    /// Ends an operator; a failed or cancelled one takes its learner off the map.
    FinishOperator {
        operator: u64,
        outcome: Outcome,
        now_ms: u64,
    },
    SetSettings {
        settings: ScheduleSettings,
    },
    /// The split operator's parent applied the split: the parent's range ends at the
    /// split point and the child takes the rest, on the same replicas.
    SplitShard {
        operator: u64,
        now_ms: u64,
    },
    /// As `SplitShard`, with the child's replica on `first` listed first, so it is the one
    /// that campaigns at once (`Node::first_entry`). A later variant, not a new field, so
    /// PD logs written before it still decode.
    SplitShardFirst {
        operator: u64,
        now_ms: u64,
        first: NodeId,
    },
}

fn check_addr(addr: &str) -> Result<(), String> {
    if addr.is_empty() || addr.len() > MAX_NODE_ADDR_BYTES {
        return Err(format!("a node address is empty or over {MAX_NODE_ADDR_BYTES} bytes"));
    }
    Ok(())
}

fn check_reason(reason: &str) -> Result<(), String> {
    if reason.len() > MAX_REASON_BYTES {
        return Err(format!("a reason over {MAX_REASON_BYTES} bytes"));
    }
    Ok(())
}

impl PdCommand {
    /// Checks the bounds a node's own CLI enforces, for commands arriving from peers.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            PdCommand::Register { incarnation, .. } => {
                if *incarnation == 0 {
                    return Err("incarnation 0 is not an incarnation".into());
                }
                Ok(())
            }
            PdCommand::Bootstrap {
                nodes,
                initial_shards,
                cluster_id,
                settings,
            } => {
                if *cluster_id == 0 {
                    return Err("cluster id 0 is not a cluster id".into());
                }
                if !(1..=MAX_INITIAL_SHARDS).contains(initial_shards) {
                    return Err(format!(
                        "initial_shards {initial_shards} is outside 1..={MAX_INITIAL_SHARDS}"
                    ));
                }
                if nodes.is_empty() || nodes.len() > MAX_NODES {
                    return Err(format!("{} nodes; a cluster has 1 to {MAX_NODES}", nodes.len()));
                }
                nodes.iter().try_for_each(|(_, addr)| check_addr(addr))?;
                settings.validate()
            }
            PdCommand::Join { addr, incarnation, .. } => {
                if *incarnation == 0 {
                    return Err("incarnation 0 is not an incarnation".into());
                }
                check_addr(addr)
            }
            PdCommand::SetNodeState { .. }
            | PdCommand::ListLearner { .. }
            | PdCommand::AdvanceOperator { .. }
            | PdCommand::SplitShard { .. }
            | PdCommand::SplitShardFirst { .. } => Ok(()),
            PdCommand::StartOperator { reason, .. } => check_reason(reason),
            PdCommand::SetReplicas { replicas, .. } => {
                if replicas.is_empty() || replicas.len() > REPLICATION_FACTOR {
                    return Err(format!(
                        "{} replicas; a shard has 1 to {REPLICATION_FACTOR}",
                        replicas.len()
                    ));
                }
                Ok(())
            }
            PdCommand::FinishOperator { outcome, .. } => match outcome {
                Outcome::Succeeded => Ok(()),
                Outcome::Failed { reason } | Outcome::Cancelled { reason } => check_reason(reason),
            },
            PdCommand::SetSettings { settings } => settings.validate(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PdResult {
    Bootstrapped {
        routing_version: u64,
    },
    Registered {
        routing_version: u64,
    },
    AlreadyBootstrapped {
        routing_version: u64,
    },
    OperatorStarted {
        id: u64,
    },
    /// The command took effect (or had already: every command is idempotent).
    Done {
        revision: u64,
    },
    Rejected {
        reason: String,
    },
}

fn rejected(reason: impl Into<String>) -> PdResult {
    PdResult::Rejected { reason: reason.into() }
}

impl ClusterMap {
    pub fn is_bootstrapped(&self) -> bool {
        !self.shards.is_empty()
    }

    /// The shard owning `hash`. Shards tile the ring, so this finds one once bootstrapped.
    /// The shard whose range holds `hash`: a binary search over the shards' starts.
    pub fn shard_for_hash(&self, hash: u64) -> Option<&ShardInfo> {
        let index = self.range_index.0.get_or_init(|| {
            let mut starts: Vec<(u64, ShardId)> = self.shards.values().map(|s| (s.start, s.id)).collect();
            starts.sort_unstable();
            starts
        });
        let found = index
            .partition_point(|(start, _)| *start <= hash)
            .checked_sub(1)
            .and_then(|at| self.shards.get(&index[at].1))
            .filter(|shard| shard.contains(hash));
        found.or_else(|| self.shards.values().find(|s| s.contains(hash)))
    }

    pub fn shard_for_key(&self, key: &[u8]) -> Option<&ShardInfo> {
        self.shard_for_hash(key_hash(key))
    }

    /// A shard, or the PD group for [`PD_GROUP`].
    pub fn group(&self, id: ShardId) -> Option<&ShardInfo> {
        if id == PD_GROUP {
            return self.is_bootstrapped().then_some(&self.pd_group);
        }
        self.shards.get(&id)
    }

    fn group_mut(&mut self, id: ShardId) -> Option<&mut ShardInfo> {
        if id == PD_GROUP {
            return self.is_bootstrapped().then_some(&mut self.pd_group);
        }
        self.shards.get_mut(&id)
    }

    /// The PD group's voters.
    pub fn pd_voters(&self) -> &[NodeId] {
        &self.pd_group.replicas
    }

    /// The shards that `node` holds a replica of, or is receiving one of (a learner).
    pub fn shards_on(&self, node: NodeId) -> impl Iterator<Item = &ShardInfo> {
        self.shards.values().filter(move |s| s.hosts(node))
    }

    pub fn node_addr(&self, node: NodeId) -> Option<&str> {
        self.nodes.get(&node).map(|n| n.addr.as_str())
    }

    /// Checks that the shards tile the ring exactly; an error names the first fault.
    pub fn check_tiling(&self) -> Result<(), String> {
        if self.shards.is_empty() {
            return Ok(());
        }
        let mut ranges: Vec<(u128, u128, ShardId)> = self
            .shards
            .values()
            .map(|s| (u128::from(s.start), s.end_u128(), s.id))
            .collect();
        ranges.sort();
        let mut expected_start = 0u128;
        for (start, end, id) in ranges {
            if start != expected_start {
                return Err(format!("shard {id} starts at {start:#x}, expected {expected_start:#x}"));
            }
            if end <= start {
                return Err(format!("shard {id} is empty or inverted"));
            }
            expected_start = end;
        }
        if expected_start != 1u128 << 64 {
            return Err(format!("ring ends at {expected_start:#x}, not 2^64"));
        }
        Ok(())
    }

    /// Applies one PD command. Pure: the same map and command give the same result.
    /// Every command that changes the map grows its revision; routing changes also grow
    /// the routing version.
    pub fn apply(&mut self, command: &PdCommand) -> PdResult {
        let before = (self.routing_version, self.revision);
        let result = self.apply_inner(command);
        if self.routing_version != before.0 && self.revision == before.1 {
            self.revision += 1;
        }
        result
    }

    /// Marks a change that routing does not depend on.
    fn touched(&mut self) -> PdResult {
        self.revision += 1;
        PdResult::Done {
            revision: self.revision,
        }
    }

    /// Marks a change routing depends on.
    fn rerouted(&mut self) -> PdResult {
        self.routing_version += 1;
        self.touched()
    }

    fn apply_inner(&mut self, command: &PdCommand) -> PdResult {
        match command {
            PdCommand::Register { node, incarnation } => {
                if !self.nodes.contains_key(node) {
                    return PdResult::Rejected {
                        reason: format!("node {node} is not a member"),
                    };
                }
                match self.incarnations.get(node) {
                    Some(known) if known == incarnation => PdResult::Registered {
                        routing_version: self.routing_version,
                    },
                    Some(known) => PdResult::Rejected {
                        reason: format!(
                            "node {node} is registered with incarnation {known:032x}, not {incarnation:032x}"
                        ),
                    },
                    None => {
                        self.incarnations.insert(*node, *incarnation);
                        self.rerouted();
                        PdResult::Registered {
                            routing_version: self.routing_version,
                        }
                    }
                }
            }
            PdCommand::Bootstrap {
                nodes,
                initial_shards,
                cluster_id,
                settings,
            } => {
                if self.is_bootstrapped() {
                    return PdResult::AlreadyBootstrapped {
                        routing_version: self.routing_version,
                    };
                }
                if nodes.is_empty() || *initial_shards == 0 || *cluster_id == 0 {
                    return PdResult::Rejected {
                        reason: "bootstrap needs at least one node and one shard".into(),
                    };
                }
                let mut node_ids: Vec<NodeId> = nodes.iter().map(|(id, _)| *id).collect();
                node_ids.sort_unstable();
                node_ids.dedup();
                for (id, addr) in nodes {
                    self.nodes.insert(
                        *id,
                        NodeInfo {
                            id: *id,
                            addr: addr.clone(),
                            state: NodeState::Up,
                        },
                    );
                }
                let ring = 1u128 << 64;
                let count = u128::from(*initial_shards);
                let replicas = REPLICATION_FACTOR.min(node_ids.len());
                for i in 0..*initial_shards as usize {
                    let start = (i as u128 * ring / count) as u64;
                    let end = ((i as u128 + 1) * ring / count) as u64;
                    let id = i as ShardId + 1;
                    // Rotating the start spreads replicas (and so the initial leaders, which
                    // are the first replica) evenly over the nodes.
                    let chosen = (0..replicas).map(|k| node_ids[(i + k) % node_ids.len()]).collect();
                    self.shards.insert(
                        id,
                        ShardInfo {
                            id,
                            start,
                            end: (i + 1 < *initial_shards as usize).then_some(end),
                            replicas: chosen,
                            learners: Vec::new(),
                            epoch: 1,
                            parent: None,
                        },
                    );
                }
                self.next_shard_id = u64::from(*initial_shards) + 1;
                self.cluster_id = *cluster_id;
                self.pd_group = ShardInfo {
                    id: PD_GROUP,
                    start: 0,
                    end: None,
                    replicas: node_ids.iter().copied().take(REPLICATION_FACTOR).collect(),
                    learners: Vec::new(),
                    epoch: 1,
                    parent: None,
                };
                self.settings = settings.clone();
                self.next_operator_id = 1;
                self.routing_version += 1;
                PdResult::Bootstrapped {
                    routing_version: self.routing_version,
                }
            }
            PdCommand::Join {
                node,
                addr,
                incarnation,
            } => self.join(*node, addr, *incarnation),
            PdCommand::SetNodeState { node, state } => self.set_node_state(*node, *state),
            PdCommand::StartOperator {
                kind,
                origin,
                reason,
                shard_epoch,
                now_ms,
            } => self.start_operator(kind, *origin, reason, *shard_epoch, *now_ms),
            PdCommand::ListLearner { operator, now_ms } => self.list_learner(*operator, *now_ms),
            PdCommand::AdvanceOperator { operator, step, now_ms } => {
                let Some(op) = self.operators.get_mut(operator) else {
                    return rejected(format!("operator {operator} is not running"));
                };
                if op.step >= *step {
                    return PdResult::Done {
                        revision: self.revision,
                    };
                }
                op.step = *step;
                op.step_ms = *now_ms;
                self.touched()
            }
            PdCommand::SetReplicas {
                operator,
                replicas,
                now_ms,
            } => self.set_replicas(*operator, replicas, *now_ms),
            PdCommand::FinishOperator {
                operator,
                outcome,
                now_ms,
            } => self.finish_operator(*operator, outcome.clone(), *now_ms),
            PdCommand::SplitShard { operator, now_ms } => self.split_shard(*operator, *now_ms, None),
            PdCommand::SplitShardFirst {
                operator,
                now_ms,
                first,
            } => self.split_shard(*operator, *now_ms, Some(*first)),
            PdCommand::SetSettings { settings } => {
                if settings.validate().is_err() || !self.is_bootstrapped() {
                    return rejected("invalid settings, or no cluster yet");
                }
                self.settings = settings.clone();
                self.touched()
            }
        }
    }

    fn join(&mut self, node: NodeId, addr: &str, incarnation: u128) -> PdResult {
        if !self.is_bootstrapped() {
            return rejected("the cluster is not bootstrapped yet");
        }
        if let Some(known) = self.incarnations.get(&node) {
            if *known != incarnation {
                return rejected(format!(
                    "node {node} is registered with incarnation {known:032x}, not {incarnation:032x}: \
                     a node that lost its data joins under a new id"
                ));
            }
        }
        match self.nodes.get(&node) {
            Some(info) if info.state == NodeState::Removed => {
                return rejected(format!("node {node} was removed; ids are never reused"))
            }
            Some(info) if info.addr == addr && self.incarnations.contains_key(&node) => {
                return PdResult::Done {
                    revision: self.revision,
                }
            }
            Some(_) => {}
            None if self.nodes.len() >= MAX_NODES => return rejected(format!("the cluster has {MAX_NODES} nodes")),
            None => {}
        }
        let state = self.nodes.get(&node).map_or(NodeState::Up, |n| n.state);
        self.nodes.insert(
            node,
            NodeInfo {
                id: node,
                addr: addr.to_string(),
                state,
            },
        );
        self.incarnations.insert(node, incarnation);
        self.rerouted()
    }

    fn set_node_state(&mut self, node: NodeId, state: NodeState) -> PdResult {
        let Some(info) = self.nodes.get(&node) else {
            return rejected(format!("node {node} is not a member"));
        };
        match (info.state, state) {
            (current, wanted) if current == wanted => PdResult::Done {
                revision: self.revision,
            },
            (NodeState::Removed, _) => rejected(format!("node {node} was removed for good")),
            (_, NodeState::Removed) if self.pd_group.hosts(node) => rejected(format!(
                "node {node} is a placement-driver voter; its seat must move to another node first (drain it, or, \
                 if it is down, wait until it has been down for down_after_secs and another node can take the seat)"
            )),
            _ => {
                self.nodes.get_mut(&node).expect("checked above").state = state;
                self.rerouted()
            }
        }
    }

    fn start_operator(
        &mut self,
        kind: &OperatorKind,
        origin: operator::Origin,
        reason: &str,
        shard_epoch: u64,
        now_ms: u64,
    ) -> PdResult {
        let Some(shard) = self.group(kind.shard()) else {
            return rejected(format!("shard {} does not exist", kind.shard()));
        };
        if shard.epoch != shard_epoch {
            return rejected(format!(
                "shard {} changed since the operator was planned (epoch {} now, {shard_epoch} planned)",
                shard.id, shard.epoch
            ));
        }
        if let Some(running) = self.operators.values().find(|o| o.kind.shard() == shard.id) {
            return rejected(format!(
                "shard {} already has operator {} running",
                shard.id, running.id
            ));
        }
        if self.operators.len() >= MAX_RUNNING_OPERATORS {
            return rejected(format!("{MAX_RUNNING_OPERATORS} operators are running"));
        }
        let usable = |node: &NodeId| self.nodes.get(node).is_some_and(|n| n.state == NodeState::Up);
        let valid = match kind {
            OperatorKind::MoveReplica { from, to, .. } => {
                shard.replicas.contains(from) && !shard.hosts(*to) && usable(to)
            }
            OperatorKind::AddReplica { to, .. } => {
                shard.replicas.len() < REPLICATION_FACTOR && !shard.hosts(*to) && usable(to)
            }
            OperatorKind::TransferLeader { to, .. } => shard.replicas.contains(to),
            OperatorKind::Split { at, .. } => {
                shard.id != PD_GROUP && *at > shard.start && u128::from(*at) < shard.end_u128()
            }
        };
        if !valid {
            return rejected(format!(
                "{kind:?} does not fit shard {} (replicas {:?})",
                shard.id, shard.replicas
            ));
        }
        let id = self.next_operator_id.max(1);
        self.next_operator_id = id + 1;
        let mut kind = kind.clone();
        if let OperatorKind::Split { child, .. } = &mut kind {
            // Allocated here, once: a repeated proposal gets another operator and id.
            *child = self.next_shard_id;
            self.next_shard_id += 1;
        }
        self.operators.insert(
            id,
            Operator {
                id,
                kind,
                origin,
                reason: reason.to_string(),
                step: Step::Created,
                shard_epoch,
                created_ms: now_ms,
                step_ms: now_ms,
            },
        );
        self.touched();
        PdResult::OperatorStarted { id }
    }

    fn list_learner(&mut self, operator: u64, now_ms: u64) -> PdResult {
        let Some(op) = self.operators.get(&operator).cloned() else {
            return rejected(format!("operator {operator} is not running"));
        };
        let Some(target) = op.kind.target() else {
            return rejected(format!("operator {operator} adds no replica"));
        };
        if op.step >= Step::LearnerListed {
            return PdResult::Done {
                revision: self.revision,
            };
        }
        let Some(shard) = self.group_mut(op.kind.shard()) else {
            return rejected("the operator's shard is gone");
        };
        if !shard.learners.contains(&target) {
            shard.learners.push(target);
            shard.epoch += 1;
        }
        let op = self.operators.get_mut(&operator).expect("looked up above");
        op.step = Step::LearnerListed;
        op.step_ms = now_ms;
        self.rerouted()
    }

    fn set_replicas(&mut self, operator: u64, replicas: &[NodeId], now_ms: u64) -> PdResult {
        let Some(op) = self.operators.get(&operator).cloned() else {
            return rejected(format!("operator {operator} is not running"));
        };
        let mut distinct = replicas.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != replicas.len() || !replicas.iter().all(|r| self.nodes.contains_key(r)) {
            return rejected(format!("replicas {replicas:?} repeat a node or name a stranger"));
        }
        let revision = self.revision;
        let Some(shard) = self.group_mut(op.kind.shard()) else {
            return rejected("the operator's shard is gone");
        };
        if shard.replicas == replicas && shard.learners.is_empty() {
            return PdResult::Done { revision };
        }
        shard.replicas = replicas.to_vec();
        shard.learners.clear();
        shard.epoch += 1;
        let op = self.operators.get_mut(&operator).expect("looked up above");
        op.step = op.step.max(Step::Promoted);
        op.step_ms = now_ms;
        self.rerouted()
    }

    fn finish_operator(&mut self, operator: u64, outcome: Outcome, now_ms: u64) -> PdResult {
        let Some(op) = self.operators.remove(&operator) else {
            return PdResult::Done {
                revision: self.revision,
            };
        };
        let mut rerouted = false;
        if let (Some(target), Some(shard)) = (op.kind.target(), self.group_mut(op.kind.shard())) {
            // A learner left behind by an operator that did not finish its move.
            if shard.learners.contains(&target) {
                shard.learners.retain(|l| *l != target);
                shard.epoch += 1;
                rerouted = true;
            }
        }
        self.finished.push(FinishedOperator {
            operator: op,
            outcome,
            finished_ms: now_ms,
        });
        if self.finished.len() > MAX_FINISHED_OPERATORS {
            let excess = self.finished.len() - MAX_FINISHED_OPERATORS;
            self.finished.drain(..excess);
        }
        if rerouted {
            self.rerouted()
        } else {
            self.touched()
        }
    }

    fn split_shard(&mut self, operator: u64, now_ms: u64, first: Option<NodeId>) -> PdResult {
        let Some(op) = self.operators.get(&operator).cloned() else {
            return rejected(format!("operator {operator} is not running"));
        };
        let OperatorKind::Split { shard, at, child } = op.kind else {
            return rejected(format!("operator {operator} is not a split"));
        };
        if self.shards.contains_key(&child) {
            return PdResult::Done {
                revision: self.revision,
            };
        }
        if self.shards.len() >= MAX_SHARDS {
            return rejected(format!("the map holds {MAX_SHARDS} shards"));
        }
        let Some(parent) = self.shards.get_mut(&shard) else {
            return rejected(format!("shard {shard} is gone"));
        };
        if at <= parent.start || u128::from(at) >= parent.end_u128() {
            return rejected(format!("{at:#x} is not inside shard {shard}"));
        }
        let mut replicas = parent.replicas.clone();
        if let Some(index) = first.and_then(|first| replicas.iter().position(|r| *r == first)) {
            replicas[..=index].rotate_right(1);
        }
        let child_info = ShardInfo {
            id: child,
            start: at,
            end: parent.end,
            replicas,
            learners: Vec::new(),
            epoch: 1,
            parent: Some(shard),
        };
        parent.end = Some(at);
        parent.epoch += 1;
        self.shards.insert(child, child_info);
        let op = self.operators.get_mut(&operator).expect("looked up above");
        op.step = Step::Promoted;
        op.step_ms = now_ms;
        self.rerouted()
    }

    /// Whether `node` belongs to the cluster (removed nodes do not).
    pub fn is_active_member(&self, node: NodeId) -> bool {
        self.nodes.get(&node).is_some_and(|n| n.state != NodeState::Removed)
    }
}

/// The PD voters for an initial cluster: the lowest ids, up to [`REPLICATION_FACTOR`].
pub fn pd_voters(initial_cluster: &BTreeMap<NodeId, String>) -> Vec<NodeId> {
    initial_cluster.keys().copied().take(REPLICATION_FACTOR).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn bootstrap(nodes: u64, shards: u32) -> ClusterMap {
        let mut map = ClusterMap::default();
        let nodes = (1..=nodes).map(|id| (id, format!("127.0.0.1:{}", 7000 + id))).collect();
        let result = map.apply(&PdCommand::Bootstrap {
            nodes,
            initial_shards: shards,
            cluster_id: 0xc1,
            settings: ScheduleSettings::default(),
        });
        assert_eq!(result, PdResult::Bootstrapped { routing_version: 1 });
        map
    }

    #[test]
    fn bootstrap_tiles_the_ring_and_is_idempotent() {
        for shards in [1, 3, 8, 7, 64] {
            let mut map = bootstrap(3, shards);
            map.check_tiling().unwrap();
            assert_eq!(map.shards.len(), shards as usize);
            let again = map.apply(&PdCommand::Bootstrap {
                nodes: vec![(9, "x".into())],
                initial_shards: 2,
                cluster_id: 0xc2,
                settings: ScheduleSettings::default(),
            });
            assert_eq!(map.cluster_id, 0xc1, "the first bootstrap's cluster id stays");
            assert_eq!(again, PdResult::AlreadyBootstrapped { routing_version: 1 });
            assert_eq!(map.shards.len(), shards as usize);
            assert!(!map.nodes.contains_key(&9));
        }
    }

    /// A member's incarnation is recorded once and never replaced: a node that comes back
    /// with a new data dir is refused, not re-registered.
    #[test]
    fn incarnations_register_once_and_never_change() {
        let mut map = bootstrap(3, 2);
        let register = |node, incarnation| PdCommand::Register { node, incarnation };
        assert_eq!(map.apply(&register(2, 7)), PdResult::Registered { routing_version: 2 });
        assert_eq!(map.apply(&register(2, 7)), PdResult::Registered { routing_version: 2 });
        assert!(matches!(map.apply(&register(2, 8)), PdResult::Rejected { .. }));
        assert!(matches!(map.apply(&register(9, 1)), PdResult::Rejected { .. }));
        assert_eq!(map.incarnations.get(&2), Some(&7));
        assert_eq!(map.routing_version, 2);
    }

    #[test]
    fn every_hash_maps_to_exactly_one_shard() {
        let map = bootstrap(3, 8);
        for hash in [
            0,
            1,
            u64::MAX / 8 - 1,
            u64::MAX / 8,
            u64::MAX / 2,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let owners = map.shards.values().filter(|s| s.contains(hash)).count();
            assert_eq!(owners, 1, "hash {hash:#x}");
        }
        assert_eq!(map.shard_for_hash(0).unwrap().id, 1);
        assert_eq!(map.shard_for_hash(u64::MAX).unwrap().id, 8);
    }

    proptest::proptest! {
        /// Routing by binary search finds the shard a scan of the map finds, for maps cut
        /// anywhere, and still after the map changed in place under an index built before.
        #[test]
        fn routing_finds_the_shard_a_scan_finds(
            shards in 1u32..40,
            cut in proptest::prelude::any::<u64>(),
            hashes in proptest::collection::vec(proptest::prelude::any::<u64>(), 1..64),
        ) {
            let scan = |map: &ClusterMap, hash: u64| map.shards.values().find(|s| s.contains(hash)).map(|s| s.id);
            let mut map = bootstrap(3, shards);
            for &hash in hashes.iter().chain(&[0, u64::MAX, cut]) {
                proptest::prop_assert_eq!(map.shard_for_hash(hash).map(|s| s.id), scan(&map, hash));
            }
            // Cut the shard holding `cut` in place, as a split does, index already built.
            let owner = map.shard_for_hash(cut).unwrap().clone();
            if cut > owner.start {
                let child = map.next_shard_id;
                map.next_shard_id += 1;
                map.shards.get_mut(&owner.id).unwrap().end = Some(cut);
                map.shards.insert(child, ShardInfo { id: child, start: cut, end: owner.end, ..owner.clone() });
            }
            for &hash in hashes.iter().chain(&[0, u64::MAX, cut, cut.saturating_sub(1)]) {
                proptest::prop_assert_eq!(map.shard_for_hash(hash).map(|s| s.id), scan(&map, hash));
                proptest::prop_assert_eq!(map.clone().shard_for_hash(hash).map(|s| s.id), scan(&map, hash));
            }
        }
    }

    #[test]
    fn replicas_spread_evenly_over_more_than_three_nodes() {
        let map = bootstrap(5, 10);
        for shard in map.shards.values() {
            let mut replicas = shard.replicas.clone();
            replicas.dedup();
            assert_eq!(replicas.len(), 3);
        }
        for node in 1..=5 {
            assert_eq!(map.shards_on(node).count(), 6, "node {node}");
            let leads = map.shards.values().filter(|s| s.replicas[0] == node).count();
            assert_eq!(leads, 2);
        }
    }

    #[test]
    fn tiling_check_finds_gaps_and_overlaps() {
        let mut map = bootstrap(3, 4);
        map.shards.get_mut(&2).unwrap().start += 1;
        assert!(map.check_tiling().is_err());
        let mut map = bootstrap(3, 4);
        map.shards.get_mut(&4).unwrap().end = Some(u64::MAX);
        assert!(map.check_tiling().is_err());
    }

    #[test]
    fn map_encoding_round_trips() {
        // With every enum the PD log carries: bincode cannot decode internally tagged ones.
        let mut map = bootstrap(4, 8);
        let start = |kind| PdCommand::StartOperator {
            kind,
            origin: operator::Origin::Scheduler,
            reason: "r".into(),
            shard_epoch: 1,
            now_ms: 5,
        };
        map.apply(&start(OperatorKind::TransferLeader { shard: 1, to: 2 }));
        map.apply(&start(OperatorKind::MoveReplica {
            shard: 2,
            from: 2,
            to: 1,
        }));
        map.apply(&PdCommand::FinishOperator {
            operator: 1,
            outcome: Outcome::Failed { reason: "x".into() },
            now_ms: 6,
        });
        assert_eq!((map.operators.len(), map.finished.len()), (1, 1));
        let back: ClusterMap = codec::decode(&codec::encode(&map).unwrap()).unwrap();
        assert_eq!(back, map);
    }
}

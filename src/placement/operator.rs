//! Operators: the changes the placement driver carries out on shards, step by step, with
//! the reason each was started. Recorded in the PD log so a new PD leader resumes or
//! cancels what its predecessor started. Pure data: the executor on the PD leader performs
//! the steps.

use serde::{Deserialize, Serialize};

use super::{NodeId, ShardId};

/// Running operators are few (bounded by the settings' limits); this bounds what a PD
/// command may claim and what the map carries.
pub const MAX_RUNNING_OPERATORS: usize = 64;
/// Finished operators kept for `GET /v1/operators`, newest last.
pub const MAX_FINISHED_OPERATORS: usize = 32;
/// Longest reason text an operator may carry (bytes).
pub const MAX_REASON_BYTES: usize = 512;

/// What an operator changes. (Externally tagged: the PD log's bincode cannot decode
/// internally tagged enums; the API renders its own JSON.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorKind {
    /// Replace the replica of `shard` on `from` with a new one on `to` (learner, catch-up,
    /// joint consensus, then `from` is removed and tombstoned).
    MoveReplica { shard: ShardId, from: NodeId, to: NodeId },
    /// Add a replica on `to` for a shard that lost one (no `from` to remove).
    AddReplica { shard: ShardId, to: NodeId },
    /// Move the shard's Raft leadership to `to`, an existing voter.
    TransferLeader { shard: ShardId, to: NodeId },
    /// Split the shard at hash `at`: `[at, end)` becomes shard `child` on the same replicas
    /// (the child id is allocated when the operator starts; proposals carry 0).
    Split { shard: ShardId, at: u64, child: ShardId },
}

impl OperatorKind {
    pub fn shard(&self) -> ShardId {
        match self {
            OperatorKind::MoveReplica { shard, .. }
            | OperatorKind::AddReplica { shard, .. }
            | OperatorKind::TransferLeader { shard, .. }
            | OperatorKind::Split { shard, .. } => *shard,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            OperatorKind::MoveReplica { .. } => "move_replica",
            OperatorKind::AddReplica { .. } => "add_replica",
            OperatorKind::TransferLeader { .. } => "transfer_leader",
            OperatorKind::Split { .. } => "split",
        }
    }

    /// The node that receives a snapshot (a new replica), if any.
    pub fn target(&self) -> Option<NodeId> {
        match self {
            OperatorKind::MoveReplica { to, .. } | OperatorKind::AddReplica { to, .. } => Some(*to),
            OperatorKind::TransferLeader { .. } | OperatorKind::Split { .. } => None,
        }
    }

    /// The operator as the API shows it: `{"type", "shard", "from"?, "to"}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::json!({"type": self.name(), "shard": self.shard()});
        match self {
            OperatorKind::MoveReplica { from, to, .. } => {
                value["from"] = (*from).into();
                value["to"] = (*to).into();
            }
            OperatorKind::AddReplica { to, .. } | OperatorKind::TransferLeader { to, .. } => value["to"] = (*to).into(),
            OperatorKind::Split { at, child, .. } => {
                value["at"] = format!("{at:#018x}").into();
                value["child"] = (*child).into();
            }
        }
        value
    }

    /// Nodes whose load the operator adds to (for the per-node limit).
    pub fn nodes(&self) -> Vec<NodeId> {
        match self {
            OperatorKind::MoveReplica { from, to, .. } => vec![*from, *to],
            OperatorKind::AddReplica { to, .. } | OperatorKind::TransferLeader { to, .. } => vec![*to],
            // Local to each replica: no data crosses the network.
            OperatorKind::Split { .. } => Vec::new(),
        }
    }
}

/// Who asked for an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Scheduler,
    Manual,
}

/// Where a running operator is. Steps only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Recorded; nothing done yet.
    Created,
    /// The map lists the target as a learner (so it may host the group).
    LearnerListed,
    /// The group's membership holds the target as a caught-up learner.
    LearnerCaughtUp,
    /// The group's voters are the new set.
    Promoted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    pub id: u64,
    pub kind: OperatorKind,
    pub origin: Origin,
    pub reason: String,
    pub step: Step,
    /// The shard's epoch when the operator was created: a later change of the shard by
    /// anything else cancels it.
    pub shard_epoch: u64,
    /// The PD leader's clock (ms) when the operator was created and last advanced.
    pub created_ms: u64,
    pub step_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed { reason: String },
    Cancelled { reason: String },
}

impl Outcome {
    /// `{"outcome", "reason"?}` for the API.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Outcome::Succeeded => serde_json::json!({"outcome": "succeeded"}),
            Outcome::Failed { reason } => serde_json::json!({"outcome": "failed", "reason": reason}),
            Outcome::Cancelled { reason } => serde_json::json!({"outcome": "cancelled", "reason": reason}),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedOperator {
    pub operator: Operator,
    pub outcome: Outcome,
    pub finished_ms: u64,
}

/// Scheduler settings: seeded at bootstrap from `midasflow server` flags, changed at run
/// time through `PUT /v1/schedule/config`. Stored in the PD state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleSettings {
    /// No new scheduler operators while paused (manual ones and running ones continue).
    pub paused: bool,
    /// A node with no heartbeat for this long is down: its replicas are re-created elsewhere.
    pub down_after_secs: u64,
    /// Split a shard over this many bytes of live values, or this many live keys.
    pub split_max_bytes: u64,
    pub split_max_keys: u64,
    /// Split a shard whose request rate stays over this (ops/s) for `split_qps_secs`.
    pub split_qps: u64,
    pub split_qps_secs: u64,
    /// Operators in flight cluster-wide, per node, and snapshot-sending ones per node.
    pub max_operators: u64,
    pub max_operators_per_node: u64,
    pub max_snapshots_per_node: u64,
    /// A step that makes no progress for this long fails its operator.
    pub step_timeout_secs: u64,
}

pub const DEFAULT_DOWN_AFTER_SECS: u64 = 30;
pub const DEFAULT_SPLIT_MAX_BYTES: u64 = 64 << 20;
pub const DEFAULT_SPLIT_MAX_KEYS: u64 = 1_000_000;
pub const DEFAULT_SPLIT_QPS: u64 = 3_000;

impl Default for ScheduleSettings {
    fn default() -> Self {
        ScheduleSettings {
            paused: false,
            down_after_secs: DEFAULT_DOWN_AFTER_SECS,
            split_max_bytes: DEFAULT_SPLIT_MAX_BYTES,
            split_max_keys: DEFAULT_SPLIT_MAX_KEYS,
            split_qps: DEFAULT_SPLIT_QPS,
            split_qps_secs: 10,
            max_operators: 8,
            max_operators_per_node: 2,
            max_snapshots_per_node: 1,
            step_timeout_secs: 120,
        }
    }
}

impl ScheduleSettings {
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("down_after_secs", self.down_after_secs),
            ("split_max_bytes", self.split_max_bytes),
            ("split_max_keys", self.split_max_keys),
            ("split_qps", self.split_qps),
            ("split_qps_secs", self.split_qps_secs),
            ("max_operators", self.max_operators),
            ("max_operators_per_node", self.max_operators_per_node),
            ("max_snapshots_per_node", self.max_snapshots_per_node),
            ("step_timeout_secs", self.step_timeout_secs),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.max_operators > MAX_RUNNING_OPERATORS as u64 {
            return Err(format!("max_operators is at most {MAX_RUNNING_OPERATORS}"));
        }
        if self.down_after_secs > 86_400 || self.step_timeout_secs > 86_400 || self.split_qps_secs > 3_600 {
            return Err("down_after_secs and step_timeout_secs are at most a day, split_qps_secs an hour".into());
        }
        Ok(())
    }
}

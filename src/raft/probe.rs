//! A seam for watching a node from outside: the simulation's invariant checkers and its
//! semantic trace subscribe here. With no observer attached, emitting costs one branch.

use std::sync::Arc;

use super::GroupId;

/// Something a node did that a checker may want to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A group's replica saw a new term, leader or role.
    Leadership {
        group: GroupId,
        term: u64,
        leader: Option<u64>,
        leading: bool,
    },
    /// openraft told the log store this index is committed.
    Committed { group: GroupId, index: u64 },
    /// The state machine applied entries up to this index.
    Applied { group: GroupId, index: u64 },
    /// The node installed a cluster map; `tiling` is the map's own tiling check, `epochs`
    /// each group's epoch in it (the PD group as 0).
    MapInstalled {
        routing_version: u64,
        tiling: Result<(), String>,
        epochs: Vec<(GroupId, u64)>,
    },
    /// The node stopped and deleted its replica of a group (the map moved it away).
    ReplicaRemoved { group: GroupId },
    /// The node sent one batch of Raft messages to a peer.
    RaftBatch { messages: usize },
    /// A leader's stream answered a bare commit-point update itself
    /// (`network::CommitHold`).
    CommitUpdateHeld,
    /// A group's leader confirmed a linearizable read (or a follower's read index): under
    /// its read lease, or by a quorum round.
    ReadConfirmed { lease: bool },
    /// A replica that would campaign waits for one of the node's campaign slots
    /// (`quiet::ration_campaigns`).
    CampaignDeferred { group: GroupId },
    /// A replica's campaign gate changed (`quiet::Gate`: whether it may start an election
    /// on its own, and why; `closed` when it may not). Emitted when the replica is opened,
    /// too.
    CampaignGate { group: GroupId, gate: &'static str },
    /// The node's campaign budget for groups of `kind` (`quiet::adapt_campaign_budget`), as
    /// a pass of `tend` sets it: after the gates of replicas losing their slot closed,
    /// before those gaining one open.
    CampaignBudget { kind: &'static str, slots: usize },
    /// A replica started a campaign: it saved a vote for itself in a new `term`.
    CampaignStarted { group: GroupId, term: u64 },
    /// The node refused a peer's internal request (the reasons of
    /// `midasflow_rpc_rejected_total`, e.g. `misdirected`: meant for another node id).
    InternalRequestRefused { reason: &'static str },
    /// A replica stopped ticking (`quiet`), or started again and why.
    Quiet {
        group: GroupId,
        quiet: bool,
        reason: &'static str,
    },
}

pub trait Observer: Send + Sync {
    fn observe(&self, node: u64, event: NodeEvent);
}

/// A node's handle on its (optional) observer.
#[derive(Clone, Default)]
pub struct Probe {
    node: u64,
    observer: Option<Arc<dyn Observer>>,
}

impl Probe {
    pub fn new(node: u64, observer: Option<Arc<dyn Observer>>) -> Self {
        Probe { node, observer }
    }

    /// The node whose events this probe emits.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// As [`Probe::emit`], when `condition` holds.
    pub fn emit_if(&self, condition: bool, event: impl FnOnce() -> NodeEvent) {
        if condition {
            self.emit(event);
        }
    }

    pub fn emit(&self, event: impl FnOnce() -> NodeEvent) {
        if let Some(observer) = &self.observer {
            observer.observe(self.node, event());
        }
    }
}

//! Membership changes and leadership transfer on a hosted group, asked for by the
//! placement driver's executor through `POST /internal/admin/{group}` (any group; the
//! caller decides what to change).
//!
//! openraft 0.9 has no leadership-transfer API. The transfer here: the leader stops
//! taking proposals, waits until the target has every entry and has accepted an append of
//! its term, stops heartbeats, waits until the followers' leader lease
//! (`election_timeout_max`) has run out, then asks the target to campaign. Writes wait for
//! at least the lease.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::network::post_internal;
use super::registry::{Group, Registry, Wake};
use super::{AppliedView, GroupId, GroupKind};

/// Longest a transfer waits for the target to catch up, and for it to win.
pub const TRANSFER_CATCH_UP_MS: u64 = 2_000;
pub const TRANSFER_ELECTION_MS: u64 = 3_000;
/// How long a replica works on one admin request (a transfer needs the lease plus an
/// election); the caller's timeout is longer.
pub const ADMIN_TIMEOUT_MS: u64 = 10_000;
/// Keys sampled for a split point.
pub const SPLIT_POINT_SAMPLES: usize = 1_024;
/// Most nodes a request may name.
pub const MAX_ADMIN_NODES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Only the status.
    Status,
    /// Add `node` as a learner (returns at once; catch-up shows in `matched`).
    AddLearner { node: u64, addr: String },
    /// Make `voters` the voter set (joint consensus, then the final config); nodes not in
    /// it are dropped from the membership. Every new voter must already be a learner.
    SetVoters { voters: BTreeSet<u64> },
    /// Drop learners (an operator that gave up).
    RemoveLearners { nodes: BTreeSet<u64> },
    /// On the leader: hand leadership to `to`.
    TransferLeader { to: u64, to_addr: String },
    /// On a transfer's target: campaign now, if this replica still follows `leader` in
    /// `term` (the transfer's leader; a request from a deposed leader is refused).
    Elect { leader: u64, term: u64 },
    /// The median hash of the group's keys on this replica (a split point).
    SplitPoint,
    /// On the leader: propose a split of the group in its own log (kinds whose groups
    /// split, see [`GroupKind::split_command`]).
    Split(SplitPlan),
}

/// A split the placement driver planned: keys hashing to `[at, end)` go to group `child`.
/// `start`/`end` are the range it planned against; a replica whose range differs refuses
/// (a stale or repeated split).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitPlan {
    pub child: GroupId,
    pub at: u64,
    pub start: u64,
    pub end: Option<u64>,
}

impl AdminRequest {
    pub fn validate(&self) -> Result<(), String> {
        let count = match self {
            AdminRequest::SetVoters { voters } => voters.len(),
            AdminRequest::RemoveLearners { nodes } => nodes.len(),
            _ => 0,
        };
        if count > MAX_ADMIN_NODES {
            return Err(format!("an admin request naming {count} nodes"));
        }
        if let AdminRequest::SetVoters { voters } = self {
            if voters.is_empty() {
                return Err("an empty voter set".into());
            }
        }
        match self {
            AdminRequest::AddLearner { addr, .. } | AdminRequest::TransferLeader { to_addr: addr, .. }
                if addr.is_empty() || addr.len() > super::network::MAX_NODE_ADDR_BYTES =>
            {
                Err("a bad node address".into())
            }
            AdminRequest::Split(plan) if plan.at <= plan.start || plan.end.is_some_and(|end| plan.at >= end) => {
                Err("a split point outside its range".into())
            }
            _ => Ok(()),
        }
    }
}

/// A group's membership and replication progress as one replica sees it, and the outcome
/// of the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminReply {
    pub leader: Option<u64>,
    pub is_leader: bool,
    /// The last config's voters (the new ones while joint).
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    /// Joint consensus in progress (two voter sets).
    pub joint: bool,
    pub last_log_index: u64,
    /// On the leader: each replica's matched log index (absent: nothing matched yet).
    pub matched: BTreeMap<u64, u64>,
    /// This replica's applied range (`None`: as bootstrap cut it, never split).
    pub range: Option<(u64, Option<u64>)>,
    /// Filled in for [`AdminRequest::SplitPoint`].
    pub split_point: Option<u64>,
    /// `Err` with why the request was not carried out (the status is still filled in).
    pub outcome: Result<(), String>,
}

pub fn status<K: GroupKind>(group: &Group<K>) -> AdminReply {
    let m = group.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let configs = membership.get_joint_config();
    let voters: BTreeSet<u64> = configs.last().cloned().unwrap_or_default();
    let learners: BTreeSet<u64> = membership.learner_ids().collect();
    AdminReply {
        leader: m.current_leader,
        is_leader: m.state == ServerState::Leader,
        voters,
        learners,
        joint: configs.len() > 1,
        last_log_index: m.last_log_index.unwrap_or(0),
        matched: m
            .replication
            .as_ref()
            .map(|r| r.iter().filter_map(|(id, l)| l.map(|l| (*id, l.index))).collect())
            .unwrap_or_default(),
        range: group.view.range(),
        split_point: None,
        outcome: Ok(()),
    }
}

/// Carries out `request` on this node's replica of a group, bounded by `timeout`.
pub async fn perform<K: GroupKind>(
    registry: &Registry<K>,
    group: Arc<Group<K>>,
    request: AdminRequest,
    timeout: Duration,
) -> AdminReply {
    if request == AdminRequest::SplitPoint {
        return AdminReply {
            split_point: group.view.split_point(SPLIT_POINT_SAMPLES),
            ..status(&group)
        };
    }
    let outcome = match tokio::time::timeout(timeout, perform_inner(registry, &group, request)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("not done within {} ms", timeout.as_millis())),
    };
    AdminReply {
        outcome,
        ..status(&group)
    }
}

async fn perform_inner<K: GroupKind>(
    registry: &Registry<K>,
    group: &Arc<Group<K>>,
    request: AdminRequest,
) -> Result<(), String> {
    let raft = &group.raft;
    let needs_leader = !matches!(
        request,
        AdminRequest::Status | AdminRequest::Elect { .. } | AdminRequest::SplitPoint
    );
    if needs_leader && !group.is_leader() {
        return Err("this replica does not lead the group".into());
    }
    if needs_leader || matches!(request, AdminRequest::Elect { .. }) {
        // Membership changes and transfers need a ticking leader (heartbeats carry the new
        // configuration's commit); a transfer's target campaigns. Not before the check: a
        // follower woken by a stale request would campaign against a live quiet leader.
        group.touch(Wake::Request);
    }
    match request {
        AdminRequest::Status | AdminRequest::SplitPoint => Ok(()),
        AdminRequest::AddLearner { node, addr } => {
            let now = status(group);
            if now.learners.contains(&node) || now.voters.contains(&node) {
                return Ok(());
            }
            raft.add_learner(node, BasicNode::new(addr), false)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        AdminRequest::SetVoters { voters } => {
            let now = status(group);
            if now.voters == voters && !now.joint && now.learners.is_empty() {
                return Ok(());
            }
            raft.change_membership(ChangeMembers::ReplaceAllVoters(voters.clone()), false)
                .await
                .map_err(|e| e.to_string())?;
            // Learners that are not voters now (the replaced ones stay as learners in
            // some paths) leave too.
            let leftover: BTreeSet<u64> = status(group).learners.difference(&voters).copied().collect();
            if !leftover.is_empty() && group.is_leader() {
                raft.change_membership(ChangeMembers::RemoveNodes(leftover), false)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        AdminRequest::RemoveLearners { nodes } => {
            let present: BTreeSet<u64> = status(group).learners.intersection(&nodes).copied().collect();
            if present.is_empty() {
                return Ok(());
            }
            raft.change_membership(ChangeMembers::RemoveNodes(present), false)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        AdminRequest::TransferLeader { to, to_addr } => transfer_leader(registry, group, to, &to_addr).await,
        AdminRequest::Elect { .. } if group.holds_votes() => {
            Err("this replica was reopened or re-created lately: it does not campaign yet".into())
        }
        // Only the leader it follows may have it campaign, which keeps deposed leaders'
        // transfers out. Safety does not rest on it: a campaign asked for late is a first
        // try, which cannot win inside a read lease (`read_batch`).
        AdminRequest::Elect { leader, term } => {
            let vote = raft.metrics().borrow().vote;
            if !(vote.is_committed() && vote.leader_id.voted_for() == Some(leader) && vote.leader_id.term == term) {
                return Err(format!(
                    "this replica does not follow node {leader} in term {term} (its vote: {vote})"
                ));
            }
            group.open_campaign_gate_for_transfer();
            raft.trigger().elect().await.map_err(|e| e.to_string())
        }
        AdminRequest::Split(plan) => {
            let command = K::split_command(plan).ok_or_else(|| format!("{} groups do not split", K::NAME))?;
            let reply = raft.client_write(command).await.map_err(|e| e.to_string())?.data;
            K::split_outcome(&reply)
        }
    }
}

/// See the module doc. Proposals wait while `group.transferring` is set; heartbeats are
/// switched back on whatever happens.
async fn transfer_leader<K: GroupKind>(
    registry: &Registry<K>,
    group: &Arc<Group<K>>,
    to: u64,
    to_addr: &str,
) -> Result<(), String> {
    if to == registry.node_id {
        return Ok(());
    }
    if !status(group).voters.contains(&to) {
        return Err(format!("node {to} is not a voter of group {}", group.id));
    }
    let Ok(_one_transfer) = group.transfer.try_lock() else {
        return Err(format!(
            "a leadership transfer of group {} is already running",
            group.id
        ));
    };
    let _pause = group.pause_proposals();
    let raft = &group.raft;
    let term = raft.metrics().borrow().vote.leader_id.term;
    let asked_at = Instant::now();
    let result = async {
        // Heartbeats still run here: the target must also have accepted one of this
        // term's appends since the transfer began. A target that restarted knows no leader
        // until one reaches it (its matched index is the one from before), and refuses to
        // campaign for a leader it does not follow; with heartbeats off from the start, no
        // append ever reached it, and the placement driver retried the same doomed
        // transfer every few seconds.
        let deadline = asked_at + Duration::from_millis(TRANSFER_CATCH_UP_MS);
        loop {
            let now = status(group);
            if now.matched.get(&to).copied() == Some(now.last_log_index)
                && group.reads.follower_accepted_since(to, term, asked_at)
            {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "node {to} did not catch up with term {term} within {TRANSFER_CATCH_UP_MS} ms"
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Undone on drop, whatever happens (the admin request's timeout drops this future).
        let _transferring = Transferring::start(group);
        // The followers refuse votes while the leader's lease is fresh.
        let lease_ms = registry.election_timeout_max_ms() + registry.heartbeat_interval_ms();
        tokio::time::sleep(Duration::from_millis(lease_ms)).await;
        let asked: Result<AdminReply, _> = post_internal(
            registry.client(),
            to_addr,
            Some(to),
            &admin_path(group.id),
            registry.credentials(),
            &AdminRequest::Elect {
                leader: registry.node_id,
                term,
            },
            Duration::from_millis(TRANSFER_ELECTION_MS),
        )
        .await;
        asked.map_err(|e| format!("asking node {to} to campaign: {e}"))?;
        let deadline = Instant::now() + Duration::from_millis(TRANSFER_ELECTION_MS);
        loop {
            if status(group).leader == Some(to) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("node {to} did not take over within {TRANSFER_ELECTION_MS} ms"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    .await;
    result
}

/// A transfer's leader sends no heartbeats (its followers' vote refusal must run out for
/// the target to win) and answers no read under its lease (the target campaigns inside
/// it), until dropped.
struct Transferring<'a, K: GroupKind>(&'a Group<K>);

impl<'a, K: GroupKind> Transferring<'a, K> {
    fn start(group: &'a Group<K>) -> Self {
        group.reads.suspend_lease(true);
        group.raft.runtime_config().heartbeat(false);
        Transferring(group)
    }
}

impl<K: GroupKind> Drop for Transferring<'_, K> {
    fn drop(&mut self) {
        self.0.raft.runtime_config().heartbeat(true);
        self.0.reads.suspend_lease(false);
    }
}

pub fn admin_path(group: GroupId) -> String {
    format!("/internal/admin/{group}")
}

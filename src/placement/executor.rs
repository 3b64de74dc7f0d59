//! The placement driver's loop on the PD leader: every tick it drives each running
//! operator one step ([`super::driver::next_action`]) and, once it has led long enough to
//! know every node's liveness, runs the scheduler ([`super::scheduler::plan`]) and
//! records its proposals as operators. Nothing here decides: it fetches facts and
//! performs actions, so a PD leader change only delays work.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::driver::{next_action, split_campaigner, Action, Facts, CATCH_UP_LAG_ENTRIES};
use super::operator::{Origin, Outcome};
use super::scheduler::{self, Health, ShardStats, View};
use super::server::{ExecutorState, PdHost, PD_HEARTBEAT_INTERVAL_MS};
use super::{ClusterMap, NodeId, NodeState, PdCommand, PdResult, ShardId};
use crate::node::PlantedBug;
use crate::raft::membership::{self, AdminReply, AdminRequest};
use crate::raft::network::post_internal;

/// How often the executor drives operators and the scheduler plans.
pub const EXECUTOR_TICK_MS: u64 = 500;
/// Steps one operator may take in a tick when each succeeds at once (a move has about
/// six; any wait ends the tick).
pub const MAX_STEPS_PER_TICK: usize = 8;
/// A new PD leader plans only after hearing from live nodes for this long.
pub const SCHEDULE_WARMUP_MS: u64 = 4 * PD_HEARTBEAT_INTERVAL_MS;
/// An admin call's HTTP timeout: the replica's own bound plus slack.
const ADMIN_CALL_TIMEOUT_MS: u64 = membership::ADMIN_TIMEOUT_MS + 2_000;

/// The scheduler's inputs as the PD leader knows them now.
pub struct Snapshot {
    pub map: Arc<ClusterMap>,
    pub last_seen_ms: BTreeMap<NodeId, u64>,
    pub leading_for_ms: u64,
    pub shards: BTreeMap<ShardId, ShardStats>,
}

impl Snapshot {
    pub fn view(&self) -> View<'_> {
        View {
            map: &self.map,
            last_seen_ms: &self.last_seen_ms,
            leading_for_ms: self.leading_for_ms,
            shards: &self.shards,
        }
    }
}

/// The scheduler's view on this node, if it leads the PD.
pub fn snapshot<H: PdHost>(node: &H) -> Option<Snapshot> {
    if !node.leads_pd() {
        return None;
    }
    let now = Instant::now();
    let state = node.pd_state();
    let mut last_seen_ms: BTreeMap<NodeId, u64> = state
        .last_seen
        .iter()
        .map(|(n, t)| (*n, now.duration_since(*t).as_millis() as u64))
        .collect();
    last_seen_ms.insert(node.node_id(), 0);
    let mut map = node.map();
    if node.planted(PlantedBug::RemovedNodesLookLive) {
        let mut revived = (*map).clone();
        for info in revived.nodes.values_mut().filter(|n| n.state == NodeState::Removed) {
            info.state = NodeState::Up;
            last_seen_ms.insert(info.id, 0);
        }
        map = Arc::new(revived);
    }
    Some(Snapshot {
        map: map.clone(),
        last_seen_ms,
        leading_for_ms: state
            .leading_since
            .map_or(0, |t| now.duration_since(t).as_millis() as u64),
        shards: state
            .shard_stats
            .iter()
            .filter_map(|(s, l)| {
                let report_age_ms = l
                    .reported_at
                    .map_or(u64::MAX, |t| now.duration_since(t).as_millis() as u64);
                let shard = map.shards.get(s)?;
                Some((
                    *s,
                    ShardStats {
                        report_age_ms,
                        ..l.stats_for((shard.start, shard.end))
                    },
                ))
            })
            .collect(),
    })
}

/// Proposes a PD command on this node (which must lead the PD).
pub async fn propose<H: PdHost>(node: &H, command: PdCommand) -> Result<PdResult, String> {
    let pd = node
        .pd_replica()
        .filter(|g| g.is_leader())
        .ok_or_else(|| "this node does not lead the placement driver".to_string())?;
    match crate::raft::await_write(pd.raft.server_metrics(), pd.raft.client_write(command)).await {
        Ok(Ok(response)) => response.data.ok_or_else(|| "an empty reply".to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("this node lost the placement driver's leadership; the outcome is unknown".to_string()),
    }
}

/// Sends an admin request to `target`'s replica of `group` (locally if it is this node).
pub async fn admin<H: PdHost>(
    node: &H,
    target: NodeId,
    group: ShardId,
    request: AdminRequest,
) -> Result<AdminReply, String> {
    if target == node.node_id() {
        return node
            .admin_local(group, request)
            .await
            .ok_or_else(|| format!("group {group} is not hosted here"));
    }
    let addr = node
        .addr_of(target)
        .ok_or_else(|| format!("no address for node {target}"))?;
    post_internal(
        node.client(),
        &addr,
        Some(target),
        &membership::admin_path(group),
        node.credentials(),
        &request,
        Duration::from_millis(ADMIN_CALL_TIMEOUT_MS),
    )
    .await
    .map_err(|e| e.to_string())
}

/// The shard's status from its leader: asks the likeliest leaders first (this node's
/// idea, the leaders' own heartbeats), then every replica, and follows whoever is named.
async fn leader_status<H: PdHost>(node: &H, shard: ShardId) -> Option<AdminReply> {
    let mut candidates: Vec<NodeId> = Vec::new();
    candidates.extend(node.pd_state().leader_hints.get(&shard).map(|(n, _)| *n));
    candidates.extend(node.leader_hint(shard));
    if let Some(info) = node.map().group(shard) {
        candidates.extend(info.replicas.iter().chain(&info.learners).copied());
    }
    let mut asked = BTreeSet::new();
    let mut next = 0;
    while next < candidates.len() && asked.len() < super::REPLICATION_FACTOR + 2 {
        let target = candidates[next];
        next += 1;
        if !asked.insert(target) {
            continue;
        }
        match admin(node, target, shard, AdminRequest::Status).await {
            Ok(reply) if reply.is_leader => return Some(reply),
            Ok(AdminReply {
                leader: Some(other), ..
            }) if !asked.contains(&other) => candidates.insert(next, other),
            _ => {}
        }
    }
    None
}

/// A split point for `shard` from its data, asked of its leader.
pub async fn split_point<H: PdHost>(node: &H, shard: ShardId) -> Option<u64> {
    let status = leader_status(node, shard).await?;
    let leader = status.leader?;
    match admin(node, leader, shard, AdminRequest::SplitPoint).await {
        Ok(AdminReply { split_point, .. }) => split_point,
        Err(_) => None,
    }
}

fn record_finish<H: PdHost>(node: &H, command: &PdCommand, map: &ClusterMap) {
    if let PdCommand::SplitShard { .. } | PdCommand::SplitShardFirst { .. } = command {
        metrics::counter!("midasflow_pd_splits_total", "node" => node.label()).increment(1);
    }
    if let PdCommand::FinishOperator { operator, outcome, .. } = command {
        let kind = map.operators.get(operator).map_or("unknown", |o| o.kind.name());
        let outcome = match outcome {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed { .. } => "failed",
            Outcome::Cancelled { .. } => "cancelled",
        };
        metrics::counter!("midasflow_pd_operators_finished_total", "node" => node.label(), "type" => kind, "outcome" => outcome)
            .increment(1);
    }
}

/// One step of one operator.
/// Drives one operator for this tick: step after step while each one succeeds at once,
/// so an operator takes one tick per wait, not one per step.
async fn drive<H: PdHost>(node: Arc<H>, operator: u64, state: Arc<Mutex<ExecutorState>>) {
    for _ in 0..MAX_STEPS_PER_TICK {
        if !step(node.as_ref(), operator, &state).await {
            break;
        }
    }
    state.lock().unwrap().active.remove(&operator);
}

/// The map's half of a split, naming the child's first campaigner
/// ([`split_campaigner`]) when this PD leader knows who leads what.
fn split_command<H: PdHost>(
    node: &H,
    state: &Mutex<ExecutorState>,
    shard: ShardId,
    status: Option<&AdminReply>,
    operator: u64,
    now_ms: u64,
) -> PdCommand {
    let parent_leader = status.and_then(|s| s.leader);
    let first = snapshot(node).and_then(|snap| {
        let view = snap.view();
        let mut state = state.lock().unwrap();
        let led = scheduler::split_leader_counts(&view, &mut state.named_campaigners, operator);
        // Heard from lately, and its log about as long as the leader's, which applied the
        // split before this status: it most likely starts the child at once (if not, the
        // other replicas' timers elect, later).
        let caught_up = |n: NodeId| {
            Some(n) == parent_leader
                || status
                    .is_some_and(|s| (s.matched.get(&n)).is_some_and(|m| m + CATCH_UP_LAG_ENTRIES >= s.last_log_index))
        };
        let ready = |n| scheduler::heard_lately(&view, n) && caught_up(n);
        let first = split_campaigner(&view.map.shards.get(&shard)?.replicas, &ready, &led, parent_leader)?;
        state.named_campaigners.insert(operator, first);
        Some(first)
    });
    match first {
        Some(first) => PdCommand::SplitShardFirst {
            operator,
            now_ms,
            first,
        },
        None => PdCommand::SplitShard { operator, now_ms },
    }
}

/// One step of one operator; `true` if it made progress and may go on at once.
async fn step<H: PdHost>(node: &H, operator: u64, state: &Mutex<ExecutorState>) -> bool {
    let map = node.map();
    let Some(op) = map.operators.get(&operator).cloned() else {
        return false;
    };
    {
        let status = leader_status(node, op.kind.shard()).await;
        let destination = match op.kind {
            super::operator::OperatorKind::TransferLeader { to, .. } => Some(to),
            _ => op.kind.target(),
        };
        let target_usable =
            destination.is_none_or(|to| snapshot(node).is_some_and(|s| scheduler::health(&s.view(), to) == Health::Up));
        let facts = Facts {
            status: status.as_ref(),
            target_usable,
            now_ms: node.now_ms(),
        };
        let mut action = next_action(&op, &map, &facts);
        if let Action::Propose(PdCommand::SplitShard { operator, now_ms }) = action {
            let command = split_command(node, state, op.kind.shard(), status.as_ref(), operator, now_ms);
            action = Action::Propose(command);
        }
        if node.planted(PlantedBug::MapBeforeMembership)
            && op.step == super::operator::Step::LearnerListed
            && op.kind.target().is_some()
        {
            let current = map
                .group(op.kind.shard())
                .map(|g| g.replicas.clone())
                .unwrap_or_default();
            action = Action::Propose(PdCommand::SetReplicas {
                operator,
                replicas: super::driver::final_replicas(&op.kind, &current),
                now_ms: facts.now_ms,
            });
        }
        let finishing = matches!(
            action,
            Action::Abort { .. } | Action::Propose(PdCommand::FinishOperator { .. })
        );
        let wait = match action {
            Action::Propose(command) => {
                record_finish(node, &command, &map);
                let result = propose(node, command.clone()).await;
                if let (Ok(_), super::operator::OperatorKind::TransferLeader { shard, to }) = (&result, &op.kind) {
                    if matches!(command, PdCommand::FinishOperator { .. }) {
                        // The new leader's next heartbeat would say so too; the scheduler
                        // must not plan on the old figure meanwhile.
                        if let Some(load) = node.pd_state().shard_stats.get_mut(shard) {
                            load.stats.leader = Some(*to);
                        }
                    }
                }
                result.err()
            }
            Action::Admin { node: target, request } => {
                match admin(node, target, op.kind.shard(), request.clone()).await {
                    Ok(AdminReply { outcome: Err(e), .. }) | Err(e) => {
                        Some(format!("{request:?} on node {target}: {e}"))
                    }
                    Ok(_) => None,
                }
            }
            Action::Wait(why) => Some(why),
            Action::Abort { reason } => {
                tracing::warn!(operator, %reason, "operator failed");
                let finish = PdCommand::FinishOperator {
                    operator,
                    outcome: Outcome::Failed { reason },
                    now_ms: node.now_ms(),
                };
                record_finish(node, &finish, &map);
                propose(node, finish).await.err()
            }
        };
        let mut state = state.lock().unwrap();
        match wait {
            Some(why) => {
                tracing::debug!(operator, %why, "operator waiting");
                state.waiting.insert(operator, why);
                false
            }
            None => {
                state.waiting.remove(&operator);
                !finishing
            }
        }
    }
}

/// Runs the scheduler once and records its proposals; returns how many were started.
async fn schedule<H: PdHost>(node: &H, snap: &Snapshot) -> usize {
    let plan = scheduler::plan(&snap.view());
    let mut started = 0;
    for proposal in plan.proposals {
        let command = PdCommand::StartOperator {
            kind: proposal.kind.clone(),
            origin: Origin::Scheduler,
            reason: proposal.reason.clone(),
            shard_epoch: proposal.shard_epoch,
            now_ms: node.now_ms(),
        };
        match propose(node, command).await {
            Ok(PdResult::OperatorStarted { id }) => {
                started += 1;
                metrics::counter!("midasflow_pd_operators_started_total", "node" => node.label(), "type" => proposal.kind.name())
                    .increment(1);
                tracing::info!(id, kind = ?proposal.kind, reason = %proposal.reason, "operator started");
            }
            Ok(other) => tracing::debug!(?other, "scheduler proposal not taken"),
            Err(e) => {
                tracing::debug!(error = %e, "scheduler proposal failed");
                break;
            }
        }
    }
    started
}

/// The executor loop; it acts only while this node leads the PD.
pub async fn run<H: PdHost>(node: Arc<H>, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(EXECUTOR_TICK_MS));
    let mut leading = false;
    let mut exporting = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let is_leader = node.leads_pd();
        if is_leader != leading {
            leading = is_leader;
            // Liveness is only known from the heartbeats this leader receives.
            let mut state = node.pd_state();
            state.last_seen.clear();
            state.leading_since = is_leader.then(Instant::now);
        }
        let snap = snapshot(node.as_ref()).filter(|s| s.map.is_bootstrapped());
        // Cluster gauges come from one node, a leader that still hears a quorum of the PD.
        let export = snap
            .as_ref()
            .is_some_and(|s| scheduler::pd_quorum_heard(&s.view(), scheduler::LEADER_REPORT_STALE_MS));
        if export != exporting {
            exporting = export;
            metrics::gauge!("midasflow_pd_is_leader", "node" => node.label()).set(if export { 1.0 } else { 0.0 });
            if !export {
                crate::telemetry::clear_pd_gauges(&node.label(), node.map().nodes.keys().copied());
            }
        }
        let Some(snap) = snap else { continue };
        if export {
            publish_gauges(node.as_ref(), &snap);
        }
        // Drives start before the scheduler's await, never after it: a task spawned there
        // made the simulation's replays of one seed differ (`mixed` seed 11). What the
        // scheduler starts takes its first step at the next tick.
        drive_all(&node, &snap.map);
        if snap.leading_for_ms >= SCHEDULE_WARMUP_MS {
            schedule(node.as_ref(), &snap).await;
        }
    }
}

/// Starts a drive for each operator of `map` that has none running.
fn drive_all<H: PdHost>(node: &Arc<H>, map: &ClusterMap) {
    let executor = node.pd_server().executor();
    for operator in map.operators.keys() {
        if executor.lock().unwrap().active.insert(*operator) {
            tokio::spawn(drive(node.clone(), *operator, executor.clone()));
        }
    }
}

/// Cluster-level gauges, exported by the PD leader only (so alerts fire once).
fn publish_gauges<H: PdHost>(node: &H, snap: &Snapshot) {
    let label = node.label();
    let health = scheduler::cluster_health(&snap.view());
    for (name, value) in [
        ("midasflow_pd_shards", health.shards),
        ("midasflow_pd_under_replicated_shards", health.under_replicated),
        ("midasflow_pd_shards_without_leader", health.without_leader),
        ("midasflow_pd_shards_quorum_lost", health.quorum_lost),
        ("midasflow_pd_operators_running", snap.map.operators.len()),
    ] {
        metrics::gauge!(name, "node" => label.clone()).set(value as f64);
    }
    for (state, count) in Health::ALL.iter().zip(health.nodes) {
        metrics::gauge!("midasflow_pd_nodes", "node" => label.clone(), "state" => state.word()).set(count as f64);
    }
    // Every node of the map, removed ones at 0, so no store keeps a stale count.
    let replicas = scheduler::replica_counts(&snap.map);
    for id in snap.map.nodes.keys() {
        metrics::gauge!("midasflow_pd_node_replicas", "node" => label.clone(), "store" => id.to_string())
            .set(replicas.get(id).copied().unwrap_or(0) as f64);
    }
    let mut leaders: BTreeMap<NodeId, usize> = BTreeMap::new();
    for stats in snap.shards.values() {
        if stats.report_age_ms > scheduler::LEADER_REPORT_STALE_MS {
            continue;
        }
        if let Some(leader) = stats.leader {
            *leaders.entry(leader).or_default() += 1;
        }
    }
    for id in snap.map.nodes.keys() {
        metrics::gauge!("midasflow_pd_node_leaders", "node" => label.clone(), "store" => id.to_string())
            .set(leaders.get(id).copied().unwrap_or(0) as f64);
    }
}

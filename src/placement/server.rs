//! The placement driver's server side, on whichever node leads the PD group: heartbeats
//! from every node (liveness, leader hints, shard figures, registration and joins), and
//! the state only the PD leader keeps. The scheduler and executor that act on it are in
//! `scheduler.rs`, `driver.rs` and `executor.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::store::PdGroup;
use super::{ClusterMap, NodeId, PdCommand, ShardId, PD_GROUP};
use crate::raft::membership::{AdminReply, AdminRequest};
use crate::raft::network::Credentials;
use crate::raft::transport::HttpClient;
use crate::raft::GroupId;

/// How often a node reports to the PD leader and picks up map changes.
pub const PD_HEARTBEAT_INTERVAL_MS: u64 = 400;

/// What a node reports to the PD leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node_id: NodeId,
    /// The sender's data dir incarnation and the cluster it knows (none before bootstrap).
    pub incarnation: u128,
    pub cluster_id: Option<u128>,
    pub addr: String,
    /// The revision of the map this node has.
    pub revision: u64,
    /// Set by a node started with `--join` until the map lists it.
    pub joining: bool,
    /// Every group this node leads, with the figures the scheduler uses.
    pub leading: Vec<LedGroup>,
}

/// A group the heartbeat's sender leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedGroup {
    pub group: GroupId,
    pub term: u64,
    pub keys: u64,
    pub bytes: u64,
    /// Client operations this replica has served as leader since it started.
    pub ops_total: u64,
    /// Where to split, while the shard is over a split threshold.
    pub split_at: Option<u64>,
}

impl Heartbeat {
    /// Bounds what a peer's heartbeat may claim.
    pub fn validate(&self) -> Result<(), String> {
        use crate::placement::{MAX_NODE_ADDR_BYTES, MAX_SHARDS};
        if self.addr.is_empty() || self.addr.len() > MAX_NODE_ADDR_BYTES {
            return Err(format!("a node address must be 1 to {MAX_NODE_ADDR_BYTES} bytes"));
        }
        if self.incarnation == 0 || self.cluster_id == Some(0) {
            return Err("incarnation and cluster ids are never 0".into());
        }
        if self.leading.len() > MAX_SHARDS + 1 {
            return Err(format!("a heartbeat leading {} groups", self.leading.len()));
        }
        Ok(())
    }
}

/// The PD leader's answer: the map if the node's is older, and what only the leader knows.
/// A node that does not lead the PD answers with `redirect` only: the address of the PD
/// leader as it knows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub redirect: Option<String>,
    pub pd_leader: NodeId,
    pub map: Option<ClusterMap>,
    /// Each group's leader as last reported, and the term it reported leading in.
    pub leader_hints: BTreeMap<GroupId, (NodeId, u64)>,
    /// Milliseconds since the PD leader last heard from each node.
    pub last_seen_ms: BTreeMap<NodeId, u64>,
    /// Groups whose hinted leader's latest heartbeat no longer lists them (see
    /// [`PdLeaderState::lapsed_hints`]).
    pub lapsed_hints: BTreeSet<GroupId>,
}

/// Liveness, leader hints and shard figures, kept in memory by whichever node leads the PD.
#[derive(Default)]
pub struct PdLeaderState {
    pub last_seen: BTreeMap<NodeId, Instant>,
    pub leader_hints: BTreeMap<GroupId, (NodeId, u64)>,
    /// Hints whose leader's latest heartbeat no longer lists the group. They stay for
    /// routing (the last known leader is the best guess until another reports), but a
    /// quiet replica must not wait on them: after a whole-cluster restart at 10,000
    /// shards, a hint naming a candidate that could not win (its log was one entry short)
    /// kept the two replicas with the whole log quiet behind it, and the group never
    /// elected a leader.
    pub lapsed_hints: BTreeSet<GroupId>,
    /// Members whose registration (or join) is being proposed.
    registering: std::collections::BTreeSet<NodeId>,
    /// When this node last became PD leader (liveness is only known since then).
    pub leading_since: Option<Instant>,
    pub shard_stats: BTreeMap<ShardId, ShardLoad>,
}

/// The scheduler's figures for a shard, from its leader's heartbeats.
#[derive(Debug, Clone, Default)]
pub struct ShardLoad {
    pub stats: crate::placement::scheduler::ShardStats,
    pub reported_at: Option<Instant>,
    /// The range and leader the request rate is measured over. A split halves the range
    /// and a new leader counts from its own total, so either starts a new measurement:
    /// a rate carried over from the range before a split made the scheduler split the
    /// same shard again a second later.
    measured_over: Option<(ShardRange, NodeId)>,
    last_ops: Option<(Instant, u64)>,
    hot_since: Option<Instant>,
}

/// A shard's hash range: `start` and `end` as the map has them.
pub type ShardRange = (u64, Option<u64>);

impl ShardLoad {
    /// The figures the scheduler may use for a shard whose range in the map is `range`.
    /// Figures reported over another range (before a split the map now shows) count for
    /// nothing until the leader reports on the new one: the executor finishes a split as
    /// soon as the map lists the child, and the next pass would otherwise split the
    /// halved shard again on its whole range's rate or key count.
    pub fn stats_for(&self, range: ShardRange) -> crate::placement::scheduler::ShardStats {
        match self.measured_over {
            Some((measured, _)) if measured == range => self.stats.clone(),
            _ => crate::placement::scheduler::ShardStats {
                leader: self.stats.leader,
                ..Default::default()
            },
        }
    }

    /// Folds in one leader report on a shard whose range is `range` in the map: the
    /// request rate is measured between reports at least a second apart, by one leader
    /// over one range.
    fn record(&mut self, led: &LedGroup, leader: NodeId, range: ShardRange, now: Instant, split_qps: u64) {
        if self.measured_over != Some((range, leader)) {
            self.measured_over = Some((range, leader));
            (self.last_ops, self.hot_since) = (None, None);
            (self.stats.qps, self.stats.hot_secs) = (0, 0);
        }
        self.stats.leader = Some(leader);
        self.reported_at = Some(now);
        self.stats.keys = led.keys;
        self.stats.bytes = led.bytes;
        self.stats.split_at = led.split_at;
        match self.last_ops {
            Some((at, ops)) if now.duration_since(at) >= Duration::from_secs(1) => {
                let secs = now.duration_since(at).as_secs_f64();
                self.stats.qps = (led.ops_total.saturating_sub(ops) as f64 / secs) as u64;
                self.last_ops = Some((now, led.ops_total));
            }
            Some(_) => {}
            None => self.last_ops = Some((now, led.ops_total)),
        }
        if self.stats.qps > split_qps {
            let since = *self.hot_since.get_or_insert(now);
            self.stats.hot_secs = now.duration_since(since).as_secs();
        } else {
            self.hot_since = None;
            self.stats.hot_secs = 0;
        }
    }
}

/// Operators being driven right now (one task each) and why each is waiting.
#[derive(Default)]
pub struct ExecutorState {
    pub(super) active: std::collections::BTreeSet<u64>,
    pub waiting: BTreeMap<u64, String>,
    /// The first campaigner named by each split operator whose child the map does not
    /// list yet: splits whose map commands are built together count each other's.
    pub(super) named_campaigners: BTreeMap<u64, NodeId>,
}

/// The placement driver's state on a node: what only the PD leader keeps, and the
/// executor's bookkeeping. Used while the node leads the PD.
#[derive(Default)]
pub struct PdServer {
    state: Arc<Mutex<PdLeaderState>>,
    executor: Arc<Mutex<ExecutorState>>,
}

impl PdServer {
    pub fn executor(&self) -> Arc<Mutex<ExecutorState>> {
        self.executor.clone()
    }
}

/// What the placement driver needs of the node it runs on. `crate::node::Node`
/// implements it; the PD server and executor are written against it alone.
pub trait PdHost: Send + Sync + 'static {
    fn node_id(&self) -> NodeId;
    /// The node's metrics label.
    fn label(&self) -> String;
    fn map(&self) -> Arc<ClusterMap>;
    /// The initial cluster's members (who may report before the map exists).
    fn initial_cluster(&self) -> &BTreeMap<NodeId, String>;
    /// This node's replica of the PD group, if it hosts one.
    fn pd_replica(&self) -> Option<Arc<PdGroup>>;
    fn pd_server(&self) -> &PdServer;
    /// The node believed to lead `group`.
    fn leader_hint(&self, group: GroupId) -> Option<NodeId>;
    fn addr_of(&self, node: NodeId) -> Option<String>;
    /// Performs an admin request on this node's replica of `group` (`None`: not hosted).
    fn admin_local(&self, group: GroupId, request: AdminRequest) -> impl Future<Output = Option<AdminReply>> + Send;
    fn client(&self) -> &HttpClient;
    fn credentials(&self) -> &Arc<Credentials>;
    /// The clock operators are stamped with: wall-clock ms, or under simulation the
    /// simulated time (deterministic).
    fn now_ms(&self) -> u64;
    /// Whether this node carries planted bug `bug` (simulation only).
    fn planted(&self, bug: crate::node::PlantedBug) -> bool;

    /// The PD leader's state (liveness, leader hints, shard figures).
    fn pd_state(&self) -> MutexGuard<'_, PdLeaderState> {
        self.pd_server().state.lock().unwrap()
    }

    /// Whether this node leads the placement driver.
    fn leads_pd(&self) -> bool {
        self.pd_replica().is_some_and(|g| g.is_leader())
    }
}

/// Whether `node` may report to the PD: a member of the map, or (before bootstrap) of the
/// initial cluster.
fn is_member<H: PdHost>(host: &H, map: &ClusterMap, node: NodeId) -> bool {
    if map.is_bootstrapped() {
        map.is_active_member(node)
    } else {
        host.initial_cluster().contains_key(&node)
    }
}

/// Handles a heartbeat on the PD leader: `Ok(None)` if this node does not lead the PD, an
/// error for a sender that is not a member.
pub fn handle_heartbeat<H: PdHost>(host: &H, hb: &Heartbeat) -> Result<Option<HeartbeatReply>, String> {
    let Some(pd) = host.pd_replica() else {
        return Ok(None);
    };
    if !pd.is_leader() {
        return Ok(None);
    }
    let map = host.map();
    if !is_member(host, &map, hb.node_id) {
        if hb.joining && map.is_bootstrapped() && !map.nodes.contains_key(&hb.node_id) {
            let join = PdCommand::Join {
                node: hb.node_id,
                addr: hb.addr.clone(),
                incarnation: hb.incarnation,
            };
            propose_once(host, pd.clone(), hb.node_id, join);
            return Err(format!("node {} is joining; try again shortly", hb.node_id));
        }
        return Err(format!("node {} is not a member of this cluster", hb.node_id));
    }
    // The sender's cluster and incarnation were checked with its request
    // (`api::internal::check_sender`); here it only gets registered, once.
    match map.incarnations.get(&hb.node_id) {
        Some(_) => {}
        None if map.is_bootstrapped() => {
            let register = PdCommand::Register {
                node: hb.node_id,
                incarnation: hb.incarnation,
            };
            propose_once(host, pd.clone(), hb.node_id, register)
        }
        None => {}
    }
    let now = Instant::now();
    let mut state = host.pd_state();
    // Liveness is kept for members only, so the table stays as small as the cluster.
    state.last_seen.retain(|n, _| is_member(host, &map, *n));
    state.last_seen.insert(hb.node_id, now);
    for led in &hb.leading {
        let entry = state.leader_hints.entry(led.group).or_insert((hb.node_id, led.term));
        if led.term >= entry.1 {
            *entry = (hb.node_id, led.term);
            if let Some(shard) = map.shards.get(&led.group) {
                state.shard_stats.entry(led.group).or_default().record(
                    led,
                    hb.node_id,
                    (shard.start, shard.end),
                    now,
                    map.settings.split_qps,
                );
            }
        }
    }
    let PdLeaderState {
        leader_hints,
        lapsed_hints,
        ..
    } = &mut *state;
    note_lapsed_hints(leader_hints, lapsed_hints, hb.node_id, &hb.leading);
    leader_hints.retain(|g, _| *g == PD_GROUP || map.shards.contains_key(g) || !map.is_bootstrapped());
    lapsed_hints.retain(|g| leader_hints.contains_key(g));
    state.shard_stats.retain(|g, _| map.shards.contains_key(g));
    Ok(Some(HeartbeatReply {
        redirect: None,
        pd_leader: host.node_id(),
        map: (map.revision > hb.revision).then(|| (*map).clone()),
        leader_hints: state.leader_hints.clone(),
        last_seen_ms: last_seen_ms(&state, &map, now),
        lapsed_hints: state.lapsed_hints.clone(),
    }))
}

/// After `sender`'s heartbeat: a hint naming it lapses when the heartbeat no longer lists
/// the group (a heartbeat lists every group its sender leads), and is current again when
/// it does.
fn note_lapsed_hints(
    hints: &BTreeMap<GroupId, (NodeId, u64)>,
    lapsed: &mut BTreeSet<GroupId>,
    sender: NodeId,
    leading: &[LedGroup],
) {
    let led: BTreeSet<GroupId> = leading.iter().map(|l| l.group).collect();
    for (group, (leader, _)) in hints {
        if *leader != sender {
            continue;
        }
        if led.contains(group) {
            lapsed.remove(group);
        } else {
            lapsed.insert(*group);
        }
    }
}

/// Milliseconds since the PD leader last heard from each member. A member not heard from
/// since this node became leader gets the time since then: silent at least that long (a
/// node that died with the previous leader must still show as lost).
fn last_seen_ms(state: &PdLeaderState, map: &ClusterMap, now: Instant) -> BTreeMap<NodeId, u64> {
    let since_leading = state
        .leading_since
        .map_or(0, |t| now.duration_since(t).as_millis() as u64);
    let mut seen: BTreeMap<NodeId, u64> = map
        .nodes
        .keys()
        .filter(|n| map.is_active_member(**n))
        .map(|n| (*n, since_leading))
        .collect();
    for (node, at) in &state.last_seen {
        seen.insert(*node, now.duration_since(*at).as_millis() as u64);
    }
    seen
}

/// On the PD leader: records a member's incarnation or a joining node (a proposal at a
/// time per node; retried on its next heartbeat).
fn propose_once<H: PdHost>(host: &H, pd: Arc<PdGroup>, node: NodeId, command: PdCommand) {
    if !host.pd_state().registering.insert(node) {
        return;
    }
    let state = host.pd_server().state.clone();
    tokio::spawn(async move {
        match crate::raft::await_write(pd.raft.server_metrics(), pd.raft.client_write(command)).await {
            Ok(Ok(resp)) => tracing::info!(node, result = ?resp.data, "recorded a member"),
            Ok(Err(e)) => {
                tracing::debug!(node, error = %e, "member record not committed; retried on the next heartbeat")
            }
            Err(_) => tracing::debug!(node, "member record's outcome lost with the PD leadership; retried"),
        }
        state.lock().unwrap().registering.remove(&node);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn led(group: GroupId) -> LedGroup {
        LedGroup {
            group,
            term: 1,
            keys: 0,
            bytes: 0,
            ops_total: 0,
            split_at: None,
        }
    }

    /// A hint lapses when its leader's heartbeat stops listing the group, and is current
    /// again when it lists it; hints naming other nodes are untouched.
    #[test]
    fn a_hint_lapses_while_its_leader_does_not_report_the_group() {
        let hints = BTreeMap::from([(7, (3, 10)), (8, (3, 10)), (9, (1, 4))]);
        let mut lapsed = BTreeSet::new();
        note_lapsed_hints(&hints, &mut lapsed, 3, &[led(8)]);
        assert_eq!(lapsed, BTreeSet::from([7]));
        note_lapsed_hints(&hints, &mut lapsed, 3, &[]);
        assert_eq!(lapsed, BTreeSet::from([7, 8]));
        note_lapsed_hints(&hints, &mut lapsed, 2, &[]);
        assert_eq!(lapsed, BTreeSet::from([7, 8]));
        note_lapsed_hints(&hints, &mut lapsed, 3, &[led(7), led(8), led(9)]);
        assert_eq!(lapsed, BTreeSet::new());
    }

    /// A shard's request rate is measured over one range by one leader: after a split
    /// (or a new leader) the rate and how long it stayed hot start again, rather than
    /// carrying the whole range's rate into the next pass, which split it a second time.
    #[test]
    fn a_split_or_a_new_leader_starts_a_new_rate_measurement() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let report = |ops_total| LedGroup { ops_total, ..led(4) };
        let (whole, lower_half): (ShardRange, ShardRange) = ((0, None), (0, Some(1 << 63)));
        let mut load = ShardLoad::default();
        for secs in 0..=11 {
            load.record(&report(4_000 * secs), 2, whole, at(secs), 3_000);
        }
        assert_eq!((load.stats.qps, load.stats.hot_secs), (4_000, 10));

        load.record(&report(4_000 * 12), 2, lower_half, at(12), 3_000);
        assert_eq!((load.stats.qps, load.stats.hot_secs), (0, 0), "the split's range");
        load.record(&report(4_000 * 12 + 2_000), 2, lower_half, at(13), 3_000);
        assert_eq!((load.stats.qps, load.stats.hot_secs), (2_000, 0));
        for secs in 14..=24 {
            load.record(
                &report(4_000 * 12 + 2_000 + 4_000 * (secs - 13)),
                2,
                lower_half,
                at(secs),
                3_000,
            );
        }
        assert_eq!((load.stats.qps, load.stats.hot_secs), (4_000, 10));

        // Node 3's total as this shard's leader (it led it before) is not node 2's.
        load.record(&report(4_000 * 40), 3, lower_half, at(25), 3_000);
        assert_eq!((load.stats.qps, load.stats.hot_secs), (0, 0), "a new leader");
        assert_eq!(load.stats.leader, Some(3));
    }

    /// Until its leader reports on the range the map now shows, a split shard's figures
    /// from before the split count for nothing, its leader aside.
    #[test]
    fn figures_from_before_a_split_count_for_nothing() {
        let (whole, lower_half): (ShardRange, ShardRange) = ((0, None), (0, Some(1 << 63)));
        let mut load = ShardLoad::default();
        let start = Instant::now();
        for (secs, ops_total) in [(0, 0), (1, 5_000), (12, 60_000)] {
            let report = LedGroup {
                ops_total,
                keys: 2_000_000,
                split_at: Some(1 << 63),
                ..led(4)
            };
            load.record(&report, 2, whole, start + Duration::from_secs(secs), 3_000);
        }
        let hot = load.stats_for(whole);
        assert_eq!(
            (hot.keys, hot.qps, hot.hot_secs, hot.split_at),
            (2_000_000, 5_000, 11, Some(1 << 63))
        );
        let after = load.stats_for(lower_half);
        assert_eq!(after.leader, Some(2));
        assert_eq!((after.keys, after.qps, after.hot_secs, after.split_at), (0, 0, 0, None));
    }
}

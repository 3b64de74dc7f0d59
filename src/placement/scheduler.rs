//! The scheduler: a pure function from the PD's view to operators, each with a reason,
//! plus an explanation per checker of what it would do now and why, or why nothing.
//!
//! No IO, clock or randomness: maps are walked in key order and ties go to the lowest id,
//! so the same view always gives the same plan (and `explain` shows what `plan` does).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::operator::{OperatorKind, ScheduleSettings};
use super::server::PD_HEARTBEAT_INTERVAL_MS;
use super::{ClusterMap, NodeId, NodeState, ShardId, ShardInfo, REPLICATION_FACTOR};

/// Per-shard figures reported by the shard's leader (absent if no leader reported).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ShardStats {
    pub leader: Option<NodeId>,
    pub keys: u64,
    pub bytes: u64,
    /// Requests per second over the last window.
    pub qps: u64,
    /// Seconds the qps has stayed above `settings.split_qps` (0 if not above).
    pub hot_secs: u64,
    /// Where the leader would split the shard: the median hash of its keys (reported
    /// only while the shard is over a split threshold).
    pub split_at: Option<u64>,
    /// How long ago the leader last reported (the map of stats keeps a leader that went
    /// silent, so `cluster_health` needs the age).
    #[serde(skip)]
    pub report_age_ms: u64,
}

/// A leader report older than this (5 node heartbeats) no longer shows the shard has a
/// leader.
pub const LEADER_REPORT_STALE_MS: u64 = 2_000;

/// Balancing involves only nodes this PD leader heard this recently (5 node heartbeats):
/// they alone receive replicas and leaders, and give them up. A node silent for longer,
/// or never heard since this leader took over, may be gone: it is judged down only after
/// `down_after_secs`, and until then an operator that needs it would stall until its
/// step timed out, holding an operator slot that re-creating a lost node's replicas may
/// need.
pub const HEARD_LATELY_MS: u64 = 5 * PD_HEARTBEAT_INTERVAL_MS;

/// What the PD leader knows beyond the map.
pub struct View<'a> {
    pub map: &'a ClusterMap,
    /// Milliseconds since the PD leader last heard each node's heartbeat; a node absent here
    /// was never heard since this PD leader took over.
    pub last_seen_ms: &'a BTreeMap<NodeId, u64>,
    /// How long this PD leader has led (ms): a node never heard from is only "down" once the
    /// leader has led for `down_after`.
    pub leading_for_ms: u64,
    pub shards: &'a BTreeMap<ShardId, ShardStats>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Proposal {
    pub kind: OperatorKind,
    pub reason: String,
    /// The shard's epoch the proposal was planned against.
    pub shard_epoch: u64,
}

/// One checker's findings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub checker: &'static str,
    /// One line per finding: what it would do and why, or why nothing ("nothing to do: ...").
    pub findings: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub proposals: Vec<Proposal>,
    pub reports: Vec<Report>,
}

/// Node health as the scheduler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Up,
    Down,
    Draining,
    Removed,
}

impl Health {
    pub const ALL: [Health; 4] = [Health::Up, Health::Down, Health::Draining, Health::Removed];

    pub fn word(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
            Health::Draining => "draining",
            Health::Removed => "removed",
        }
    }
}

/// Removed and draining come from the map; an `Up` node is down once silent for
/// `down_after_secs` (or never heard from by a leader that has led that long). A node the
/// map does not know counts as removed.
pub fn health(view: &View, node: NodeId) -> Health {
    match view.map.nodes.get(&node).map(|n| n.state) {
        None | Some(NodeState::Removed) => Health::Removed,
        Some(NodeState::Draining) => Health::Draining,
        Some(NodeState::Up) => {
            let down_after_ms = view.map.settings.down_after_secs.saturating_mul(1000);
            let silent_ms = view.last_seen_ms.get(&node).copied().unwrap_or(view.leading_for_ms);
            if silent_ms >= down_after_ms {
                Health::Down
            } else {
                Health::Up
            }
        }
    }
}

/// The cluster's state in numbers, as the PD leader exports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterHealth {
    pub shards: usize,
    /// Fewer replicas than the replication factor, or a replica on a node not up.
    pub under_replicated: usize,
    /// No recent leader report, or the reported leader's node is down or removed.
    pub without_leader: usize,
    /// Fewer than a majority of the replicas on live (up or draining) nodes.
    pub quorum_lost: usize,
    /// Nodes of the map by health, in [`Health::ALL`] order.
    pub nodes: [usize; 4],
}

pub fn cluster_health(view: &View) -> ClusterHealth {
    let alive = |node: NodeId| matches!(health(view, node), Health::Up | Health::Draining);
    let mut counts = ClusterHealth {
        shards: view.map.shards.len(),
        ..Default::default()
    };
    for shard in view.map.shards.values() {
        let live = shard.replicas.iter().filter(|r| alive(**r)).count();
        if shard.replicas.len() < super::REPLICATION_FACTOR
            || shard.replicas.iter().any(|r| health(view, *r) != Health::Up)
        {
            counts.under_replicated += 1;
        }
        if live < shard.replicas.len() / 2 + 1 {
            counts.quorum_lost += 1;
        }
        let leader = view
            .shards
            .get(&shard.id)
            .filter(|s| s.report_age_ms <= LEADER_REPORT_STALE_MS)
            .and_then(|s| s.leader);
        if !leader.is_some_and(|l| alive(l) && shard.replicas.contains(&l)) {
            counts.without_leader += 1;
        }
    }
    for id in view.map.nodes.keys() {
        let state = health(view, *id);
        counts.nodes[Health::ALL.iter().position(|h| *h == state).unwrap_or(0)] += 1;
    }
    counts
}

/// Whether this PD leader has heard from a majority of the PD's voters (itself included)
/// within `within_ms`. openraft 0.9 keeps a leader cut off from its peers in its role until
/// it hears a higher term; such a leader must not speak for the cluster in its metrics.
pub fn pd_quorum_heard(view: &View, within_ms: u64) -> bool {
    let voters = &view.map.pd_group.replicas;
    let heard = voters
        .iter()
        .filter(|v| view.last_seen_ms.get(v).copied().unwrap_or(view.leading_for_ms) <= within_ms)
        .count();
    heard > voters.len() / 2
}

/// Replicas plus learners on every node that is not removed (0 for empty nodes).
pub fn replica_counts(map: &ClusterMap) -> BTreeMap<NodeId, usize> {
    let mut counts: BTreeMap<NodeId, usize> = map
        .nodes
        .values()
        .filter(|n| n.state != NodeState::Removed)
        .map(|n| (n.id, 0))
        .collect();
    for shard in map.shards.values() {
        for node in shard.replicas.iter().chain(&shard.learners) {
            if let Some(count) = counts.get_mut(node) {
                *count += 1;
            }
        }
    }
    counts
}

/// Shards over a split threshold, with why. Detection only: splitting is not available yet,
/// so the split checker reports these without proposing.
pub fn split_candidates(view: &View) -> Vec<(ShardId, String)> {
    let settings = &view.map.settings;
    view.shards
        .iter()
        .filter(|(id, _)| view.map.shards.contains_key(id))
        .filter_map(|(&id, stats)| split_reason(stats, settings).map(|why| (id, format!("shard {id} is over {why}"))))
        .collect()
}

fn split_reason(stats: &ShardStats, s: &ScheduleSettings) -> Option<String> {
    let mut over = Vec::new();
    if stats.bytes > s.split_max_bytes {
        over.push(format!("split-max-bytes ({} > {})", stats.bytes, s.split_max_bytes));
    }
    if stats.keys > s.split_max_keys {
        over.push(format!("split-max-keys ({} > {})", stats.keys, s.split_max_keys));
    }
    if stats.qps > s.split_qps && stats.hot_secs >= s.split_qps_secs {
        over.push(format!(
            "split-qps ({} > {} for {}s)",
            stats.qps, s.split_qps, stats.hot_secs
        ));
    }
    (!over.is_empty()).then(|| over.join(" and "))
}

pub fn plan(view: &View) -> Plan {
    let mut planner = Planner::new(view);
    let mut reports = vec![planner.replica(), planner.split()];
    // Repair first: balancing while replicas are missing would compete for the same limits.
    let repairing = !planner.proposals.is_empty();
    reports.push(planner.balance_replicas(repairing));
    reports.push(planner.balance_leaders());
    let (proposals, limits) = apply_limits(view, planner.proposals);
    reports.push(limits);
    Plan { proposals, reports }
}

/// A checker's findings, or the one line saying why there are none.
fn report(checker: &'static str, findings: Vec<String>, nothing: String) -> Report {
    let findings = if findings.is_empty() { vec![nothing] } else { findings };
    Report { checker, findings }
}

fn one(checker: &'static str, finding: impl Into<String>) -> Report {
    Report {
        checker,
        findings: vec![finding.into()],
    }
}

/// A proposal in words, for findings.
fn describe(kind: &OperatorKind) -> String {
    match kind {
        OperatorKind::MoveReplica { shard, from, to } => format!("move of shard {shard} from node {from} to node {to}"),
        OperatorKind::AddReplica { shard, to } => format!("new replica of shard {shard} on node {to}"),
        OperatorKind::TransferLeader { shard, to } => format!("leader transfer of shard {shard} to node {to}"),
        OperatorKind::Split { shard, at, .. } => format!("split of shard {shard} at {at:#018x}"),
    }
}

/// "replica on node 3 is down" / "replicas on nodes 2, 3 are down".
fn on_nodes(nodes: &[NodeId], what: &str) -> String {
    match nodes {
        [one] => format!("replica on node {one} is {what}"),
        _ => format!(
            "replicas on nodes {} are {what}",
            nodes.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The lowest id among the most (`most`) or least loaded nodes.
fn extreme(counts: &BTreeMap<NodeId, usize>, most: bool) -> (NodeId, usize) {
    let found = if most {
        counts.iter().max_by_key(|&(&n, &c)| (c, Reverse(n)))
    } else {
        counts.iter().min_by_key(|&(&n, &c)| (c, n))
    };
    found.map(|(&n, &c)| (n, c)).unwrap_or_default()
}

/// Up and heard within [`HEARD_LATELY_MS`]: may take part in balancing, receive a replica
/// the replica checker re-creates, and campaign first in a new split child.
pub fn heard_lately(view: &View, node: NodeId) -> bool {
    health(view, node) == Health::Up && view.last_seen_ms.get(&node).is_some_and(|&ms| ms <= HEARD_LATELY_MS)
}

/// Each shard with a known or expected leader, and that leader as the leader balance
/// counts it: a running transfer counts as done (planning again before it lands would
/// move a second leader off the same node and overshoot), and a split child no leader
/// has reported yet counts as led by its first campaigner, which the map lists first
/// until its membership first changes (else the splits of one pass would all pick the
/// same least-led node, and the balance would then move leaders onto it before the
/// children's first reports).
pub fn shard_leaders<'a>(view: &View<'a>) -> Vec<(&'a ShardInfo, NodeId)> {
    let map = view.map;
    let moving_to = |shard: ShardId| {
        map.operators.values().find_map(|o| match o.kind {
            OperatorKind::TransferLeader { shard: s, to } if s == shard => Some(to),
            _ => None,
        })
    };
    map.shards
        .values()
        .filter_map(|shard| {
            let reported = view.shards.get(&shard.id).and_then(|s| s.leader);
            let first_campaigner = || {
                (shard.parent.is_some() && shard.epoch == 1)
                    .then(|| shard.replicas.first().copied())
                    .flatten()
            };
            Some((shard, moving_to(shard.id).or(reported).or_else(first_campaigner)?))
        })
        .collect()
}

/// Shards led per node for choosing a split child's first campaigner
/// (`driver::split_campaigner`) for split operator `operator`: [`shard_leaders`], plus the
/// campaigners already named (`named`, by operator) for splits whose child the map does
/// not list yet, so that the splits of one executor pass spread their children. Drops
/// from `named` the picks the map now lists (a listed child counts in
/// [`shard_leaders`]) and `operator`'s own earlier pick (this is a retry).
pub fn split_leader_counts(view: &View, named: &mut BTreeMap<u64, NodeId>, operator: u64) -> BTreeMap<NodeId, usize> {
    let child_unlisted = |op: &u64| {
        view.map.operators.get(op).is_some_and(
            |o| matches!(o.kind, OperatorKind::Split { child, .. } if !view.map.shards.contains_key(&child)),
        )
    };
    named.retain(|op, _| *op != operator && child_unlisted(op));
    let mut led = BTreeMap::new();
    for leader in shard_leaders(view)
        .into_iter()
        .map(|(_, l)| l)
        .chain(named.values().copied())
    {
        *led.entry(leader).or_insert(0) += 1;
    }
    led
}

struct Planner<'v, 'a> {
    view: &'v View<'a>,
    /// The running operator on each shard (the lowest id if several).
    running: BTreeMap<ShardId, u64>,
    /// Shards given a proposal in this plan: one operator per shard at a time.
    proposed: BTreeSet<ShardId>,
    /// Replicas per node, counting the targets of running operators not yet listed as
    /// learners and of this plan's proposals, so that new replicas spread out.
    load: BTreeMap<NodeId, usize>,
    proposals: Vec<Proposal>,
}

impl<'v, 'a> Planner<'v, 'a> {
    fn new(view: &'v View<'a>) -> Self {
        let (mut running, mut load) = (BTreeMap::new(), replica_counts(view.map));
        for op in view.map.operators.values() {
            running.entry(op.kind.shard()).or_insert(op.id);
            let shard = view.map.shards.get(&op.kind.shard());
            if let Some(target) = op.kind.target().filter(|&t| !shard.is_some_and(|s| s.hosts(t))) {
                load.entry(target).and_modify(|c| *c += 1);
            }
        }
        let proposed = BTreeSet::new();
        Planner {
            view,
            running,
            proposed,
            load,
            proposals: Vec::new(),
        }
    }

    fn heard_lately(&self, node: NodeId) -> bool {
        heard_lately(self.view, node)
    }

    fn busy(&self, shard: ShardId) -> bool {
        self.running.contains_key(&shard) || self.proposed.contains(&shard)
    }

    fn propose(&mut self, kind: OperatorKind, reason: String, shard_epoch: u64) -> String {
        // The PD group's replica is small: it does not count as load.
        if let Some(target) = kind.target().filter(|_| kind.shard() != super::PD_GROUP) {
            self.load.entry(target).and_modify(|c| *c += 1);
        }
        let finding = format!("propose {}: {reason}", describe(&kind));
        self.proposed.insert(kind.shard());
        self.proposals.push(Proposal {
            kind,
            reason,
            shard_epoch,
        });
        finding
    }

    /// Why a replica must leave `node`.
    fn why_lost(&self, node: NodeId) -> String {
        match (health(self.view, node), self.view.last_seen_ms.get(&node)) {
            (Health::Down, Some(ms)) => format!("node {node} is down (no heartbeat for {}s)", ms / 1000),
            (Health::Down, None) => {
                let led = self.view.leading_for_ms / 1000;
                format!("node {node} is down (not heard from in the {led}s this PD leader has led)")
            }
            (health, _) => format!("node {node} is {}", health.word()),
        }
    }

    /// A node that can receive a replica of `shard` and has none: the least loaded, then
    /// the lowest id.
    fn best_target(&self, shard: &ShardInfo) -> Option<NodeId> {
        let candidates = self
            .load
            .iter()
            .filter(|&(&n, _)| self.heard_lately(n) && !shard.hosts(n));
        candidates.min_by_key(|&(&n, &c)| (c, n)).map(|(&n, _)| n)
    }

    fn replica(&mut self) -> Report {
        let view = self.view;
        let mut findings = Vec::new();
        // The PD group (id 0) first: its voters are replaced like any shard's replicas.
        let pd = Some(&view.map.pd_group).filter(|pd| !pd.replicas.is_empty());
        for shard in pd.into_iter().chain(view.map.shards.values()) {
            let lost = shard
                .replicas
                .iter()
                .map(|&n| (n, health(view, n)))
                .filter(|&(_, h)| h != Health::Up);
            let mut lost: Vec<(NodeId, Health)> = lost.collect();
            let short = shard.replicas.len() < REPLICATION_FACTOR;
            if !short && lost.is_empty() {
                continue;
            }
            if let Some(op) = self.running.get(&shard.id) {
                findings.push(format!(
                    "shard {} is under-replicated; operator {op} is already handling it",
                    shard.id
                ));
                continue;
            }
            // Down and removed replicas cannot vote (draining ones still do): without a
            // majority of voters, no membership change can commit.
            let mut dead: Vec<NodeId> = lost
                .iter()
                .filter(|(_, h)| *h != Health::Draining)
                .map(|(n, _)| *n)
                .collect();
            dead.sort_unstable();
            if shard.replicas.len() - dead.len() <= shard.replicas.len() / 2 {
                let what = if lost.iter().any(|(_, h)| *h == Health::Removed) {
                    "down or removed"
                } else {
                    "down"
                };
                let on = on_nodes(&dead, what);
                findings.push(format!("shard {} has lost quorum ({on}); waiting", shard.id));
                continue;
            }
            // Dead replicas first (they cost redundancy now), then the lowest id.
            lost.sort_by_key(|&(n, h)| (h == Health::Draining, n));
            let (from, problem, reason) = match lost.first() {
                Some(&(from, h)) if !short => (Some(from), on_nodes(&[from], h.word()), self.why_lost(from)),
                _ => {
                    let has = format!("{} of {REPLICATION_FACTOR} replicas", shard.replicas.len());
                    (None, has.clone(), format!("shard {} has {has}", shard.id))
                }
            };
            let Some(to) = self.best_target(shard) else {
                let id = shard.id;
                findings.push(format!(
                    "shard {id} is under-replicated ({problem}) but no live node heard from lately lacks a replica of it"
                ));
                continue;
            };
            let kind = match from {
                Some(from) => OperatorKind::MoveReplica {
                    shard: shard.id,
                    from,
                    to,
                },
                None => OperatorKind::AddReplica { shard: shard.id, to },
            };
            findings.push(self.propose(kind, reason, shard.epoch));
        }
        let nothing = format!("nothing to do: every shard has {REPLICATION_FACTOR} replicas on live nodes");
        report("replica", findings, nothing)
    }

    fn split(&mut self) -> Report {
        let mut findings = Vec::new();
        for (id, why) in split_candidates(self.view) {
            let shard = &self.view.map.shards[&id];
            if let Some(op) = self.running.get(&id) {
                findings.push(format!("{why}; operator {op} is running on it"));
                continue;
            }
            // The point comes from the data; the middle of the range could leave one side
            // empty.
            let at = self.view.shards.get(&id).and_then(|s| s.split_at);
            match at {
                Some(at) if at > shard.start && u128::from(at) < shard.end_u128() => {
                    let kind = OperatorKind::Split {
                        shard: id,
                        at,
                        child: 0,
                    };
                    let epoch = shard.epoch;
                    findings.push(self.propose(kind, why, epoch));
                }
                Some(at) if at <= shard.start => findings.push(format!(
                    "{why}, but its keys' median hash {at:#018x} is its first (one key hash holds the data)"
                )),
                Some(at) => findings.push(format!(
                    "{why}, but the reported split point {at:#018x} is outside its range (a report from before \
                     its last split; the next one will do)"
                )),
                None => findings.push(format!("{why}, but its leader has not reported a split point yet")),
            }
        }
        let s = &self.view.map.settings;
        let nothing = format!(
            "nothing to do: no shard is over split-max-bytes ({}), split-max-keys ({}) or split-qps ({} for {}s)",
            s.split_max_bytes, s.split_max_keys, s.split_qps, s.split_qps_secs
        );
        report("split", findings, nothing)
    }

    fn balance_replicas(&mut self, repairing: bool) -> Report {
        let checker = "balance-replicas";
        if repairing {
            return one(checker, "nothing to do: waiting for the replica checker's repairs");
        }
        let heard: BTreeMap<NodeId, usize> = self
            .load
            .iter()
            .filter(|&(&n, _)| self.heard_lately(n))
            .map(|(&n, &c)| (n, c))
            .collect();
        if heard.len() < 2 {
            return one(checker, "nothing to do: fewer than 2 live nodes heard from lately");
        }
        let ((src, max), (dst, min)) = (extreme(&heard, true), extreme(&heard, false));
        if max - min <= 1 {
            return one(
                checker,
                format!(
                    "nothing to do: replica counts on live nodes heard from lately are within 1 (min {min}, max {max})"
                ),
            );
        }
        let reason = format!("node {src} has {max} replicas, node {dst} has {min}");
        // Shards with a replica off a live node are the replica checker's; a replica on a
        // node not heard lately may be one it is about to take.
        let candidate = self.view.map.shards.values().find(|s| {
            s.replicas.contains(&src)
                && !s.hosts(dst)
                && !self.busy(s.id)
                && s.replicas.iter().all(|&n| self.heard_lately(n))
        });
        match candidate {
            Some(shard) => {
                let kind = OperatorKind::MoveReplica {
                    shard: shard.id,
                    from: src,
                    to: dst,
                };
                one(checker, self.propose(kind, reason, shard.epoch))
            }
            None => one(
                checker,
                format!(
                    "{reason}, but every shard on node {src} is on node {dst} already, has an operator, \
                     or has a replica on a node not up or not heard from lately"
                ),
            ),
        }
    }

    fn balance_leaders(&mut self) -> Report {
        let (checker, map) = ("balance-leaders", self.view.map);
        let holds = |n: NodeId| map.shards.values().any(|s| s.replicas.contains(&n));
        let mut led: BTreeMap<NodeId, usize> = map
            .nodes
            .keys()
            .filter(|&&n| self.heard_lately(n) && holds(n))
            .map(|&n| (n, 0))
            .collect();
        if led.len() < 2 {
            return one(
                checker,
                "nothing to do: fewer than 2 live nodes heard from lately hold replicas",
            );
        }
        let leaders = shard_leaders(self.view);
        for (_, leader) in &leaders {
            led.entry(*leader).and_modify(|c| *c += 1);
        }
        let ((src, max), (low, min)) = (extreme(&led, true), extreme(&led, false));
        if max - min <= 1 {
            return one(
                checker,
                format!(
                    "nothing to do: leader counts on live nodes heard from lately are within 1 (min {min}, max {max})"
                ),
            );
        }
        // From the least-led node up: it may share no shard with the most-led one.
        let mut targets: Vec<(usize, NodeId)> = led
            .iter()
            .filter(|(_, &c)| max - c > 1)
            .map(|(&n, &c)| (c, n))
            .collect();
        targets.sort_unstable();
        // Only a leader that reported can be asked to hand over.
        let reported = |s: ShardId| self.view.shards.get(&s).and_then(|st| st.leader) == Some(src);
        for (count, dst) in targets {
            let found = leaders
                .iter()
                .find(|(s, l)| *l == src && reported(s.id) && s.replicas.contains(&dst) && !self.busy(s.id));
            if let Some(&(shard, _)) = found {
                let reason = format!("node {src} leads {max} shards, node {dst} leads {count}");
                let kind = OperatorKind::TransferLeader {
                    shard: shard.id,
                    to: dst,
                };
                return one(checker, self.propose(kind, reason, shard.epoch));
            }
        }
        one(
            checker,
            format!(
                "node {src} leads {max} shards, node {low} leads {min}, but no shard node {src} leads \
                 has a replica on a less-led node heard from lately and no operator"
            ),
        )
    }
}

/// Nodes an operator makes receive or send a snapshot: the new replica's node and, when
/// known and up, the shard's leader (a down node's report is stale: it sends nothing).
fn snapshot_nodes(view: &View, kind: &OperatorKind) -> Vec<(NodeId, &'static str)> {
    let Some(target) = kind.target() else { return Vec::new() };
    let leader = view.shards.get(&kind.shard()).and_then(|s| s.leader);
    let sender = leader.filter(|&l| l != target && health(view, l) == Health::Up);
    std::iter::once((target, "receiving"))
        .chain(sender.map(|l| (l, "sending")))
        .collect()
}

/// The nodes an operator makes work: a node that is not up does nothing, so repairs of
/// its replicas do not queue behind each other on its count.
fn working_nodes(view: &View, kind: &OperatorKind) -> Vec<NodeId> {
    kind.nodes()
        .into_iter()
        .filter(|n| health(view, *n) == Health::Up)
        .collect()
}

/// Operators in flight: cluster-wide, per node, and snapshots per node.
#[derive(Default)]
struct Load {
    total: u64,
    per_node: BTreeMap<NodeId, u64>,
    snapshots: BTreeMap<NodeId, u64>,
}

impl Load {
    fn add(&mut self, view: &View, kind: &OperatorKind) {
        self.total += 1;
        for node in working_nodes(view, kind) {
            *self.per_node.entry(node).or_default() += 1;
        }
        for (node, _) in snapshot_nodes(view, kind) {
            *self.snapshots.entry(node).or_default() += 1;
        }
    }

    /// The limit `kind` would exceed, if any.
    fn exceeded(&self, view: &View, kind: &OperatorKind) -> Option<String> {
        let s = &view.map.settings;
        let at = |counts: &BTreeMap<NodeId, u64>, node: NodeId, max| counts.get(&node).copied().unwrap_or(0) >= max;
        if self.total >= s.max_operators {
            return Some(format!("max-operators ({})", s.max_operators));
        }
        if let Some(node) = working_nodes(view, kind)
            .into_iter()
            .find(|&n| at(&self.per_node, n, s.max_operators_per_node))
        {
            return Some(format!(
                "max-operators-per-node ({}) on node {node}",
                s.max_operators_per_node
            ));
        }
        let mut snapshots = snapshot_nodes(view, kind).into_iter();
        let (node, role) = snapshots.find(|&(n, _)| at(&self.snapshots, n, s.max_snapshots_per_node))?;
        Some(format!(
            "max-snapshots-per-node ({}) on node {node} ({role})",
            s.max_snapshots_per_node
        ))
    }
}

/// Keeps the proposals, in order, that fit the limits alongside the running operators and
/// the proposals kept before them.
fn apply_limits(view: &View, proposals: Vec<Proposal>) -> (Vec<Proposal>, Report) {
    if view.map.settings.paused {
        let finding = match proposals.len() {
            0 => "scheduling is paused".to_string(),
            n => format!("scheduling is paused: {n} proposals not started"),
        };
        return (Vec::new(), one("limits", finding));
    }
    let mut load = Load::default();
    view.map.operators.values().for_each(|op| load.add(view, &op.kind));
    let (mut kept, mut findings) = (Vec::new(), Vec::new());
    for proposal in proposals {
        match load.exceeded(view, &proposal.kind) {
            Some(limit) => findings.push(format!("held back: {} would exceed {limit}", describe(&proposal.kind))),
            None => {
                load.add(view, &proposal.kind);
                kept.push(proposal);
            }
        }
    }
    (kept, report("limits", findings, "nothing held back".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::operator::{Operator, Origin, Step};
    use crate::placement::{PdCommand, PdResult};

    /// A map plus what the PD leader has heard: every node heard 1s ago, each shard led by its
    /// first replica, a leader of 10 minutes, and limits too wide to matter.
    struct Fixture {
        map: ClusterMap,
        seen: BTreeMap<NodeId, u64>,
        stats: BTreeMap<ShardId, ShardStats>,
        leading_for_ms: u64,
    }

    /// A change to a fixture, so that test tables stay one line per case.
    enum Act {
        Join(NodeId),
        Down(NodeId),
        /// Not heard since a PD leader that has led this long took over.
        Unheard(NodeId, u64),
        /// Heard a second ago.
        Heard(NodeId),
        State(NodeId, NodeState),
        Replicas(ShardId, &'static [NodeId]),
        Run(u64, OperatorKind),
        Leader(ShardId, NodeId),
        AllLedBy(NodeId),
        /// A split child on these replicas (its first campaigner first) that no leader
        /// has reported yet.
        UnreportedChild(ShardId, &'static [NodeId]),
        Set(fn(&mut ScheduleSettings)),
    }
    use Act::*;

    fn cluster(nodes: u64, shards: u32, acts: &[Act]) -> Fixture {
        let mut map = ClusterMap::default();
        let settings = ScheduleSettings {
            max_operators: 64,
            max_operators_per_node: 64,
            max_snapshots_per_node: 64,
            ..ScheduleSettings::default()
        };
        let nodes = (1..=nodes).map(|id| (id, format!("10.0.0.{id}:7000"))).collect();
        let bootstrap = PdCommand::Bootstrap {
            nodes,
            initial_shards: shards,
            cluster_id: 0xc1,
            settings,
        };
        assert!(matches!(map.apply(&bootstrap), PdResult::Bootstrapped { .. }));
        // The shard checkers' cases are about shards: keep the PD group out of them
        // (`pd_group_voters_are_replaced` covers it).
        map.pd_group.replicas.clear();
        let leader = |s: &ShardInfo| {
            (
                s.id,
                ShardStats {
                    leader: Some(s.replicas[0]),
                    ..Default::default()
                },
            )
        };
        let mut f = Fixture {
            stats: map.shards.values().map(leader).collect(),
            seen: map.nodes.keys().map(|&n| (n, 1_000)).collect(),
            map,
            leading_for_ms: 600_000,
        };
        acts.iter().for_each(|act| f.act(act));
        f
    }

    impl Fixture {
        fn act(&mut self, act: &Act) {
            let done = |result| assert!(matches!(result, PdResult::Done { .. }), "{result:?}");
            match act {
                Join(node) => {
                    let addr = format!("10.0.0.{node}:7000");
                    done(self.map.apply(&PdCommand::Join {
                        node: *node,
                        addr,
                        incarnation: (*node).into(),
                    }));
                    self.seen.insert(*node, 1_000);
                }
                Down(node) => {
                    self.seen.insert(*node, 40_000);
                }
                Heard(node) => {
                    self.seen.insert(*node, 1_000);
                }
                Unheard(node, leading_for_ms) => {
                    self.seen.remove(node);
                    self.leading_for_ms = *leading_for_ms;
                }
                State(node, state) => done(self.map.apply(&PdCommand::SetNodeState {
                    node: *node,
                    state: *state,
                })),
                Replicas(shard, nodes) => self.map.shards.get_mut(shard).unwrap().replicas = nodes.to_vec(),
                Run(id, kind) => {
                    let (origin, step, shard_epoch) = (Origin::Scheduler, Step::Created, 1);
                    let (kind, reason) = (kind.clone(), "test".into());
                    let op = Operator {
                        id: *id,
                        kind,
                        origin,
                        reason,
                        step,
                        shard_epoch,
                        created_ms: 0,
                        step_ms: 0,
                    };
                    self.map.operators.insert(*id, op);
                }
                Leader(shard, node) => self.stats.get_mut(shard).unwrap().leader = Some(*node),
                AllLedBy(node) => self.stats.values_mut().for_each(|s| s.leader = Some(*node)),
                UnreportedChild(shard, nodes) => {
                    let info = self.map.shards.get_mut(shard).unwrap();
                    (info.parent, info.replicas) = (Some(1), nodes.to_vec());
                    self.stats.remove(shard);
                }
                Set(change) => change(&mut self.map.settings),
            }
        }

        fn health(&self) -> ClusterHealth {
            cluster_health(&self.view())
        }

        fn view(&self) -> View<'_> {
            View {
                map: &self.map,
                last_seen_ms: &self.seen,
                leading_for_ms: self.leading_for_ms,
                shards: &self.stats,
            }
        }

        fn plan(&self) -> Plan {
            let plan = plan(&self.view());
            assert_eq!(plan, super::plan(&self.view()), "planning is deterministic");
            let checkers: Vec<&str> = plan.reports.iter().map(|r| r.checker).collect();
            assert_eq!(
                checkers,
                ["replica", "split", "balance-replicas", "balance-leaders", "limits"]
            );
            for p in &plan.proposals {
                assert_eq!(p.shard_epoch, self.map.group(p.kind.shard()).unwrap().epoch);
            }
            plan
        }
    }

    fn findings(plan: &Plan, checker: &str) -> String {
        plan.reports
            .iter()
            .find(|r| r.checker == checker)
            .unwrap()
            .findings
            .join("\n")
    }

    fn mv(shard: ShardId, from: NodeId, to: NodeId) -> OperatorKind {
        OperatorKind::MoveReplica { shard, from, to }
    }

    fn lead(shard: ShardId, to: NodeId) -> OperatorKind {
        OperatorKind::TransferLeader { shard, to }
    }

    type Case<'a> = (&'a str, &'a [Act], &'a [OperatorKind], &'a str);

    /// Each case: changes on top of `base`, the exact proposals, and a finding of `checker`.
    fn check(checker: &str, (nodes, shards): (u64, u32), base: &[Act], cases: &[Case]) {
        for (name, acts, want, finding) in cases {
            let mut f = cluster(nodes, shards, base);
            acts.iter().for_each(|act| f.act(act));
            let plan = f.plan();
            let kinds: Vec<OperatorKind> = plan.proposals.iter().map(|p| p.kind.clone()).collect();
            assert_eq!(kinds, *want, "{name}: {plan:#?}");
            assert!(findings(&plan, checker).contains(finding), "{name}: {plan:#?}");
        }
    }

    #[test]
    fn health_follows_state_and_heartbeats() {
        let mut f = cluster(3, 1, &[Join(4), Join(5), State(4, NodeState::Draining)]);
        f.map.nodes.get_mut(&5).unwrap().state = NodeState::Removed;
        let cases: [(&str, Option<u64>, u64, NodeId, Health); 8] = [
            ("heard 1s ago", Some(1_000), 600_000, 1, Health::Up),
            ("silent just under down_after", Some(29_999), 600_000, 1, Health::Up),
            ("silent for down_after", Some(30_000), 600_000, 1, Health::Down),
            ("never heard, new leader", None, 10_000, 1, Health::Up),
            ("never heard, leader for down_after", None, 30_000, 1, Health::Down),
            ("draining beats heartbeats", Some(90_000), 600_000, 4, Health::Draining),
            ("removed", Some(1_000), 600_000, 5, Health::Removed),
            ("unknown node", Some(1_000), 600_000, 9, Health::Removed),
        ];
        for (name, seen, leading_for_ms, node, want) in cases {
            match seen {
                Some(ms) => f.seen.insert(node, ms),
                None => f.seen.remove(&node),
            };
            f.leading_for_ms = leading_for_ms;
            assert_eq!(health(&f.view(), node), want, "{name}");
        }
    }

    #[test]
    fn replica_counts_cover_empty_nodes_and_skip_removed() {
        let mut f = cluster(3, 3, &[Join(4), Join(5)]);
        f.map.nodes.get_mut(&5).unwrap().state = NodeState::Removed;
        f.map.shards.get_mut(&1).unwrap().learners.push(4);
        assert_eq!(replica_counts(&f.map), BTreeMap::from([(1, 3), (2, 3), (3, 3), (4, 1)]));
    }

    #[test]
    fn a_healthy_cluster_gets_no_proposals() {
        let plan = cluster(3, 3, &[]).plan();
        assert_eq!(plan.proposals, []);
        for report in &plan.reports {
            let want = if report.checker == "limits" {
                "nothing held back"
            } else {
                "nothing to do: "
            };
            assert!(
                report.findings.len() == 1 && report.findings[0].starts_with(want),
                "{report:?}"
            );
        }
    }

    #[test]
    fn replica_checker() {
        let all = [mv(1, 3, 4), mv(2, 3, 4), mv(3, 3, 4)];
        let draining = NodeState::Draining;
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("down node", &[Down(3)], &all, "propose move of shard 1 from node 3 to node 4: node 3 is down (no heartbeat for 40s)"),
            ("never heard by a settled leader", &[Unheard(3, 45_000)], &all, "node 3 is down (not heard from in the 45s this PD leader has led)"),
            ("never heard by a new leader: not down", &[Unheard(3, 10_000)], &[], "nothing to do: every shard has 3 replicas on live nodes"),
            ("draining node", &[State(3, draining)], &all, "propose move of shard 3 from node 3 to node 4: node 3 is draining"),
            ("short of replicas", &[Replicas(2, &[2, 3])], &[OperatorKind::AddReplica { shard: 2, to: 4 }], "propose new replica of shard 2 on node 4: shard 2 has 2 of 3 replicas"),
            ("running operator", &[Down(3), Run(7, mv(2, 3, 4))], &[mv(1, 3, 4), mv(3, 3, 4)], "shard 2 is under-replicated; operator 7 is already handling it"),
            ("targets spread", &[Join(5), Down(3)], &[mv(1, 3, 4), mv(2, 3, 5), mv(3, 3, 4)], "move of shard 2 from node 3 to node 5"),
            ("down before draining", &[State(1, draining), Down(3)], &all, "node 3 is down"),
            ("quorum lost", &[Down(2), Down(3)], &[], "shard 1 has lost quorum (replicas on nodes 2, 3 are down); waiting"),
            ("no target", &[State(4, draining), Down(3)], &[], "shard 3 is under-replicated (replica on node 3 is down) but no live node heard from lately lacks a replica of it"),
            ("a target not heard from lately", &[Down(3), Unheard(4, 10_000)], &[], "but no live node heard from lately lacks a replica of it"),
            ("a target heard again", &[Down(3), Unheard(4, 10_000), Heard(4)], &all, "node 3 is down"),
        ];
        check("replica", (3, 3), &[Join(4)], cases);
    }

    #[test]
    fn split_checker_splits_at_the_reported_point() {
        let stats = |bytes, keys, qps, hot_secs| ShardStats {
            leader: Some(1),
            keys,
            bytes,
            qps,
            hot_secs,
            split_at: None,
            report_age_ms: 0,
        };
        let cases = [
            (stats(10, 10, 10, 0), None),
            (stats(1_000, 100, 50, 60), None),
            (
                stats(1_001, 10, 10, 0),
                Some("shard 1 is over split-max-bytes (1001 > 1000)"),
            ),
            (
                stats(10, 101, 10, 0),
                Some("shard 1 is over split-max-keys (101 > 100)"),
            ),
            (
                stats(10, 10, 51, 10),
                Some("shard 1 is over split-qps (51 > 50 for 10s)"),
            ),
            (stats(10, 10, 51, 9), None),
            (
                stats(2_000, 200, 0, 0),
                Some("shard 1 is over split-max-bytes (2000 > 1000) and split-max-keys (200 > 100)"),
            ),
        ];
        let thresholds: fn(&mut ScheduleSettings) =
            |s| (s.split_max_bytes, s.split_max_keys, s.split_qps, s.split_qps_secs) = (1_000, 100, 50, 10);
        for (stats, want) in cases {
            let mut f = cluster(3, 3, &[Set(thresholds)]);
            f.stats.insert(1, stats.clone());
            f.stats.insert(
                99,
                ShardStats {
                    keys: 9_999,
                    ..stats.clone()
                },
            ); // not in the map: ignored
            let want: Vec<(ShardId, String)> = want.map(|w| (1, w.to_string())).into_iter().collect();
            assert_eq!(split_candidates(&f.view()), want, "{stats:?}");
            let plan = f.plan();
            assert_eq!(plan.proposals, []);
            let expected = match want.first() {
                Some((_, why)) => format!("{why}, but its leader has not reported a split point yet"),
                None => "nothing to do: no shard is over split-max-bytes (1000), split-max-keys (100) or split-qps (50 for 10s)".into(),
            };
            assert_eq!(findings(&plan, "split"), expected);
        }
        // With a point from the data inside the range: a split there. At the range's
        // start (every key hashes alike): none.
        let mut f = cluster(3, 3, &[Set(thresholds)]);
        let start = f.map.shards[&2].start;
        f.stats.insert(
            2,
            ShardStats {
                split_at: Some(start + 77),
                ..stats(10, 101, 0, 0)
            },
        );
        f.stats.insert(
            3,
            ShardStats {
                split_at: Some(f.map.shards[&3].start),
                ..stats(10, 101, 0, 0)
            },
        );
        let plan = f.plan();
        let splits: Vec<OperatorKind> = plan
            .proposals
            .iter()
            .map(|p| p.kind.clone())
            .filter(|k| matches!(k, OperatorKind::Split { .. }))
            .collect();
        assert_eq!(
            splits,
            [OperatorKind::Split {
                shard: 2,
                at: start + 77,
                child: 0
            }]
        );
        assert!(findings(&plan, "split").contains("propose split of shard 2"));
        assert!(findings(&plan, "split").contains("is its first"));
    }

    #[test]
    fn balance_replicas() {
        let repairs: Vec<OperatorKind> = (1..=6).map(|s| mv(s, 3, 4)).collect();
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("empty node", &[Join(4)], &[mv(1, 1, 4)], "propose move of shard 1 from node 1 to node 4: node 1 has 6 replicas, node 4 has 0"),
            ("a running move's target counts", &[Join(4), Run(3, mv(1, 2, 4))], &[mv(2, 1, 4)], "node 1 has 6 replicas, node 4 has 1"),
            ("balanced", &[], &[], "nothing to do: replica counts on live nodes heard from lately are within 1 (min 6, max 6)"),
            ("repairs first", &[Join(4), Down(3)], &repairs, "nothing to do: waiting for the replica checker's repairs"),
            ("one live node", &[Down(2), State(3, NodeState::Draining)], &[], "nothing to do: fewer than 2 live nodes"),
            ("an empty node not heard from lately", &[Join(4), Unheard(4, 10_000)], &[], "within 1 (min 6, max 6)"),
            ("every shard on a node not heard from lately", &[Join(4), Unheard(3, 10_000)], &[], "or has a replica on a node not up or not heard from lately"),
        ];
        check("balance-replicas", (3, 6), &[], cases);
        check(
            "balance-replicas",
            (4, 5),
            &[],
            &[("off by one", &[], &[], "within 1 (min 3, max 4)")],
        );
    }

    #[test]
    fn balance_leaders() {
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("most-led to least-led", &[AllLedBy(1)], &[lead(1, 2)], "propose leader transfer of shard 1 to node 2: node 1 leads 6 shards, node 2 leads 0"),
            ("least-led first", &[AllLedBy(1), Leader(6, 2)], &[lead(1, 3)], "node 1 leads 5 shards, node 3 leads 0"),
            ("a running transfer counts as done", &[AllLedBy(1), Run(1, lead(1, 3))], &[lead(2, 2)], "node 1 leads 5 shards, node 2 leads 0"),
            ("unreported split children count for their first campaigner", &[AllLedBy(1), Leader(3, 2), Leader(4, 2), UnreportedChild(5, &[3, 1, 2]), UnreportedChild(6, &[3, 2, 1])], &[], "within 1 (min 2, max 2)"),
            ("an unreported split child is no transfer source", &[AllLedBy(1), UnreportedChild(1, &[1, 2, 3]), UnreportedChild(2, &[1, 3, 2])], &[lead(3, 2)], "node 1 leads 6 shards, node 2 leads 0"),
            ("a down leader counts for no one", &[AllLedBy(3), Down(3)], &[], "within 1 (min 0, max 0)"),
            ("not to a node not heard from lately", &[AllLedBy(1), Unheard(2, 10_000)], &[lead(1, 3)], "node 1 leads 6 shards, node 3 leads 0"),
            ("balanced", &[], &[], "nothing to do: leader counts on live nodes heard from lately are within 1 (min 2, max 2)"),
            ("one live node", &[Down(2), Down(3)], &[], "nothing to do: fewer than 2 live nodes heard from lately hold replicas"),
            ("not from a node not heard from lately", &[AllLedBy(1), Unheard(1, 10_000)], &[], "within 1 (min 0, max 0)"),
        ];
        check("balance-leaders", (3, 6), &[], cases);
        check(
            "balance-leaders",
            (3, 4),
            &[],
            &[("off by one", &[], &[], "within 1 (min 1, max 2)")],
        );
        // Node 4 shares no shard with node 1 (which leads 1-3): the next least-led node is
        // tried, but never one only a shard behind node 1 (that would swing back).
        #[rustfmt::skip]
        let base = [
            Replicas(2, &[1, 2, 3]), Replicas(3, &[1, 2, 3]), Replicas(4, &[2, 3, 4]), Replicas(5, &[2, 3, 4]),
            Replicas(6, &[2, 3, 4]), Replicas(7, &[2, 3, 4]),
            Leader(2, 1), Leader(3, 1), Leader(4, 2), Leader(5, 2), Leader(6, 3),
        ];
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("next target", &[Leader(7, 2)], &[mv(4, 2, 1), lead(1, 3)], "node 1 leads 3 shards, node 3 leads 1"),
            ("none", &[Leader(7, 3)], &[mv(4, 2, 1)], "but no shard node 1 leads has a replica on a less-led node"),
        ];
        check("balance-leaders", (4, 7), &base, cases);
    }

    #[test]
    fn limits_and_pause() {
        let all = [mv(1, 3, 4), mv(2, 3, 4), mv(3, 3, 4)];
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("within limits", &[], &all, "nothing held back"),
            ("per node, a down source not counted", &[Set(|s| s.max_operators_per_node = 2)], &all[..2], "held back: move of shard 3 from node 3 to node 4 would exceed max-operators-per-node (2) on node 4"),
            ("one snapshot per receiver", &[Set(|s| s.max_snapshots_per_node = 1)], &all[..1], "held back: move of shard 2 from node 3 to node 4 would exceed max-snapshots-per-node (1) on node 4 (receiving)"),
            ("the sending leader counts", &[Set(|s| s.max_snapshots_per_node = 1), Join(5), Leader(2, 1)], &all[..1], "move of shard 2 from node 3 to node 5 would exceed max-snapshots-per-node (1) on node 1 (sending)"),
            ("a down leader sends nothing", &[Set(|s| s.max_snapshots_per_node = 1), Join(5), Join(6), Leader(2, 3)], &[mv(1, 3, 4), mv(2, 3, 5), mv(3, 3, 6)], "nothing held back"),
            ("cluster-wide, counting running ones", &[Set(|s| s.max_operators = 2), Run(9, lead(1, 2))], &all[1..2], "move of shard 3 from node 3 to node 4 would exceed max-operators (2)"),
            ("paused", &[Set(|s| s.paused = true)], &[], "scheduling is paused: 3 proposals not started"),
        ];
        check("limits", (3, 3), &[Join(4), Down(3)], cases);
        // Paused, the checkers still explain what they would do.
        let plan = cluster(3, 6, &[Join(4), Set(|s| s.paused = true)]).plan();
        assert_eq!(plan.proposals, []);
        assert!(findings(&plan, "balance-replicas").contains("propose move of shard 1 from node 1 to node 4"));
        assert_eq!(
            findings(&cluster(3, 3, &[Set(|s| s.paused = true)]).plan(), "limits"),
            "scheduling is paused"
        );
    }

    /// The PD group's voters are replaced like a shard's replicas, without counting as load.
    #[test]
    fn pd_group_voters_are_replaced() {
        let mut f = cluster(3, 3, &[Join(4), Down(3)]);
        f.map.pd_group.replicas = vec![1, 2, 3];
        let plan = f.plan();
        let kinds: Vec<OperatorKind> = plan.proposals.iter().map(|p| p.kind.clone()).collect();
        assert_eq!(kinds, [mv(0, 3, 4), mv(1, 3, 4), mv(2, 3, 4), mv(3, 3, 4)]);
        assert!(findings(&plan, "replica").contains("propose move of shard 0 from node 3 to node 4: node 3 is down"));
        let mut f = cluster(3, 3, &[Join(4), Down(2), Down(3)]);
        f.map.pd_group.replicas = vec![1, 2, 3];
        assert!(findings(&f.plan(), "replica").contains("shard 0 has lost quorum"));
    }

    #[test]
    fn cluster_health_counts_what_alerts_need() {
        let healthy = cluster(3, 4, &[]).health();
        assert_eq!(
            healthy,
            ClusterHealth {
                shards: 4,
                nodes: [3, 0, 0, 0],
                ..Default::default()
            }
        );
        // One of three nodes down: every shard is under-replicated, quorum holds, and the
        // shards it led have no live leader.
        let one_down = cluster(3, 4, &[Down(1)]);
        let led_by_1 = one_down.stats.values().filter(|s| s.leader == Some(1)).count();
        let one_down = one_down.health();
        assert_eq!(one_down.under_replicated, 4);
        assert_eq!(one_down.quorum_lost, 0);
        assert_eq!(one_down.without_leader, led_by_1);
        assert_eq!(one_down.nodes, [2, 1, 0, 0]);
        assert_eq!(cluster(3, 4, &[Down(1), AllLedBy(1)]).health().without_leader, 4);
        assert_eq!(cluster(3, 4, &[Down(1), AllLedBy(2)]).health().without_leader, 0);
        // A leader that stopped reporting (an election in progress, say) is no leader.
        let mut silent = cluster(3, 4, &[]);
        silent.stats.get_mut(&1).unwrap().report_age_ms = LEADER_REPORT_STALE_MS + 1;
        assert_eq!(silent.health().without_leader, 1);
        // Two down: quorum is lost everywhere.
        let two_down = cluster(3, 4, &[Down(1), Down(2)]).health();
        assert_eq!(two_down.quorum_lost, 4);
        assert_eq!(two_down.nodes, [1, 2, 0, 0]);
        // Draining still serves: not a lost quorum, not a lost leader; under-replicated.
        let draining = cluster(3, 2, &[State(3, NodeState::Draining), AllLedBy(3)]).health();
        assert_eq!((draining.quorum_lost, draining.without_leader), (0, 0));
        assert_eq!(draining.under_replicated, 2);
        assert_eq!(draining.nodes, [2, 0, 1, 0]);
    }

    #[test]
    fn a_pd_leader_cut_off_from_its_voters_does_not_speak_for_the_cluster() {
        let mut f = cluster(3, 1, &[]);
        f.map.pd_group.replicas = vec![1, 2, 3];
        f.seen.insert(1, 0);
        assert!(pd_quorum_heard(&f.view(), 2_000));
        f.seen.insert(2, 5_000);
        assert!(
            pd_quorum_heard(&f.view(), 2_000),
            "one voter silent: a majority still heard"
        );
        f.seen.insert(3, 5_000);
        assert!(!pd_quorum_heard(&f.view(), 2_000), "only itself heard");
        // Unheard voters count from the start of the leadership.
        f.seen.retain(|n, _| *n == 1);
        f.leading_for_ms = 500;
        assert!(pd_quorum_heard(&f.view(), 2_000));
        f.leading_for_ms = 5_000;
        assert!(!pd_quorum_heard(&f.view(), 2_000));
    }

    /// The splits of one executor pass count each other's named campaigners until the
    /// map lists their children (then the listed child counts, once), and a retried
    /// split does not count its own earlier pick.
    #[test]
    fn split_leader_counts_include_named_campaigners_until_the_map_lists_the_child() {
        let split = |shard, child| OperatorKind::Split {
            shard,
            at: 1 << 62,
            child,
        };
        let mut f = cluster(3, 6, &[AllLedBy(1), Run(10, split(1, 5)), Run(11, split(2, 6))]);
        let (child5, child6) = (f.map.shards.remove(&5).unwrap(), f.map.shards.remove(&6).unwrap());
        f.stats.remove(&5);
        f.stats.remove(&6);
        let mut named = BTreeMap::new();
        let counts = |f: &Fixture, named: &mut BTreeMap<u64, NodeId>, op| split_leader_counts(&f.view(), named, op);
        assert_eq!(counts(&f, &mut named, 10), BTreeMap::from([(1, 4)]));
        named.insert(10, 2);
        assert_eq!(
            counts(&f, &mut named, 11),
            BTreeMap::from([(1, 4), (2, 1)]),
            "the other split's pick counts"
        );
        named.insert(11, 3);
        assert_eq!(
            counts(&f, &mut named, 10),
            BTreeMap::from([(1, 4), (3, 1)]),
            "a retry does not count its own earlier pick"
        );
        assert_eq!(named, BTreeMap::from([(11, 3)]));
        named.insert(10, 2);
        // The map lists split 10's child, led by no one yet: it counts for its first
        // campaigner, once.
        f.map.shards.insert(
            5,
            ShardInfo {
                parent: Some(1),
                replicas: vec![2, 1, 3],
                ..child5
            },
        );
        assert_eq!(counts(&f, &mut named, 11), BTreeMap::from([(1, 4), (2, 1)]));
        assert_eq!(
            named,
            BTreeMap::new(),
            "a listed child's pick goes, and so does the retry's own"
        );
        // A finished split's pick goes too.
        named.insert(12, 3);
        f.map.shards.insert(6, child6);
        f.stats.insert(
            6,
            ShardStats {
                leader: Some(1),
                ..Default::default()
            },
        );
        assert_eq!(counts(&f, &mut named, 11), BTreeMap::from([(1, 5), (2, 1)]));
        assert!(named.is_empty());
    }
}

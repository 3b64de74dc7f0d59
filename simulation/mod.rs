//! Deterministic simulations of whole clusters under turmoil (see `docs/simulation.md`).
//!
//! Every host runs the real node (`launch::start`), with turmoil's network and clock in
//! place of the real ones, sled in a per-host directory that survives crashes, and the
//! flusher inline on the host's runtime. Client hosts issue reads, writes, CAS and deletes
//! through random nodes and record what they were told; the checkers then decide whether
//! the history is linearizable and whether any acknowledged write was lost. Everything
//! random derives from one `u64` seed.

pub mod checker;
pub mod nemesis;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use hyper::Method;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::{encode_key_str, Client};
use crate::node::{NodeConfig, PlantedBug};
use crate::placement::PD_GROUP;
use crate::raft::log_store::FlushMode;
use crate::raft::probe::{NodeEvent, Observer};
use crate::raft::transport::NetKind;
use crate::shard::Precondition;
use checker::{Op, OpKind, Outcome, Verdict};
use nemesis::{AdminAction, AdminStep, Fault, Scenario, Scheduled, QUIET_BURST_MS, QUIET_CYCLE_MS};

/// Phases, in simulated milliseconds: clients start after the warm-up, faults run until
/// `FAULTS_END_MS`, then everything heals; ops invoked after `LIVENESS_FROM_MS` must all
/// succeed; clients stop at `QUIET_END_MS`, then one client reads every key.
pub const WARMUP_MS: u64 = 3_000;
pub const FAULTS_END_MS: u64 = 25_000;
pub const LIVENESS_FROM_MS: u64 = FAULTS_END_MS + 8_000;
pub const QUIET_END_MS: u64 = LIVENESS_FROM_MS + 5_000;
/// The whole run, final reads included, must end by then.
pub const SIM_LIMIT_MS: u64 = QUIET_END_MS + 30_000;
/// Per-request timeout of the simulated clients; the nodes' own request timeout is shorter.
pub const CLIENT_TIMEOUT_MS: u64 = 4_000;
pub const NODE_REQUEST_TIMEOUT_MS: u64 = 3_000;
/// Message latency between hosts outside a delay fault.
pub const BASE_MAX_LATENCY_MS: u64 = 5;
pub const KEYS: usize = 10;
/// A client waits a random time in this range (ms) between operations.
pub const THINK_MS: (u64, u64) = (5, 30);
const PORT: u16 = 7000;
/// The simulated operator's per-request timeout (it tries every node in turn).
const ADMIN_TIMEOUT_MS: u64 = 2_000;
/// Placement scenario: a node silent this long is down and its replicas move.
pub const SIM_DOWN_AFTER_SECS: u64 = 4;
/// Placement scenario: shards over this many keys split (the clients use [`KEYS`] keys).
pub const SIM_SPLIT_MAX_KEYS: u64 = 2;
/// After a fault heals, every group must have a leader within this long.
pub const HEAL_LEADER_BOUND_MS: u64 = 10_000;
/// Quiet scenario: groups go quiet after this much idleness (the bursts are in `nemesis`).
pub const SIM_QUIET_AFTER_MS: u64 = 1_000;
/// Quiet scenario: more shards than clients touch at once.
pub const QUIET_SHARDS: u32 = 6;

/// Shards the bootstrap cuts in `scenario`; groups with higher ids are split children.
fn initial_shards(scenario: Scenario) -> u32 {
    match scenario {
        Scenario::Batch => BATCH_SHARDS,
        Scenario::Quiet => QUIET_SHARDS,
        _ => 3,
    }
}
/// Campaign slots per node in the simulation: fewer than its groups.
pub const SIM_MAX_CAMPAIGNING_REPLICAS: usize = 1;
/// A campaign may start this soon after its replica's gate closed: the decision (a nudge
/// sent just before; a tick is handled against the gate itself) came first. A replica
/// that campaigns with its gate closed any longer broke the node's bound on campaigns.
pub const CAMPAIGN_GATE_SLACK_MS: u64 = 100;
/// A gate opened for a transfer or a new replica lasts until the next pass of `tend`
/// judges the replica; a campaign through one that old is outside the bound.
pub const CAMPAIGN_GATE_ONE_OFF_MS: u64 = 2 * crate::raft::registry::TEND_INTERVAL_MS + CAMPAIGN_GATE_SLACK_MS;
/// Entry bytes per append in the simulation: a few of its small writes.
pub const SIM_APPEND_PAYLOAD_BYTES_MAX: usize = 512;
/// Batch scenario: enough groups that every batch to a peer can carry several.
pub const BATCH_SHARDS: u32 = 16;
/// Disk scenario: how long after a node lost its disk (and was refused) the operator
/// replaces it: soon enough that the new node joins while faults still run and leaders
/// still count the old id (so its messages reach the new node's address).
pub const REPLACE_AFTER_MS: u64 = 1_500;
/// Nodes of the initial cluster in the placement scenario; the others join.
pub const PLACEMENT_INITIAL_NODES: u64 = 3;

#[derive(Debug, Clone)]
pub struct SimSettings {
    pub seed: u64,
    pub nodes: u64,
    pub clients: u64,
    pub scenario: Scenario,
    pub planted_bug: Option<PlantedBug>,
    /// Each node's bound on campaigning replicas ([`SIM_MAX_CAMPAIGNING_REPLICAS`] unless
    /// a test asks for more room for the budget to adapt in).
    pub max_campaigning_replicas: usize,
    /// Keep the full semantic trace in the report (for replaying one seed).
    pub keep_trace: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimReport {
    pub seed: u64,
    pub scenario: Scenario,
    pub nodes: u64,
    pub faults: Vec<Scheduled>,
    pub ops: usize,
    pub ops_checked: usize,
    pub indeterminate: usize,
    pub violations: Vec<String>,
    pub sim_time_ms: u64,
    pub wall_time_ms: u64,
    pub trace_hash: u64,
    /// The longest wait, after a fault healed, until every group had a leader (ms).
    #[serde(default)]
    pub max_heal_to_leaders_ms: u64,
    /// Placement scenario: the operator's actions, and operators that finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin: Vec<AdminStep>,
    #[serde(default)]
    pub operators_finished: u64,
    /// Times a replica went quiet, and woke again by reason (request, leader_lost, activity).
    #[serde(default)]
    pub quiet_entered: u64,
    #[serde(default)]
    pub wakeups: BTreeMap<String, u64>,
    /// Batches of Raft messages sent between nodes, the messages in them, and how many
    /// batches carried more than one message.
    #[serde(default)]
    pub raft_batches: u64,
    #[serde(default)]
    pub raft_batched_messages: u64,
    #[serde(default)]
    pub raft_shared_batches: u64,
    /// Bare commit-point updates leaders answered themselves, for the next message to
    /// carry.
    #[serde(default)]
    pub commit_updates_held: u64,
    /// Split children that had a leader, and those whose first leader won the group's
    /// first term (one campaign, no collision).
    #[serde(default)]
    pub split_children_led: u64,
    #[serde(default)]
    pub split_children_led_in_first_term: u64,
    /// Linearizable reads (and followers' read indexes) confirmed under a read lease, and
    /// by a quorum round.
    #[serde(default)]
    pub lease_reads: u64,
    #[serde(default)]
    pub round_reads: u64,
    /// Passes in which a replica that would campaign waited for a campaign slot.
    #[serde(default)]
    pub campaigns_deferred: u64,
    /// Campaigns started (a replica voted for itself in a new term), and how many of them
    /// by a replica whose campaign gate was closed within the last
    /// [`CAMPAIGN_GATE_SLACK_MS`] (a decision already under way as the gate closed).
    #[serde(default)]
    pub campaigns_started: u64,
    #[serde(default)]
    pub campaigns_started_as_gate_closed: u64,
    /// The smallest shard campaign budget any node set, and how many times a node set a
    /// smaller one than before (`quiet::adapt_campaign_budget`).
    #[serde(default)]
    pub campaign_budget_min: Option<usize>,
    #[serde(default)]
    pub campaign_budget_cuts: u64,
    /// Disk scenario: the node that lost its disk and the new node that replaced it on the
    /// same address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<(u64, u64)>,
    /// Internal requests the nodes refused, by reason (`misdirected`: meant for another
    /// node id, as a replaced node's messages reaching its replacement's address).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refused_requests: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trace: Vec<String>,
}

fn now_ns() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_nanos() as u64)
}

/// What every host and client shares: history, trace and the invariant checkers' state.
#[derive(Default)]
struct Shared {
    history: Vec<Op>,
    final_reads: BTreeMap<String, Outcome>,
    trace: Vec<String>,
    violations: Vec<String>,
    /// (group, term) → the node that led it.
    leaders: BTreeMap<(u64, u64), u64>,
    /// group → (term, node) of the newest leader seen.
    newest_leader: BTreeMap<u64, (u64, u64)>,
    /// (node, group) → the last index that node was told is committed.
    committed: BTreeMap<(u64, u64), u64>,
    /// node → the newest routing version it installed.
    routing: BTreeMap<u64, u64>,
    /// (node, group) → the leader that replica knows of now.
    known_leader: BTreeMap<(u64, u64), Option<u64>>,
    /// Nodes that refused to start (the identity guard, after a disk loss): down for good,
    /// as an operator would leave them until they are replaced.
    refused: BTreeSet<u64>,
    /// (node, group) → the newest epoch of the group in a map that node installed.
    epochs: BTreeMap<(u64, u64), u64>,
    /// Host → the node id it runs now, where that is not the host's own number (a host
    /// whose node lost its disk and was replaced by a new node on the same address).
    replacements: BTreeMap<u64, u64>,
    /// The node the operator replaced (its old id, the new one), once it has.
    replaced: Option<(u64, u64)>,
    /// Operators the placement driver finished (placement scenario).
    operators_finished: u64,
    /// Clients past their last operation: the final reads wait for all of them, or a
    /// write still in flight could land after the read that checks it.
    clients_stopped: u64,
    /// Replicas that went quiet, and wake-ups by reason.
    quiet_entered: u64,
    wakeups: BTreeMap<&'static str, u64>,
    /// Raft batches sent, their messages, and batches of more than one message.
    raft_batches: u64,
    raft_batched_messages: u64,
    raft_shared_batches: u64,
    commit_updates_held: u64,
    lease_reads: u64,
    round_reads: u64,
    campaigns_deferred: u64,
    campaigns_started: u64,
    campaigns_started_as_gate_closed: u64,
    /// (node, group) → that replica's campaign gate (`quiet::Gate`'s name), and since
    /// when (ns).
    gates: BTreeMap<(u64, u64), (&'static str, u64)>,
    /// The configured bound on campaigning replicas (set where the run starts; the
    /// default 0 is never used), and each node's shard campaign budget as it last set it
    /// (the bound until it does).
    max_campaigning_replicas: usize,
    campaign_budgets: BTreeMap<u64, usize>,
    campaign_budget_min: Option<usize>,
    campaign_budget_cuts: u64,
    /// Internal requests the nodes refused, by reason.
    refused_requests: BTreeMap<&'static str, u64>,
}

impl Shared {
    fn record(&mut self, line: String) {
        self.trace.push(format!("{:>9.3} {line}", now_ns() as f64 / 1e6));
    }

    /// No more of a node's shard replicas hold campaign slots than its budget allows.
    fn check_campaign_budget(&mut self, node: u64) {
        let budget = self
            .campaign_budgets
            .get(&node)
            .copied()
            .unwrap_or(self.max_campaigning_replicas);
        let slots = self
            .gates
            .iter()
            .filter(|((n, g), (gate, _))| *n == node && *g != PD_GROUP && *gate == "slot")
            .count();
        if slots > budget {
            self.violations.push(format!(
                "campaign bound: n{node} has {slots} replicas holding campaign slots, more than its budget of {budget}"
            ));
        }
    }

    /// The node id host `n{host}` runs now.
    fn node_on(&self, host: u64) -> u64 {
        self.replacements.get(&host).copied().unwrap_or(host)
    }

    /// The host that runs node `node`.
    fn host_of(&self, node: u64) -> u64 {
        host_of(&self.replacements, node)
    }

    /// Whether the node on `host` refused to start (so clients leave the host alone).
    fn host_refused(&self, host: u64) -> bool {
        self.refused.contains(&self.node_on(host))
    }
}

struct SimObserver(Arc<Mutex<Shared>>);

impl Observer for SimObserver {
    fn observe(&self, node: u64, event: NodeEvent) {
        let mut s = self.0.lock().unwrap();
        if let NodeEvent::RaftBatch { messages } = event {
            // Counted, not traced: there is one per round trip.
            s.raft_batches += 1;
            s.raft_batched_messages += messages as u64;
            s.raft_shared_batches += u64::from(messages > 1);
            return;
        }
        if let NodeEvent::CommitUpdateHeld = event {
            s.commit_updates_held += 1;
            return;
        }
        if let NodeEvent::ReadConfirmed { lease } = event {
            *(if lease { &mut s.lease_reads } else { &mut s.round_reads }) += 1;
            return;
        }
        if let NodeEvent::CampaignBudget { kind, slots } = event {
            // One per pass: traced only when it changes.
            if kind == "shard" {
                let before = s
                    .campaign_budgets
                    .insert(node, slots)
                    .unwrap_or(s.max_campaigning_replicas);
                if slots != before {
                    s.record(format!("n{node} {event:?}"));
                }
                s.campaign_budget_cuts += u64::from(slots < before);
                s.campaign_budget_min = Some(s.campaign_budget_min.map_or(slots, |m| m.min(slots)));
                let bound = s.max_campaigning_replicas;
                if slots > bound {
                    s.violations.push(format!(
                        "campaign bound: n{node} set a budget of {slots} campaign slots, above its bound {bound}"
                    ));
                }
                s.check_campaign_budget(node);
            }
            return;
        }
        if let NodeEvent::CampaignDeferred { .. } = event {
            // Counted, not traced: one per waiting replica per pass.
            s.campaigns_deferred += 1;
            return;
        }
        if let NodeEvent::InternalRequestRefused { reason } = event {
            // Counted, not traced: a refused peer retries every round trip.
            *s.refused_requests.entry(reason).or_default() += 1;
            return;
        }
        s.record(format!("n{node} {event:?}"));
        if let NodeEvent::Leadership { group, leader, .. } = &event {
            s.known_leader.insert((node, *group), *leader);
        }
        if let NodeEvent::ReplicaRemoved { group } = &event {
            s.known_leader.remove(&(node, *group));
            s.gates.remove(&(node, *group));
        }
        match event {
            NodeEvent::Leadership {
                group,
                term,
                leading: true,
                ..
            } => {
                if let Some(other) = s.leaders.insert((group, term), node) {
                    if other != node {
                        s.violations.push(format!(
                            "two leaders in group {group} term {term}: n{other} and n{node}"
                        ));
                    }
                }
                let newest = s.newest_leader.entry(group).or_insert((term, node));
                if term >= newest.0 {
                    *newest = (term, node);
                }
            }
            NodeEvent::Leadership { .. } => {}
            NodeEvent::CampaignGate { group, gate } => {
                s.gates.insert((node, group), (gate, now_ns()));
                s.check_campaign_budget(node);
            }
            NodeEvent::CampaignStarted { group, term } => {
                s.campaigns_started += 1;
                let knows_leader = s.known_leader.get(&(node, group)).copied().flatten().is_some();
                let (gate, since_ns) = s.gates.get(&(node, group)).copied().unwrap_or(("closed", 0));
                let gate_ms = now_ns().saturating_sub(since_ns) / 1_000_000;
                let why = match gate {
                    "closed" if gate_ms < CAMPAIGN_GATE_SLACK_MS => {
                        s.campaigns_started_as_gate_closed += 1;
                        None
                    }
                    "closed" => Some(format!("with its campaign gate closed for {gate_ms} ms")),
                    "transfer" | "created" if gate_ms >= CAMPAIGN_GATE_ONE_OFF_MS => Some(format!(
                        "through a gate opened for a {gate} {gate_ms} ms before, past the next pass"
                    )),
                    "slot" | "transfer" | "created" => None,
                    _ if knows_leader => None,
                    _ => Some(format!("knowing no leader, without a campaign slot (its gate: {gate})")),
                };
                if let Some(why) = why {
                    s.violations.push(format!(
                        "campaign bound: n{node} started a campaign for group {group} in term {term} {why}"
                    ));
                }
            }
            NodeEvent::Committed { group, index } => {
                s.committed.insert((node, group), index);
            }
            NodeEvent::Applied { group, index } => {
                let committed = s.committed.get(&(node, group)).copied().unwrap_or(0);
                if index > committed {
                    s.violations.push(format!(
                        "n{node} applied index {index} of group {group} beyond its committed index {committed}"
                    ));
                }
            }
            NodeEvent::ReplicaRemoved { .. }
            | NodeEvent::RaftBatch { .. }
            | NodeEvent::CommitUpdateHeld
            | NodeEvent::ReadConfirmed { .. }
            | NodeEvent::CampaignDeferred { .. }
            | NodeEvent::CampaignBudget { .. }
            | NodeEvent::InternalRequestRefused { .. } => {}
            NodeEvent::Quiet { quiet: true, .. } => s.quiet_entered += 1,
            NodeEvent::Quiet { reason, .. } => *s.wakeups.entry(reason).or_default() += 1,
            NodeEvent::MapInstalled {
                routing_version,
                tiling,
                epochs,
            } => {
                for (group, epoch) in epochs {
                    let last = s.epochs.insert((node, group), epoch).unwrap_or(0);
                    if epoch < last {
                        s.violations.push(format!(
                            "n{node}: group {group}'s epoch went back from {last} to {epoch}"
                        ));
                    }
                }
                if let Err(e) = tiling {
                    s.violations
                        .push(format!("n{node} installed a map that does not tile the ring: {e}"));
                }
                // Version 0 is the empty map a restarted non-PD node starts from.
                if routing_version > 0 {
                    let last = s.routing.insert(node, routing_version).unwrap_or(0);
                    if routing_version < last {
                        s.violations.push(format!(
                            "n{node} routing version went back from {last} to {routing_version}"
                        ));
                    }
                }
            }
        }
    }
}

/// The host that runs node `node`, given the hosts whose node was replaced. A node that
/// was replaced maps to its old host, which now runs its replacement: callers ask only
/// about nodes that run (leaders, map hints).
fn host_of(replacements: &BTreeMap<u64, u64>, node: u64) -> u64 {
    replacements
        .iter()
        .find(|(_, n)| **n == node)
        .map_or(node, |(host, _)| *host)
}

fn host_name(node: u64) -> String {
    format!("n{node}")
}

fn client_name(client: u64) -> String {
    format!("c{client}")
}

/// Sends one op and turns the answer into a definite outcome, or `None` if it is unknown.
async fn perform(client: &Client, key: &str, kind: &OpKind) -> Option<Outcome> {
    perform_at(client, &format!("/v1/kv/{}", encode_key_str(key)), kind).await
}

/// [`perform`] on a given path (a key's, with a query).
async fn perform_at(client: &Client, path: &str, kind: &OpKind) -> Option<Outcome> {
    let condition = |p: &Precondition| match p {
        Precondition::None => vec![],
        Precondition::IfMatch(v) => vec![("if-match", v.to_string())],
        Precondition::IfAbsent => vec![("if-none-match", "*".to_string())],
    };
    let (method, headers, body) = match kind {
        OpKind::Get => (Method::GET, vec![], Bytes::new()),
        OpKind::Put { value, precondition } => (Method::PUT, condition(precondition), Bytes::from(value.clone())),
        OpKind::Delete { precondition } => (Method::DELETE, condition(precondition), Bytes::new()),
    };
    let reply = match client.request(method, path, &headers, body).await {
        Ok(reply) => reply,
        // Never connected: the request reached no node, so a write certainly did not happen.
        Err(crate::raft::network::TransportError::Connect { .. }) if *kind != OpKind::Get => {
            return Some(Outcome::NotApplied)
        }
        Err(_) => return None,
    };
    let header_version = || reply.header("x-version").and_then(|v| v.parse::<u64>().ok());
    let body_version = || {
        serde_json::from_slice::<Value>(&reply.body)
            .ok()
            .and_then(|v| v["version"].as_u64())
    };
    match (kind, reply.status.as_u16()) {
        (OpKind::Get, 200) => Some(Outcome::Value {
            version: header_version()?,
            value: String::from_utf8_lossy(&reply.body).into_owned(),
        }),
        (_, 404) => Some(Outcome::NotFound),
        (_, 412) => Some(Outcome::PreconditionFailed {
            current: header_version()?,
        }),
        (OpKind::Put { .. }, 200) => Some(Outcome::Written {
            version: body_version()?,
        }),
        (OpKind::Delete { .. }, 200) => Some(Outcome::Deleted {
            version: body_version()?,
        }),
        // The contract: 503 means the write did not and will not happen.
        (OpKind::Put { .. } | OpKind::Delete { .. }, 503) => Some(Outcome::NotApplied),
        _ => None,
    }
}

/// Adds a client op, sent through host `n{host}`, to the trace and history, flagging
/// failures in the quiet phase. The trace names the node the host runs.
fn record_op(shared: &Mutex<Shared>, op: Op, host: u64) {
    let mut s = shared.lock().unwrap();
    let via = s.node_on(host);
    s.record(format!(
        "c{} n{via} {} {:?} -> {:?}",
        op.client, op.key, op.kind, op.outcome
    ));
    if op.outcome.is_none() && op.invoked_ns >= LIVENESS_FROM_MS * 1_000_000 && !s.host_refused(host) {
        let after_heal_s = (op.invoked_ns / 1_000_000 - FAULTS_END_MS) as f64 / 1000.0;
        s.violations.push(format!(
            "liveness: c{}'s {:?} on {} via n{via} failed {after_heal_s:.1} s after heal",
            op.client, op.kind, op.key
        ));
    }
    s.history.push(op);
}

async fn run_client(id: u64, settings: SimSettings, shared: Arc<Mutex<Shared>>) -> turmoil::Result {
    let mut rng = SmallRng::seed_from_u64(settings.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let clients = host_clients(settings.nodes, CLIENT_TIMEOUT_MS);
    let keys: Vec<String> = (0..KEYS).map(|k| format!("k{k}")).collect();
    let mut last_seen: BTreeMap<String, u64> = BTreeMap::new();
    tokio::time::sleep(Duration::from_millis(WARMUP_MS)).await;
    let mut written = 0u64;
    while now_ns() < QUIET_END_MS * 1_000_000 {
        let key = keys[rng.gen_range(0..keys.len())].clone();
        let known = last_seen.get(&key).copied().unwrap_or(0);
        let guess = if rng.gen_bool(0.7) {
            known
        } else {
            rng.gen_range(0..known + 2)
        };
        let roll = rng.gen_range(0..100);
        // The quiet scenario reads more (75%, the writes in their usual proportions): a
        // quiet group's first requests are then mostly reads.
        let roll = match roll {
            _ if settings.scenario != Scenario::Quiet => roll,
            0..75 => 0,
            _ => 40 + (roll - 75) * 60 / 25,
        };
        let kind = match roll {
            0..40 => OpKind::Get,
            40..65 => OpKind::Put {
                value: format!("c{id}-{written}"),
                precondition: Precondition::None,
            },
            65..80 => OpKind::Put {
                value: format!("c{id}-{written}"),
                precondition: Precondition::IfMatch(guess),
            },
            80..85 => OpKind::Put {
                value: format!("c{id}-{written}"),
                precondition: Precondition::IfAbsent,
            },
            85..95 => OpKind::Delete {
                precondition: Precondition::None,
            },
            _ => OpKind::Delete {
                precondition: Precondition::IfMatch(guess),
            },
        };
        if matches!(kind, OpKind::Put { .. }) {
            written += 1;
        }
        // Clients stop using a node that refused to start, as a load balancer would.
        let mut target = rng.gen_range(0..clients.len());
        while shared.lock().unwrap().host_refused(target as u64 + 1) {
            target = (target + 1) % clients.len();
        }
        let invoked_ns = now_ns();
        let outcome = perform(&clients[target], &key, &kind).await;
        let completed_ns = now_ns();
        match &outcome {
            Some(Outcome::Value { version, .. } | Outcome::Written { version }) => {
                last_seen.insert(key.clone(), *version);
            }
            Some(Outcome::PreconditionFailed { current }) => {
                last_seen.insert(key.clone(), *current);
            }
            Some(Outcome::NotFound | Outcome::Deleted { .. }) => {
                last_seen.insert(key.clone(), 0);
            }
            Some(Outcome::NotApplied) | None => {}
        }
        let op = Op {
            client: id,
            key,
            kind,
            invoked_ns,
            completed_ns: outcome.is_some().then_some(completed_ns),
            outcome,
        };
        record_op(&shared, op, target as u64 + 1);
        // Think time keeps histories a size the checker searches quickly, and lets faults
        // land between operations as well as during them.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(THINK_MS.0..THINK_MS.1))).await;
        if settings.scenario == Scenario::Quiet {
            // Between bursts, nothing: the groups go quiet. The final phase stays busy.
            let now_ms = now_ns() / 1_000_000;
            let into_cycle = now_ms % QUIET_CYCLE_MS;
            if into_cycle >= QUIET_BURST_MS && now_ms < LIVENESS_FROM_MS {
                tokio::time::sleep(Duration::from_millis(QUIET_CYCLE_MS - into_cycle)).await;
            }
        }
    }
    shared.lock().unwrap().clients_stopped += 1;
    if id == 1 {
        // Every operation ends within the client timeout, so this wait does too.
        while shared.lock().unwrap().clients_stopped < settings.clients {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Before the final reads: their leadership rounds would carry commit points.
        check_replicas_converge(&clients, &keys, &shared).await;
        // Every acknowledged write must be visible to a linearizable read after heal.
        for key in &keys {
            let mut attempt = 0u64;
            loop {
                // Checked before each attempt: one attempt per key past the limit would
                // outlast the simulation when the cluster cannot serve reads.
                if now_ns() > (SIM_LIMIT_MS - 5_000 - CLIENT_TIMEOUT_MS) * 1_000_000 {
                    shared
                        .lock()
                        .unwrap()
                        .violations
                        .push(format!("liveness: the final read of {key} never succeeded"));
                    break;
                }
                let invoked_ns = now_ns();
                let via = &clients[(attempt as usize) % clients.len()];
                if let Some(outcome) = perform(via, key, &OpKind::Get).await {
                    let mut s = shared.lock().unwrap();
                    s.record(format!("final {key} -> {outcome:?}"));
                    s.final_reads.insert(key.clone(), outcome.clone());
                    s.history.push(Op {
                        client: id,
                        key: key.clone(),
                        kind: OpKind::Get,
                        invoked_ns,
                        completed_ns: Some(now_ns()),
                        outcome: Some(outcome),
                    });
                    break;
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(())
}

/// How long after the clients stop every replica must show every acknowledged write.
const CONVERGE_WITHIN_MS: u64 = 8_000;

/// Once the clients have stopped (after heal), a stale read of each key through every
/// node must come to show the key's newest acknowledged write, or a later one: the node's
/// own replica answers it (with as many nodes as replicas, each holds one of every
/// shard), so a replica that never learns a commit point keeps an older version. Run
/// before the final reads, whose leadership rounds would carry commit points to the
/// followers. A node that does not answer is left out (it may be down); one that answers
/// with an older version past the deadline is a violation.
async fn check_replicas_converge(clients: &[Client], keys: &[String], shared: &Mutex<Shared>) {
    let deadline_ns = (now_ns() + CONVERGE_WITHIN_MS * 1_000_000).min((SIM_LIMIT_MS - 20_000) * 1_000_000);
    // Per key: the newest acknowledged version, and whether the key may be absent (that
    // was a delete, or a delete without a definite answer may have taken effect).
    let wanted: BTreeMap<String, (u64, bool)> = {
        let s = shared.lock().unwrap();
        let undecided_delete = |key: &str| {
            s.history
                .iter()
                .any(|op| op.key == key && op.outcome.is_none() && matches!(op.kind, OpKind::Delete { .. }))
        };
        checker::newest_acknowledged(&s.history)
            .into_iter()
            .map(|(key, (version, deleted))| (key.to_string(), (version, deleted || undecided_delete(key))))
            .collect()
    };
    for key in keys {
        let Some(&(acked, may_be_absent)) = wanted.get(key) else {
            continue;
        };
        let path = format!("/v1/kv/{}?consistency=stale", encode_key_str(key));
        for (host, client) in (1u64..).zip(clients) {
            let node = {
                let s = shared.lock().unwrap();
                if s.host_refused(host) {
                    continue;
                }
                s.node_on(host)
            };
            let mut behind = None;
            loop {
                // Checked before each read, so the final reads keep their time.
                if now_ns() >= deadline_ns {
                    if let Some(seen) = behind {
                        shared.lock().unwrap().violations.push(format!(
                            "replicas diverge: a stale read of {key} through n{node} shows {seen:?} \
                             {CONVERGE_WITHIN_MS} ms after the clients stopped; version {acked} was acknowledged"
                        ));
                    }
                    break;
                }
                let seen = perform_at(client, &path, &OpKind::Get).await;
                let converged = match &seen {
                    None => true,
                    Some(Outcome::Value { version, .. }) => *version >= acked,
                    // A delete leaves no version to compare: the linearizability check
                    // covers which write or delete came last.
                    Some(Outcome::NotFound) => may_be_absent,
                    Some(_) => false,
                };
                if converged {
                    break;
                }
                behind = seen;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Sends one admin request through the first node that answers it (not 503 or a transport
/// error); returns the status and JSON body.
async fn admin_call(clients: &[Client], method: Method, path: &str, body: Option<Value>) -> Option<(u16, Value)> {
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    for client in clients {
        if let Ok(reply) = client.request(method.clone(), path, &[], body.clone()).await {
            if reply.status.as_u16() != 503 {
                let json = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
                return Some((reply.status.as_u16(), json));
            }
        }
    }
    None
}

/// The simulated operator of the placement scenario: carries out `steps`, then checks that
/// scheduling converges once every fault has healed (no operator left running).
async fn run_admin(settings: SimSettings, steps: Vec<AdminStep>, shared: Arc<Mutex<Shared>>) -> turmoil::Result {
    let clients: Arc<Vec<Client>> = admin_clients(settings.nodes).into();
    let record = |line: String| shared.lock().unwrap().record(line);
    for step in steps {
        let wait_ms = step.at_ms.saturating_sub(now_ns() / 1_000_000);
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        // Steps run late while the cluster is unreachable; past the fault window they
        // would only delay the convergence check.
        if now_ns() / 1_000_000 > FAULTS_END_MS {
            record(format!("admin skips {:?}: too late", step.action));
            continue;
        }
        let shards = match admin_call(&clients, Method::GET, "/v1/shards", None).await {
            Some((200, body)) => body["shards"].as_array().cloned().unwrap_or_default(),
            _ => Vec::new(),
        };
        let pick = |pick: u64| shards.get((pick % shards.len().max(1) as u64) as usize).cloned();
        let answer = match &step.action {
            AdminAction::Drain { node, for_ms } => {
                let answer = admin_call(&clients, Method::POST, &format!("/v1/nodes/{node}/drain"), None).await;
                let (undrain_clients, undrain_shared, node, for_ms) = (clients.clone(), shared.clone(), *node, *for_ms);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(for_ms)).await;
                    let path = format!("/v1/nodes/{node}/drain");
                    let answer = admin_call(&undrain_clients, Method::DELETE, &path, None).await;
                    undrain_shared
                        .lock()
                        .unwrap()
                        .record(format!("admin undrain n{node} -> {:?}", answer.map(|a| a.0)));
                });
                answer
            }
            AdminAction::Move { pick: p } => match pick(*p) {
                Some(shard) => {
                    let held = replica_ids(&shard);
                    let from = held.get((*p / 7) as usize % held.len().max(1)).copied().unwrap_or(1);
                    let free: Vec<u64> = (1..=settings.nodes).filter(|n| !held.contains(n)).collect();
                    let to = free.get((*p / 13) as usize % free.len().max(1)).copied().unwrap_or(1);
                    let path = format!("/v1/shards/{}/move", shard["id"]);
                    admin_call(
                        &clients,
                        Method::POST,
                        &path,
                        Some(serde_json::json!({"from": from, "to": to})),
                    )
                    .await
                }
                None => None,
            },
            AdminAction::Split { pick: p } => match pick(*p) {
                Some(shard) => {
                    let path = format!("/v1/shards/{}/split", shard["id"]);
                    admin_call(&clients, Method::POST, &path, None).await
                }
                None => None,
            },
            AdminAction::TransferLeader { pick: p } => match pick(*p) {
                Some(shard) => {
                    let held = replica_ids(&shard);
                    let to = held.get((*p / 7) as usize % held.len().max(1)).copied().unwrap_or(1);
                    let path = format!("/v1/shards/{}/transfer-leader", shard["id"]);
                    admin_call(&clients, Method::POST, &path, Some(serde_json::json!({"to": to}))).await
                }
                None => None,
            },
        };
        let answer =
            answer.map(|(status, body)| format!("{status} {}", body.to_string().chars().take(100).collect::<String>()));
        record(format!("admin {:?} -> {answer:?}", step.action));
    }
    await_scheduling_converged(&clients, &shared).await;
    Ok(())
}

/// The clients of an operator: one per host, each trying its host only.
fn admin_clients(nodes: u64) -> Vec<Client> {
    host_clients(nodes, ADMIN_TIMEOUT_MS)
}

/// One client per host, in host order, each with a per-request timeout of `timeout_ms`.
fn host_clients(hosts: u64, timeout_ms: u64) -> Vec<Client> {
    (1..=hosts)
        .map(|n| {
            Client::with_network(
                &format!("http://{}:{PORT}", host_name(n)),
                NetKind::Turmoil,
                Duration::from_millis(timeout_ms),
            )
        })
        .collect()
}

/// The node ids a shard of a `/v1/shards` answer lists as its replicas, in map order.
fn replica_ids(shard: &Value) -> Vec<u64> {
    shard["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["node_id"].as_u64())
        .collect()
}

/// When an operator makes its last call: there is room for one more round of calls to
/// every node before the simulation's limit.
fn last_admin_call_ms(clients: &[Client]) -> u64 {
    SIM_LIMIT_MS - 5_000 - ADMIN_TIMEOUT_MS * clients.len() as u64
}

/// Waits until the quiet phase has ended and the placement driver runs no operator, then
/// checks that each shard's replicas in the map are its group's voters. A violation if
/// scheduling does not settle in time.
async fn await_scheduling_converged(clients: &[Client], shared: &Mutex<Shared>) {
    tokio::time::sleep(Duration::from_millis(
        (QUIET_END_MS * 1_000_000).saturating_sub(now_ns()) / 1_000_000,
    ))
    .await;
    loop {
        let reply = admin_call(clients, Method::GET, "/v1/operators", None).await;
        if let Some((200, body)) = &reply {
            let running = body["running"].as_array().map_or(0, Vec::len);
            if running == 0 {
                let finished = body["finished"].as_array().map_or(0, Vec::len) as u64;
                {
                    let mut s = shared.lock().unwrap();
                    s.operators_finished = finished;
                    s.record(format!("admin: scheduling converged ({finished} operators finished)"));
                }
                check_membership_matches_map(clients, shared).await;
                break;
            }
        }
        if now_ns() > last_admin_call_ms(clients) * 1_000_000 {
            let running = reply.map(|(_, b)| b["running"].to_string()).unwrap_or_default();
            shared.lock().unwrap().violations.push(format!(
                "liveness: scheduling did not converge after heal; still running: {running}"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The operator of the disk scenario, once the node that lost its disk was replaced by a
/// new one on its address (`Nemesis::replace`): removes the old id, as soon as the
/// placement driver allows it (once the old node's replicas and placement-driver seat have
/// moved), then checks that scheduling settles with every shard on the node each host
/// runs now, and none on the old id.
async fn run_replacement_operator(settings: SimSettings, shared: Arc<Mutex<Shared>>) -> turmoil::Result {
    let clients = admin_clients(settings.nodes);
    let (old, new) = loop {
        if let Some(replaced) = shared.lock().unwrap().replaced {
            break replaced;
        }
        if now_ns() > FAULTS_END_MS * 1_000_000 {
            // The wiped node started: as its old self, with the identity guard's planted
            // bug (its own checkers judge what that did).
            shared
                .lock()
                .unwrap()
                .violations
                .push("identity: the node that lost its disk was never refused, so never replaced".into());
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let path = format!("/v1/nodes/{old}");
    let mut last = None;
    loop {
        let answer = admin_call(&clients, Method::DELETE, &path, None)
            .await
            .map(|(status, _)| status);
        if answer != last {
            shared
                .lock()
                .unwrap()
                .record(format!("operator removes node {old} -> {answer:?}"));
            last = answer;
        }
        if answer == Some(200) {
            break;
        }
        if now_ns() > last_admin_call_ms(&clients) * 1_000_000 {
            shared.lock().unwrap().violations.push(format!(
                "liveness: node {old} could not be removed after node {new} replaced it (last answer {answer:?})"
            ));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The removed node's replicas are re-created on the nodes the hosts run now.
    let live: BTreeSet<u64> = {
        let s = shared.lock().unwrap();
        (1..=settings.nodes).map(|host| s.node_on(host)).collect()
    };
    let shard_problems = || async {
        match admin_call(&clients, Method::GET, "/v1/shards", None).await {
            Some((200, shards)) => replication_problems(&shards, old, &live),
            _ => vec!["liveness: the shard map could not be read".to_string()],
        }
    };
    loop {
        let problems = shard_problems().await;
        if problems.is_empty() {
            shared
                .lock()
                .unwrap()
                .record(format!("operator: no shard is on node {old}"));
            break;
        }
        if now_ns() > last_admin_call_ms(&clients) * 1_000_000 {
            shared.lock().unwrap().violations.extend(problems);
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    await_scheduling_converged(&clients, &shared).await;
    // Once more on the settled map: the first pass may have passed during faults.
    let problems = shard_problems().await;
    shared.lock().unwrap().violations.extend(problems);
    Ok(())
}

/// Shards (in a `/v1/shards` answer) still on the `removed` node, on a node no host runs
/// (`live` are the nodes the hosts run), or with fewer replicas than the replication
/// factor allows on those nodes.
fn replication_problems(shards: &Value, removed: u64, live: &BTreeSet<u64>) -> Vec<String> {
    let replication = crate::placement::REPLICATION_FACTOR.min(live.len());
    let mut problems = Vec::new();
    for shard in shards["shards"].as_array().into_iter().flatten() {
        let replicas: BTreeSet<u64> = replica_ids(shard).into_iter().collect();
        if replicas.contains(&removed) || !replicas.is_subset(live) || replicas.len() != replication {
            problems.push(format!(
                "placement: shard {} is on nodes {replicas:?} after node {removed} was replaced and removed \
                 ({replication} of {live:?} wanted)",
                shard["id"]
            ));
        }
    }
    problems
}

/// Once scheduling has converged, each shard's replicas in the map must be exactly its
/// group's voters, as its leader knows them (and no learner left behind).
async fn check_membership_matches_map(clients: &[Client], shared: &Mutex<Shared>) {
    // The map's leader hints trail a leadership change by a heartbeat round or two (an
    // operator's last transfer may have just finished): ask again for a while before
    // calling a difference a violation.
    let mut problems = Vec::new();
    for _ in 0..MEMBERSHIP_CHECK_ATTEMPTS {
        let replacements = shared.lock().unwrap().replacements.clone();
        problems = membership_differences(clients, |node| host_of(&replacements, node)).await;
        if problems.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(MEMBERSHIP_CHECK_RETRY_MS)).await;
    }
    shared.lock().unwrap().violations.extend(problems);
}

/// How often, and how far apart, the membership check asks before it reports.
const MEMBERSHIP_CHECK_ATTEMPTS: usize = 10;
const MEMBERSHIP_CHECK_RETRY_MS: u64 = 300;

/// Each shard whose group (as its leader by the map's hint shows it) differs from the map.
async fn membership_differences(clients: &[Client], host_of: impl Fn(u64) -> u64) -> Vec<String> {
    let Some((200, routing)) = admin_call(clients, Method::GET, "/v1/shards", None).await else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for shard in routing["shards"].as_array().into_iter().flatten() {
        let id = &shard["id"];
        let in_map: BTreeSet<u64> = replica_ids(shard).into_iter().collect();
        let leader = shard["leader"].as_u64().unwrap_or(0);
        let answer = match clients.get((host_of(leader) as usize).wrapping_sub(1)) {
            Some(client) => client.get_path(&format!("/v1/shards/{id}")).await.ok(),
            None => None,
        };
        let detail: Value = answer
            .filter(|a| a.status == 200)
            .and_then(|a| serde_json::from_slice(&a.body).ok())
            .unwrap_or(Value::Null);
        let local = &detail["local_replica"];
        let found = if local["state"] == "Leader" {
            let ids =
                |v: &Value| -> BTreeSet<u64> { v.as_array().into_iter().flatten().filter_map(Value::as_u64).collect() };
            Some((ids(&local["voters"]), ids(&local["group_learners"])))
        } else {
            None
        };
        let problem = match found {
            Some((voters, learners)) if voters == in_map && learners.is_empty() => continue,
            Some((voters, learners)) => {
                format!("the map lists replicas {in_map:?}, the group has voters {voters:?} and learners {learners:?}")
            }
            None => format!("its leader (n{leader} by the map's hint) could not show the group's membership"),
        };
        problems.push(format!("placement: shard {id}: {problem}"));
    }
    problems
}

/// Whether every group has a leader that knows it leads, as far as the live nodes tell.
fn every_group_led(s: &Shared, down_hosts: &[u64]) -> bool {
    let down: Vec<u64> = down_hosts.iter().map(|host| s.node_on(*host)).collect();
    let live = |n: &u64| !down.contains(n) && !s.refused.contains(n);
    let groups: BTreeSet<u64> = s.known_leader.keys().map(|(_, g)| *g).collect();
    groups.into_iter().all(|group| {
        s.known_leader.iter().any(|((node, g), leader)| {
            *g == group
                && live(node)
                && leader.is_some_and(|l| live(&l) && s.known_leader.get(&(l, group)) == Some(&Some(l)))
        })
    })
}

/// Starts or ends one fault on the simulation.
struct Nemesis {
    nodes: u64,
    clients: u64,
    /// Pairs cut by the active fault, to repair at its end.
    cut: Vec<(String, String)>,
    crashed: Vec<u64>,
    flapping: Option<(u64, u64, u64, bool)>, // (node, period, next toggle ms, cut now)
    /// A disk loss's second step: (at ms, wiped, crashed), until it has run.
    disk_loss: Option<(u64, u64, u64)>,
    /// After a disk loss: (from ms, wiped), until the operator replaced the wiped node.
    replacement: Option<(u64, u64)>,
    /// Where each host's data dir lives.
    data_root: std::path::PathBuf,
    /// Each host's node configuration, read whenever the host starts.
    host_configs: BTreeMap<u64, Arc<Mutex<NodeConfig>>>,
}

impl Nemesis {
    fn others(&self, nodes: &[u64]) -> Vec<u64> {
        (1..=self.nodes).filter(|n| !nodes.contains(n)).collect()
    }

    fn cut_between(&mut self, sim: &mut turmoil::Sim<'_>, a: &[String], b: &[String]) {
        for x in a {
            for y in b {
                sim.partition(x.as_str(), y.as_str());
                self.cut.push((x.clone(), y.clone()));
            }
        }
    }

    fn names(nodes: &[u64]) -> Vec<String> {
        nodes.iter().map(|n| host_name(*n)).collect()
    }

    fn start(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        fault: &Fault,
        shared: &Mutex<Shared>,
        now_ms: u64,
        duration_ms: u64,
    ) {
        match fault {
            Fault::IsolateLeader => {
                let leader = {
                    let mut s = shared.lock().unwrap();
                    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
                    for (_, node) in s.newest_leader.values() {
                        *counts.entry(*node).or_default() += 1;
                    }
                    let node = counts
                        .into_iter()
                        .max_by_key(|(n, c)| (*c, u64::MAX - n))
                        .map_or(1, |(n, _)| n);
                    let host = s.host_of(node);
                    s.record(format!("nemesis isolates leader n{node} (host n{host})"));
                    host
                };
                let others = Self::names(&self.others(&[leader]));
                self.cut_between(sim, &Self::names(&[leader]), &others);
            }
            Fault::MinorityPartition { nodes } => {
                let others = Self::names(&self.others(nodes));
                self.cut_between(sim, &Self::names(nodes), &others);
            }
            Fault::MajorityPartition { nodes } => {
                let majority = Self::names(&self.others(nodes));
                self.cut_between(sim, &Self::names(nodes), &majority);
                let clients: Vec<String> = (1..=self.clients).map(client_name).collect();
                self.cut_between(sim, &clients, &majority);
            }
            Fault::OneWayDrop { from, to } => {
                sim.partition_oneway(host_name(*from).as_str(), host_name(*to).as_str());
            }
            Fault::Hold { a, b } => sim.hold(host_name(*a).as_str(), host_name(*b).as_str()),
            Fault::Flapping { node, period_ms } => {
                let others = Self::names(&self.others(&[*node]));
                self.cut_between(sim, &Self::names(&[*node]), &others);
                self.flapping = Some((*node, *period_ms, now_ms + period_ms, true));
            }
            Fault::Crash { nodes } => {
                for node in nodes {
                    sim.crash(host_name(*node).as_str());
                    self.crashed.push(*node);
                }
            }
            Fault::Delay { max_latency_ms } => sim.set_max_message_latency(Duration::from_millis(*max_latency_ms)),
            Fault::Loss { fail_rate_percent } => sim.set_fail_rate(*fail_rate_percent as f64 / 100.0),
            Fault::DiskLoss {
                wiped,
                lagging,
                crashed,
            } => {
                let others = Self::names(&self.others(&[*lagging]));
                self.cut_between(sim, &Self::names(&[*lagging]), &others);
                self.disk_loss = Some((now_ms + duration_ms / 2, *wiped, *crashed));
            }
        }
    }

    /// Toggles a flapping partition when its period is up; runs a disk loss's second step.
    fn tick(&mut self, sim: &mut turmoil::Sim<'_>, now_ms: u64, shared: &Mutex<Shared>) {
        if let Some((at, wiped, crashed)) = self.disk_loss {
            if now_ms >= at {
                self.disk_loss = None;
                self.repair(sim);
                sim.crash(host_name(crashed).as_str());
                self.crashed.push(crashed);
                sim.crash(host_name(wiped).as_str());
                let _ = std::fs::remove_dir_all(self.data_root.join(host_name(wiped)));
                shared.lock().unwrap().record(format!(
                    "nemesis wipes n{wiped}'s disk and restarts it; crashes n{crashed}"
                ));
                sim.bounce(host_name(wiped).as_str());
                self.replacement = Some((now_ms + REPLACE_AFTER_MS, wiped));
            }
        }
        if let Some((from, wiped)) = self.replacement {
            let refused = shared.lock().unwrap().refused.contains(&wiped);
            if refused && now_ms >= from {
                self.replacement = None;
                self.replace(sim, wiped, shared);
            } else if now_ms >= FAULTS_END_MS {
                // Never refused (the identity guard's planted bug): nothing to replace.
                self.replacement = None;
            }
        }
        if let Some((node, period, next, cut)) = self.flapping {
            if now_ms >= next {
                if cut {
                    self.repair(sim);
                } else {
                    let others = Self::names(&self.others(&[node]));
                    self.cut_between(sim, &Self::names(&[node]), &others);
                }
                self.flapping = Some((node, period, now_ms + period, !cut));
            }
        }
    }

    /// What `docs/operations.md` tells an operator to do for a node that lost its disk:
    /// start the machine as a new node, with a new id and `--join`, on an empty data dir.
    /// Its address is the old node's, so messages still meant for the old node reach it.
    /// The simulated operator then removes the old id (`run_replacement_operator`).
    fn replace(&mut self, sim: &mut turmoil::Sim<'_>, host: u64, shared: &Mutex<Shared>) {
        let new_id = self.nodes + 1;
        let old_id = shared.lock().unwrap().node_on(host);
        {
            let mut config = self.host_configs[&host].lock().unwrap();
            config.node_id = new_id;
            config.initial_cluster = BTreeMap::new();
            config.join = self
                .others(&[host])
                .iter()
                .map(|n| format!("{}:{PORT}", host_name(*n)))
                .collect();
        }
        sim.crash(host_name(host).as_str());
        let _ = std::fs::remove_dir_all(self.data_root.join(host_name(host)));
        {
            let mut s = shared.lock().unwrap();
            s.replacements.insert(host, new_id);
            s.replaced = Some((old_id, new_id));
            s.record(format!(
                "operator replaces refused node {old_id} by node {new_id} on host n{host}"
            ));
        }
        sim.bounce(host_name(host).as_str());
    }

    fn repair(&mut self, sim: &mut turmoil::Sim<'_>) {
        for (a, b) in self.cut.drain(..) {
            sim.repair(a.as_str(), b.as_str());
        }
    }

    fn stop(&mut self, sim: &mut turmoil::Sim<'_>, fault: &Fault) {
        self.repair(sim);
        self.flapping = None;
        match fault {
            Fault::OneWayDrop { from, to } => sim.repair_oneway(host_name(*from).as_str(), host_name(*to).as_str()),
            Fault::Hold { a, b } => sim.release(host_name(*a).as_str(), host_name(*b).as_str()),
            Fault::Crash { .. } | Fault::DiskLoss { .. } => {
                for node in self.crashed.drain(..) {
                    sim.bounce(host_name(node).as_str());
                }
            }
            Fault::Delay { .. } => sim.set_max_message_latency(Duration::from_millis(BASE_MAX_LATENCY_MS)),
            Fault::Loss { .. } => sim.set_fail_rate(0.0),
            _ => {}
        }
    }
}

/// Runs one seeded simulation and checks it.
/// Panics seen while a simulation runs. Node code must never panic (a task that panics
/// dies quietly inside its runtime: a group without its core, a request never answered),
/// so each one is a violation, whatever the other checkers say.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records every panic while it lives, then puts the previous hook back.
struct PanicWatch;

impl PanicWatch {
    fn start() -> Self {
        PANICS.lock().unwrap().clear();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if let Ok(mut panics) = PANICS.lock() {
                panics.push(format!("{message}{at}"));
            }
            previous(info);
        }));
        PanicWatch
    }

    fn panics(&self) -> Vec<String> {
        PANICS.lock().unwrap().clone()
    }
}

impl Drop for PanicWatch {
    fn drop(&mut self) {
        let _ = std::panic::take_hook();
    }
}

pub fn run(settings: &SimSettings) -> Result<SimReport, String> {
    let wall = std::time::Instant::now();
    let panic_watch = PanicWatch::start();
    let placement = settings.scenario == Scenario::Placement;
    let mut settings = settings.clone();
    if placement {
        // At least one node joins, so there is somewhere for replicas to move.
        settings.nodes = settings.nodes.max(PLACEMENT_INITIAL_NODES + 1);
    }
    let settings = &settings;
    let data = tempfile::Builder::new()
        .prefix("midasflow-sim-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let shared = Arc::new(Mutex::new(Shared {
        max_campaigning_replicas: settings.max_campaigning_replicas,
        ..Shared::default()
    }));
    let mut nemesis_rng = SmallRng::seed_from_u64(settings.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xFA17);
    let faults = nemesis::schedule(
        &mut nemesis_rng,
        settings.scenario,
        settings.nodes,
        WARMUP_MS + 1_000,
        FAULTS_END_MS,
    );
    let mut sim = turmoil::Builder::new()
        .rng_seed(settings.seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        .simulation_duration(Duration::from_millis(SIM_LIMIT_MS))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(BASE_MAX_LATENCY_MS))
        .tcp_capacity(4096)
        .build();
    let initial_nodes = if placement {
        PLACEMENT_INITIAL_NODES
    } else {
        settings.nodes
    };
    let initial_cluster: BTreeMap<u64, String> = (1..=initial_nodes)
        .map(|n| (n, format!("{}:{PORT}", host_name(n))))
        .collect();
    let admin_steps = if placement {
        let mut admin_rng = SmallRng::seed_from_u64(settings.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xAD31);
        nemesis::admin_schedule(&mut admin_rng, settings.nodes, WARMUP_MS + 2_000, FAULTS_END_MS)
    } else {
        Vec::new()
    };
    let observer: Arc<dyn Observer> = Arc::new(SimObserver(shared.clone()));
    let mut host_configs = BTreeMap::new();
    for id in 1..=settings.nodes {
        let joins = id > initial_nodes;
        let mut config = NodeConfig::new(
            id,
            format!("0.0.0.0:{PORT}"),
            data.path().join(host_name(id)),
            if joins {
                BTreeMap::new()
            } else {
                initial_cluster.clone()
            },
        );
        if joins {
            config.join = initial_cluster.values().cloned().collect();
        }
        config.advertise = format!("{}:{PORT}", host_name(id));
        config.schedule.down_after_secs = SIM_DOWN_AFTER_SECS;
        config.schedule.step_timeout_secs = 15;
        if placement {
            // The clients use a handful of keys: a tiny threshold makes the scheduler split.
            config.schedule.split_max_keys = SIM_SPLIT_MAX_KEYS;
        }
        config.initial_shards = initial_shards(settings.scenario);
        if settings.scenario == Scenario::Quiet {
            config.raft.quiet_after_ms = SIM_QUIET_AFTER_MS;
        }
        config.net = NetKind::Turmoil;
        config.flush_mode = FlushMode::Inline;
        config.raft.batches_in_flight_per_peer = 1;
        // One slot per node unless a test asks for more, so crashes and partitions leave
        // more leaderless replicas than slots and the rationing runs
        // (`quiet::ration_campaigns`).
        config.raft.max_campaigning_replicas = settings.max_campaigning_replicas;
        // A few entries per append: catch-up after a partition or a crash goes in many
        // budgeted appends, as large values do in production.
        config.raft.append_payload_bytes_max = SIM_APPEND_PAYLOAD_BYTES_MAX;
        config.rng_seed = Some(settings.seed);
        config.observer = Some(observer.clone());
        config.planted_bug = settings.planted_bug;
        config.limits.request_timeout_ms = NODE_REQUEST_TIMEOUT_MS;
        // Idle connections live for the whole run on both ends (see SIM_POOL_IDLE_TIMEOUT_MS);
        // the head-read timeout is tested on real processes.
        config.limits.header_read_timeout_ms = crate::raft::transport::SIM_POOL_IDLE_TIMEOUT_MS * 2;
        let refusals = shared.clone();
        // Read at every start: the operator may have replaced the host's node by a new one.
        let config = Arc::new(Mutex::new(config));
        host_configs.insert(id, config.clone());
        sim.host(host_name(id).as_str(), move || {
            let config = config.lock().unwrap().clone();
            let id = config.node_id;
            // A (re)started node reports each replica's gate as it opens it; a replica of
            // its earlier life that it does not reopen has none.
            {
                let mut s = refusals.lock().unwrap();
                s.gates.retain(|(node, _), _| *node != id);
                // A restarted node's budget starts again at the bound.
                s.campaign_budgets.remove(&id);
            }
            let refusals = refusals.clone();
            async move {
                match crate::launch::start(config).await {
                    Ok(_running) => std::future::pending::<()>().await,
                    Err(e) => {
                        {
                            let mut s = refusals.lock().unwrap();
                            let why: String = e.to_string().chars().take(80).collect();
                            s.record(format!("n{id} refused to start: {why}"));
                            s.refused.insert(id);
                        }
                        std::future::pending::<()>().await
                    }
                }
                #[allow(unreachable_code)]
                Ok(())
            }
        });
    }
    for id in 1..=settings.clients {
        sim.client(
            client_name(id).as_str(),
            run_client(id, settings.clone(), shared.clone()),
        );
    }
    if placement {
        sim.client(
            "admin",
            run_admin(settings.clone(), admin_steps.clone(), shared.clone()),
        );
    }
    if settings.scenario == Scenario::Disk {
        sim.client("admin", run_replacement_operator(settings.clone(), shared.clone()));
    }
    let mut nemesis = Nemesis {
        nodes: settings.nodes,
        clients: settings.clients,
        cut: Vec::new(),
        crashed: Vec::new(),
        flapping: None,
        disk_loss: None,
        replacement: None,
        data_root: data.path().to_path_buf(),
        host_configs,
    };
    let mut next = 0;
    let mut active: Option<(u64, Fault)> = None;
    // When the last fault healed, until every group has a leader again.
    let mut healed_at: Option<u64> = None;
    let mut max_heal_to_leaders_ms = 0;
    loop {
        let now_ms = sim.elapsed().as_millis() as u64;
        if let Some((end, fault)) = &active {
            if now_ms >= *end {
                shared.lock().unwrap().record(format!("nemesis stop {fault:?}"));
                let restarted = nemesis.crashed.clone();
                nemesis.stop(&mut sim, fault);
                // A restarted node starts from its own PD replica's map, which may be
                // older than the last one it installed: the "never goes back" checks
                // hold within one run of a node.
                let mut s = shared.lock().unwrap();
                for host in restarted {
                    let node = s.node_on(host);
                    s.routing.remove(&node);
                    s.epochs.retain(|(n, _), _| *n != node);
                }
                drop(s);
                active = None;
                healed_at = Some(now_ms);
            }
        }
        if let Some(at) = healed_at {
            let mut s = shared.lock().unwrap();
            let waited = now_ms - at;
            let starting = next < faults.len() && faults[next].start_ms <= now_ms;
            if every_group_led(&s, &nemesis.crashed) {
                max_heal_to_leaders_ms = max_heal_to_leaders_ms.max(waited);
                healed_at = None;
            } else if waited > HEAL_LEADER_BOUND_MS || starting || now_ms >= QUIET_END_MS {
                if waited > HEAL_LEADER_BOUND_MS || now_ms >= QUIET_END_MS {
                    s.violations.push(format!(
                        "liveness: some group still had no leader {waited} ms after the fault healed at {at} ms"
                    ));
                }
                max_heal_to_leaders_ms = max_heal_to_leaders_ms.max(waited);
                healed_at = None;
            }
        }
        if active.is_none() && next < faults.len() && faults[next].start_ms <= now_ms {
            let scheduled = &faults[next];
            shared
                .lock()
                .unwrap()
                .record(format!("nemesis start {:?}", scheduled.fault));
            nemesis.start(&mut sim, &scheduled.fault, &shared, now_ms, scheduled.duration_ms);
            active = Some((now_ms + scheduled.duration_ms, scheduled.fault.clone()));
            next += 1;
        }
        nemesis.tick(&mut sim, now_ms, &shared);
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(format!("seed {}: simulation error: {e}", settings.seed)),
        }
    }
    let sim_time_ms = sim.elapsed().as_millis() as u64;
    drop(sim);
    let mut s = shared.lock().unwrap();
    let mut violations = std::mem::take(&mut s.violations);
    violations.extend(panic_watch.panics().into_iter().map(|p| format!("panic: {p}")));
    // Liveness: at the end of the quiet phase every replica of every group knows a leader.
    for ((node, group), leader) in s.known_leader.iter().filter(|((node, _), _)| !s.refused.contains(node)) {
        if leader.is_none() {
            violations.push(format!(
                "liveness: n{node}'s replica of group {group} has no leader at the end"
            ));
        }
    }
    for (key, verdict) in checker::check_history(&s.history) {
        match verdict {
            Verdict::Violation(why) => violations.push(format!("not linearizable: key {key}: {why}")),
            Verdict::Unknown(why) => violations.push(format!("linearizability not decided: key {key}: {why}")),
            Verdict::Linearizable => {}
        }
    }
    for lost in checker::lost_writes(&s.history, &s.final_reads) {
        violations.push(format!("lost acknowledged write: {lost}"));
    }
    for applied in checker::rejected_writes_applied(&s.history) {
        violations.push(format!("rejected write applied: {applied}"));
    }
    let trace_hash = xxhash_rust::xxh3::xxh3_64(s.trace.join("\n").as_bytes());
    let indeterminate = s.history.iter().filter(|o| o.outcome.is_none()).count();
    let mut first_led_terms = BTreeMap::new();
    for (group, term) in s.leaders.keys() {
        let first = first_led_terms.entry(*group).or_insert(*term);
        *first = (*first).min(*term);
    }
    let children: Vec<u64> = first_led_terms
        .iter()
        .filter(|(group, _)| **group > u64::from(initial_shards(settings.scenario)))
        .map(|(_, term)| *term)
        .collect();
    Ok(SimReport {
        seed: settings.seed,
        scenario: settings.scenario,
        nodes: settings.nodes,
        faults,
        ops: s.history.len(),
        ops_checked: s.history.len() - indeterminate,
        indeterminate,
        violations,
        sim_time_ms,
        wall_time_ms: wall.elapsed().as_millis() as u64,
        trace_hash,
        max_heal_to_leaders_ms,
        admin: admin_steps,
        operators_finished: s.operators_finished,
        quiet_entered: s.quiet_entered,
        wakeups: s.wakeups.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        raft_batches: s.raft_batches,
        raft_batched_messages: s.raft_batched_messages,
        raft_shared_batches: s.raft_shared_batches,
        commit_updates_held: s.commit_updates_held,
        split_children_led: children.len() as u64,
        split_children_led_in_first_term: children.iter().filter(|term| **term == 1).count() as u64,
        lease_reads: s.lease_reads,
        round_reads: s.round_reads,
        campaigns_deferred: s.campaigns_deferred,
        campaigns_started: s.campaigns_started,
        campaigns_started_as_gate_closed: s.campaigns_started_as_gate_closed,
        campaign_budget_min: s.campaign_budget_min,
        campaign_budget_cuts: s.campaign_budget_cuts,
        replaced: s.replaced,
        refused_requests: s.refused_requests.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        trace: if settings.keep_trace {
            std::mem::take(&mut s.trace)
        } else {
            Vec::new()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_problems_find_shards_left_on_a_removed_or_unknown_node() {
        let shards = |replicas: &[&[u64]]| {
            let shards: Vec<Value> = replicas
                .iter()
                .enumerate()
                .map(|(id, nodes)| {
                    let replicas: Vec<Value> = nodes.iter().map(|n| serde_json::json!({"node_id": n})).collect();
                    serde_json::json!({"id": id, "replicas": replicas})
                })
                .collect();
            serde_json::json!({ "shards": shards })
        };
        let live: BTreeSet<u64> = [1, 3, 4].into();
        assert!(replication_problems(&shards(&[&[1, 3, 4], &[4, 3, 1]]), 2, &live).is_empty());
        let problems = replication_problems(&shards(&[&[1, 3, 4], &[1, 2, 3], &[1, 3], &[1, 3, 5]]), 2, &live);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("placement: shard 1 "), "{problems:?}");
        // Five hosts: three replicas each, on any of them.
        let live: BTreeSet<u64> = [1, 3, 4, 5, 6].into();
        assert!(replication_problems(&shards(&[&[1, 5, 6], &[3, 4, 6]]), 2, &live).is_empty());
    }

    #[test]
    fn hosts_map_to_the_node_they_run() {
        let replacements = BTreeMap::from([(2, 4)]);
        assert_eq!(host_of(&replacements, 4), 2);
        assert_eq!(host_of(&replacements, 3), 3);
    }
}

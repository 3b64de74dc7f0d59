//! `midasflow demo`'s breakable network: faults a user injects into the in-process
//! cluster (isolate a node, cut a link, crash and restart a node, heal), and a small
//! background load so the console shows writes continuing on the majority side and
//! stalling on the isolated one. Only `midasflow demo` creates a [`DemoControl`]; a node
//! without one has no `/v1/demo/*` routes and no link filter.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::placement::NodeId;
use crate::raft::transport::LinkFilter;

/// What a user can do to the demo's cluster (`POST /v1/demo/faults`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Fault {
    /// Cut every link between `node` and the others.
    Isolate { node: NodeId },
    /// Cut the link between two nodes, both ways.
    Cut { nodes: [NodeId; 2] },
    /// Stop a node's process part: its server and replicas (data stays).
    Crash { node: NodeId },
    /// Start a crashed node again on its data.
    Restart { node: NodeId },
    /// Restore every link and restart every crashed node.
    Heal,
}

/// The faults in force. Pure: [`FaultPlan::apply`] is the only way it changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    pub isolated: BTreeSet<NodeId>,
    /// Cut links, each as (lower id, higher id).
    pub cut: BTreeSet<(NodeId, NodeId)>,
    pub crashed: BTreeSet<NodeId>,
}

impl FaultPlan {
    /// Whether a request from `from` to `to` is dropped.
    pub fn blocks(&self, from: NodeId, to: NodeId) -> bool {
        from != to
            && (self.isolated.contains(&from)
                || self.isolated.contains(&to)
                || self.cut.contains(&(from.min(to), from.max(to))))
    }

    /// Applies `fault` to the plan, or says why it makes no sense for `nodes`.
    pub fn apply(&mut self, fault: &Fault, nodes: &BTreeSet<NodeId>) -> Result<(), String> {
        let known = |node: &NodeId| {
            if nodes.contains(node) {
                Ok(())
            } else {
                Err(format!("the demo has no node {node} (nodes: {nodes:?})"))
            }
        };
        match fault {
            Fault::Isolate { node } => {
                known(node)?;
                self.isolated.insert(*node);
            }
            Fault::Cut { nodes: [a, b] } => {
                known(a)?;
                known(b)?;
                if a == b {
                    return Err("a link joins two different nodes".into());
                }
                self.cut.insert((*a.min(b), *a.max(b)));
            }
            Fault::Crash { node } => {
                known(node)?;
                if !self.crashed.insert(*node) {
                    return Err(format!("node {node} is already crashed"));
                }
            }
            Fault::Restart { node } => {
                known(node)?;
                if !self.crashed.remove(node) {
                    return Err(format!("node {node} is running; crash it first"));
                }
            }
            Fault::Heal => *self = FaultPlan::default(),
        }
        Ok(())
    }

    /// One line per fault, for people.
    pub fn describe(&self) -> Vec<String> {
        let isolated = self.isolated.iter().map(|n| format!("node {n} isolated"));
        let cut = self.cut.iter().map(|(a, b)| format!("link {a}–{b} cut"));
        let crashed = self.crashed.iter().map(|n| format!("node {n} crashed"));
        isolated.chain(cut).chain(crashed).collect()
    }
}

/// Why a fault was not (fully) applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// It makes no sense for this cluster (an unknown node, a restart of a running one).
    #[error("{0}")]
    Refused(String),
    /// Carrying it out failed (a node did not restart), or the demo is stopping.
    #[error("{0}")]
    Failed(String),
}

/// A request to the demo's main loop, which owns the running nodes.
pub enum NodeCommand {
    Crash(NodeId),
    Restart(NodeId),
}

type CommandReply = oneshot::Sender<Result<(), String>>;

/// Counters of one node's background writer.
#[derive(Default)]
struct LoadCounters {
    ok: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// Shared by the demo's nodes (each holds it in its config) and its main loop.
pub struct DemoControl {
    /// Node id → the address its peers dial.
    addrs: BTreeMap<NodeId, String>,
    plan: RwLock<FaultPlan>,
    /// Serializes fault changes, so a crash and a restart of one node cannot interleave.
    changing: tokio::sync::Mutex<()>,
    commands: mpsc::Sender<(NodeCommand, CommandReply)>,
    load_enabled: AtomicBool,
    load: BTreeMap<NodeId, LoadCounters>,
}

impl std::fmt::Debug for DemoControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoControl").field("plan", &self.plan).finish()
    }
}

/// Pause between two operations of a node's background writer.
pub const LOAD_PAUSE_MS: u64 = 200;
/// A background operation that takes longer counts as failed.
pub const LOAD_TIMEOUT_MS: u64 = 2_000;
/// Keys each background writer cycles through.
pub const LOAD_KEYS_PER_NODE: u64 = 100;

impl DemoControl {
    /// A control for the nodes at `addrs`, and the receiver its main loop serves.
    pub fn new(
        addrs: BTreeMap<NodeId, String>,
        load_enabled: bool,
    ) -> (Arc<Self>, mpsc::Receiver<(NodeCommand, CommandReply)>) {
        let (commands, rx) = mpsc::channel(8);
        let load = addrs.keys().map(|id| (*id, LoadCounters::default())).collect();
        let control = DemoControl {
            addrs,
            plan: RwLock::new(FaultPlan::default()),
            changing: tokio::sync::Mutex::new(()),
            commands,
            load_enabled: AtomicBool::new(load_enabled),
            load,
        };
        (Arc::new(control), rx)
    }

    fn node_ids(&self) -> BTreeSet<NodeId> {
        self.addrs.keys().copied().collect()
    }

    pub fn plan(&self) -> FaultPlan {
        self.plan.read().unwrap().clone()
    }

    /// Applies a fault; crashes and restarts are carried out by the main loop before this
    /// returns. The network part takes effect first (a heal restores links even if a
    /// restart then fails); a node counts as crashed from the moment its crash starts, so
    /// its writer stops at once.
    pub async fn inject(&self, fault: Fault) -> Result<(), InjectError> {
        let _one_at_a_time = self.changing.lock().await;
        let before = self.plan();
        let mut after = before.clone();
        after.apply(&fault, &self.node_ids()).map_err(InjectError::Refused)?;
        {
            let mut plan = self.plan.write().unwrap();
            plan.isolated = after.isolated.clone();
            plan.cut = after.cut.clone();
        }
        let mut failures = Vec::new();
        for node in before.crashed.difference(&after.crashed) {
            match self.command(NodeCommand::Restart(*node)).await {
                Ok(()) => {
                    self.plan.write().unwrap().crashed.remove(node);
                }
                Err(e) => failures.push(e),
            }
        }
        for node in after.crashed.difference(&before.crashed) {
            self.plan.write().unwrap().crashed.insert(*node);
            if let Err(e) = self.command(NodeCommand::Crash(*node)).await {
                self.plan.write().unwrap().crashed.remove(node);
                failures.push(e);
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(InjectError::Failed(failures.join("; ")))
        }
    }

    async fn command(&self, command: NodeCommand) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send((command, tx))
            .await
            .map_err(|_| "the demo is stopping".to_string())?;
        rx.await.map_err(|_| "the demo is stopping".to_string())?
    }

    pub fn set_load(&self, enabled: bool) {
        self.load_enabled.store(enabled, Ordering::Relaxed);
    }

    /// What `GET /v1/demo/faults` answers.
    pub fn state(&self) -> Value {
        let plan = self.plan();
        let per_node: serde_json::Map<String, Value> = self
            .load
            .iter()
            .map(|(id, c)| {
                let last_error = c.last_error.lock().unwrap().clone();
                (
                    id.to_string(),
                    json!({
                        "ok": c.ok.load(Ordering::Relaxed),
                        "failed": c.failed.load(Ordering::Relaxed),
                        "last_error": last_error,
                    }),
                )
            })
            .collect();
        json!({
            "nodes": self.node_ids(),
            "isolated": plan.isolated,
            "cut": plan.cut.iter().map(|(a, b)| [a, b]).collect::<Vec<_>>(),
            "crashed": plan.crashed,
            "faults": plan.describe(),
            "load": {"enabled": self.load_enabled.load(Ordering::Relaxed), "per_node": per_node},
        })
    }

    /// One background writer per node, each through its own node: a write, then a read of
    /// it, every [`LOAD_PAUSE_MS`] while the load is enabled. Runs until aborted.
    pub fn spawn_load(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        self.addrs
            .iter()
            .map(|(id, addr)| {
                let (control, id) = (self.clone(), *id);
                let client = crate::client::Client::with_network(
                    &format!("http://{addr}"),
                    crate::raft::transport::NetKind::Tokio,
                    Duration::from_millis(LOAD_TIMEOUT_MS),
                );
                tokio::spawn(async move {
                    let mut sequence = 0u64;
                    loop {
                        tokio::time::sleep(Duration::from_millis(LOAD_PAUSE_MS)).await;
                        if !control.load_enabled.load(Ordering::Relaxed) || control.plan().crashed.contains(&id) {
                            continue;
                        }
                        sequence += 1;
                        let key = format!("demo-load/{id}/{}", sequence % LOAD_KEYS_PER_NODE);
                        let outcome = load_step(&client, &key, sequence).await;
                        let counters = &control.load[&id];
                        match outcome {
                            Ok(()) => {
                                counters.ok.fetch_add(1, Ordering::Relaxed);
                                // The last error is news only while the writer is failing.
                                counters.last_error.lock().unwrap().take();
                            }
                            Err(e) => {
                                counters.failed.fetch_add(1, Ordering::Relaxed);
                                *counters.last_error.lock().unwrap() = Some(e);
                            }
                        }
                    }
                })
            })
            .collect()
    }
}

async fn load_step(client: &crate::client::Client, key: &str, sequence: u64) -> Result<(), String> {
    let path = format!("/v1/kv/{}", crate::client::encode_key_str(key));
    let body = bytes::Bytes::from(format!("write {sequence}"));
    let put = client
        .request(hyper::Method::PUT, &path, &[], body)
        .await
        .map_err(|e| e.to_string())?;
    if !put.status.is_success() {
        return Err(format!("PUT {key}: {}", put.status));
    }
    let get = client.get_path(&path).await.map_err(|e| e.to_string())?;
    if !get.status.is_success() {
        return Err(format!("GET {key}: {}", get.status));
    }
    Ok(())
}

impl LinkFilter for DemoControl {
    fn blocked(&self, from: NodeId, to_addr: &str) -> bool {
        let Some(to) = self
            .addrs
            .iter()
            .find(|(_, a)| a.as_str() == to_addr)
            .map(|(id, _)| *id)
        else {
            return false;
        };
        self.plan.read().unwrap().blocks(from, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> BTreeSet<NodeId> {
        [1, 2, 3].into()
    }

    #[test]
    fn faults_block_the_links_they_name_and_heal_restores_all() {
        let mut plan = FaultPlan::default();
        assert!(!plan.blocks(1, 2));
        plan.apply(&Fault::Isolate { node: 2 }, &nodes()).unwrap();
        assert!(plan.blocks(1, 2) && plan.blocks(2, 3) && plan.blocks(3, 2));
        assert!(!plan.blocks(1, 3), "the majority side still talks");
        plan.apply(&Fault::Cut { nodes: [3, 1] }, &nodes()).unwrap();
        assert!(plan.blocks(1, 3) && plan.blocks(3, 1));
        assert_eq!(plan.describe(), ["node 2 isolated", "link 1–3 cut"]);
        plan.apply(&Fault::Crash { node: 3 }, &nodes()).unwrap();
        plan.apply(&Fault::Heal, &nodes()).unwrap();
        assert_eq!(plan, FaultPlan::default());
    }

    #[test]
    fn nonsense_faults_are_refused_and_change_nothing() {
        let mut plan = FaultPlan::default();
        for fault in [
            Fault::Isolate { node: 9 },
            Fault::Cut { nodes: [2, 2] },
            Fault::Cut { nodes: [1, 7] },
            Fault::Restart { node: 1 },
        ] {
            let before = plan.clone();
            assert!(plan.apply(&fault, &nodes()).is_err(), "{fault:?}");
            assert_eq!(plan, before);
        }
        plan.apply(&Fault::Crash { node: 1 }, &nodes()).unwrap();
        assert!(plan.apply(&Fault::Crash { node: 1 }, &nodes()).is_err());
    }

    #[test]
    fn faults_parse_from_the_documented_json() {
        let parse = |s: &str| serde_json::from_str::<Fault>(s);
        assert_eq!(
            parse(r#"{"kind":"isolate","node":2}"#).unwrap(),
            Fault::Isolate { node: 2 }
        );
        assert_eq!(
            parse(r#"{"kind":"cut","nodes":[1,3]}"#).unwrap(),
            Fault::Cut { nodes: [1, 3] }
        );
        assert_eq!(parse(r#"{"kind":"heal"}"#).unwrap(), Fault::Heal);
        assert_eq!(
            parse(r#"{"kind":"restart","node":3}"#).unwrap(),
            Fault::Restart { node: 3 }
        );
        assert!(parse(r#"{"kind":"explode"}"#).is_err());
        assert!(parse(r#"{"kind":"isolate","node":2,"extra":1}"#).is_err());
    }

    #[test]
    fn the_link_filter_knows_nodes_by_address() {
        let addrs: BTreeMap<NodeId, String> = (1..=3).map(|id| (id, format!("127.0.0.1:700{id}"))).collect();
        let (control, _rx) = DemoControl::new(addrs, false);
        control.plan.write().unwrap().isolated.insert(3);
        assert!(control.blocked(1, "127.0.0.1:7003"));
        assert!(!control.blocked(1, "127.0.0.1:7002"));
        assert!(
            !control.blocked(1, "10.0.0.1:7003"),
            "an address the demo does not know"
        );
    }
}

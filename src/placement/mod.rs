//! The placement driver's state: the cluster map (docs/ARCHITECTURE.md), and the pure function that
//! applies PD commands to it.
//!
//! Invariants: shard ranges tile the ring `[0, 2^64)` with no gap and no overlap; the
//! routing version grows on every change to the map and never decreases; each shard's
//! epoch grows whenever its range or replicas change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
pub const MAX_NODE_ADDR_BYTES: usize = 256;
/// Replicas per shard, and the most PD voters.
pub const REPLICATION_FACTOR: usize = 3;

/// A key's position on the ring.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The stored part of a node's state; `suspect` and `down` are derived from liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub id: ShardId,
    pub start: u64,
    pub end: Option<u64>,
    pub replicas: Vec<NodeId>,
    pub epoch: u64,
}

impl ShardInfo {
    pub fn contains(&self, hash: u64) -> bool {
        hash >= self.start && self.end.is_none_or(|end| hash < end)
    }

    /// `end` as a number, with the ring's end as `2^64`.
    pub fn end_u128(&self) -> u128 {
        self.end.map_or(1u128 << 64, u128::from)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    pub routing_version: u64,
    /// Chosen at bootstrap, never changed: every internal RPC carries it (0 = not yet).
    pub cluster_id: u128,
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Each member's incarnation (its data dir's random id), recorded when it first
    /// registers and never overwritten: a node that comes back with another one lost its
    /// disk and must not act as that member again.
    pub incarnations: BTreeMap<NodeId, u128>,
    pub shards: BTreeMap<ShardId, ShardInfo>,
    pub next_shard_id: ShardId,
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
    },
    /// Records a member's incarnation, once.
    Register { node: NodeId, incarnation: u128 },
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
                if nodes
                    .iter()
                    .any(|(_, addr)| addr.is_empty() || addr.len() > MAX_NODE_ADDR_BYTES)
                {
                    return Err(format!("a node address is empty or over {MAX_NODE_ADDR_BYTES} bytes"));
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PdResult {
    Bootstrapped { routing_version: u64 },
    Registered { routing_version: u64 },
    AlreadyBootstrapped { routing_version: u64 },
    Rejected { reason: String },
}

impl ClusterMap {
    pub fn is_bootstrapped(&self) -> bool {
        !self.shards.is_empty()
    }

    /// The shard owning `hash`. Shards tile the ring, so this finds one once bootstrapped.
    pub fn shard_for_hash(&self, hash: u64) -> Option<&ShardInfo> {
        self.shards.values().find(|s| s.contains(hash))
    }

    pub fn shard_for_key(&self, key: &[u8]) -> Option<&ShardInfo> {
        self.shard_for_hash(key_hash(key))
    }

    /// The shard ids whose replica set includes `node`.
    pub fn shards_on(&self, node: NodeId) -> impl Iterator<Item = &ShardInfo> {
        self.shards.values().filter(move |s| s.replicas.contains(&node))
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
    pub fn apply(&mut self, command: &PdCommand) -> PdResult {
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
                        self.routing_version += 1;
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
                            epoch: 1,
                        },
                    );
                }
                self.next_shard_id = u64::from(*initial_shards) + 1;
                self.cluster_id = *cluster_id;
                self.routing_version += 1;
                PdResult::Bootstrapped {
                    routing_version: self.routing_version,
                }
            }
        }
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
        let map = bootstrap(4, 8);
        let back: ClusterMap = codec::decode(&codec::encode(&map).unwrap()).unwrap();
        assert_eq!(back, map);
    }
}

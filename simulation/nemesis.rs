//! Faults drawn from the seed: what breaks, when, for how long.

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Quiet scenario: the clients work for the first `QUIET_BURST_MS` of every
/// `QUIET_CYCLE_MS` (all together, so groups do go idle); faults start
/// `QUIET_FAULT_OFFSET_MS` into a cycle, in the idle gap.
pub const QUIET_CYCLE_MS: u64 = 5_000;
pub const QUIET_BURST_MS: u64 = 1_500;
pub const QUIET_FAULT_OFFSET_MS: u64 = 3_500;

/// Which family of faults a run draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Scenario {
    /// Leader isolation, minority and majority partitions, one-way drops, holds, flapping.
    Partitions,
    /// Crash and restart of one node, and of a majority.
    Crashes,
    /// Message delay and loss.
    Network,
    /// All of the above.
    Mixed,
    /// A node loses its disk at the worst moment (see [`Fault::DiskLoss`]) and is refused;
    /// the operator replaces it by a new node on the same address and removes the old id,
    /// while partitions and network faults go on.
    Disk,
    /// Scheduling under faults: three initial nodes and more that join, so replicas move
    /// to them; an operator drains nodes, moves replicas and transfers leaders by hand;
    /// nodes crash for longer than `down-after` (their replicas are re-created elsewhere),
    /// and partitions and network faults hit all of it.
    Placement,
    /// Quiet groups: clients work in short bursts with idle gaps, so groups go quiet (no
    /// heartbeats, no election timers); then the leader of quiet groups is isolated or
    /// crashed, or a minority cut off, and the next burst must find new leaders.
    Quiet,
    /// Coalesced Raft traffic: many groups per node, so the appends, heartbeats and votes
    /// of many groups share each batch to a peer; partitions and crashes make their
    /// answers differ (refused appends, elections of many groups at once).
    Batch,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::Partitions,
        Scenario::Crashes,
        Scenario::Network,
        Scenario::Mixed,
        Scenario::Disk,
        Scenario::Placement,
        Scenario::Quiet,
        Scenario::Batch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Partitions => "partitions",
            Scenario::Crashes => "crashes",
            Scenario::Network => "network",
            Scenario::Mixed => "mixed",
            Scenario::Disk => "disk",
            Scenario::Placement => "placement",
            Scenario::Quiet => "quiet",
            Scenario::Batch => "batch",
        }
    }
}

/// One fault, in terms of node ids (hosts `n{id}`) and the client hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// Cut the node leading the most groups off from the other nodes (chosen when it starts).
    IsolateLeader,
    /// Cut `nodes` (a minority) off from the rest.
    MinorityPartition {
        nodes: Vec<u64>,
    },
    /// Cut `nodes` (a minority) off from the rest, and the clients off from the majority:
    /// the clients' side has no quorum.
    MajorityPartition {
        nodes: Vec<u64>,
    },
    /// Drop everything `from` sends to `to`.
    OneWayDrop {
        from: u64,
        to: u64,
    },
    /// Hold messages between `a` and `b`, then deliver them late.
    Hold {
        a: u64,
        b: u64,
    },
    /// Partition `node` from the others on and off every `period_ms`.
    Flapping {
        node: u64,
        period_ms: u64,
    },
    Crash {
        nodes: Vec<u64>,
    },
    Delay {
        max_latency_ms: u64,
    },
    Loss {
        fail_rate_percent: u64,
    },
    /// `lagging` is cut off for the first half while writes commit on the others; then, at
    /// once, it is healed, `crashed` crashes, and `wiped` crashes and restarts on an empty
    /// data dir. If `wiped` acted as its old self, it and `lagging` would be a majority
    /// missing what `wiped` had promised to keep: the identity guard must refuse it.
    DiskLoss {
        wiped: u64,
        lagging: u64,
        crashed: u64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scheduled {
    pub start_ms: u64,
    pub duration_ms: u64,
    pub fault: Fault,
}

/// Draws the fault schedule for `[first_ms, end_ms)`: one fault at a time, with gaps.
pub fn schedule(rng: &mut SmallRng, scenario: Scenario, nodes: u64, first_ms: u64, end_ms: u64) -> Vec<Scheduled> {
    let ids: Vec<u64> = (1..=nodes).collect();
    let minority = (nodes as usize - 1) / 2;
    let majority_crash = nodes as usize / 2 + 1;
    let mut faults = Vec::new();
    let mut at = first_ms;
    loop {
        let duration_ms = rng.gen_range(1_500..5_000);
        if at + duration_ms > end_ms {
            break;
        }
        let pick = |rng: &mut SmallRng, count: usize| -> Vec<u64> {
            let mut chosen: Vec<u64> = ids.choose_multiple(rng, count).copied().collect();
            chosen.sort_unstable();
            chosen
        };
        let partitions = |rng: &mut SmallRng| match rng.gen_range(0..6) {
            0 => Fault::IsolateLeader,
            1 => Fault::MinorityPartition {
                nodes: pick(rng, minority),
            },
            2 => Fault::MajorityPartition {
                nodes: pick(rng, minority),
            },
            3 => {
                let pair = pick(rng, 2);
                Fault::OneWayDrop {
                    from: pair[0],
                    to: pair[1],
                }
            }
            4 => {
                let pair = pick(rng, 2);
                Fault::Hold { a: pair[0], b: pair[1] }
            }
            _ => Fault::Flapping {
                node: pick(rng, 1)[0],
                period_ms: rng.gen_range(200..800),
            },
        };
        let crashes = |rng: &mut SmallRng| {
            let count = if rng.gen_bool(0.5) { 1 } else { majority_crash };
            Fault::Crash {
                nodes: pick(rng, count),
            }
        };
        let network = |rng: &mut SmallRng| {
            if rng.gen_bool(0.5) {
                Fault::Delay {
                    max_latency_ms: rng.gen_range(50..400),
                }
            } else {
                Fault::Loss {
                    fail_rate_percent: rng.gen_range(1..10),
                }
            }
        };
        let fault = match scenario {
            Scenario::Disk if faults.is_empty() => {
                let three = pick(rng, 3);
                let mut order = three.clone();
                order.shuffle(rng);
                Fault::DiskLoss {
                    wiped: order[0],
                    lagging: order[1],
                    crashed: order[2],
                }
            }
            Scenario::Disk => match rng.gen_range(0..2) {
                0 => partitions(rng),
                _ => network(rng),
            },
            Scenario::Partitions => partitions(rng),
            Scenario::Crashes => crashes(rng),
            Scenario::Network => network(rng),
            Scenario::Mixed | Scenario::Batch => match rng.gen_range(0..3) {
                0 => partitions(rng),
                1 => crashes(rng),
                _ => network(rng),
            },
            // One node at a time, so its replicas have somewhere to go.
            Scenario::Placement => match rng.gen_range(0..3) {
                0 => Fault::Crash { nodes: pick(rng, 1) },
                1 => partitions(rng),
                _ => network(rng),
            },
            Scenario::Quiet => match rng.gen_range(0..4) {
                0 | 1 => Fault::IsolateLeader,
                2 => Fault::Crash { nodes: pick(rng, 1) },
                _ => Fault::MinorityPartition {
                    nodes: pick(rng, minority),
                },
            },
        };
        let duration_ms = match (&fault, scenario) {
            // Longer than the simulation's down-after: the crashed node's replicas move.
            (Fault::Crash { .. }, Scenario::Placement) => rng.gen_range(4_500..7_000).min(end_ms - at),
            // Long enough for the majority to elect by node liveness (a few seconds) and
            // for the next burst of the clients to meet the new leaders.
            (_, Scenario::Quiet) => rng.gen_range(6_500..9_000).min(end_ms - at),
            _ => duration_ms,
        };
        if scenario == Scenario::Quiet {
            // Faults strike in an idle gap, once the groups are quiet: the next burst
            // then meets quiet groups whose leader is gone.
            at = (at.saturating_sub(QUIET_FAULT_OFFSET_MS)).div_ceil(QUIET_CYCLE_MS) * QUIET_CYCLE_MS
                + QUIET_FAULT_OFFSET_MS;
            if at + duration_ms > end_ms {
                break;
            }
        }
        faults.push(Scheduled {
            start_ms: at,
            duration_ms,
            fault,
        });
        at += duration_ms + rng.gen_range(500..2_500);
    }
    faults
}

/// What the simulated operator does by hand in the placement scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminAction {
    /// Drain a node, and cancel the drain `for_ms` later.
    Drain { node: u64, for_ms: u64 },
    /// Move a replica of the shard picked by `pick` (an index into the shards) from one of
    /// its replicas to a node without one.
    Move { pick: u64 },
    /// Hand the leadership of the shard picked by `pick` to another replica.
    TransferLeader { pick: u64 },
    /// Split the shard picked by `pick` at the median hash of its keys.
    Split { pick: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminStep {
    pub at_ms: u64,
    pub action: AdminAction,
}

/// The operator's actions for `[first_ms, end_ms)` in the placement scenario.
pub fn admin_schedule(rng: &mut SmallRng, nodes: u64, first_ms: u64, end_ms: u64) -> Vec<AdminStep> {
    let mut steps = Vec::new();
    let mut at = first_ms + rng.gen_range(0..2_000);
    while at < end_ms {
        let action = match rng.gen_range(0..4) {
            0 => AdminAction::Drain {
                node: rng.gen_range(1..=nodes),
                for_ms: rng.gen_range(2_000..6_000),
            },
            1 => AdminAction::Move { pick: rng.gen() },
            2 => AdminAction::Split { pick: rng.gen() },
            _ => AdminAction::TransferLeader { pick: rng.gen() },
        };
        steps.push(AdminStep { at_ms: at, action });
        at += rng.gen_range(2_000..5_000);
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn schedules_are_seeded_and_stay_in_the_window() {
        for scenario in Scenario::ALL {
            let a = schedule(&mut SmallRng::seed_from_u64(5), scenario, 5, 3_000, 30_000);
            let b = schedule(&mut SmallRng::seed_from_u64(5), scenario, 5, 3_000, 30_000);
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
            assert!(!a.is_empty());
            for s in &a {
                assert!(s.start_ms >= 3_000 && s.start_ms + s.duration_ms <= 30_000);
                if let Fault::Crash { nodes } = &s.fault {
                    assert!(nodes.len() == 1 || nodes.len() == 3);
                }
            }
        }
    }
}

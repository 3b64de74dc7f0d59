//! When a group goes quiet and when it wakes (pure: no IO, no clock).
//!
//! An idle group costs nothing: its leader stops ticking, so it sends no heartbeats, and
//! its followers stop ticking, so they run no election timers. What a follower's election
//! timer was for, noticing that the leader is gone, comes from node liveness instead: the
//! one node-level heartbeat every node sends the placement driver. A request, log growth,
//! a new leader, or a membership change wakes the group; so does a follower seeing its
//! leader's node lost, which then campaigns as usual. A candidate's vote request (a new
//! term with no leader yet) does not: the candidate's own timer keeps the election going,
//! and waking its peers would have them campaign too. Elections that `tend` starts are
//! rationed per pass ([`MAX_CAMPAIGN_WAKES_PER_PASS`]), first candidates first.
//!
//! Quiet changes only timers. Votes, terms, appends and `ensure_linearizable` work the
//! same, so "at most one leader per term" and linearizable reads do not depend on it.

/// What this replica is in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    /// A voter following a leader other than itself.
    Follower,
    /// A candidate, a learner, or a replica that knows no leader.
    Other,
}

/// What node liveness says of a follower's leader's node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Live,
    /// Silent past the suspect threshold.
    Lost,
    /// This node's liveness view is stale (it has not reached the placement driver).
    Unknown,
}

/// What the node knows that the decision needs (from its heartbeats to the placement
/// driver).
pub trait NodeView {
    /// Liveness of a node, from a fresh view only.
    fn liveness(&self, node: u64) -> Liveness;
    /// Whether this node's view is fresh (it reached the placement driver lately).
    fn fresh(&self) -> bool;
    /// The leader of `group` as the placement driver last heard of it.
    fn leader_hint(&self, group: u64) -> Option<LeaderHint>;
    /// Whether this node is the one to campaign first for a leaderless `group`: its first
    /// replica in the map whose node is live.
    fn campaigns_first(&self, group: u64) -> bool;
}

/// The placement driver's word on a group's leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderHint {
    pub node: u64,
    /// The node's latest heartbeat still lists the group among those it leads.
    pub current: bool,
}

/// The leader a replica may wait on quietly: the one its Raft state names (`believed`),
/// or, when that names none (a reopened replica), the placement driver's hint while the
/// hinted node still reports leading the group. A lapsed hint names nobody to wait on:
/// after a whole-cluster restart at 10,000 shards, a hint naming a candidate that could
/// not win (its log one entry short) kept the two replicas with the whole log quiet
/// behind it, and the group never elected a leader.
pub fn leader_to_follow(believed: Option<u64>, hint: Option<LeaderHint>) -> Option<u64> {
    believed.or(hint.filter(|h| h.current).map(|h| h.node))
}

/// How long a reopened replica that is not its group's first candidate waits for a
/// leader before it ticks (and may campaign) itself.
pub const STARTING_GRACE_MS: u64 = 3_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inputs {
    pub role: Role,
    /// Milliseconds since the group's last activity (a request, log growth, a leader,
    /// term or membership change).
    pub idle_ms: u64,
    /// Leader: every replica whose node is not lost has matched the last log index.
    pub replicas_caught_up: bool,
    /// One voter set and no learners: no membership change in flight.
    pub membership_settled: bool,
    /// Follower: liveness of the leader's node.
    pub leader: Liveness,
    /// This node's own liveness view is fresh (it reached the placement driver lately).
    pub view_fresh: bool,
    /// The replica was reopened from disk and has seen no leader yet: it knows none (its
    /// vote comes back uncommitted), but the group most likely has one.
    pub starting: bool,
    /// Starting: milliseconds since the replica was reopened, and whether this node is the
    /// group's first candidate (after a whole-cluster restart, one replica per group
    /// campaigns instead of three).
    pub starting_for_ms: u64,
    pub first_candidate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Tick: heartbeats on a leader, the election timer on a follower.
    Active,
    /// No tick.
    Quiet,
    /// Leave the replica as it is.
    Keep,
}

/// The decision for one replica.
/// - A leader goes quiet after `quiet_after_ms` of idleness once its live replicas have
///   caught up, and only while its own node reaches the placement driver (otherwise its
///   followers could judge its node lost and depose it, back and forth).
/// - A follower goes quiet after half of it, so followers stop their election timers
///   before the leader stops the heartbeats that feed them.
/// - A stale view never wakes anyone: waking on it would depose live leaders by the
///   thousand.
pub fn decide(inputs: &Inputs, quiet_after_ms: u64) -> Decision {
    let idle_for = |ms: u64| inputs.idle_ms >= ms && inputs.membership_settled;
    match inputs.role {
        Role::Leader if idle_for(quiet_after_ms) && inputs.replicas_caught_up && inputs.view_fresh => Decision::Quiet,
        Role::Leader => Decision::Active,
        Role::Follower => match inputs.leader {
            // The leader's node is gone: the election timer must run.
            Liveness::Lost => Decision::Active,
            Liveness::Live | Liveness::Unknown if idle_for(quiet_after_ms / 2) => Decision::Quiet,
            Liveness::Live => Decision::Active,
            Liveness::Unknown => Decision::Keep,
        },
        Role::Other if inputs.starting && !inputs.view_fresh => Decision::Keep,
        Role::Other if inputs.starting && !inputs.first_candidate && inputs.starting_for_ms < STARTING_GRACE_MS => {
            Decision::Keep
        }
        Role::Other => Decision::Active,
    }
}

/// Quiet replicas a node wakes into an election per `tend` pass, at most. Waking
/// thousands at once (a whole-cluster restart, or the loss of a node that led thousands
/// of quiet groups) floods every peer with votes that time out and start over: at 10,000
/// shards a restart never settled. The rest wait for the next pass, half a second later.
pub const MAX_CAMPAIGN_WAKES_PER_PASS: usize = 256;

/// Which of the replicas that would wake into an election this pass may: at most
/// `budget`, groups' first candidates before the others, each kind in the order given.
pub fn ration_wakes(first_candidates: &[bool], budget: usize) -> Vec<bool> {
    let mut woken = vec![false; first_candidates.len()];
    let firsts = (0..first_candidates.len()).filter(|i| first_candidates[*i]);
    let others = (0..first_candidates.len()).filter(|i| !first_candidates[*i]);
    for i in firsts.chain(others).take(budget) {
        woken[i] = true;
    }
    woken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_replica_follows_only_a_current_hint() {
        let current = |node| Some(LeaderHint { node, current: true });
        let lapsed = |node| Some(LeaderHint { node, current: false });
        assert_eq!(leader_to_follow(Some(2), None), Some(2));
        assert_eq!(
            leader_to_follow(Some(2), current(3)),
            Some(2),
            "its own Raft state first"
        );
        assert_eq!(leader_to_follow(Some(2), lapsed(2)), Some(2));
        assert_eq!(leader_to_follow(None, current(3)), Some(3), "a reopened replica");
        assert_eq!(leader_to_follow(None, lapsed(3)), None, "no longer reported");
        assert_eq!(leader_to_follow(None, None), None);
    }

    #[test]
    fn campaign_wakes_are_rationed_first_candidates_first() {
        let wants = [false, true, false, true, true];
        assert_eq!(ration_wakes(&wants, 2), [false, true, false, true, false]);
        assert_eq!(ration_wakes(&wants, 4), [true, true, false, true, true]);
        assert_eq!(ration_wakes(&wants, 9), [true; 5]);
        assert_eq!(ration_wakes(&wants, 0), [false; 5]);
    }

    fn inputs(role: Role, idle_ms: u64) -> Inputs {
        Inputs {
            role,
            idle_ms,
            replicas_caught_up: true,
            membership_settled: true,
            leader: Liveness::Live,
            view_fresh: true,
            starting: false,
            starting_for_ms: 0,
            first_candidate: false,
        }
    }

    #[test]
    fn table() {
        use Decision::*;
        let q = 2_000;
        let cases: Vec<(&str, Inputs, Decision)> = vec![
            ("busy leader", inputs(Role::Leader, 100), Active),
            ("idle leader", inputs(Role::Leader, 2_000), Quiet),
            (
                "idle leader, a live follower behind",
                Inputs {
                    replicas_caught_up: false,
                    ..inputs(Role::Leader, 9_000)
                },
                Active,
            ),
            (
                "idle leader, membership changing",
                Inputs {
                    membership_settled: false,
                    ..inputs(Role::Leader, 9_000)
                },
                Active,
            ),
            ("busy follower", inputs(Role::Follower, 500), Active),
            ("idle follower goes quiet first", inputs(Role::Follower, 1_000), Quiet),
            (
                "follower of a lost leader, however idle",
                Inputs {
                    leader: Liveness::Lost,
                    ..inputs(Role::Follower, 60_000)
                },
                Active,
            ),
            (
                "idle follower with a stale liveness view",
                Inputs {
                    leader: Liveness::Unknown,
                    ..inputs(Role::Follower, 60_000)
                },
                Quiet,
            ),
            (
                "busy follower with a stale liveness view",
                Inputs {
                    leader: Liveness::Unknown,
                    ..inputs(Role::Follower, 100)
                },
                Keep,
            ),
            (
                "idle leader whose own view is stale",
                Inputs {
                    view_fresh: false,
                    ..inputs(Role::Leader, 60_000)
                },
                Active,
            ),
            ("candidate or learner", inputs(Role::Other, 60_000), Active),
            (
                "reopened replica before its node's first fresh view",
                Inputs {
                    starting: true,
                    view_fresh: false,
                    ..inputs(Role::Other, 60_000)
                },
                Keep,
            ),
            (
                "reopened first candidate of a group nobody leads",
                Inputs {
                    starting: true,
                    first_candidate: true,
                    ..inputs(Role::Other, 60_000)
                },
                Active,
            ),
            (
                "reopened replica of a group nobody leads, not the first candidate",
                Inputs {
                    starting: true,
                    starting_for_ms: 1_000,
                    ..inputs(Role::Other, 60_000)
                },
                Keep,
            ),
            (
                "... until the grace runs out",
                Inputs {
                    starting: true,
                    starting_for_ms: STARTING_GRACE_MS,
                    ..inputs(Role::Other, 60_000)
                },
                Active,
            ),
        ];
        for (name, case, want) in cases {
            assert_eq!(decide(&case, q), want, "{name}");
        }
    }

    /// Whatever the idleness, a follower is never quiet while its leader is active:
    /// it goes quiet at half the leader's threshold.
    #[test]
    fn followers_quiet_no_later_than_their_leader() {
        for idle_ms in (0..10_000).step_by(50) {
            let leader = decide(&inputs(Role::Leader, idle_ms), 2_000);
            let follower = decide(&inputs(Role::Follower, idle_ms), 2_000);
            if leader == Decision::Quiet {
                assert_eq!(follower, Decision::Quiet, "idle {idle_ms} ms");
            }
        }
    }
}

//! The operator executor's decisions: given a running operator, the map and the shard
//! group's status as its leader reports it, what to do next. Pure (no IO, no clock): the
//! PD leader's loop (`node.rs`) fetches the status, calls [`next_action`], and performs
//! the action. Every action is idempotent, so a new PD leader simply carries on from the
//! step the PD log records.

use std::collections::{BTreeMap, BTreeSet};

use super::operator::{Operator, OperatorKind, Outcome, Step};
use super::{ClusterMap, NodeId, PdCommand};
use crate::raft::membership::{AdminReply, AdminRequest, SplitPlan};

/// A learner this close to the leader's last log index counts as caught up; the rest
/// arrives during joint consensus.
pub const CATCH_UP_LAG_ENTRIES: u64 = 64;

/// What the executor does next for one operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Propose a command to the PD group.
    Propose(PdCommand),
    /// Ask the shard's leader (`to_leader`) or a given node to change the group.
    Admin { node: NodeId, request: AdminRequest },
    /// Nothing to do yet; the reason is shown in `GET /v1/operators`.
    Wait(String),
    /// Give up and record the failure (the group no longer lists the target).
    Abort { reason: String },
}

/// The voters a replica operator ends with, in the map's order (the replaced node's slot
/// goes to the new one).
pub fn final_replicas(op: &OperatorKind, current: &[NodeId]) -> Vec<NodeId> {
    match op {
        OperatorKind::MoveReplica { from, to, .. } => {
            current.iter().map(|r| if r == from { *to } else { *r }).collect()
        }
        OperatorKind::AddReplica { to, .. } => {
            let mut replicas = current.to_vec();
            if !replicas.contains(to) {
                replicas.push(*to);
            }
            replicas
        }
        OperatorKind::TransferLeader { .. } | OperatorKind::Split { .. } => current.to_vec(),
    }
}

/// The replica of a new split child that campaigns first
/// (`PdCommand::SplitShardFirst`): of the replicas on nodes that are `up`, the one on the
/// node leading the fewest shards (`led`: shards led per node), the parent's leader among
/// equals, then the lowest id. Elsewhere every child would first be led by its parent's
/// leader's node, and the leader balance would then move it: under openraft 0.9 a
/// leadership transfer pauses the group's writes for more than an election timeout.
pub fn split_campaigner(
    replicas: &[NodeId],
    up: &dyn Fn(NodeId) -> bool,
    led: &BTreeMap<NodeId, usize>,
    parent_leader: Option<NodeId>,
) -> Option<NodeId> {
    replicas
        .iter()
        .copied()
        .filter(|n| up(*n))
        .min_by_key(|n| (led.get(n).copied().unwrap_or(0), Some(*n) != parent_leader, *n))
}

/// Inputs beyond the map that the decision needs.
pub struct Facts<'a> {
    /// The shard group's status from its leader (`None`: no leader answered).
    pub status: Option<&'a AdminReply>,
    /// Whether the operator's target node can still take the replica (up, not draining).
    pub target_usable: bool,
    pub now_ms: u64,
}

/// The next action for `op`.
pub fn next_action(op: &Operator, map: &ClusterMap, facts: &Facts) -> Action {
    let finish = |outcome| {
        Action::Propose(PdCommand::FinishOperator {
            operator: op.id,
            outcome,
            now_ms: facts.now_ms,
        })
    };
    let Some(shard) = map.group(op.kind.shard()) else {
        return finish(Outcome::Cancelled {
            reason: "the shard no longer exists".into(),
        });
    };
    let timeout_ms = map.settings.step_timeout_secs.saturating_mul(1_000);
    let stuck = facts.now_ms.saturating_sub(op.step_ms) > timeout_ms;
    let addr = |node: NodeId| map.node_addr(node).unwrap_or_default().to_string();
    let leader = facts.status.and_then(|s| s.is_leader.then_some(s));
    match &op.kind {
        OperatorKind::Split { at, child, .. } => {
            if map.shards.contains_key(child) {
                return finish(Outcome::Succeeded);
            }
            let Some(status) = leader else {
                return Action::Wait("the shard has no leader".into());
            };
            // Once the group applied the split it cannot be undone: the map must follow,
            // timeout or not.
            if status.range.is_some_and(|(_, end)| end == Some(*at)) {
                return Action::Propose(PdCommand::SplitShard {
                    operator: op.id,
                    now_ms: facts.now_ms,
                });
            }
            if stuck {
                return Action::Abort {
                    reason: format!("the split was not applied within {}s", map.settings.step_timeout_secs),
                };
            }
            Action::Admin {
                node: status_leader(status),
                request: AdminRequest::Split(SplitPlan {
                    child: *child,
                    at: *at,
                    start: shard.start,
                    end: shard.end,
                }),
            }
        }
        OperatorKind::TransferLeader { to, .. } => {
            if facts.status.and_then(|s| s.leader) == Some(*to) {
                return finish(Outcome::Succeeded);
            }
            if stuck {
                return finish(Outcome::Failed {
                    reason: format!(
                        "node {to} did not take the lead within {}s",
                        map.settings.step_timeout_secs
                    ),
                });
            }
            if !facts.target_usable {
                return finish(Outcome::Cancelled {
                    reason: format!("node {to} is no longer up"),
                });
            }
            if !shard.replicas.contains(to) {
                return finish(Outcome::Cancelled {
                    reason: format!("node {to} no longer holds a replica"),
                });
            }
            match leader {
                Some(status) if status.voters.contains(to) => Action::Admin {
                    node: status_leader(status),
                    request: AdminRequest::TransferLeader {
                        to: *to,
                        to_addr: addr(*to),
                    },
                },
                Some(_) => Action::Wait(format!("node {to} is not a voter of the group yet")),
                None => Action::Wait("the shard has no leader".into()),
            }
        }
        OperatorKind::MoveReplica { to, .. } | OperatorKind::AddReplica { to, .. } => {
            let to = *to;
            let replicas = final_replicas(&op.kind, &shard.replicas);
            let voters: BTreeSet<NodeId> = replicas.iter().copied().collect();
            let done = leader.is_some_and(|s| s.voters == voters && !s.joint);
            if op.step >= Step::Promoted {
                return finish(Outcome::Succeeded);
            }
            if stuck || (!facts.target_usable && !done) {
                let reason = if stuck {
                    format!(
                        "step {:?} made no progress for {}s",
                        op.step, map.settings.step_timeout_secs
                    )
                } else {
                    format!("node {to} can no longer take the replica")
                };
                // The map may forget the target only once the group has: a replica deleted
                // while the group still lists it would come back empty where the leader
                // remembers a log (openraft stops the group on such a "log reversion").
                match (op.step, leader) {
                    (Step::Created, _) => return Action::Abort { reason },
                    (_, None) => return Action::Wait(format!("{reason}; cancelling once the shard has a leader")),
                    // Already voting: finishing the change is the way out.
                    (_, Some(status)) if status.voters.contains(&to) => {}
                    (_, Some(status)) if status.learners.contains(&to) => {
                        return Action::Admin {
                            node: status_leader(status),
                            request: AdminRequest::RemoveLearners {
                                nodes: BTreeSet::from([to]),
                            },
                        }
                    }
                    (_, Some(_)) => return Action::Abort { reason },
                }
            }
            // Listing the learner changes the shard's epoch, and a split child whose
            // replicas have not all started yet counts on epoch 1: a replica that applies
            // the split later initializes the group only then (see `Node::reconcile`), so
            // listing it before the group ever had a leader could leave too few voters.
            if op.step == Step::Created && leader.is_none() {
                return Action::Wait("the shard has no leader".into());
            }
            if op.step == Step::Created {
                return Action::Propose(PdCommand::ListLearner {
                    operator: op.id,
                    now_ms: facts.now_ms,
                });
            }
            let Some(status) = leader else {
                return Action::Wait("the shard has no leader".into());
            };
            // The replaced voter can stay behind as a learner (openraft keeps a leader
            // that removed itself as one); it must leave before the map lets it go.
            let leftover: BTreeSet<NodeId> = status.learners.difference(&voters).copied().collect();
            if done && !leftover.is_empty() {
                return Action::Admin {
                    node: status_leader(status),
                    request: AdminRequest::RemoveLearners { nodes: leftover },
                };
            }
            if done {
                return Action::Propose(PdCommand::SetReplicas {
                    operator: op.id,
                    replicas,
                    now_ms: facts.now_ms,
                });
            }
            let leader_node = status_leader(status);
            // Nothing matched yet means nothing received, however short the log.
            let matched = status.matched.get(&to).copied();
            let caught_up = status.voters.contains(&to)
                || matched.is_some_and(|m| m + CATCH_UP_LAG_ENTRIES >= status.last_log_index);
            let catching_up = || {
                Action::Wait(format!(
                    "node {to} is catching up: {} of {} entries",
                    matched.map_or_else(|| "none".to_string(), |m| m.to_string()),
                    status.last_log_index
                ))
            };
            match op.step {
                // At any step: a learner the group does not list (its entry was lost with a
                // leader that had not committed it) is added again.
                _ if !status.learners.contains(&to) && !status.voters.contains(&to) => Action::Admin {
                    node: leader_node,
                    request: AdminRequest::AddLearner {
                        node: to,
                        addr: addr(to),
                    },
                },
                Step::LearnerListed if caught_up => Action::Propose(PdCommand::AdvanceOperator {
                    operator: op.id,
                    step: Step::LearnerCaughtUp,
                    now_ms: facts.now_ms,
                }),
                Step::LearnerListed => catching_up(),
                _ if !caught_up => catching_up(),
                _ => {
                    // A leader that removes itself steps down with no hand-off: writes in
                    // flight end as "unknown" and the group waits out an election. Hand
                    // the lead to a staying voter first.
                    let leaving = match op.kind {
                        OperatorKind::MoveReplica { from, .. } => Some(from),
                        _ => None,
                    };
                    let heir = replicas
                        .iter()
                        .find(|r| status.voters.contains(r) && Some(**r) != leaving);
                    match heir {
                        Some(heir) if leaving == Some(leader_node) && !status.joint => Action::Admin {
                            node: leader_node,
                            request: AdminRequest::TransferLeader {
                                to: *heir,
                                to_addr: addr(*heir),
                            },
                        },
                        _ => Action::Admin {
                            node: leader_node,
                            request: AdminRequest::SetVoters { voters },
                        },
                    }
                }
            }
        }
    }
}

fn status_leader(status: &AdminReply) -> NodeId {
    status.leader.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::operator::{Origin, ScheduleSettings};
    use crate::placement::PdResult;
    use std::collections::BTreeMap;

    fn cluster(nodes: u64) -> ClusterMap {
        let mut map = ClusterMap::default();
        map.apply(&PdCommand::Bootstrap {
            nodes: (1..=3).map(|id| (id, format!("n{id}:1"))).collect(),
            initial_shards: 2,
            cluster_id: 7,
            settings: ScheduleSettings::default(),
        });
        for id in 4..=nodes {
            map.apply(&PdCommand::Join {
                node: id,
                addr: format!("n{id}:1"),
                incarnation: u128::from(id),
            });
        }
        map
    }

    fn start(map: &mut ClusterMap, kind: OperatorKind) -> u64 {
        let epoch = map.shards[&kind.shard()].epoch;
        match map.apply(&PdCommand::StartOperator {
            kind,
            origin: Origin::Manual,
            reason: "test".into(),
            shard_epoch: epoch,
            now_ms: 0,
        }) {
            PdResult::OperatorStarted { id } => id,
            other => panic!("{other:?}"),
        }
    }

    fn status(leader: NodeId, voters: &[NodeId], learners: &[NodeId], matched: &[(NodeId, u64)]) -> AdminReply {
        AdminReply {
            leader: Some(leader),
            is_leader: true,
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
            joint: false,
            last_log_index: 500,
            matched: matched.iter().copied().collect::<BTreeMap<_, _>>(),
            range: None,
            split_point: None,
            outcome: Ok(()),
        }
    }

    /// A split child is first led on the least-led live node that holds it, the parent's
    /// leader among equals; the map lists that replica first, the rest in their order.
    #[test]
    fn a_split_child_campaigns_first_on_the_least_led_live_node() {
        let led: BTreeMap<NodeId, usize> = [(1, 4), (2, 2), (3, 2)].into();
        let all_up = |_| true;
        assert_eq!(
            split_campaigner(&[1, 2, 3], &all_up, &led, Some(1)),
            Some(2),
            "fewest, then lowest id"
        );
        assert_eq!(
            split_campaigner(&[1, 2, 3], &all_up, &led, Some(3)),
            Some(3),
            "the parent's leader among equals"
        );
        assert_eq!(
            split_campaigner(&[1, 2, 3], &|n| n != 2, &led, Some(1)),
            Some(3),
            "not a node that is down"
        );
        assert_eq!(
            split_campaigner(&[1, 2, 3], &|n| n == 1, &led, None),
            Some(1),
            "the only one up"
        );
        assert_eq!(split_campaigner(&[1, 2, 3], &|_| false, &led, None), None);
        assert_eq!(
            split_campaigner(&[4, 1], &all_up, &led, None),
            Some(4),
            "a node leading nothing"
        );

        let mut map = cluster(3);
        let at = map.shards[&1].start + 1_000;
        let id = start(&mut map, OperatorKind::Split { shard: 1, at, child: 0 });
        let parent = map.shards[&1].replicas.clone();
        let first = parent[2];
        map.apply(&PdCommand::SplitShardFirst {
            operator: id,
            now_ms: 1,
            first,
        });
        let child = map.shards.values().find(|s| s.parent == Some(1)).expect("the child");
        let mut expected = vec![first];
        expected.extend(parent.iter().filter(|r| **r != first));
        assert_eq!(child.replicas, expected);
    }

    /// A split: the leader splits in its own log, then the map follows (even past the
    /// step timeout: an applied split cannot be undone), then the operator ends.
    #[test]
    fn a_split_goes_group_first_then_map() {
        let mut map = cluster(3);
        let (from, end) = (map.shards[&1].start, map.shards[&1].end);
        let at = from + 1_000;
        let id = start(&mut map, OperatorKind::Split { shard: 1, at, child: 0 });
        let OperatorKind::Split { child, .. } = map.operators[&id].kind else {
            panic!()
        };
        assert_eq!(child, 3, "allocated when the operator starts");
        let op = map.operators[&id].clone();
        let before = status(1, &[1, 2, 3], &[], &[]);
        let facts = |status, now_ms| Facts {
            status,
            target_usable: true,
            now_ms,
        };
        match next_action(&op, &map, &facts(Some(&before), 1)) {
            Action::Admin {
                node: 1,
                request:
                    AdminRequest::Split(SplitPlan {
                        child: 3,
                        at: a,
                        start: s,
                        end: e,
                    }),
            } => assert_eq!((a, s, e), (at, from, end)),
            other => panic!("{other:?}"),
        }
        let after = AdminReply {
            range: Some((from, Some(at))),
            ..before.clone()
        };
        let late = map.settings.step_timeout_secs * 1_000 + 1;
        let Action::Propose(command) = next_action(&op, &map, &facts(Some(&after), late)) else {
            panic!()
        };
        assert!(matches!(command, PdCommand::SplitShard { .. }));
        map.apply(&command);
        map.check_tiling().unwrap();
        assert_eq!(
            (map.shards[&1].end, map.shards[&3].start, map.shards[&3].end),
            (Some(at), at, end)
        );
        assert_eq!(map.shards[&3].replicas, map.shards[&1].replicas);
        assert_eq!(map.shards[&3].parent, Some(1));
        let op = map.operators[&id].clone();
        assert!(matches!(
            next_action(&op, &map, &facts(Some(&after), late)),
            Action::Propose(PdCommand::FinishOperator {
                outcome: Outcome::Succeeded,
                ..
            })
        ));
    }

    /// Runs the executor against a model of the group until the operator finishes,
    /// applying every proposal to the map and every admin request to the model.
    fn drive(map: &mut ClusterMap, id: u64, mut group: AdminReply) -> Vec<String> {
        let mut trail = Vec::new();
        for now_ms in 1..50 {
            let Some(op) = map.operators.get(&id).cloned() else {
                return trail;
            };
            let facts = Facts {
                status: Some(&group),
                target_usable: true,
                now_ms,
            };
            match next_action(&op, map, &facts) {
                Action::Propose(cmd) => {
                    trail.push(format!("{cmd:?}").split([' ', '{']).next().unwrap().to_string());
                    assert!(!matches!(map.apply(&cmd), PdResult::Rejected { .. }), "{cmd:?}");
                }
                Action::Admin { node, request } => {
                    assert_eq!(node, group.leader.unwrap());
                    trail.push(format!("{request:?}").split([' ', '{']).next().unwrap().to_string());
                    match request {
                        AdminRequest::AddLearner { node, .. } => {
                            group.learners.insert(node);
                            group.matched.insert(node, 500);
                        }
                        AdminRequest::SetVoters { voters } => {
                            group.learners.retain(|l| !voters.contains(l));
                            group.voters = voters;
                        }
                        AdminRequest::TransferLeader { to, .. } => group.leader = Some(to),
                        other => panic!("{other:?}"),
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        panic!("did not finish: {trail:?}")
    }

    #[test]
    fn a_move_goes_learner_catch_up_joint_then_map() {
        let mut map = cluster(4);
        let before = map.shards[&1].clone();
        let id = start(
            &mut map,
            OperatorKind::MoveReplica {
                shard: 1,
                from: 1,
                to: 4,
            },
        );
        let trail = drive(&mut map, id, status(1, &[1, 2, 3], &[], &[(2, 500), (3, 500)]));
        // Node 1 leads: it hands the lead to a staying voter before it leaves.
        assert_eq!(
            trail,
            [
                "ListLearner",
                "AddLearner",
                "AdvanceOperator",
                "TransferLeader",
                "SetVoters",
                "SetReplicas",
                "FinishOperator"
            ]
        );
        let after = &map.shards[&1];
        assert_eq!(after.replicas, vec![4, 2, 3], "the new node takes the old one's slot");
        assert!(after.learners.is_empty());
        assert_eq!(
            after.epoch,
            before.epoch + 2,
            "listing the learner and the new voters each grow the epoch"
        );
        assert!(map.operators.is_empty());
        assert_eq!(map.finished.last().unwrap().outcome, Outcome::Succeeded);
    }

    /// A move on a shard with no leader lists nothing: the listing would change the epoch
    /// a split child's late replicas start on (placement seed 283 of a redo-record build:
    /// a child whose first election never had the votes), and without a leader the move
    /// could not go further anyway. A stuck move ends before it changed anything.
    #[test]
    fn a_move_lists_no_learner_before_the_shard_has_a_leader() {
        let mut map = cluster(4);
        let epoch = map.shards[&1].epoch;
        let id = start(
            &mut map,
            OperatorKind::MoveReplica {
                shard: 1,
                from: 1,
                to: 4,
            },
        );
        let op = map.operators[&id].clone();
        let leaderless = Facts {
            status: None,
            target_usable: true,
            now_ms: 1,
        };
        assert_eq!(
            next_action(&op, &map, &leaderless),
            Action::Wait("the shard has no leader".into())
        );
        let late = Facts {
            now_ms: map.settings.step_timeout_secs * 1_000 + 1,
            ..leaderless
        };
        assert!(matches!(next_action(&op, &map, &late), Action::Abort { .. }));
        assert_eq!(map.shards[&1].epoch, epoch);
    }

    #[test]
    fn a_lagging_learner_is_waited_for() {
        let mut map = cluster(4);
        let id = start(
            &mut map,
            OperatorKind::MoveReplica {
                shard: 2,
                from: 2,
                to: 4,
            },
        );
        map.apply(&PdCommand::ListLearner {
            operator: id,
            now_ms: 0,
        });
        let op = map.operators[&id].clone();
        let group = status(2, &[1, 2, 3], &[4], &[(4, 10)]);
        let facts = Facts {
            status: Some(&group),
            target_usable: true,
            now_ms: 1,
        };
        assert!(matches!(next_action(&op, &map, &facts), Action::Wait(w) if w.contains("catching up")));
    }

    #[test]
    fn a_stuck_or_orphaned_move_aborts_and_drops_its_learner() {
        let mut map = cluster(4);
        let id = start(
            &mut map,
            OperatorKind::MoveReplica {
                shard: 1,
                from: 1,
                to: 4,
            },
        );
        map.apply(&PdCommand::ListLearner {
            operator: id,
            now_ms: 0,
        });
        let op = map.operators[&id].clone();
        let late = map.settings.step_timeout_secs * 1_000 + 1;
        for (target_usable, now_ms) in [(true, late), (false, 1)] {
            let decide = |group: &AdminReply| {
                let facts = Facts {
                    status: Some(group),
                    target_usable,
                    now_ms,
                };
                next_action(&op, &map, &facts)
            };
            // The group drops the learner first; only then does the operator end.
            match decide(&status(2, &[1, 2, 3], &[4], &[(4, 10)])) {
                Action::Admin {
                    node: 2,
                    request: AdminRequest::RemoveLearners { nodes },
                } => assert_eq!(nodes, BTreeSet::from([4])),
                other => panic!("{other:?}"),
            }
            assert!(matches!(decide(&status(2, &[1, 2, 3], &[], &[])), Action::Abort { .. }));
            // A target already voting is carried through, not abandoned.
            let joint = AdminReply {
                joint: true,
                ..status(2, &[2, 3, 4], &[], &[])
            };
            assert!(!matches!(decide(&joint), Action::Abort { .. }));
        }
        let no_leader = Facts {
            status: None,
            target_usable: false,
            now_ms: 1,
        };
        assert!(matches!(next_action(&op, &map, &no_leader), Action::Wait(_)));
        let epoch = map.shards[&1].epoch;
        map.apply(&PdCommand::FinishOperator {
            operator: id,
            outcome: Outcome::Failed { reason: "x".into() },
            now_ms: 2,
        });
        assert!(map.shards[&1].learners.is_empty(), "the map forgets the learner");
        assert_eq!(map.shards[&1].epoch, epoch + 1);
    }

    #[test]
    fn a_transfer_asks_the_leader_then_finishes_when_the_target_leads() {
        let mut map = cluster(3);
        let id = start(&mut map, OperatorKind::TransferLeader { shard: 1, to: 3 });
        let op = map.operators[&id].clone();
        let before = status(1, &[1, 2, 3], &[], &[]);
        let facts = Facts {
            status: Some(&before),
            target_usable: true,
            now_ms: 1,
        };
        assert!(matches!(
            next_action(&op, &map, &facts),
            Action::Admin {
                node: 1,
                request: AdminRequest::TransferLeader { to: 3, .. }
            }
        ));
        let after = status(3, &[1, 2, 3], &[], &[]);
        let facts = Facts {
            status: Some(&after),
            ..facts
        };
        assert!(matches!(
            next_action(&op, &map, &facts),
            Action::Propose(PdCommand::FinishOperator {
                outcome: Outcome::Succeeded,
                ..
            })
        ));
    }

    #[test]
    fn operators_are_refused_when_they_do_not_fit_the_shard() {
        let mut map = cluster(4);
        let epoch = map.shards[&1].epoch;
        let refused = |map: &mut ClusterMap, kind, shard_epoch| {
            matches!(
                map.apply(&PdCommand::StartOperator {
                    kind,
                    origin: Origin::Manual,
                    reason: String::new(),
                    shard_epoch,
                    now_ms: 0,
                }),
                PdResult::Rejected { .. }
            )
        };
        assert!(refused(
            &mut map,
            OperatorKind::MoveReplica {
                shard: 1,
                from: 4,
                to: 1
            },
            epoch
        ));
        assert!(refused(
            &mut map,
            OperatorKind::MoveReplica {
                shard: 1,
                from: 1,
                to: 4
            },
            epoch + 1
        ));
        assert!(refused(
            &mut map,
            OperatorKind::TransferLeader { shard: 1, to: 4 },
            epoch
        ));
        start(
            &mut map,
            OperatorKind::MoveReplica {
                shard: 1,
                from: 1,
                to: 4,
            },
        );
        assert!(
            refused(&mut map, OperatorKind::TransferLeader { shard: 1, to: 2 }, epoch),
            "one at a time"
        );
    }
}

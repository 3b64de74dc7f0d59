//! Checkers over a recorded client history.
//!
//! Per key, the store is a register with versions, compare-and-set and delete. A history is
//! linearizable if some total order of its operations, consistent with real time (an op
//! that completed before another was invoked comes first), replays through the model with
//! every definite result matching. The search is Wing–Gong–Lowe style with memoisation on
//! (set of linearized ops, model state). An indeterminate op (timeout, unknown outcome) may
//! take effect at any point after its invocation, or never.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use crate::shard::Precondition;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum OpKind {
    Put { value: String, precondition: Precondition },
    Delete { precondition: Precondition },
    Get,
}

/// What the client was told. `None` in [`Op::outcome`] means indeterminate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Outcome {
    Written {
        version: u64,
    },
    Deleted {
        version: u64,
    },
    PreconditionFailed {
        current: u64,
    },
    NotFound,
    Value {
        version: u64,
        value: String,
    },
    /// The store answered 503 to a write: a promise that it never takes effect.
    NotApplied,
}

#[derive(Debug, Clone, Serialize)]
pub struct Op {
    pub client: u64,
    pub key: String,
    pub kind: OpKind,
    /// Sim-time nanoseconds.
    pub invoked_ns: u64,
    /// `None` when indeterminate: the op may have taken effect at any later time, or never.
    pub completed_ns: Option<u64>,
    pub outcome: Option<Outcome>,
}

/// The register's state: the last version used, and the live value if any.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
struct Register {
    last_version: u64,
    value: Option<String>,
}

impl Register {
    fn current_version(&self) -> u64 {
        if self.value.is_some() {
            self.last_version
        } else {
            0
        }
    }

    fn holds(&self, precondition: Precondition) -> bool {
        match precondition {
            Precondition::None => true,
            Precondition::IfMatch(v) => v == self.current_version(),
            Precondition::IfAbsent => self.value.is_none(),
        }
    }

    /// Applies `kind`, returning the next state and the result the store must report.
    fn step(&self, kind: &OpKind) -> (Register, Outcome) {
        let mut next = self.clone();
        let outcome = match kind {
            OpKind::Get => match &self.value {
                Some(value) => Outcome::Value {
                    version: self.last_version,
                    value: value.clone(),
                },
                None => Outcome::NotFound,
            },
            OpKind::Put { value, precondition } => {
                if !self.holds(*precondition) {
                    Outcome::PreconditionFailed {
                        current: self.current_version(),
                    }
                } else {
                    next.last_version += 1;
                    next.value = Some(value.clone());
                    Outcome::Written {
                        version: next.last_version,
                    }
                }
            }
            OpKind::Delete { precondition } => {
                if !self.holds(*precondition) {
                    Outcome::PreconditionFailed {
                        current: self.current_version(),
                    }
                } else if self.value.is_none() {
                    Outcome::NotFound
                } else {
                    next.last_version += 1;
                    next.value = None;
                    Outcome::Deleted {
                        version: next.last_version,
                    }
                }
            }
        };
        (next, outcome)
    }
}

/// Most search states explored per key before the checker gives up (reported as a failure
/// to check, never as a pass).
pub const MAX_SEARCH_STATES: usize = 2_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    Violation(String),
    /// The search was too large to finish.
    Unknown(String),
}

/// Checks one key's operations.
pub fn check_key(ops: &[Op]) -> Verdict {
    // Failed reads have no effect and tell nothing: leave them out. So are writes answered
    // 503: they must never take effect, so a history where one did has no linearization.
    let ops: Vec<&Op> = ops
        .iter()
        .filter(|op| !(op.kind == OpKind::Get && op.outcome.is_none()))
        .filter(|op| op.outcome != Some(Outcome::NotApplied))
        .collect();
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let definite: usize = ops.iter().filter(|o| o.outcome.is_some()).count();
    let mut seen: HashSet<(Vec<u64>, Register)> = HashSet::new();
    // Depth-first search; each frame is (linearized set, state, count of definite done).
    let mut stack: Vec<(Vec<u64>, Register, usize)> = vec![(vec![0; words], Register::default(), 0)];
    let mut deepest = 0usize;
    while let Some((done, state, definite_done)) = stack.pop() {
        if definite_done == definite {
            return Verdict::Linearizable;
        }
        if !seen.insert((done.clone(), state.clone())) {
            continue;
        }
        if seen.len() > MAX_SEARCH_STATES {
            return Verdict::Unknown(format!("search passed {MAX_SEARCH_STATES} states"));
        }
        deepest = deepest.max(definite_done);
        let is_done = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        // Any op invoked before the earliest completion among pending definite ops may go next.
        let horizon = (0..n)
            .filter(|i| !is_done(*i))
            .filter_map(|i| ops[i].completed_ns)
            .min()
            .unwrap_or(u64::MAX);
        for i in (0..n).rev() {
            if is_done(i) || ops[i].invoked_ns > horizon {
                continue;
            }
            let (next, outcome) = state.step(&ops[i].kind);
            if let Some(expected) = &ops[i].outcome {
                if *expected != outcome {
                    continue;
                }
            }
            let mut next_done = done.clone();
            next_done[i / 64] |= 1 << (i % 64);
            let next_definite = definite_done + usize::from(ops[i].outcome.is_some());
            stack.push((next_done, next, next_definite));
        }
    }
    Verdict::Violation(format!(
        "no linearization of {n} ops ({definite} definite); at best {deepest} definite ops could be ordered"
    ))
}

/// Checks every key; returns the keys that failed with the reason.
pub fn check_history(ops: &[Op]) -> BTreeMap<String, Verdict> {
    let mut by_key: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    by_key
        .into_iter()
        .map(|(key, ops)| (key.to_string(), check_key(&ops)))
        .filter(|(_, verdict)| *verdict != Verdict::Linearizable)
        .collect()
}

/// Writes answered 503 whose value a read later saw: the store said "not applied" and
/// applied it anyway. (Values are unique per write, so a read names its writer.)
pub fn rejected_writes_applied(ops: &[Op]) -> Vec<String> {
    let rejected: BTreeMap<(&str, &str), &Op> = ops
        .iter()
        .filter(|op| op.outcome == Some(Outcome::NotApplied))
        .filter_map(|op| match &op.kind {
            OpKind::Put { value, .. } => Some(((op.key.as_str(), value.as_str()), op)),
            _ => None,
        })
        .collect();
    ops.iter()
        .filter_map(|op| match &op.outcome {
            Some(Outcome::Value { value, version }) => rejected.get(&(op.key.as_str(), value.as_str())).map(|w| {
                format!(
                    "key {}: c{}'s write of {value:?} was answered 503 but read at version {version}",
                    op.key, w.client
                )
            }),
            _ => None,
        })
        .collect()
}

/// No acknowledged write lost: after heal, each key's final linearizable read must show a
/// version at least as new as every acknowledged write or delete of that key.
pub fn lost_writes(ops: &[Op], final_reads: &BTreeMap<String, Outcome>) -> Vec<String> {
    let mut lost = Vec::new();
    for (key, (acked, _)) in newest_acknowledged(ops) {
        match final_reads.get(key) {
            Some(Outcome::Value { version, .. }) if *version >= acked => {}
            // A final NotFound is fine only if the newest acknowledged op could be a delete;
            // the linearizability check covers which one it was.
            Some(Outcome::NotFound) => {}
            other => lost.push(format!("key {key}: acknowledged version {acked}, final read {other:?}")),
        }
    }
    lost
}

/// Per key, the newest acknowledged write or delete: its version, and whether it was a
/// delete.
pub fn newest_acknowledged(ops: &[Op]) -> BTreeMap<&str, (u64, bool)> {
    let mut newest: BTreeMap<&str, (u64, bool)> = BTreeMap::new();
    for op in ops {
        let acked = match &op.outcome {
            Some(Outcome::Written { version }) => (*version, false),
            Some(Outcome::Deleted { version }) => (*version, true),
            _ => continue,
        };
        let entry = newest.entry(&op.key).or_default();
        *entry = (*entry).max(acked);
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, kind: OpKind, invoked: u64, completed: Option<u64>, outcome: Option<Outcome>) -> Op {
        Op {
            client,
            key: "k".into(),
            kind,
            invoked_ns: invoked,
            completed_ns: completed,
            outcome,
        }
    }

    fn put(value: &str) -> OpKind {
        OpKind::Put {
            value: value.into(),
            precondition: Precondition::None,
        }
    }

    fn cas(value: &str, version: u64) -> OpKind {
        OpKind::Put {
            value: value.into(),
            precondition: Precondition::IfMatch(version),
        }
    }

    fn value(version: u64, v: &str) -> Option<Outcome> {
        Some(Outcome::Value {
            version,
            value: v.into(),
        })
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            op(1, put("a"), 0, Some(10), Some(Outcome::Written { version: 1 })),
            op(1, OpKind::Get, 20, Some(30), value(1, "a")),
            op(1, cas("b", 1), 40, Some(50), Some(Outcome::Written { version: 2 })),
            op(
                1,
                cas("c", 1),
                60,
                Some(70),
                Some(Outcome::PreconditionFailed { current: 2 }),
            ),
            op(
                1,
                OpKind::Delete {
                    precondition: Precondition::None,
                },
                80,
                Some(90),
                Some(Outcome::Deleted { version: 3 }),
            ),
            op(1, OpKind::Get, 100, Some(110), Some(Outcome::NotFound)),
        ];
        assert_eq!(check_key(&h), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_completed_write_is_a_violation() {
        let h = vec![
            op(1, put("a"), 0, Some(10), Some(Outcome::Written { version: 1 })),
            op(1, put("b"), 20, Some(30), Some(Outcome::Written { version: 2 })),
            op(2, OpKind::Get, 40, Some(50), value(1, "a")),
        ];
        assert!(matches!(check_key(&h), Verdict::Violation(_)));
    }

    #[test]
    fn concurrent_ops_may_order_either_way() {
        let h = vec![
            op(1, put("a"), 0, Some(100), Some(Outcome::Written { version: 2 })),
            op(2, put("b"), 10, Some(90), Some(Outcome::Written { version: 1 })),
            op(3, OpKind::Get, 20, Some(80), value(1, "b")),
        ];
        assert_eq!(check_key(&h), Verdict::Linearizable);
    }

    #[test]
    fn two_cas_winners_on_one_version_is_a_violation() {
        let h = vec![
            op(1, put("a"), 0, Some(10), Some(Outcome::Written { version: 1 })),
            op(2, cas("b", 1), 20, Some(50), Some(Outcome::Written { version: 2 })),
            op(3, cas("c", 1), 20, Some(50), Some(Outcome::Written { version: 2 })),
        ];
        assert!(matches!(check_key(&h), Verdict::Violation(_)));
    }

    #[test]
    fn indeterminate_write_may_take_effect_late_or_never() {
        let lost_timeout = vec![
            op(1, put("a"), 0, Some(10), Some(Outcome::Written { version: 1 })),
            op(2, put("b"), 20, None, None),
            op(3, OpKind::Get, 30, Some(40), value(1, "a")),
            op(3, OpKind::Get, 50, Some(60), value(2, "b")),
        ];
        assert_eq!(check_key(&lost_timeout), Verdict::Linearizable);
        let never = vec![
            op(1, put("a"), 0, Some(10), Some(Outcome::Written { version: 1 })),
            op(2, put("b"), 20, None, None),
            op(3, OpKind::Get, 500, Some(600), value(1, "a")),
        ];
        assert_eq!(check_key(&never), Verdict::Linearizable);
        // But it cannot take effect before it was invoked.
        let too_early = vec![
            op(3, OpKind::Get, 0, Some(10), value(1, "b")),
            op(2, put("b"), 20, None, None),
        ];
        assert!(matches!(check_key(&too_early), Verdict::Violation(_)));
    }

    #[test]
    fn lost_acknowledged_write_is_reported() {
        let h = vec![op(1, put("a"), 0, Some(10), Some(Outcome::Written { version: 3 }))];
        let mut finals = BTreeMap::new();
        finals.insert(
            "k".to_string(),
            Outcome::Value {
                version: 2,
                value: "x".into(),
            },
        );
        assert_eq!(lost_writes(&h, &finals).len(), 1);
        finals.insert(
            "k".to_string(),
            Outcome::Value {
                version: 3,
                value: "a".into(),
            },
        );
        assert!(lost_writes(&h, &finals).is_empty());
    }
}

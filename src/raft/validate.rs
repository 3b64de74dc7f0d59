//! Checks on Raft RPCs from peers before openraft sees them.
//!
//! openraft 0.9 trusts its peers: a crafted request can reach its `debug_assert!`s, an
//! `unwrap` or `unreachable!` (panics), overflow a term or index, commit past the log
//! (a fatal storage error) or make the node leader without an election. Every rule here
//! is one an honest openraft peer always satisfies, so a request that breaks one is
//! refused with an error and nothing reaches the group. Pure: no IO, no clock.

use openraft::{EntryPayload, Membership, Vote};

use openraft::{BasicNode, RaftTypeConfig};

use super::{Command, LogId, SnapshotMeta};

/// The type configs these checks read: every group's.
pub trait Plain: RaftTypeConfig<NodeId = u64, Node = BasicNode, Entry = openraft::Entry<Self>> {}
impl<C: RaftTypeConfig<NodeId = u64, Node = BasicNode, Entry = openraft::Entry<C>>> Plain for C {}

/// Terms and log indices stay below this, so openraft's `+ 1`s never overflow.
pub const MAX_TERM_OR_INDEX: u64 = 1 << 62;
/// Most groups a membership config may name as voters or learners.
pub const MAX_MEMBERS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(message: impl Into<String>) -> Invalid {
    Invalid(message.into())
}

/// What the receiving node knows that the checks need.
#[derive(Debug, Clone)]
pub struct Local {
    pub node_id: u64,
    /// The replica's current vote (for the committed-vote conflict check).
    pub vote: Vote<u64>,
    pub max_entries: u64,
    pub limits: Limits,
}

/// The limits a leader enforces on commands, which entries from peers must respect too.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

fn check_log_id(what: &str, log_id: &LogId) -> Result<(), Invalid> {
    if log_id.leader_id.term >= MAX_TERM_OR_INDEX || log_id.index >= MAX_TERM_OR_INDEX {
        return Err(invalid(format!("{what} {log_id} is out of range")));
    }
    Ok(())
}

/// The vote a request carries. `committed`: whether it must be a leader's (append,
/// snapshot) or a candidate's (vote request).
fn check_vote(vote: &Vote<u64>, committed: bool, local: &Local) -> Result<(), Invalid> {
    if vote.leader_id.term >= MAX_TERM_OR_INDEX {
        return Err(invalid(format!("term {} is out of range", vote.leader_id.term)));
    }
    match vote.leader_id.voted_for {
        None => return Err(invalid("a vote that names no node")),
        Some(id) if id == local.node_id => return Err(invalid("a vote for this node, sent by another")),
        Some(_) => {}
    }
    if vote.committed != committed {
        return Err(invalid(if committed {
            "a leader's request whose vote is not committed"
        } else {
            "a vote request whose vote is already committed"
        }));
    }
    // Two committed votes of one term for different nodes are incomparable: openraft
    // reaches `unreachable!` comparing them. An honest peer never sends one.
    let mine = &local.vote;
    if vote.committed
        && mine.committed
        && mine.leader_id.term == vote.leader_id.term
        && mine.leader_id.voted_for != vote.leader_id.voted_for
    {
        return Err(invalid(format!(
            "a second leader for term {} ({:?}; this replica follows {:?})",
            vote.leader_id.term, vote.leader_id.voted_for, mine.leader_id.voted_for
        )));
    }
    Ok(())
}

/// A membership config openraft can use: one or two non-empty voter sets (joint), every
/// voter with a node entry, bounded in size.
pub fn check_membership(membership: &Membership<u64, openraft::BasicNode>) -> Result<(), Invalid> {
    let configs = membership.get_joint_config();
    if configs.is_empty() || configs.len() > 2 {
        return Err(invalid(format!("a membership with {} configs", configs.len())));
    }
    if membership.nodes().count() > MAX_MEMBERS {
        return Err(invalid(format!("a membership of over {MAX_MEMBERS} nodes")));
    }
    for config in configs {
        if config.is_empty() {
            return Err(invalid("a membership config with no voter"));
        }
        if let Some(voter) = config.iter().find(|v| membership.get_node(v).is_none()) {
            return Err(invalid(format!("voter {voter} has no node entry")));
        }
    }
    Ok(())
}

/// The application command inside an entry, against the limits a leader enforces.
fn check_payload<C: Plain>(entry: &openraft::Entry<C>, local: &Local) -> Result<(), Invalid>
where
    C::D: Command,
{
    match &entry.payload {
        EntryPayload::Blank => Ok(()),
        EntryPayload::Membership(m) => check_membership(m),
        EntryPayload::Normal(command) => command
            .check(&local.limits)
            .map_err(|e| invalid(format!("entry {}: {e}", entry.log_id))),
    }
}

/// AppendEntries: bounded, entries consecutive after `prev_log_id`, terms non-decreasing
/// and never above the leader's term, and a commit point consistent with the entries.
pub fn check_append<C: Plain>(rpc: &openraft::raft::AppendEntriesRequest<C>, local: &Local) -> Result<(), Invalid>
where
    C::D: Command,
{
    check_vote(&rpc.vote, true, local)?;
    let term = rpc.vote.leader_id.term;
    if rpc.entries.len() as u64 > local.max_entries {
        return Err(invalid(format!(
            "{} entries in one append; the most is {}",
            rpc.entries.len(),
            local.max_entries
        )));
    }
    let mut previous = rpc.prev_log_id;
    if let Some(prev) = &previous {
        check_log_id("prev_log_id", prev)?;
        if prev.leader_id.term > term {
            return Err(invalid("prev_log_id has a term above the leader's"));
        }
    }
    for entry in &rpc.entries {
        check_log_id("entry", &entry.log_id)?;
        let expected = previous.map_or(0, |p| p.index + 1);
        if entry.log_id.index != expected {
            return Err(invalid(format!(
                "entry index {} where {expected} must come next (a gap or overlap)",
                entry.log_id.index
            )));
        }
        if previous.is_some_and(|p| p.leader_id.term > entry.log_id.leader_id.term) {
            return Err(invalid(format!(
                "entry {} has a lower term than the one before",
                entry.log_id
            )));
        }
        if entry.log_id.leader_id.term > term {
            return Err(invalid(format!("entry {} has a term above the leader's", entry.log_id)));
        }
        check_payload(entry, local)?;
        previous = Some(entry.log_id);
    }
    if let Some(commit) = &rpc.leader_commit {
        check_log_id("leader_commit", commit)?;
        if commit.leader_id.term > term {
            return Err(invalid("leader_commit has a term above the leader's"));
        }
        // Openraft commits min(last accepted, leader_commit) comparing terms first: a
        // commit point with a lower term but a higher index than the last entry would
        // commit past the log.
        if let Some(last) = &previous {
            if commit.index >= last.index && commit.leader_id.term < last.leader_id.term {
                return Err(invalid("leader_commit is ordered inconsistently with the entries"));
            }
            if let Some(inside) = rpc.entries.iter().find(|e| e.log_id.index == commit.index) {
                if inside.log_id != *commit {
                    return Err(invalid("leader_commit names an entry the request holds differently"));
                }
            }
            if let Some(prev) = &rpc.prev_log_id {
                if commit.index < prev.index && commit.leader_id.term > prev.leader_id.term {
                    return Err(invalid("leader_commit is ordered inconsistently with prev_log_id"));
                }
            }
        }
    }
    Ok(())
}

pub fn check_vote_request(rpc: &openraft::raft::VoteRequest<u64>, local: &Local) -> Result<(), Invalid> {
    check_vote(&rpc.vote, false, local)?;
    if let Some(last) = &rpc.last_log_id {
        check_log_id("last_log_id", last)?;
        if last.leader_id.term > rpc.vote.leader_id.term {
            return Err(invalid("last_log_id has a term above the candidate's"));
        }
    }
    Ok(())
}

/// A snapshot chunk's vote and meta (the data is checked whole once assembled).
pub fn check_snapshot_meta(vote: &Vote<u64>, meta: &SnapshotMeta, local: &Local) -> Result<(), Invalid> {
    check_vote(vote, true, local)?;
    let last = meta
        .last_log_id
        .ok_or_else(|| invalid("a snapshot that covers no log entry"))?;
    check_log_id("snapshot last_log_id", &last)?;
    if last.leader_id.term > vote.leader_id.term {
        return Err(invalid("a snapshot whose last log id has a term above the leader's"));
    }
    if let Some(membership_at) = meta.last_membership.log_id() {
        if membership_at > &last || membership_at.index > last.index {
            return Err(invalid("a snapshot whose membership is newer than its last log id"));
        }
    }
    check_membership(meta.last_membership.membership())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::raft::{AppendEntriesRequest, VoteRequest};
    use openraft::{BasicNode, CommittedLeaderId, Entry, EntryPayload};

    use super::*;
    use std::io::Cursor;

    /// A command whose payload must stay under 100, standing in for a kind's limits.
    #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    struct Bounded(u32);

    impl std::fmt::Display for Bounded {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "bounded({})", self.0)
        }
    }

    impl Command for Bounded {
        fn check(&self, _: &Limits) -> Result<(), String> {
            (self.0 < 100).then_some(()).ok_or_else(|| "too big".into())
        }
    }

    openraft::declare_raft_types!(
        TestConfig:
            D = Bounded,
            R = (),
            AsyncRuntime = crate::raft::runtime::SeamRuntime,
    );

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 0), index)
    }

    fn local(node_id: u64) -> Local {
        Local {
            node_id,
            vote: Vote::default(),
            max_entries: 64,
            limits: Limits {
                max_key_bytes: 4096,
                max_value_bytes: 1 << 20,
            },
        }
    }

    fn put(term: u64, index: u64, size: u32) -> Entry<TestConfig> {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Bounded(size)),
        }
    }

    fn append(
        term: u64,
        prev: Option<LogId>,
        entries: Vec<Entry<TestConfig>>,
        commit: Option<LogId>,
    ) -> AppendEntriesRequest<TestConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(term, 1),
            prev_log_id: prev,
            entries,
            leader_commit: commit,
        }
    }

    #[test]
    fn an_honest_append_passes() {
        let rpc = append(
            3,
            Some(log_id(2, 4)),
            vec![put(2, 5, 8), put(3, 6, 8)],
            Some(log_id(3, 6)),
        );
        assert_eq!(check_append(&rpc, &local(2)), Ok(()));
        assert_eq!(check_append(&append(1, None, vec![], None), &local(2)), Ok(()));
    }

    #[test]
    fn crafted_appends_are_refused() {
        let cases = [
            ("a gap", append(3, Some(log_id(2, 4)), vec![put(2, 6, 8)], None)),
            ("overlap", append(3, Some(log_id(2, 4)), vec![put(2, 4, 8)], None)),
            ("falling term", append(3, None, vec![put(3, 0, 8), put(2, 1, 8)], None)),
            ("term above the leader's", append(3, None, vec![put(4, 0, 8)], None)),
            (
                "a command over its limits",
                append(3, None, vec![put(3, 0, u32::MAX)], None),
            ),
            ("index overflow", append(3, Some(log_id(3, u64::MAX)), vec![], None)),
            (
                "commit past the log",
                append(3, Some(log_id(3, 100)), vec![], Some(log_id(2, 5000))),
            ),
            (
                "uncommitted vote",
                AppendEntriesRequest {
                    vote: Vote::new(3, 1),
                    prev_log_id: None,
                    entries: vec![],
                    leader_commit: None,
                },
            ),
        ];
        for (what, rpc) in cases {
            assert!(check_append(&rpc, &local(2)).is_err(), "{what} must be refused");
        }
        assert!(
            check_append(&append(3, None, vec![], None), &local(1)).is_err(),
            "a vote for myself"
        );
        let mut mine = local(2);
        mine.vote = Vote::new_committed(3, 3);
        assert!(
            check_append(&append(3, None, vec![], None), &mine).is_err(),
            "two leaders in one term"
        );
        let mut few = local(2);
        few.max_entries = 1;
        assert!(check_append(&append(3, None, vec![put(3, 0, 8), put(3, 1, 8)], None), &few).is_err());
    }

    #[test]
    fn memberships_must_name_their_voters() {
        let nodes: BTreeMap<u64, BasicNode> = [(1, BasicNode::new("a")), (2, BasicNode::new("b"))].into();
        let good = Membership::new(vec![BTreeSet::from([1, 2])], nodes.clone());
        assert_eq!(check_membership(&good), Ok(()));
        // `Membership::new` fills in missing nodes; a decoded one (from a peer) need not.
        let missing: Membership<u64, BasicNode> =
            serde_json::from_value(serde_json::json!({"configs": [[1, 3]], "nodes": {"1": {"addr": "a"}}})).unwrap();
        assert!(check_membership(&missing).is_err());
        let empty = Membership::new(vec![BTreeSet::new()], nodes);
        assert!(check_membership(&empty).is_err());
    }

    #[test]
    fn vote_requests() {
        let honest = VoteRequest::new(Vote::new(4, 1), Some(log_id(3, 9)));
        assert_eq!(check_vote_request(&honest, &local(2)), Ok(()));
        let committed = VoteRequest::new(Vote::new_committed(4, 1), None);
        assert!(check_vote_request(&committed, &local(2)).is_err());
        let no_one = VoteRequest::new(
            Vote {
                leader_id: openraft::LeaderId {
                    term: 4,
                    voted_for: None,
                },
                committed: false,
            },
            None,
        );
        assert!(check_vote_request(&no_one, &local(2)).is_err());
        let huge = VoteRequest::new(Vote::new(u64::MAX, 1), None);
        assert!(check_vote_request(&huge, &local(2)).is_err());
    }
}

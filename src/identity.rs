//! Who a data dir belongs to: the identity record, and the start-up check that a node is
//! what it claims to be before it touches any Raft group.
//!
//! Raft is safe only if a voter never forgets its vote, its term and its log. A node whose
//! disk was wiped or replaced and that restarts under its old `--node-id` would be a new
//! machine wearing a dead one's name: it could vote twice in a term. So every data dir gets
//! a random **incarnation** when it is created, the placement driver records each member's
//! incarnation once, and a node whose incarnation is not the recorded one refuses to start.
//! See `docs/operations.md` ("A node lost its disk").

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::placement::{ClusterMap, NodeId};

/// The identity record's file name inside the data dir.
pub const IDENTITY_FILE: &str = "identity";
const HEADER: &str = "midasflow identity v1";
/// Longest identity file read.
const MAX_IDENTITY_BYTES: u64 = 4096;

/// What a data dir is: whose, which incarnation, and of which cluster (once known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub node_id: NodeId,
    pub incarnation: u128,
    pub cluster_id: Option<u128>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    node_id: NodeId,
    incarnation: String,
    cluster_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct IdentityError {
    pub path: String,
    pub message: String,
}

fn error(path: &Path, message: impl std::fmt::Display) -> IdentityError {
    IdentityError {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

pub fn hex(id: u128) -> String {
    format!("{id:032x}")
}

pub fn parse_hex(text: &str) -> Option<u128> {
    (text.len() == 32)
        .then(|| u128::from_str_radix(text, 16).ok())
        .flatten()
        .filter(|v| *v != 0)
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(IDENTITY_FILE)
}

/// The data dir's identity; `None` if it has none yet. A record that cannot be read or
/// verified is an error naming the file, never "no identity".
pub fn load(data_dir: &Path) -> Result<Option<Identity>, IdentityError> {
    let file = path(data_dir);
    let len = match std::fs::metadata(&file) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(error(&file, e)),
    };
    if len > MAX_IDENTITY_BYTES {
        return Err(error(
            &file,
            format!("is {len} bytes; an identity record is far smaller"),
        ));
    }
    let text = std::fs::read_to_string(&file).map_err(|e| error(&file, e))?;
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(error(
            &file,
            format!("does not start with {HEADER:?} (an unknown format)"),
        ));
    }
    let body = lines.next().unwrap_or("");
    let checksum = lines.next().and_then(|l| l.strip_prefix("checksum ")).unwrap_or("");
    if checksum != format!("{:016x}", xxhash_rust::xxh3::xxh3_64(body.as_bytes())) {
        return Err(error(&file, "checksum mismatch: the record is damaged"));
    }
    let stored: Stored = serde_json::from_str(body).map_err(|e| error(&file, e))?;
    let incarnation = parse_hex(&stored.incarnation).ok_or_else(|| error(&file, "bad incarnation"))?;
    let cluster_id = match stored.cluster_id {
        None => None,
        Some(c) => Some(parse_hex(&c).ok_or_else(|| error(&file, "bad cluster id"))?),
    };
    Ok(Some(Identity {
        node_id: stored.node_id,
        incarnation,
        cluster_id,
    }))
}

/// Writes the record durably: a temporary file, fsynced, renamed over the old one, and
/// the directory fsynced, so a crash leaves the old record or the new one, never neither.
pub fn store(data_dir: &Path, identity: &Identity) -> Result<(), IdentityError> {
    let file = path(data_dir);
    let body = serde_json::to_string(&Stored {
        node_id: identity.node_id,
        incarnation: hex(identity.incarnation),
        cluster_id: identity.cluster_id.map(hex),
    })
    .map_err(|e| error(&file, e))?;
    let text = format!(
        "{HEADER}\n{body}\nchecksum {:016x}\n",
        xxhash_rust::xxh3::xxh3_64(body.as_bytes())
    );
    let temporary = data_dir.join(format!("{IDENTITY_FILE}.tmp"));
    let mut out = std::fs::File::create(&temporary).map_err(|e| error(&temporary, e))?;
    out.write_all(text.as_bytes()).map_err(|e| error(&temporary, e))?;
    out.sync_all().map_err(|e| error(&temporary, e))?;
    std::fs::rename(&temporary, &file).map_err(|e| error(&file, e))?;
    crate::raft::log_store::sync_dir(data_dir).map_err(|e| error(data_dir, e))
}

/// What a node asks a peer at start-up (`POST /internal/identity`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityQuery {
    pub node_id: NodeId,
    pub incarnation: u128,
    pub cluster_id: Option<u128>,
}

/// A peer's answer, from its copy of the cluster map.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityAnswer {
    pub cluster_id: Option<u128>,
    /// The incarnation the cluster recorded for the asker, if any.
    pub known_incarnation: Option<u128>,
    /// Whether the asker is a member of the peer's (bootstrapped) map.
    pub member: bool,
}

impl IdentityAnswer {
    pub fn from_map(map: &ClusterMap, asker: NodeId) -> Self {
        IdentityAnswer {
            cluster_id: (map.cluster_id != 0).then_some(map.cluster_id),
            known_incarnation: map.incarnations.get(&asker).copied(),
            member: !map.is_bootstrapped() || map.is_active_member(asker),
        }
    }
}

/// How to recover a node whose data dir is not the one the cluster knows.
fn lost_disk_message(identity: &Identity, cluster: u128, known: u128) -> String {
    format!(
        "node {node} refuses to start: its data dir is incarnation {mine}, but cluster {cluster} knows node \
         {node} as incarnation {known}. This machine lost (or replaced) the disk of node {node}, and a Raft \
         voter that forgot its votes could vote twice in a term. To recover: start this machine as a new \
         node with a new --node-id and --join, then remove node {node} from the cluster once its \
         placement-driver seat has moved (see docs/operations.md, \"A node lost its disk\"). Do not delete \
         the identity file to get past this.",
        node = identity.node_id,
        mine = hex(identity.incarnation),
        cluster = hex(cluster),
        known = hex(known),
    )
}

/// Decides, from the peers' answers, whether `identity` may act as its node: the pure
/// core of the start-up check. Returns the cluster id to adopt, if the node had none and a
/// peer knows one.
/// `joining`: the node was started with `--join`, so a cluster that does not know it yet
/// is one it may become a member of.
pub fn judge(identity: &Identity, answers: &[(NodeId, IdentityAnswer)], joining: bool) -> Result<Option<u128>, String> {
    let mut adopt = None;
    for (peer, answer) in answers {
        let Some(cluster) = answer.cluster_id else { continue };
        if let Some(mine) = identity.cluster_id {
            if mine != cluster {
                return Err(format!(
                    "node {} belongs to cluster {}, but peer {peer} belongs to cluster {}: this data dir or \
                     --initial-cluster points at another cluster",
                    identity.node_id,
                    hex(mine),
                    hex(cluster)
                ));
            }
        }
        let newcomer = joining && answer.known_incarnation.is_none();
        if !answer.member && !newcomer {
            return Err(format!(
                "node {} is not a member of cluster {} (peer {peer} says so)",
                identity.node_id,
                hex(cluster)
            ));
        }
        if let Some(known) = answer.known_incarnation {
            if known != identity.incarnation {
                return Err(lost_disk_message(identity, cluster, known));
            }
        }
        if identity.cluster_id.is_none() {
            adopt = Some(cluster);
        }
    }
    Ok(adopt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(cluster: Option<u128>, known: Option<u128>, member: bool) -> IdentityAnswer {
        IdentityAnswer {
            cluster_id: cluster,
            known_incarnation: known,
            member,
        }
    }

    #[test]
    fn records_round_trip_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let identity = Identity {
            node_id: 3,
            incarnation: 0xabc,
            cluster_id: Some(0xdef),
        };
        store(dir.path(), &identity).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(identity));
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        std::fs::write(path(dir.path()), text.replace("\"node_id\":3", "\"node_id\":4")).unwrap();
        assert!(load(dir.path()).unwrap_err().message.contains("checksum"));
        std::fs::write(path(dir.path()), "").unwrap();
        assert!(load(dir.path()).is_err(), "an empty record is not a missing one");
    }

    #[test]
    fn the_start_up_judgement() {
        let fresh = Identity {
            node_id: 2,
            incarnation: 5,
            cluster_id: None,
        };
        // A new cluster: nobody knows a cluster yet.
        assert_eq!(judge(&fresh, &[(1, answer(None, None, true))], false), Ok(None));
        // A member that never registered joins the existing cluster.
        assert_eq!(judge(&fresh, &[(1, answer(Some(9), None, true))], false), Ok(Some(9)));
        // A wiped disk: the cluster knows node 2 as another incarnation.
        let refused = judge(&fresh, &[(1, answer(Some(9), Some(4), true))], false).unwrap_err();
        assert!(refused.contains("lost"), "{refused}");
        // Another cluster's data dir or peers.
        let other = Identity {
            cluster_id: Some(8),
            ..fresh
        };
        assert!(judge(&other, &[(1, answer(Some(9), Some(5), true))], false).is_err());
        assert!(judge(&fresh, &[(1, answer(Some(9), None, false))], false).is_err());
        // `--join`: a cluster that does not know the node yet is one it may join; one
        // that knows its id (a removed node, or a lost disk) is not.
        assert_eq!(judge(&fresh, &[(1, answer(Some(9), None, false))], true), Ok(Some(9)));
        assert!(judge(&fresh, &[(1, answer(Some(9), Some(4), false))], true).is_err());
        let known = Identity {
            cluster_id: Some(9),
            ..fresh
        };
        assert_eq!(judge(&known, &[(1, answer(Some(9), Some(5), true))], false), Ok(None));
    }
}

//! The key-value state machine of one shard group (docs/API.md).
//!
//! Everything here is pure: [`apply_op`] maps the key's current record and one command to
//! the new record and the client-visible result. [`store`] is the shard kind of Raft
//! group, which loads and stores records around it in sled.

use serde::{Deserialize, Serialize};

pub mod propose;
pub mod store;

/// A key's position on the ring.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// Default number of versions retained per key (`--history-versions`).
pub const DEFAULT_HISTORY_VERSIONS: u32 = 8;
/// Most versions a key may retain (`--history-versions` is checked against it, and so is
/// every command and record that arrives from a peer).
pub const MAX_HISTORY_VERSIONS: u32 = 1024;

/// Why a record or command from outside (a peer's log entry, a snapshot, the disk) is not
/// something this state machine would ever have produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidData {
    #[error("a key record with no versions")]
    EmptyRecord,
    #[error("a key record with {0} versions (the most is {MAX_HISTORY_VERSIONS})")]
    TooManyVersions(usize),
    #[error("a key record whose versions are not strictly decreasing")]
    VersionsOutOfOrder,
    #[error("a tombstone carrying a value")]
    TombstoneWithValue,
    #[error("history_versions {0} is outside 1..={MAX_HISTORY_VERSIONS}")]
    HistoryVersions(u32),
    #[error("an empty key")]
    EmptyKey,
    #[error("a {actual}-byte {what}; the limit is {limit}")]
    TooLarge {
        what: &'static str,
        actual: usize,
        limit: usize,
    },
}

/// One version of a key: a value or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionEntry {
    pub version: u64,
    pub deleted: bool,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// Everything stored for one key: its retained versions, newest first, never empty.
///
/// The newest entry is always kept, tombstone or not, so the version counter survives
/// deletes and history compaction: a re-created key continues counting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub versions: Vec<VersionEntry>,
}

impl KeyRecord {
    /// The newest version. Records are validated ([`KeyRecord::validate`]) wherever they
    /// enter the node, so one always exists.
    pub fn latest(&self) -> &VersionEntry {
        &self.versions[0]
    }

    /// Checks the shape every record this state machine writes has: 1 to
    /// [`MAX_HISTORY_VERSIONS`] versions, newest first, strictly decreasing, empty tombstones.
    pub fn validate(&self) -> Result<(), InvalidData> {
        if self.versions.is_empty() {
            return Err(InvalidData::EmptyRecord);
        }
        if self.versions.len() > MAX_HISTORY_VERSIONS as usize {
            return Err(InvalidData::TooManyVersions(self.versions.len()));
        }
        if self.versions.windows(2).any(|w| w[0].version <= w[1].version) {
            return Err(InvalidData::VersionsOutOfOrder);
        }
        if self.versions.iter().any(|v| v.deleted && !v.value.is_empty()) {
            return Err(InvalidData::TombstoneWithValue);
        }
        Ok(())
    }

    /// The version a precondition compares against: 0 while the key is absent or deleted.
    pub fn current_version(&self) -> u64 {
        let latest = self.latest();
        if latest.deleted {
            0
        } else {
            latest.version
        }
    }

    pub fn is_live(&self) -> bool {
        !self.latest().deleted
    }

    /// Bytes of the live value, 0 for a tombstone (what `/v1/shards` reports as `bytes`).
    pub fn live_value_bytes(&self) -> u64 {
        if self.is_live() {
            self.latest().value.len() as u64
        } else {
            0
        }
    }
}

/// A write's condition (`If-Match` / `If-None-Match: *`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precondition {
    None,
    /// Current version must equal this; 0 means "absent".
    IfMatch(u64),
    /// The key must be absent (or deleted).
    IfAbsent,
}

/// A command replicated through a shard's Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        precondition: Precondition,
        /// Stamped by the proposing leader so every replica retains the same history.
        history_versions: u32,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        precondition: Precondition,
        history_versions: u32,
    },
}

impl KvOp {
    pub fn key(&self) -> &[u8] {
        match self {
            KvOp::Put { key, .. } | KvOp::Delete { key, .. } => key,
        }
    }

    /// Checks a command from a peer against the limits a leader enforces when it accepts
    /// one from a client, so a crafted log entry cannot make apply allocate or store more.
    pub fn validate(&self, max_key_bytes: usize, max_value_bytes: usize) -> Result<(), InvalidData> {
        let (key, history_versions) = match self {
            KvOp::Put {
                key,
                value,
                history_versions,
                ..
            } => {
                if value.len() > max_value_bytes {
                    return Err(InvalidData::TooLarge {
                        what: "value",
                        actual: value.len(),
                        limit: max_value_bytes,
                    });
                }
                (key, *history_versions)
            }
            KvOp::Delete {
                key, history_versions, ..
            } => (key, *history_versions),
        };
        if key.is_empty() {
            return Err(InvalidData::EmptyKey);
        }
        if key.len() > max_key_bytes {
            return Err(InvalidData::TooLarge {
                what: "key",
                actual: key.len(),
                limit: max_key_bytes,
            });
        }
        if !(1..=MAX_HISTORY_VERSIONS).contains(&history_versions) {
            return Err(InvalidData::HistoryVersions(history_versions));
        }
        Ok(())
    }
}

/// The outcome of one applied [`KvOp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResult {
    Written {
        version: u64,
    },
    Deleted {
        version: u64,
    },
    /// The precondition did not hold; `current` is the key's current version (0 = absent).
    PreconditionFailed {
        current: u64,
    },
    /// Delete of an absent key.
    NotFound,
    /// The key's hash is outside this shard's range (the shard split since the request was
    /// routed): nothing was applied, so the request may go to the right shard.
    WrongShard,
}

fn precondition_holds(precondition: Precondition, current_version: u64) -> bool {
    match precondition {
        Precondition::None => true,
        Precondition::IfMatch(expected) => expected == current_version,
        Precondition::IfAbsent => current_version == 0,
    }
}

/// Applies one command to the key's current record.
///
/// Returns the record to store (`None` when nothing changes) and the client's result.
pub fn apply_op(current: Option<&KeyRecord>, op: &KvOp) -> (Option<KeyRecord>, KvResult) {
    let current_version = current.map_or(0, KeyRecord::current_version);
    let last_version = current.map_or(0, |r| r.latest().version);
    let (precondition, history_versions, entry) = match op {
        KvOp::Put {
            value,
            precondition,
            history_versions,
            ..
        } => (
            *precondition,
            *history_versions,
            VersionEntry {
                version: last_version + 1,
                deleted: false,
                value: value.clone(),
            },
        ),
        KvOp::Delete {
            precondition,
            history_versions,
            ..
        } => (
            *precondition,
            *history_versions,
            VersionEntry {
                version: last_version + 1,
                deleted: true,
                value: Vec::new(),
            },
        ),
    };
    if !precondition_holds(precondition, current_version) {
        return (
            None,
            KvResult::PreconditionFailed {
                current: current_version,
            },
        );
    }
    if entry.deleted && current_version == 0 {
        return (None, KvResult::NotFound);
    }
    let version = entry.version;
    let result = if entry.deleted {
        KvResult::Deleted { version }
    } else {
        KvResult::Written { version }
    };
    let retain = history_versions.clamp(1, MAX_HISTORY_VERSIONS) as usize;
    let keep_older = current.map_or(0, |r| r.versions.len()).min(retain - 1);
    // Sized by what is really kept, never by the command's number alone.
    let mut versions = Vec::with_capacity(1 + keep_older);
    versions.push(entry);
    if let Some(record) = current {
        versions.extend(record.versions.iter().take(keep_older).cloned());
    }
    (Some(KeyRecord { versions }), result)
}

/// What a read of a key (optionally at one version) finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome<'a> {
    Value {
        version: u64,
        value: &'a [u8],
    },
    /// Absent, deleted, or the asked-for version is a tombstone or not yet written.
    NotFound,
    /// The asked-for version existed but is no longer retained.
    Gone,
}

pub fn read(record: Option<&KeyRecord>, at_version: Option<u64>) -> ReadOutcome<'_> {
    let Some(record) = record else {
        return ReadOutcome::NotFound;
    };
    let entry = match at_version {
        None => record.latest(),
        Some(wanted) => match record.versions.iter().find(|e| e.version == wanted) {
            Some(entry) => entry,
            None if wanted >= 1 && record.versions.last().is_some_and(|oldest| wanted < oldest.version) => {
                return ReadOutcome::Gone
            }
            None => return ReadOutcome::NotFound,
        },
    };
    if entry.deleted {
        ReadOutcome::NotFound
    } else {
        ReadOutcome::Value {
            version: entry.version,
            value: &entry.value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    /// Keys and values travel as byte strings (`serde_bytes`), which bincode writes exactly
    /// as it wrote them as sequences of bytes: data dirs and peers of earlier builds decode
    /// the same, both ways.
    #[test]
    fn byte_strings_encode_as_the_byte_sequences_before_them() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct OldVersion {
            version: u64,
            deleted: bool,
            value: Vec<u8>,
        }
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        enum OldOp {
            Put {
                key: Vec<u8>,
                value: Vec<u8>,
                precondition: Precondition,
                history_versions: u32,
            },
            Delete {
                key: Vec<u8>,
                precondition: Precondition,
                history_versions: u32,
            },
        }
        let value: Vec<u8> = (0..=255u8).cycle().take(1_000).collect();
        let new = VersionEntry {
            version: 9,
            deleted: false,
            value: value.clone(),
        };
        let old = OldVersion {
            version: 9,
            deleted: false,
            value: value.clone(),
        };
        assert_eq!(codec::encode(&new).unwrap(), codec::encode(&old).unwrap());
        assert_eq!(
            codec::decode::<VersionEntry>(&codec::encode(&old).unwrap()).unwrap(),
            new
        );
        let new_op = KvOp::Put {
            key: b"key".to_vec(),
            value: value.clone(),
            precondition: Precondition::IfMatch(3),
            history_versions: 4,
        };
        let old_op = OldOp::Put {
            key: b"key".to_vec(),
            value,
            precondition: Precondition::IfMatch(3),
            history_versions: 4,
        };
        assert_eq!(codec::encode(&new_op).unwrap(), codec::encode(&old_op).unwrap());
        assert_eq!(
            codec::decode::<OldOp>(&codec::encode(&new_op).unwrap()).unwrap(),
            old_op
        );
        let new_delete = KvOp::Delete {
            key: b"key".to_vec(),
            precondition: Precondition::None,
            history_versions: 4,
        };
        let old_delete = OldOp::Delete {
            key: b"key".to_vec(),
            precondition: Precondition::None,
            history_versions: 4,
        };
        assert_eq!(codec::encode(&new_delete).unwrap(), codec::encode(&old_delete).unwrap());
    }

    fn put(value: &str, precondition: Precondition) -> KvOp {
        KvOp::Put {
            key: b"k".to_vec(),
            value: value.as_bytes().to_vec(),
            precondition,
            history_versions: 3,
        }
    }

    fn delete(precondition: Precondition) -> KvOp {
        KvOp::Delete {
            key: b"k".to_vec(),
            precondition,
            history_versions: 3,
        }
    }

    /// Runs ops in order from an absent key, returning each result and the final record.
    fn run(ops: &[KvOp]) -> (Vec<KvResult>, Option<KeyRecord>) {
        let mut record = None;
        let mut results = Vec::new();
        for op in ops {
            let (next, result) = apply_op(record.as_ref(), op);
            if let Some(next) = next {
                record = Some(next);
            }
            results.push(result);
        }
        (results, record)
    }

    #[test]
    fn table_of_versions_cas_and_tombstones() {
        use KvResult::*;
        use Precondition::*;
        let cases: Vec<(&str, Vec<KvOp>, Vec<KvResult>)> = vec![
            (
                "first write is version 1",
                vec![put("a", None)],
                vec![Written { version: 1 }],
            ),
            (
                "every write increments",
                vec![put("a", None), put("b", None)],
                vec![Written { version: 1 }, Written { version: 2 }],
            ),
            (
                "if-match current succeeds, stale fails",
                vec![put("a", None), put("b", IfMatch(1)), put("c", IfMatch(1))],
                vec![
                    Written { version: 1 },
                    Written { version: 2 },
                    PreconditionFailed { current: 2 },
                ],
            ),
            (
                "if-match 0 means absent",
                vec![put("a", IfMatch(0)), put("b", IfMatch(0))],
                vec![Written { version: 1 }, PreconditionFailed { current: 1 }],
            ),
            (
                "if-none-match creates once",
                vec![put("a", IfAbsent), put("b", IfAbsent)],
                vec![Written { version: 1 }, PreconditionFailed { current: 1 }],
            ),
            (
                "delete is a tombstone version; re-create continues counting",
                vec![put("a", None), delete(None), put("b", IfAbsent)],
                vec![Written { version: 1 }, Deleted { version: 2 }, Written { version: 3 }],
            ),
            (
                "deleted key matches 0, not its tombstone version",
                vec![put("a", None), delete(None), put("b", IfMatch(2)), put("c", IfMatch(0))],
                vec![
                    Written { version: 1 },
                    Deleted { version: 2 },
                    PreconditionFailed { current: 0 },
                    Written { version: 3 },
                ],
            ),
            (
                "delete of absent or deleted key is not found and uses no version",
                vec![delete(None), put("a", None), delete(None), delete(None), put("b", None)],
                vec![
                    NotFound,
                    Written { version: 1 },
                    Deleted { version: 2 },
                    NotFound,
                    Written { version: 3 },
                ],
            ),
            (
                "conditional delete",
                vec![put("a", None), delete(IfMatch(5)), delete(IfMatch(1))],
                vec![
                    Written { version: 1 },
                    PreconditionFailed { current: 1 },
                    Deleted { version: 2 },
                ],
            ),
        ];
        for (name, ops, expected) in cases {
            let (results, _) = run(&ops);
            assert_eq!(results, expected, "case: {name}");
        }
    }

    #[test]
    fn history_is_bounded_and_newest_first() {
        let ops: Vec<KvOp> = (0..5).map(|i| put(&format!("v{i}"), Precondition::None)).collect();
        let (_, record) = run(&ops);
        let record = record.unwrap();
        let versions: Vec<u64> = record.versions.iter().map(|e| e.version).collect();
        assert_eq!(versions, vec![5, 4, 3]);
        assert_eq!(
            read(Some(&record), Some(4)),
            ReadOutcome::Value {
                version: 4,
                value: b"v3"
            }
        );
        assert_eq!(read(Some(&record), Some(2)), ReadOutcome::Gone);
        assert_eq!(read(Some(&record), Some(9)), ReadOutcome::NotFound);
        assert_eq!(
            read(Some(&record), None),
            ReadOutcome::Value {
                version: 5,
                value: b"v4"
            }
        );
    }

    #[test]
    fn tombstone_survives_compaction_and_reads_as_not_found() {
        let mut ops: Vec<KvOp> = vec![put("a", Precondition::None), delete(Precondition::None)];
        let keep_one = |op: KvOp| match op {
            KvOp::Delete { key, precondition, .. } => KvOp::Delete {
                key,
                precondition,
                history_versions: 1,
            },
            other => other,
        };
        ops = ops.into_iter().map(keep_one).collect();
        let (_, record) = run(&ops);
        let record = record.unwrap();
        assert_eq!(record.versions.len(), 1);
        assert_eq!(record.latest().version, 2);
        assert_eq!(read(Some(&record), None), ReadOutcome::NotFound);
        assert_eq!(read(Some(&record), Some(1)), ReadOutcome::Gone);
        assert_eq!(record.live_value_bytes(), 0);
        assert_eq!(read(None, None), ReadOutcome::NotFound);
    }

    #[test]
    fn encodings_round_trip() {
        let (_, record) = run(&[put("a", Precondition::None), delete(Precondition::None)]);
        let record = record.unwrap();
        let bytes = codec::encode(&record).unwrap();
        assert_eq!(codec::decode::<KeyRecord>(&bytes).unwrap(), record);
        for op in [put("x", Precondition::IfMatch(3)), delete(Precondition::IfAbsent)] {
            let bytes = codec::encode(&op).unwrap();
            assert_eq!(codec::decode::<KvOp>(&bytes).unwrap(), op);
        }
        let result = KvResult::PreconditionFailed { current: 4 };
        assert_eq!(
            codec::decode::<KvResult>(&codec::encode(&result).unwrap()).unwrap(),
            result
        );
    }

    /// A crafted log entry asked apply for `u32::MAX` retained versions, and apply sized
    /// its buffer by that number: an allocation of ~160 GiB aborted the node.
    #[test]
    fn history_versions_from_a_command_never_sizes_an_allocation() {
        let op = KvOp::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            precondition: Precondition::None,
            history_versions: u32::MAX,
        };
        let (record, result) = apply_op(None, &op);
        assert_eq!(result, KvResult::Written { version: 1 });
        assert_eq!(record.unwrap().versions.len(), 1);
        assert_eq!(op.validate(4096, 1 << 20), Err(InvalidData::HistoryVersions(u32::MAX)));
    }

    #[test]
    fn command_validation_enforces_the_client_limits() {
        assert!(put("v", Precondition::None).validate(4096, 1).is_ok());
        assert!(matches!(
            put("vv", Precondition::None).validate(4096, 1),
            Err(InvalidData::TooLarge { what: "value", .. })
        ));
        assert!(matches!(
            put("v", Precondition::None).validate(0, 1),
            Err(InvalidData::TooLarge { what: "key", .. })
        ));
        let empty_key = KvOp::Delete {
            key: Vec::new(),
            precondition: Precondition::None,
            history_versions: 1,
        };
        assert_eq!(empty_key.validate(4096, 1), Err(InvalidData::EmptyKey));
    }

    /// A record with no versions made `latest()` panic; validation rejects every shape
    /// apply never writes.
    #[test]
    fn record_validation_rejects_shapes_apply_never_writes() {
        let version = |v: u64, deleted: bool, value: &[u8]| VersionEntry {
            version: v,
            deleted,
            value: value.to_vec(),
        };
        let (_, good) = run(&[put("a", Precondition::None), put("b", Precondition::None)]);
        assert_eq!(good.unwrap().validate(), Ok(()));
        let cases = [
            (KeyRecord { versions: vec![] }, InvalidData::EmptyRecord),
            (
                KeyRecord {
                    versions: vec![version(1, false, b"a"), version(2, false, b"b")],
                },
                InvalidData::VersionsOutOfOrder,
            ),
            (
                KeyRecord {
                    versions: vec![version(2, true, b"x")],
                },
                InvalidData::TombstoneWithValue,
            ),
            (
                KeyRecord {
                    versions: (0..=u64::from(MAX_HISTORY_VERSIONS))
                        .rev()
                        .map(|v| version(v + 1, false, b""))
                        .collect(),
                },
                InvalidData::TooManyVersions(MAX_HISTORY_VERSIONS as usize + 1),
            ),
        ];
        for (record, expected) in cases {
            assert_eq!(record.validate(), Err(expected));
        }
    }
}

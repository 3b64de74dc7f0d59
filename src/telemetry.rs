//! The metric catalogue: every series the node exports, with its type, labels and help
//! text. `describe` gives Prometheus its `# HELP` and `# TYPE` lines, `register_node`
//! makes a node's series exist from the start (a counter that appears only after its first
//! event cannot be told apart from a missing one, by alerts or by dashboards), and the
//! tests keep the catalogue, the code and docs/metrics.md in step.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

pub struct MetricDoc {
    pub name: &'static str,
    pub kind: Kind,
    /// Labels besides `node` (the node id, on every series but the panic counter).
    pub labels: &'static str,
    pub help: &'static str,
}

const fn doc(name: &'static str, kind: Kind, labels: &'static str, help: &'static str) -> MetricDoc {
    MetricDoc {
        name,
        kind,
        labels,
        help,
    }
}

use Kind::{Counter, Gauge, Histogram};

/// Values a `reason` label of `midasflow_raft_proposals_failed_total` takes.
pub const PROPOSAL_FAILURE_REASONS: [&str; 3] = ["leader_changed", "timeout", "error"];

/// Why an internal RPC is refused (`midasflow_rpc_rejected_total{reason}`).
pub const RPC_REJECT_REASONS: [&str; 4] = ["missing_identity", "wrong_cluster", "wrong_incarnation", "misdirected"];

/// Operator types and outcomes (`midasflow_pd_operators_*_total{type, outcome}`), as
/// `OperatorKind::name` and the executor's outcome words spell them.
pub const OPERATOR_TYPES: [&str; 4] = ["move_replica", "add_replica", "transfer_leader", "split"];
pub const OPERATOR_OUTCOMES: [&str; 3] = ["succeeded", "failed", "cancelled"];

/// States counted by `midasflow_pd_nodes`.
pub const NODE_STATES: [&str; 4] = ["up", "down", "draining", "removed"];

pub const CATALOGUE: &[MetricDoc] = &[
    // Process and node.
    doc(
        "midasflow_build_info",
        Gauge,
        "version",
        "Always 1; the version label names the running build.",
    ),
    doc(
        "midasflow_process_start_time_seconds",
        Gauge,
        "",
        "When the node's process started (Unix time).",
    ),
    doc(
        "midasflow_storage_size_bytes",
        Gauge,
        "",
        "Bytes the node's data directory uses on disk.",
    ),
    doc(
        "midasflow_storage_blob_writes_synchronous",
        Gauge,
        "",
        "1 when the data dir's filesystem writes sled's blob files (large values and pages) synchronously; 0 when it cannot, and a power cut may then lose one.",
    ),
    doc(
        "midasflow_disk_available_bytes",
        Gauge,
        "",
        "Bytes available to the node on the filesystem holding its data directory.",
    ),
    doc(
        "midasflow_disk_capacity_bytes",
        Gauge,
        "",
        "Size of the filesystem holding the node's data directory.",
    ),
    // HTTP.
    doc(
        "midasflow_http_requests_total",
        Counter,
        "route, method, status",
        "Public HTTP requests served, by matched route, method and status.",
    ),
    doc(
        "midasflow_http_request_duration_seconds",
        Histogram,
        "route, method",
        "Time to serve a public HTTP request.",
    ),
    doc(
        "midasflow_log_events_suppressed_total",
        Counter,
        "(no node label)",
        "Log events dropped because their call site logged too often (src/log_limit.rs).",
    ),
    doc(
        "midasflow_http_handler_panics_total",
        Counter,
        "(no node label)",
        "Request handlers that panicked (answered 500; the node lives on).",
    ),
    doc(
        "midasflow_connections_rejected_total",
        Counter,
        "",
        "Connections refused at the connection limit.",
    ),
    doc(
        "midasflow_forwarded_requests_total",
        Counter,
        "",
        "Requests this node forwarded to a shard's leader.",
    ),
    doc(
        "midasflow_kv_follower_reads_total",
        Counter,
        "",
        "Linearizable reads this node answered from a follower replica, after the leader's read index.",
    ),
    doc(
        "midasflow_kv_lease_reads_total",
        Counter,
        "",
        "Linearizable reads (its own, or a follower's read index) this node confirmed under a leader's read lease, without a quorum round.",
    ),
    doc(
        "midasflow_kv_follower_read_fallbacks_total",
        Counter,
        "",
        "Follower reads that gave up (no read index, or not applied in time) and were forwarded to the leader.",
    ),
    doc(
        "midasflow_rpc_rejected_total",
        Counter,
        "reason",
        "Internal RPCs refused (authentication, identity, size).",
    ),
    doc(
        "midasflow_kv_writes_total",
        Counter,
        "",
        "Client writes (puts, deletes) this node applied as the shard's leader.",
    ),
    // Raft groups.
    doc(
        "midasflow_raft_groups",
        Gauge,
        "kind",
        "Raft groups (replicas) this node hosts; kind is shard or pd.",
    ),
    doc("midasflow_raft_leaders", Gauge, "kind", "Raft groups this node leads."),
    doc(
        "midasflow_raft_groups_without_leader",
        Gauge,
        "kind",
        "Hosted groups with no known leader at the last check.",
    ),
    doc(
        "midasflow_raft_campaigning_replicas",
        Gauge,
        "kind",
        "Replicas holding one of the node's campaign slots (voters that know no leader, or follow a lost one, and tick) at the last check.",
    ),
    doc(
        "midasflow_raft_campaign_budget",
        Gauge,
        "kind",
        "Replicas that may hold campaign slots now: --max-campaigning-replicas while campaigns end in elections; decided once per 4 s window, halved while they run out of time (an overloaded machine, a node cut off), grown back once few do.",
    ),
    doc(
        "midasflow_raft_campaigns_waiting",
        Gauge,
        "kind",
        "Replicas that would campaign but wait for a campaign slot (--max-campaigning-replicas): no election until their turn.",
    ),
    doc(
        "midasflow_raft_quiet_groups",
        Gauge,
        "",
        "Shard replicas that are quiet (no heartbeats, no election timer).",
    ),
    doc(
        "midasflow_raft_leader_changes_total",
        Counter,
        "",
        "Times a hosted group saw a new leader.",
    ),
    doc(
        "midasflow_raft_election_nudges_total",
        Counter,
        "",
        "Elections started because a group had no leader for too long.",
    ),
    doc(
        "midasflow_raft_campaigns_total",
        Counter,
        "kind",
        "Campaigns this node's replicas started (a vote for itself saved in a new term), whatever started them.",
    ),
    doc(
        "midasflow_raft_group_wakeups_total",
        Counter,
        "reason",
        "Quiet replicas woken, by reason.",
    ),
    doc(
        "midasflow_raft_heartbeat_rpcs_total",
        Counter,
        "",
        "Empty append-entries (heartbeats) sent.",
    ),
    doc(
        "midasflow_raft_commit_updates_held_total",
        Counter,
        "",
        "Bare commit-point updates a leader answered itself; the follower learns the commit point from the next append or heartbeat.",
    ),
    doc("midasflow_raft_vote_rpcs_total", Counter, "", "Vote requests sent."),
    doc(
        "midasflow_raft_batches_total",
        Counter,
        "",
        "Coalesced Raft requests sent to peers.",
    ),
    doc(
        "midasflow_raft_batched_messages_total",
        Counter,
        "",
        "Raft messages carried in coalesced requests.",
    ),
    doc(
        "midasflow_raft_proposal_duration_seconds",
        Histogram,
        "",
        "Time from proposing a client write to its commit and apply.",
    ),
    doc(
        "midasflow_raft_proposals_failed_total",
        Counter,
        "reason",
        "Client-write proposals that did not confirm: leader_changed, timeout or error (outcome unknown).",
    ),
    doc(
        "midasflow_raft_apply_duration_seconds",
        Histogram,
        "",
        "Time to apply a batch of committed entries to a state machine.",
    ),
    doc(
        "midasflow_raft_snapshot_sends_total",
        Counter,
        "",
        "Snapshots sent completely to a lagging or new replica.",
    ),
    doc(
        "midasflow_raft_snapshot_installs_total",
        Counter,
        "",
        "Snapshots installed on this node.",
    ),
    // Log storage.
    doc(
        "midasflow_log_fsync_duration_seconds",
        Histogram,
        "",
        "Time of one fsync of the node's storage files.",
    ),
    doc(
        "midasflow_log_flush_duration_seconds",
        Histogram,
        "",
        "Time of one group commit of the node's Raft log (and of sled, when something needs it durable).",
    ),
    doc(
        "midasflow_kv_writes_per_proposal",
        Histogram,
        "",
        "Client writes carried by one Raft proposal of a shard this node leads.",
    ),
    doc(
        "midasflow_log_flush_batch_size",
        Histogram,
        "",
        "Durability requests served by one group commit.",
    ),
    doc(
        "midasflow_log_flushes_total",
        Counter,
        "",
        "Group commits of the node's storage.",
    ),
    // Placement driver: cluster-level gauges are set on the PD leader only (0 elsewhere).
    doc(
        "midasflow_pd_is_leader",
        Gauge,
        "",
        "1 on the placement driver's leader while it hears from a majority of the PD voters, 0 elsewhere.",
    ),
    doc(
        "midasflow_pd_shards",
        Gauge,
        "",
        "Shards in the cluster map (PD leader only).",
    ),
    doc(
        "midasflow_pd_under_replicated_shards",
        Gauge,
        "",
        "Shards with fewer than 3 replicas, or a replica on a node that is not up (PD leader only).",
    ),
    doc(
        "midasflow_pd_shards_without_leader",
        Gauge,
        "",
        "Shards with no leader report in the last 2 s, or whose leader's node is down (PD leader only).",
    ),
    doc(
        "midasflow_pd_shards_quorum_lost",
        Gauge,
        "",
        "Shards with fewer than a majority of their replicas up (PD leader only).",
    ),
    doc(
        "midasflow_pd_nodes",
        Gauge,
        "state",
        "Cluster nodes by state: up, down, draining, removed (PD leader only).",
    ),
    doc(
        "midasflow_pd_node_replicas",
        Gauge,
        "store",
        "Replicas the map places on node `store` (PD leader only).",
    ),
    doc(
        "midasflow_pd_node_leaders",
        Gauge,
        "store",
        "Shards node `store` leads, as last reported (PD leader only).",
    ),
    doc(
        "midasflow_pd_operators_running",
        Gauge,
        "",
        "Scheduler operators in progress (PD leader only).",
    ),
    doc(
        "midasflow_pd_operators_started_total",
        Counter,
        "type",
        "Operators the scheduler started, by type.",
    ),
    doc(
        "midasflow_pd_operators_finished_total",
        Counter,
        "type, outcome",
        "Operators finished, by type and outcome.",
    ),
    doc(
        "midasflow_pd_splits_total",
        Counter,
        "",
        "Shard splits this node executed as PD leader.",
    ),
];

/// Gives the recorder every metric's help text (Prometheus `# HELP`).
pub fn describe() {
    for metric in CATALOGUE {
        match metric.kind {
            Counter => metrics::describe_counter!(metric.name, metric.help),
            Gauge => metrics::describe_gauge!(metric.name, metric.help),
            Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
}

/// Makes a node's series exist before their first event, and records what does not change
/// while the process runs.
pub fn register_node(label: &str) {
    let node = label.to_string();
    metrics::gauge!("midasflow_build_info", "node" => node.clone(), "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::gauge!("midasflow_process_start_time_seconds", "node" => node.clone()).set(process_start_seconds());
    for reason in PROPOSAL_FAILURE_REASONS {
        metrics::counter!("midasflow_raft_proposals_failed_total", "node" => node.clone(), "reason" => reason)
            .absolute(0);
    }
    // Every counter whose only label is the node starts at 0.
    for metric in CATALOGUE.iter().filter(|m| m.kind == Counter && m.labels.is_empty()) {
        metrics::counter!(metric.name, "node" => node.clone()).increment(0);
    }
    for kind in ["shard", "pd"] {
        metrics::gauge!("midasflow_raft_leaders", "node" => node.clone(), "kind" => kind).increment(0.0);
        metrics::gauge!("midasflow_raft_groups_without_leader", "node" => node.clone(), "kind" => kind).set(0.0);
        metrics::gauge!("midasflow_raft_campaigning_replicas", "node" => node.clone(), "kind" => kind).set(0.0);
        metrics::gauge!("midasflow_raft_campaigns_waiting", "node" => node.clone(), "kind" => kind).set(0.0);
    }
    for wake in crate::raft::registry::Wake::ALL {
        metrics::counter!("midasflow_raft_group_wakeups_total", "node" => node.clone(), "reason" => wake.name())
            .increment(0);
    }
    for reason in RPC_REJECT_REASONS {
        metrics::counter!("midasflow_rpc_rejected_total", "node" => node.clone(), "reason" => reason).increment(0);
    }
    for kind in OPERATOR_TYPES {
        metrics::counter!("midasflow_pd_operators_started_total", "node" => node.clone(), "type" => kind).increment(0);
        for outcome in OPERATOR_OUTCOMES {
            metrics::counter!("midasflow_pd_operators_finished_total", "node" => node.clone(), "type" => kind, "outcome" => outcome)
                .increment(0);
        }
    }
    metrics::counter!("midasflow_http_handler_panics_total").increment(0);
    metrics::counter!("midasflow_log_events_suppressed_total").increment(0);
    metrics::gauge!("midasflow_raft_quiet_groups", "node" => node.clone()).set(0.0);
    metrics::gauge!("midasflow_pd_is_leader", "node" => node.clone()).set(0.0);
    clear_pd_gauges(label, std::iter::empty());
}

/// A node that does not lead the PD exports zeros for the cluster-level gauges (`stores`:
/// the nodes its per-store gauges may name): its last numbers as leader would be stale,
/// and alerts select the leader anyway.
pub fn clear_pd_gauges(label: &str, stores: impl Iterator<Item = u64>) {
    let node = label.to_string();
    for name in [
        "midasflow_pd_shards",
        "midasflow_pd_under_replicated_shards",
        "midasflow_pd_shards_without_leader",
        "midasflow_pd_shards_quorum_lost",
        "midasflow_pd_operators_running",
    ] {
        metrics::gauge!(name, "node" => node.clone()).set(0.0);
    }
    for state in NODE_STATES {
        metrics::gauge!("midasflow_pd_nodes", "node" => node.clone(), "state" => state).set(0.0);
    }
    for store in stores {
        for name in ["midasflow_pd_node_replicas", "midasflow_pd_node_leaders"] {
            metrics::gauge!(name, "node" => node.clone(), "store" => store.to_string()).set(0.0);
        }
    }
}

/// Free and total bytes of the filesystem holding `path`.
pub fn disk_space(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path and a buffer of the right type; statvfs fills it on 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it wrote the struct.
    let stats = unsafe { stats.assume_init() };
    let fragment = stats.f_frsize;
    Ok((stats.f_bavail * fragment, stats.f_blocks * fragment))
}

/// The node's data-directory gauges: what it uses, and what its filesystem has left.
pub fn record_disk(label: &str, data_dir: &Path, used_bytes: u64) {
    metrics::gauge!("midasflow_storage_size_bytes", "node" => label.to_string()).set(used_bytes as f64);
    match disk_space(data_dir) {
        Ok((available, capacity)) => {
            metrics::gauge!("midasflow_disk_available_bytes", "node" => label.to_string()).set(available as f64);
            metrics::gauge!("midasflow_disk_capacity_bytes", "node" => label.to_string()).set(capacity as f64);
        }
        Err(e) => tracing::debug!(error = %e, path = %data_dir.display(), "statvfs of the data dir failed"),
    }
}

/// When the process registered its first node, moments after it started. Per process,
/// not per node: several nodes share one process in tests and the demo.
fn process_start_seconds() -> f64 {
    static START: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn names_in(dir: &Path, found: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                names_in(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("telemetry.rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (at, _) in text.match_indices("\"midasflow_") {
                    let rest = &text[at + 1..];
                    let end = rest.find('"').unwrap();
                    found.insert(rest[..end].to_string());
                }
            }
        }
    }

    #[test]
    fn every_metric_the_code_records_is_in_the_catalogue() {
        let mut found = BTreeSet::new();
        names_in(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut found);
        let catalogued: BTreeSet<&str> = CATALOGUE.iter().map(|m| m.name).collect();
        let missing: Vec<&String> = found.iter().filter(|n| !catalogued.contains(n.as_str())).collect();
        assert!(found.len() > 20, "the scan found too few names: {found:?}");
        assert!(missing.is_empty(), "recorded but not catalogued: {missing:?}");
        assert_eq!(catalogued.len(), CATALOGUE.len(), "a name is catalogued twice");
    }

    #[test]
    fn docs_list_every_metric() {
        let docs = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md")).unwrap();
        let missing: Vec<&str> = CATALOGUE
            .iter()
            .map(|m| m.name)
            .filter(|n| !docs.contains(&format!("`{n}`")))
            .collect();
        assert!(missing.is_empty(), "docs/metrics.md does not list {missing:?}");
    }

    #[test]
    fn counters_end_in_total_and_others_do_not() {
        for m in CATALOGUE {
            assert_eq!(m.kind == Counter, m.name.ends_with("_total"), "{}", m.name);
        }
    }

    #[test]
    fn disk_space_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (available, capacity) = disk_space(dir.path()).unwrap();
        assert!(capacity > 0 && available <= capacity, "{available} of {capacity}");
        assert!(disk_space(&dir.path().join("missing")).is_err());
    }
}

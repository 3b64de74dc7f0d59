//! The `midasflow` command line (README.md).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use hyper::Method;
use serde_json::Value;

use crate::client::{encode_key_str, Client, ClientSecurity};
use crate::launch::{self, RunningNode};
use crate::node::{Limits, NodeConfig, RaftTimings};
use crate::placement::operator::ScheduleSettings;
use crate::security::{is_loopback, NodeTls};

#[derive(Parser, Debug)]
#[command(name = "midasflow", version, about = "A sharded, Raft-replicated key-value store")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a local cluster in this process on 127.0.0.1 (Ctrl-C stops it).
    Demo(DemoArgs),
    /// Run one node.
    Server(Box<ServerArgs>),
    /// Read and write keys.
    Kv(KvArgs),
    /// Inspect the cluster.
    Cluster(ClusterArgs),
    /// Closed-loop load against a running cluster.
    Bench(crate::bench::BenchArgs),
    /// What a durable group commit costs on this disk, by mechanism.
    BenchStorage(crate::bench_storage::StorageBenchArgs),
    /// Deterministic fault simulations of whole clusters, by seed.
    Sim(crate::sim_cli::SimArgs),
    /// Make TLS certificates for a cluster.
    Cert(CertArgs),
}

#[derive(Args, Debug)]
pub struct CertArgs {
    #[command(subcommand)]
    pub op: CertOp,
}

#[derive(Subcommand, Debug)]
pub enum CertOp {
    /// A new certificate authority: `ca.crt` and `ca.key` in --certs-dir.
    CreateCa {
        #[arg(long, default_value = "certs")]
        certs_dir: PathBuf,
    },
    /// A node certificate (`node.crt`, `node.key`, plus a copy of `ca.crt`) in --out-dir,
    /// signed by the CA in --ca-dir, for every --host the node is reached at.
    CreateNode {
        #[arg(long, default_value = "certs")]
        ca_dir: PathBuf,
        #[arg(long)]
        out_dir: PathBuf,
        /// A DNS name or IP address of the node (repeat for several).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    pub nodes: u64,
    /// Where the nodes keep their data (default: a new directory under the system temp dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Port of node 1; node N listens on base_port + N - 1.
    #[arg(long, default_value_t = 7001)]
    pub base_port: u16,
    /// Start the background load: one writer per node, writing and reading through it.
    #[arg(long)]
    pub load: bool,
    #[command(flatten)]
    pub tuning: Tuning,
}

/// Settings shared by `server` and `demo`.
#[derive(Args, Debug, Clone)]
pub struct Tuning {
    /// Shards cut at bootstrap.
    #[arg(long, env = "MIDASFLOW_INITIAL_SHARDS", default_value_t = crate::placement::DEFAULT_INITIAL_SHARDS)]
    pub initial_shards: u32,
    /// Versions retained per key for `?version=` and `/history`.
    #[arg(long, env = "MIDASFLOW_HISTORY_VERSIONS", default_value_t = crate::shard::DEFAULT_HISTORY_VERSIONS,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::shard::MAX_HISTORY_VERSIONS)))]
    pub history_versions: u32,
    /// Largest value accepted, in bytes.
    #[arg(long, env = "MIDASFLOW_MAX_VALUE_BYTES", default_value_t = Limits::default().max_value_bytes)]
    pub max_value_bytes: usize,
    /// Requests a node works on at once before answering 429.
    #[arg(long, env = "MIDASFLOW_MAX_INFLIGHT_REQUESTS", default_value_t = Limits::default().max_inflight_requests)]
    pub max_inflight_requests: usize,
    /// How long a request may take before 503 (no leader) or 504 (outcome unknown).
    #[arg(long, env = "MIDASFLOW_REQUEST_TIMEOUT_MS", default_value_t = Limits::default().request_timeout_ms)]
    pub request_timeout_ms: u64,
    #[arg(long, env = "MIDASFLOW_HEARTBEAT_INTERVAL_MS", default_value_t = RaftTimings::default().heartbeat_interval_ms)]
    pub heartbeat_interval_ms: u64,
    #[arg(long, env = "MIDASFLOW_ELECTION_TIMEOUT_MIN_MS", default_value_t = RaftTimings::default().election_timeout_min_ms)]
    pub election_timeout_min_ms: u64,
    #[arg(long, env = "MIDASFLOW_ELECTION_TIMEOUT_MAX_MS", default_value_t = RaftTimings::default().election_timeout_max_ms)]
    pub election_timeout_max_ms: u64,
    /// An idle shard group stops ticking (no heartbeats, no election timers) after this
    /// long without activity; 0 keeps every group ticking.
    #[arg(long, env = "MIDASFLOW_QUIET_AFTER_MS", default_value_t = RaftTimings::default().quiet_after_ms)]
    pub quiet_after_ms: u64,
    /// How long a shard's leader answers linearizable reads without a quorum round after
    /// the oldest of its followers' latest acknowledgements; at most three quarters of the
    /// minimum election timeout (the last quarter is the margin for clock rates). 0: no
    /// lease. See docs/API.md, "Read lease".
    #[arg(long, env = "MIDASFLOW_READ_LEASE_MS", default_value_t = RaftTimings::default().read_lease_ms)]
    pub read_lease_ms: u64,
    /// Shard replicas of this node that may campaign for leadership at once (1 to 65536);
    /// the others wait their turn with their election timers stopped. Bounds the load of
    /// a whole-cluster restart or the loss of a node that led thousands of groups. An upper
    /// bound: the node halves it while campaigns run out of time, and grows it back.
    #[arg(long, env = "MIDASFLOW_MAX_CAMPAIGNING_REPLICAS", default_value_t = RaftTimings::default().max_campaigning_replicas)]
    pub max_campaigning_replicas: usize,
    /// Batches of Raft messages (appends and votes of every group) in flight to one peer;
    /// messages queued meanwhile travel together in the next batch.
    #[arg(long, env = "MIDASFLOW_RAFT_BATCHES_IN_FLIGHT", default_value_t = RaftTimings::default().batches_in_flight_per_peer)]
    pub raft_batches_in_flight: usize,
    /// sled's page cache, in bytes.
    #[arg(long, env = "MIDASFLOW_CACHE_CAPACITY_BYTES", default_value_t = crate::node::DEFAULT_CACHE_CAPACITY_BYTES)]
    pub cache_capacity_bytes: u64,
    /// Build a snapshot after this many log entries since the last one.
    #[arg(long, env = "MIDASFLOW_SNAPSHOT_INTERVAL_ENTRIES", default_value_t = RaftTimings::default().snapshot_interval_entries)]
    pub snapshot_interval_entries: u64,
    /// Log entries kept behind a snapshot for slow followers.
    #[arg(long, env = "MIDASFLOW_LOG_KEEP_ENTRIES", default_value_t = RaftTimings::default().log_keep_entries)]
    pub log_keep_entries: u64,
    /// Shared secret every internal request must carry (at least 16 bytes).
    #[arg(long, env = "MIDASFLOW_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// File holding the cluster secret (first line, at least 16 bytes).
    #[arg(long, env = "MIDASFLOW_CLUSTER_SECRET_FILE", conflicts_with = "cluster_secret")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Bearer tokens the public API requires, one per line (probes and /metrics stay open).
    #[arg(long, env = "MIDASFLOW_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Internal requests worked on at once before answering 429.
    #[arg(long, env = "MIDASFLOW_MAX_INFLIGHT_INTERNAL", default_value_t = Limits::default().max_inflight_internal)]
    pub max_inflight_internal: usize,
    /// Open connections served at once; more are closed at accept.
    #[arg(long, env = "MIDASFLOW_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections)]
    pub max_connections: usize,
    /// A connection must send a whole request head within this time.
    #[arg(long, env = "MIDASFLOW_HEADER_READ_TIMEOUT_MS", default_value_t = Limits::default().header_read_timeout_ms)]
    pub header_read_timeout_ms: u64,
    /// Request bodies held in memory at once, in bytes; more get 429.
    #[arg(long, env = "MIDASFLOW_MAX_BUFFERED_BODY_BYTES", default_value_t = Limits::default().max_buffered_body_bytes)]
    pub max_buffered_body_bytes: usize,
    /// A request body must arrive whole within this time (408 otherwise).
    #[arg(long, env = "MIDASFLOW_BODY_READ_TIMEOUT_MS", default_value_t = Limits::default().body_read_timeout_ms)]
    pub body_read_timeout_ms: u64,
    /// Scheduler: a node silent this long is down and its replicas are re-created elsewhere
    /// (recorded at bootstrap; change later with `midasflow cluster config set`).
    #[arg(long, env = "MIDASFLOW_DOWN_AFTER_SECS", default_value_t = ScheduleSettings::default().down_after_secs)]
    pub down_after_secs: u64,
    /// Scheduler: a shard over this many bytes of live values is due a split.
    #[arg(long, env = "MIDASFLOW_SPLIT_MAX_BYTES", default_value_t = ScheduleSettings::default().split_max_bytes)]
    pub split_max_bytes: u64,
    /// Scheduler: a shard over this many live keys is due a split.
    #[arg(long, env = "MIDASFLOW_SPLIT_MAX_KEYS", default_value_t = ScheduleSettings::default().split_max_keys)]
    pub split_max_keys: u64,
    /// Scheduler: a shard over this many ops/s for 10 s is due a split.
    #[arg(long, env = "MIDASFLOW_SPLIT_QPS", default_value_t = ScheduleSettings::default().split_qps)]
    pub split_qps: u64,
    /// Scheduler: operators in flight cluster-wide.
    #[arg(long, env = "MIDASFLOW_MAX_OPERATORS", default_value_t = ScheduleSettings::default().max_operators)]
    pub max_operators: u64,
    /// Scheduler: operators in flight touching one node.
    #[arg(long, env = "MIDASFLOW_MAX_OPERATORS_PER_NODE", default_value_t = ScheduleSettings::default().max_operators_per_node)]
    pub max_operators_per_node: u64,
    /// Scheduler: start with scheduling paused (manual operators still run).
    #[arg(long, env = "MIDASFLOW_SCHEDULE_PAUSED")]
    pub schedule_paused: bool,
}

/// How a server secures its listener.
#[derive(Args, Debug, Clone)]
pub struct ServerSecurity {
    /// Directory with `ca.crt`, `node.crt` and `node.key` (see `midasflow cert`): TLS for
    /// the API and internal RPC, and mutual TLS between nodes.
    #[arg(long, env = "MIDASFLOW_CERTS_DIR")]
    pub certs_dir: Option<PathBuf>,
    /// Run without TLS. Allowed only on a loopback listen address unless
    /// --insecure-allow-remote is also given.
    #[arg(long, env = "MIDASFLOW_INSECURE", conflicts_with = "certs_dir")]
    pub insecure: bool,
    /// Allow --insecure on a non-loopback address (anyone who reaches the port can read,
    /// write and join the cluster's Raft groups unless a cluster secret is set).
    #[arg(long, env = "MIDASFLOW_INSECURE_ALLOW_REMOTE", requires = "insecure")]
    pub insecure_allow_remote: bool,
}

impl ServerSecurity {
    /// TLS settings, or the reason the server must not start as configured.
    fn tls(&self, listen: &str) -> Result<Option<NodeTls>, String> {
        match (&self.certs_dir, self.insecure) {
            (Some(dir), _) => NodeTls::load(dir).map(Some).map_err(|e| e.to_string()),
            (None, false) => Err("refusing to start without TLS: give --certs-dir DIR (make one with \
                 `midasflow cert create-ca` and `midasflow cert create-node`), or --insecure to run \
                 in the clear on a loopback address"
                .into()),
            (None, true) if !is_loopback(listen) && !self.insecure_allow_remote => Err(format!(
                "--insecure on {listen}, which is not a loopback address: anyone who reaches it could \
                 read and write every key. Use --certs-dir, or add --insecure-allow-remote to accept that"
            )),
            (None, true) => Ok(None),
        }
    }
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    #[arg(long, env = "MIDASFLOW_NODE_ID")]
    pub node_id: u64,
    /// Address for the public API and internal RPC.
    #[arg(long, env = "MIDASFLOW_LISTEN")]
    pub listen: String,
    /// Address other nodes reach this one at (default: --listen).
    #[arg(long, env = "MIDASFLOW_ADVERTISE")]
    pub advertise: Option<String>,
    #[arg(long, env = "MIDASFLOW_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Bootstrap members: `1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003`.
    #[arg(long, env = "MIDASFLOW_INITIAL_CLUSTER", value_parser = parse_initial_cluster,
          required_unless_present = "join", conflicts_with = "join")]
    pub initial_cluster: Option<BTreeMap<u64, String>>,
    /// Join an existing cluster through any of its members: `127.0.0.1:7001,127.0.0.1:7002`.
    /// The node id must be new (ids of removed nodes are never reused).
    #[arg(long, env = "MIDASFLOW_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,
    #[command(flatten)]
    pub security: ServerSecurity,
    #[command(flatten)]
    pub tuning: Tuning,
}

/// The node a CLI command talks to.
#[derive(Args, Debug)]
pub struct Endpoint {
    /// A node's base URL.
    #[arg(
        long = "endpoint",
        global = true,
        env = "MIDASFLOW_ENDPOINT",
        default_value = "http://127.0.0.1:7001"
    )]
    pub url: String,
    #[command(flatten)]
    pub security: ClientSecurity,
}

#[derive(Args, Debug)]
pub struct KvArgs {
    #[command(subcommand)]
    pub op: KvOpArgs,
    #[command(flatten)]
    pub endpoint: Endpoint,
}

#[derive(Subcommand, Debug)]
pub enum KvOpArgs {
    Put {
        key: String,
        value: String,
        /// Write only if the current version is N (0 = absent).
        #[arg(long)]
        if_match: Option<u64>,
        /// Write only if the key is absent.
        #[arg(long)]
        if_absent: bool,
    },
    Get {
        key: String,
        /// Serve from any replica, possibly behind.
        #[arg(long)]
        stale: bool,
        #[arg(long)]
        version: Option<u64>,
    },
    Delete {
        key: String,
        #[arg(long)]
        if_match: Option<u64>,
    },
    History {
        key: String,
    },
}

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub op: ClusterOp,
    #[command(flatten)]
    pub endpoint: Endpoint,
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Subcommand, Debug)]
pub enum ClusterOp {
    Status,
    Shards,
    /// Move every replica and leader off a node (state draining, then drained).
    Drain {
        node: u64,
    },
    /// Cancel a drain: the node takes replicas again.
    Undrain {
        node: u64,
    },
    /// Retire a drained or down node for good (its id is never reused).
    Remove {
        node: u64,
    },
    /// Move a shard's replica from one node to another.
    Move {
        shard: u64,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
    },
    /// Split a shard at a hash (`--at 0x…`), or at the median hash of its keys.
    Split {
        shard: u64,
        #[arg(long)]
        at: Option<String>,
    },
    /// Hand a shard's Raft leadership to another of its replicas.
    TransferLeader {
        shard: u64,
        #[arg(long)]
        to: u64,
    },
    /// Running operators and the last finished ones.
    Operators,
    /// What each scheduler checker would do now, and why (or why nothing).
    Explain,
    /// Scheduler settings.
    Config {
        #[command(subcommand)]
        op: ConfigOp,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigOp {
    Get,
    /// Change settings: `midasflow cluster config set down_after_secs=60 paused=true`.
    Set {
        #[arg(required = true)]
        settings: Vec<String>,
    },
}

/// `name=value` pairs as a JSON object (numbers and booleans typed, the rest strings).
fn settings_json(pairs: &[String]) -> Result<Value, String> {
    let mut object = serde_json::Map::new();
    for pair in pairs {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not name=value"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
        object.insert(name.replace('-', "_"), value);
    }
    Ok(Value::Object(object))
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

fn parse_initial_cluster(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut members = BTreeMap::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| format!("{part:?} is not ID=ADDR"))?;
        let id: u64 = id.trim().parse().map_err(|_| format!("{id:?} is not a node id"))?;
        if members.insert(id, addr.trim().to_string()).is_some() {
            return Err(format!("node {id} is named twice"));
        }
    }
    if members.is_empty() {
        return Err("the initial cluster is empty".into());
    }
    Ok(members)
}

impl Tuning {
    fn apply(&self, config: &mut NodeConfig) -> Result<(), String> {
        config.initial_shards = self.initial_shards;
        config.history_versions = self.history_versions;
        config.limits.max_value_bytes = self.max_value_bytes;
        config.limits.max_inflight_requests = self.max_inflight_requests;
        config.limits.request_timeout_ms = self.request_timeout_ms;
        config.limits.max_inflight_internal = self.max_inflight_internal;
        config.limits.max_connections = self.max_connections;
        config.limits.header_read_timeout_ms = self.header_read_timeout_ms;
        config.limits.body_read_timeout_ms = self.body_read_timeout_ms;
        config.limits.max_buffered_body_bytes = self.max_buffered_body_bytes;
        config.schedule = ScheduleSettings {
            paused: self.schedule_paused,
            down_after_secs: self.down_after_secs,
            split_max_bytes: self.split_max_bytes,
            split_max_keys: self.split_max_keys,
            split_qps: self.split_qps,
            max_operators: self.max_operators,
            max_operators_per_node: self.max_operators_per_node,
            ..ScheduleSettings::default()
        };
        config.raft = RaftTimings {
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            election_timeout_min_ms: self.election_timeout_min_ms,
            election_timeout_max_ms: self.election_timeout_max_ms,
            snapshot_interval_entries: self.snapshot_interval_entries,
            log_keep_entries: self.log_keep_entries,
            quiet_after_ms: self.quiet_after_ms,
            batches_in_flight_per_peer: self.raft_batches_in_flight,
            read_lease_ms: self.read_lease_ms,
            max_campaigning_replicas: self.max_campaigning_replicas,
            ..RaftTimings::default()
        };
        config.cache_capacity_bytes = self.cache_capacity_bytes;
        config.cluster_secret = match (&self.cluster_secret, &self.cluster_secret_file) {
            (Some(secret), _) => Some(secret.clone()),
            (None, Some(path)) => Some(crate::security::read_secret_file(path).map_err(|e| e.to_string())?),
            (None, None) => None,
        };
        config.api_tokens = match &self.api_token_file {
            Some(path) => Some(crate::security::read_token_file(path).map_err(|e| e.to_string())?),
            None => None,
        };
        Ok(())
    }
}

async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

pub async fn run_server(args: ServerArgs) -> Result<(), String> {
    let mut config = NodeConfig::new(
        args.node_id,
        args.listen.clone(),
        args.data_dir,
        args.initial_cluster.unwrap_or_default(),
    );
    config.join = args.join;
    config.tls = args.security.tls(&args.listen)?;
    config.advertise = args.advertise.unwrap_or(args.listen);
    args.tuning.apply(&mut config)?;
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    if config.tls.is_none() {
        tracing::warn!("running insecure (--insecure): no TLS, and no client certificates between nodes");
    }
    let running = launch::start(config).await.map_err(|e| e.to_string())?;
    println!(
        "midasflow node {} serving on {scheme}://{}",
        args.node_id, running.local_addr
    );
    let mut refused = running.node.refused();
    let refusal = tokio::select! {
        _ = wait_for_stop_signal() => None,
        reason = refused.wait_for(Option::is_some) => reason.ok().and_then(|r| r.clone()),
    };
    tracing::info!("stopping");
    running.shutdown().await;
    match refusal {
        Some(reason) => Err(format!(
            "node {} stopped: {reason}. Its data dir is not the one the cluster knows as node {}: \
             see docs/operations.md (\"A node lost its disk\"); recover with --join and a new --node-id",
            args.node_id, args.node_id
        )),
        None => Ok(()),
    }
}

pub async fn run_demo(args: DemoArgs) -> Result<(), String> {
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => tempfile::Builder::new()
            .prefix("midasflow-demo-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep(),
    };
    let initial_cluster: BTreeMap<u64, String> = (1..=args.nodes)
        .map(|id| (id, format!("127.0.0.1:{}", u64::from(args.base_port) + id - 1)))
        .collect();
    let (control, mut commands) = crate::demo::DemoControl::new(initial_cluster.clone(), args.load);
    let mut configs = BTreeMap::new();
    for (id, addr) in &initial_cluster {
        let mut config = NodeConfig::new(
            *id,
            addr.clone(),
            data_dir.join(format!("node{id}")),
            initial_cluster.clone(),
        );
        args.tuning.apply(&mut config)?;
        config.demo = Some(control.clone());
        configs.insert(*id, config);
    }
    let mut nodes: BTreeMap<u64, RunningNode> = BTreeMap::new();
    for (id, config) in &configs {
        match launch::start(config.clone()).await {
            Ok(running) => {
                nodes.insert(*id, running);
            }
            Err(e) => {
                for started in nodes.into_values() {
                    started.shutdown().await;
                }
                let addr = &config.listen;
                return Err(format!("node {id}: {e} (is port {addr} free? try --base-port)"));
            }
        }
    }
    // Ctrl-C is handled from here on, also while the cluster elects its first leaders.
    let stop = wait_for_stop_signal();
    tokio::pin!(stop);
    let first = &initial_cluster[&1];
    let stopped_early = tokio::select! {
        _ = &mut stop => true,
        _ = wait_until_serving(first) => false,
    };
    let load = control.spawn_load();
    if !stopped_early {
        print_demo_banner(&initial_cluster, &data_dir, args.load);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Some((command, reply)) = commands.recv() => {
                    let outcome = match command {
                        crate::demo::NodeCommand::Crash(id) => match nodes.remove(&id) {
                            Some(running) => {
                                running.shutdown().await;
                                Ok(())
                            }
                            None => Err(format!("node {id} is not running")),
                        },
                        crate::demo::NodeCommand::Restart(id) => restart_demo_node(&configs[&id]).await.map(|running| {
                            nodes.insert(id, running);
                        }),
                    };
                    let _ = reply.send(outcome);
                }
            }
        }
    }
    println!("stopping...");
    load.iter().for_each(|task| task.abort());
    for running in nodes.into_values() {
        running.shutdown().await;
    }
    println!("stopped; data kept in {}", data_dir.display());
    Ok(())
}

/// Waits (up to a minute) until node `addr` reports a leader for every shard, so the
/// banner is printed to a cluster that serves; says so if it gives up.
async fn wait_until_serving(addr: &str) {
    let client = crate::client::Client::new(&format!("http://{addr}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        if let Ok(reply) = client.get_path("/health").await {
            let healthy = serde_json::from_slice::<serde_json::Value>(&reply.body)
                .is_ok_and(|v| v["healthy"] == true && v["shards"].as_array().is_some_and(|s| !s.is_empty()));
            if healthy {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("warning: after 60 s, some shards still have no leader (RUST_LOG=info shows why)");
}

/// A crashed node's data dir may stay locked for a moment while its last tasks end.
async fn restart_demo_node(config: &NodeConfig) -> Result<RunningNode, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match launch::start(config.clone()).await {
            Ok(running) => return Ok(running),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, node = config.node_id, "restart failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(format!("restarting node {}: {e}", config.node_id)),
        }
    }
}

/// The demo's banner: the last thing it prints once the cluster serves.
fn print_demo_banner(nodes: &BTreeMap<u64, String>, data_dir: &std::path::Path, load: bool) {
    let first = &nodes[&1];
    let last = nodes.values().last().unwrap_or(first);
    println!("midasflow demo: {} nodes, data in {}", nodes.len(), data_dir.display());
    println!("  insecure on purpose: plain HTTP on 127.0.0.1 only, no TLS, no tokens (see docs/security.md)");
    for (id, addr) in nodes {
        println!("  node {id}: http://{addr}   (metrics: http://{addr}/metrics)");
    }
    println!();
    println!("Console: http://{first}/ui");
    println!();
    println!("Try:");
    println!("  curl -X PUT --data-binary 'hello' http://{first}/v1/kv/greeting");
    println!("  curl -i http://{last}/v1/kv/greeting");
    println!("  curl http://{first}/v1/cluster");
    println!();
    println!("Break it (or use the console's buttons), and watch leaders move:");
    println!("  curl -X POST -H 'Content-Type: application/json' -d '{{\"kind\":\"isolate\",\"node\":2}}' http://{first}/v1/demo/faults");
    println!("  curl -X POST -H 'Content-Type: application/json' -d '{{\"kind\":\"cut\",\"nodes\":[1,3]}}' http://{first}/v1/demo/faults");
    println!(
        "  curl -X POST -H 'Content-Type: application/json' -d '{{\"kind\":\"crash\",\"node\":3}}' http://{first}/v1/demo/faults   (then \"restart\")"
    );
    println!(
        "  curl -X POST -H 'Content-Type: application/json' -d '{{\"kind\":\"heal\"}}' http://{first}/v1/demo/faults"
    );
    println!("  curl http://{first}/v1/demo/faults            # what is in force, and the load's counters");
    if load {
        println!("  Background load is on: one writer per node (toggle: POST /v1/demo/load {{\"enabled\":false}}).");
    } else {
        println!("  Background load: curl -X POST -H 'Content-Type: application/json' -d '{{\"enabled\":true}}' http://{first}/v1/demo/load (or --load)");
    }
    println!();
    println!("Ctrl-C stops the cluster. RUST_LOG=info shows the nodes' logs.");
}

fn print_reply(reply: &crate::client::Reply) -> Result<(), String> {
    if reply.status.is_success() {
        Ok(())
    } else {
        Err(format!("{}: {}", reply.status, String::from_utf8_lossy(&reply.body)))
    }
}

pub async fn run_kv(args: KvArgs) -> Result<(), String> {
    let client = Client::with_auth(&args.endpoint.url, args.endpoint.security.auth()?);
    let fail = |e: crate::raft::network::TransportError| e.to_string();
    match args.op {
        KvOpArgs::Put {
            key,
            value,
            if_match,
            if_absent,
        } => {
            let mut headers = Vec::new();
            if let Some(v) = if_match {
                headers.push(("if-match", v.to_string()));
            }
            if if_absent {
                headers.push(("if-none-match", "*".to_string()));
            }
            let path = format!("/v1/kv/{}", encode_key_str(&key));
            let reply = client
                .request(Method::PUT, &path, &headers, Bytes::from(value))
                .await
                .map_err(fail)?;
            print_reply(&reply)?;
            println!("{}", String::from_utf8_lossy(&reply.body));
        }
        KvOpArgs::Get { key, stale, version } => {
            let mut query = Vec::new();
            if stale {
                query.push("consistency=stale".to_string());
            }
            if let Some(v) = version {
                query.push(format!("version={v}"));
            }
            let path = format!("/v1/kv/{}?{}", encode_key_str(&key), query.join("&"));
            let reply = client.get_path(&path).await.map_err(fail)?;
            print_reply(&reply)?;
            eprintln!("version {}", reply.header("x-version").unwrap_or("?"));
            println!("{}", String::from_utf8_lossy(&reply.body));
        }
        KvOpArgs::Delete { key, if_match } => {
            let headers: Vec<(&str, String)> = if_match.map(|v| ("if-match", v.to_string())).into_iter().collect();
            let path = format!("/v1/kv/{}", encode_key_str(&key));
            let reply = client
                .request(Method::DELETE, &path, &headers, Bytes::new())
                .await
                .map_err(fail)?;
            print_reply(&reply)?;
            println!("{}", String::from_utf8_lossy(&reply.body));
        }
        KvOpArgs::History { key } => {
            let reply = client
                .get_path(&format!("/v1/kv/{}/history", encode_key_str(&key)))
                .await
                .map_err(fail)?;
            print_reply(&reply)?;
            let body: Value = serde_json::from_slice(&reply.body).map_err(|e| e.to_string())?;
            let engine = base64::engine::general_purpose::STANDARD;
            for v in body["versions"].as_array().into_iter().flatten() {
                let value = engine
                    .decode(v["value_base64"].as_str().unwrap_or(""))
                    .unwrap_or_default();
                let shown = if v["deleted"] == Value::Bool(true) {
                    "(deleted)".to_string()
                } else {
                    String::from_utf8_lossy(&value).into_owned()
                };
                println!("{:>8}  {shown}", v["version"]);
            }
        }
    }
    Ok(())
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(headers.iter().map(|h| h.to_string()).collect()));
    for row in rows {
        println!("{}", line(row));
    }
}

pub async fn run_cluster(args: ClusterArgs) -> Result<(), String> {
    let client = Client::with_auth(&args.endpoint.url, args.endpoint.security.auth()?);
    let (method, path, body) = match &args.op {
        ClusterOp::Status => (Method::GET, "/v1/cluster".to_string(), None),
        ClusterOp::Shards => (Method::GET, "/v1/shards".to_string(), None),
        ClusterOp::Drain { node } => (Method::POST, format!("/v1/nodes/{node}/drain"), None),
        ClusterOp::Undrain { node } => (Method::DELETE, format!("/v1/nodes/{node}/drain"), None),
        ClusterOp::Remove { node } => (Method::DELETE, format!("/v1/nodes/{node}"), None),
        ClusterOp::Move { shard, from, to } => (
            Method::POST,
            format!("/v1/shards/{shard}/move"),
            Some(serde_json::json!({"from": from, "to": to})),
        ),
        ClusterOp::Split { shard, at } => (
            Method::POST,
            format!("/v1/shards/{shard}/split"),
            at.as_ref().map(|at| serde_json::json!({ "at": at })),
        ),
        ClusterOp::TransferLeader { shard, to } => (
            Method::POST,
            format!("/v1/shards/{shard}/transfer-leader"),
            Some(serde_json::json!({"to": to})),
        ),
        ClusterOp::Operators => (Method::GET, "/v1/operators".to_string(), None),
        ClusterOp::Explain => (Method::GET, "/v1/schedule/explain".to_string(), None),
        ClusterOp::Config { op: ConfigOp::Get } => (Method::GET, "/v1/schedule/config".to_string(), None),
        ClusterOp::Config {
            op: ConfigOp::Set { settings },
        } => (
            Method::PUT,
            "/v1/schedule/config".to_string(),
            Some(settings_json(settings)?),
        ),
    };
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let headers = [("content-type", "application/json".to_string())];
    let reply = client
        .request(method, &path, &headers, body)
        .await
        .map_err(|e| e.to_string())?;
    print_reply(&reply)?;
    let body: Value = serde_json::from_slice(&reply.body).map_err(|e| e.to_string())?;
    let table = matches!(
        args.op,
        ClusterOp::Status | ClusterOp::Shards | ClusterOp::Operators | ClusterOp::Explain
    );
    if args.format == Format::Json || !table {
        println!("{}", serde_json::to_string_pretty(&body).unwrap_or_default());
        return Ok(());
    }
    match args.op {
        ClusterOp::Status => {
            println!(
                "routing version {}   pd leader {}",
                cell(&body["routing_version"]),
                cell(&body["pd_leader"])
            );
            let rows = body["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| {
                    ["id", "addr", "state", "shards", "leaders"]
                        .iter()
                        .map(|k| cell(&n[*k]))
                        .collect()
                })
                .collect();
            print_table(&["ID", "ADDR", "STATE", "SHARDS", "LEADERS"], rows);
        }
        ClusterOp::Shards => {
            let rows = body["shards"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    let replicas: Vec<String> = s["replicas"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|r| cell(&r["node_id"]))
                        .collect();
                    vec![
                        cell(&s["id"]),
                        cell(&s["range"]["start"]),
                        cell(&s["range"]["end"]),
                        replicas.join(","),
                        cell(&s["leader"]),
                        cell(&s["epoch"]),
                        cell(&s["applied_index"]),
                        cell(&s["keys"]),
                        cell(&s["bytes"]),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID", "START", "END", "REPLICAS", "LEADER", "EPOCH", "APPLIED", "KEYS", "BYTES",
                ],
                rows,
            );
        }
        ClusterOp::Operators => {
            let row = |o: &Value, state: String| {
                vec![
                    cell(&o["id"]),
                    cell(&o["kind"]["type"]),
                    cell(&o["kind"]["shard"]),
                    state,
                    cell(&o["origin"]),
                    cell(&o["reason"]),
                ]
            };
            let mut rows: Vec<Vec<String>> = Vec::new();
            for o in body["running"].as_array().into_iter().flatten() {
                rows.push(row(o, format!("running: {}", cell(&o["step"]))));
            }
            for o in body["finished"].as_array().into_iter().flatten() {
                let mut outcome = cell(&o["outcome"]["outcome"]);
                if let Some(reason) = o["outcome"]["reason"].as_str() {
                    outcome = format!("{outcome}: {reason}");
                }
                rows.push(row(o, outcome));
            }
            print_table(&["ID", "TYPE", "SHARD", "STATE", "ORIGIN", "REASON"], rows);
        }
        ClusterOp::Explain => {
            if body["paused"] == Value::Bool(true) {
                println!("scheduling is paused");
            }
            for report in body["checkers"].as_array().into_iter().flatten() {
                println!("{}:", cell(&report["checker"]));
                for finding in report["findings"].as_array().into_iter().flatten() {
                    println!("  {}", cell(finding));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

pub fn run_cert(args: CertArgs) -> Result<(), String> {
    let written = match args.op {
        CertOp::CreateCa { certs_dir } => crate::security::create_ca(&certs_dir),
        CertOp::CreateNode { ca_dir, out_dir, hosts } => crate::security::create_node_cert(&ca_dir, &out_dir, &hosts),
    }
    .map_err(|e| e.to_string())?;
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_parsing() {
        let parsed = parse_initial_cluster("1=127.0.0.1:1,2=127.0.0.1:2").unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[&2], "127.0.0.1:2");
        assert!(parse_initial_cluster("1=a,1=b").is_err());
        assert!(parse_initial_cluster("x=a").is_err());
        assert!(parse_initial_cluster("").is_err());
    }
}

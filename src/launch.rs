//! Starting a node: check the data dir's identity with the peers, open sled and the
//! replicas on disk, serve HTTP, and start the node's loops.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use tokio::sync::watch;

use crate::identity::{self, Identity, IdentityAnswer, IdentityQuery};
use crate::node::{new_random_id, Node, NodeConfig, PlantedBug};
use crate::placement::store::{PdKind, PdState};
use crate::placement::{pd_voters, ClusterMap, NodeId, PD_GROUP};
use crate::raft::batch::RaftSender;
use crate::raft::log_store::{
    make_blob_writes_synchronous, migrate_from_sled, DurableFiles, Flusher, APPEND_PAYLOAD_BYTES_MAX,
};
use crate::raft::network::{post_internal, Credentials, PlantedHold};
use crate::raft::registry::{FirstEntry, Registry, RegistryConfig, RegistryError};
use crate::raft::transport::{http_client, NetListener};
use crate::raft::wal::{Wal, SEGMENT_BYTES_DEFAULT, WAL_DIR};
use crate::shard::store::{ShardKind, ShardState};

/// A started node; dropping it does not stop it: call [`RunningNode::shutdown`].
pub struct RunningNode {
    pub node: Arc<Node>,
    pub local_addr: SocketAddr,
    stop_tx: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("opening the database in {path}: {source}")]
    Storage { path: String, source: sled::Error },
    #[error("binding {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("{0}")]
    Registry(#[from] crate::raft::registry::RegistryError),
    #[error("{0}")]
    Identity(String),
}

/// How long a starting node waits for each peer's answer about the cluster.
pub const IDENTITY_QUERY_TIMEOUT_MS: u64 = 1_000;

/// Loads (or creates) the data dir's identity and checks it with every reachable peer
/// of `--initial-cluster` before the node acts as any member. Refuses a data dir that
/// belongs to another node or cluster, that lost its database, or whose incarnation the
/// cluster does not know as this node's (the disk was wiped or replaced).
async fn check_identity(
    config: &NodeConfig,
    client: &crate::raft::transport::HttpClient,
    db_path: &std::path::Path,
) -> Result<(Identity, Option<u128>), StartError> {
    let refuse = StartError::Identity;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| refuse(format!("creating {}: {e}", config.data_dir.display())))?;
    let guard = !config.has_planted_bug(PlantedBug::NoIdentityGuard);
    let has_database = db_path.join("conf").exists();
    let mut identity = match identity::load(&config.data_dir).map_err(|e| refuse(e.to_string()))? {
        Some(found) if found.node_id != config.node_id => {
            return Err(refuse(format!(
                "{} belongs to node {}, not to node {}: wrong --data-dir or --node-id",
                identity::path(&config.data_dir).display(),
                found.node_id,
                config.node_id
            )))
        }
        Some(found) if found.cluster_id.is_some() && !has_database => {
            return Err(refuse(format!(
                "{} says this is node {} of cluster {}, but its database ({}) is gone: the data dir lost its \
                 data. Recover as for a lost disk (docs/operations.md).",
                identity::path(&config.data_dir).display(),
                found.node_id,
                identity::hex(found.cluster_id.unwrap_or_default()),
                db_path.display()
            )))
        }
        Some(found) => found,
        None if has_database => {
            return Err(refuse(format!(
                "{} holds a database but no identity record ({}): refusing a data dir this node cannot verify",
                config.data_dir.display(),
                identity::IDENTITY_FILE
            )))
        }
        None => {
            let fresh = Identity {
                node_id: config.node_id,
                incarnation: new_random_id(config.rng_seed, config.node_id, 0x1dc0),
                cluster_id: None,
            };
            identity::store(&config.data_dir, &fresh).map_err(|e| refuse(e.to_string()))?;
            if let Some(parent) = config.data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                let _ = crate::raft::log_store::sync_dir(parent);
            }
            tracing::info!(node = config.node_id, incarnation = %identity::hex(fresh.incarnation), "new data dir");
            fresh
        }
    };
    let credentials = Credentials::new(
        config.cluster_secret.clone(),
        config.node_id,
        identity.incarnation,
        identity.cluster_id,
    );
    let query = IdentityQuery {
        node_id: identity.node_id,
        incarnation: identity.incarnation,
        cluster_id: identity.cluster_id,
    };
    // A joining node does not know its peers' ids: their answers are numbered 0.
    let peers: Vec<(NodeId, &String)> = config
        .initial_cluster
        .iter()
        .filter(|(id, _)| **id != config.node_id)
        .map(|(id, addr)| (*id, addr))
        .chain(config.join.iter().map(|addr| (0, addr)))
        .collect();
    let asks = peers.into_iter().map(|(id, addr)| {
        let (credentials, query) = (&credentials, &query);
        async move {
            let answer = post_internal::<IdentityQuery, IdentityAnswer>(
                client,
                addr,
                None,
                "/internal/identity",
                credentials,
                query,
                Duration::from_millis(IDENTITY_QUERY_TIMEOUT_MS),
            )
            .await;
            (id, answer)
        }
    });
    let mut answers = Vec::new();
    for (peer, answer) in futures::future::join_all(asks).await {
        match answer {
            Ok(answer) => answers.push((peer, answer)),
            Err(e) => tracing::debug!(peer, error = %e, "peer did not answer the identity query"),
        }
    }
    let judged = match identity::judge(&identity, &answers, !config.join.is_empty()) {
        Err(refusal) if !guard => {
            tracing::warn!("planted bug: ignoring the identity refusal: {refusal}");
            answers
                .iter()
                .find_map(|(_, a)| a.cluster_id)
                .filter(|_| identity.cluster_id.is_none())
        }
        judged => judged.map_err(refuse)?,
    };
    let recorded = identity.cluster_id;
    if let Some(cluster) = judged {
        // Carried on every request from now on; recorded on disk once this node hosts a
        // replica (`adopt_cluster_id`), so a record naming a cluster always comes with data.
        identity.cluster_id = Some(cluster);
        tracing::info!(node = config.node_id, cluster = %identity::hex(cluster), "joining the existing cluster");
    }
    Ok((identity, recorded))
}

#[allow(clippy::result_large_err)] // the state openers return openraft's storage error
pub async fn start(config: NodeConfig) -> Result<RunningNode, StartError> {
    config.validate().map_err(StartError::Config)?;
    // Before any group starts: a metric recorded with no recorder installed is dropped,
    // and the leader gauges count by increments (a PD leader elected early went uncounted).
    crate::api::install_metrics();
    crate::telemetry::register_node(&config.node_id.to_string());
    let raft_config = Arc::new(config.raft_config().map_err(StartError::Config)?);
    let db_path = config.data_dir.join("db");
    let mut client = http_client(config.net, config.tls.as_ref().map(|t| t.client.clone()));
    if let Some(demo) = &config.demo {
        client = client.with_link_filter(config.node_id, demo.clone());
    }
    // Before anything opens a Raft group: is this data dir the node it claims to be?
    let (identity, recorded_cluster) = check_identity(&config, &client, &db_path).await?;
    let blob_writes_synchronous = match make_blob_writes_synchronous(&db_path) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                error = %e,
                path = %db_path.display(),
                "cannot make sled's blob files durable as they are written on this filesystem: a power \
                 cut may lose a large value or page, and leave a replica's state behind its applied index \
                 (docs/durability.md)"
            );
            false
        }
    };
    metrics::gauge!("midasflow_storage_blob_writes_synchronous", "node" => config.node_id.to_string())
        .set(if blob_writes_synchronous { 1.0 } else { 0.0 });
    // No background flushing: durability comes only from the group-commit flusher, and a
    // background thread would make simulations nondeterministic.
    let db = sled::Config::new()
        .path(&db_path)
        .cache_capacity(config.cache_capacity_bytes)
        .flush_every_ms(None)
        .open()
        .map_err(|source| StartError::Storage {
            path: db_path.display().to_string(),
            source,
        })?;
    let (map_tx, _) = watch::channel(Arc::new(ClusterMap::default()));
    let files = DurableFiles::open(&db_path)
        .map_err(|e| RegistryError::Storage(format!("making {} durable: {e}", db_path.display())))?;
    // One log and one flusher for every group of every kind: one group commit per node.
    let wal_path = config.data_dir.join(WAL_DIR);
    let storage_error =
        |e: std::io::Error| RegistryError::Storage(format!("the Raft log in {}: {e}", wal_path.display()));
    let (wal, recovered) = Wal::open(&wal_path, SEGMENT_BYTES_DEFAULT).map_err(storage_error)?;
    tracing::info!(
        segments = recovered.segments,
        records = recovered.records,
        "replayed the Raft log"
    );
    if recovered.torn_bytes > 0 {
        tracing::warn!(
            bytes = recovered.torn_bytes,
            "the Raft log ended in a torn record (a crash mid-write); it was cut at the last whole record"
        );
    }
    let moved = migrate_from_sled(&db, &wal).map_err(storage_error)?;
    if moved > 0 {
        tracing::info!(entries = moved, "moved the Raft log out of the state database");
    }
    let flusher = Flusher::start(
        db.clone(),
        files,
        Arc::new(wal),
        config.flush_mode,
        config.node_id.to_string(),
    );
    let registry_config = Arc::new(RegistryConfig {
        node_id: config.node_id,
        raft_config,
        rng_seed: config.rng_seed,
        credentials: Arc::new(Credentials::new(
            config.cluster_secret.clone(),
            config.node_id,
            identity.incarnation,
            identity.cluster_id,
        )),
        probe: config.probe(),
        planted_quiet_ignores_own_view: config.has_planted_bug(PlantedBug::QuietReadsWithoutQuorum),
        planted_lasting_leader_hints: config.has_planted_bug(PlantedBug::LastingLeaderHints),
        max_campaigning_replicas: config.raft.max_campaigning_replicas,
        append_payload_bytes_max: config.raft.append_payload_bytes_max,
        planted_campaign_slots_without_wake: config.has_planted_bug(PlantedBug::CampaignSlotsWithoutWake),
        planted_campaign_gate_by_tick_only: config.has_planted_bug(PlantedBug::CampaignGateByTickOnly),
        planted_leaderless_gates_open: config.has_planted_bug(PlantedBug::LeaderlessGatesOpen),
        planted_hint_followers_never_ask: config.has_planted_bug(PlantedBug::HintFollowersNeverAsk),
        planted_campaign_budget_ignored: config.has_planted_bug(PlantedBug::CampaignBudgetIgnored),
        planted_hold: if config.has_planted_bug(PlantedBug::CommitHoldAnswersChecks) {
            PlantedHold::AnswersChecks
        } else if config.has_planted_bug(PlantedBug::CommitHoldKeepsHeartbeats) {
            PlantedHold::KeepsHeartbeats
        } else {
            PlantedHold::Off
        },
    });
    // One batching sender for every group of every kind: a peer gets one request per
    // round trip, whatever the number of groups. A batch packs as many bytes as one
    // group's bounded append, so several groups' large appends travel side by side (each
    // with its own append timeout) rather than one behind another in the same request.
    let sender = RaftSender::new(
        client,
        registry_config.credentials.clone(),
        registry_config.probe.clone(),
        APPEND_PAYLOAD_BYTES_MAX.min(config.limits.max_append_body_bytes()),
        config.raft.batches_in_flight_per_peer,
        config.election_timeouts(),
    );
    let skip_range_check = config.has_planted_bug(PlantedBug::SplitWithoutRangeCheck);
    let shards = Arc::new(Registry::<ShardKind>::new(
        db.clone(),
        flusher.clone(),
        sender.clone(),
        registry_config.clone(),
        Arc::new(move |db, group| ShardState::open(db, group, skip_range_check)),
    )?);
    let pd_map_tx = map_tx.clone();
    let pd = Arc::new(Registry::<PdKind>::new(
        db,
        flusher,
        sender,
        registry_config,
        Arc::new(move |db, group| PdState::open(db, group, pd_map_tx.clone())),
    )?);
    let hosted = shards.hosted_on_disk()?;
    // A node whose replicas all moved away keeps their tombstones: only a store with
    // neither lost its data.
    if let (Some(cluster), true) = (recorded_cluster, hosted.is_empty() && !shards.has_tombstones()) {
        return Err(StartError::Identity(format!(
            "{} says this is node {} of cluster {}, but the database in {} holds no replica: it lost its data \
             (an unreadable or empty store is never started as a fresh one). Recover as for a lost disk \
             (docs/operations.md).",
            identity::path(&config.data_dir).display(),
            config.node_id,
            identity::hex(cluster),
            db_path.display()
        )));
    }
    for group in hosted {
        match group {
            _ if shards.is_tombstoned(group) => shards.finish_removal(group).await?,
            PD_GROUP => drop(pd.ensure(group, FirstEntry::Empty, None).await?),
            _ => drop(shards.ensure(group, FirstEntry::Empty, None).await?),
        }
    }
    let voters = pd_voters(&config.initial_cluster);
    // An initial PD voter whose PD replica moved away keeps its tombstone.
    if voters.contains(&config.node_id) && pd.get(PD_GROUP).is_none() && !pd.is_tombstoned(PD_GROUP) {
        let members: BTreeMap<u64, BasicNode> = voters
            .iter()
            .map(|v| (*v, BasicNode::new(&config.initial_cluster[v])))
            .collect();
        let first = match voters.first() == Some(&config.node_id) {
            true => FirstEntry::Campaign(members),
            false => FirstEntry::Empty,
        };
        pd.ensure(PD_GROUP, first, None).await?;
    }
    let listener = NetListener::bind(config.net, &config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let local_addr = axum::serve::Listener::local_addr(&listener).map_err(|source| StartError::Bind {
        addr: config.listen.clone(),
        source,
    })?;
    let node = Arc::new(Node::new(config, shards, pd, map_tx, recorded_cluster));
    let (stop_tx, stop_rx) = watch::channel(false);
    let router = crate::api::router(node.clone());
    let server = tokio::spawn(crate::api::server::serve(
        listener,
        router,
        node.config.tls.as_ref().map(|t| t.server.clone()),
        node.config.limits.clone(),
        node.label(),
        stop_rx.clone(),
    ));
    let loops = node.spawn_loops(&stop_rx);
    tracing::info!(node = node.config.node_id, addr = %local_addr, "node started");
    Ok(RunningNode {
        node,
        local_addr,
        stop_tx,
        server,
        loops,
    })
}

impl RunningNode {
    /// Stops serving, stops every group and flushes the database.
    pub async fn shutdown(self) {
        self.node.draining.store(true, Ordering::Relaxed);
        let _ = self.stop_tx.send(true);
        for handle in self.loops {
            let _ = handle.await;
        }
        // Open keep-alive connections can hold graceful shutdown; don't wait on them forever.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.server).await;
        self.node.shutdown_replicas().await;
    }
}

//! The placement driver with real processes: a joined node gets its share under load, a
//! drained node empties and is removed, a dead PD voter is replaced and its replicas are
//! re-created, and manual operators, `explain` and the settings work through the CLI.
//! Shards split by themselves when they grow and by hand through the CLI; the shards
//! always tile the ring, and a split child moved to a new node has its data there.
//! Every acknowledged write reads back afterwards.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{json, Value};

use midasflow::placement::key_hash;

use crate::harness::{get, put, serial, version_of, wait_for, wait_until, Cluster, Writer, Writes};

const SHARDS: usize = 8;
const REPLICAS: usize = 3;

/// Replicas and leaders per node.
#[derive(Debug)]
struct Placement {
    replicas: BTreeMap<u64, usize>,
    leaders: BTreeMap<u64, usize>,
}

fn ids(list: &Value) -> Vec<u64> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_u64().or_else(|| v["node_id"].as_u64()))
        .collect()
}

fn spread(counts: &BTreeMap<u64, usize>) -> usize {
    counts.values().max().unwrap_or(&0) - counts.values().min().unwrap_or(&0)
}

/// Where the shards are, from `/v1/shards` on node `via`: Err unless there are [`SHARDS`]
/// and every shard has exactly 3 voters, all on `nodes`, no learner, and a leader among
/// its voters.
async fn placement(cluster: &Cluster, via: u64, nodes: &[u64]) -> Result<Placement, String> {
    placement_of(cluster, via, nodes, Some(SHARDS)).await
}

/// As [`placement`], with `shards` shards (any number if `None`: after splits).
async fn placement_of(cluster: &Cluster, via: u64, nodes: &[u64], count: Option<usize>) -> Result<Placement, String> {
    let body = cluster.try_json(via, "/v1/shards").await?;
    let shards = body["shards"].as_array().ok_or("no shards in /v1/shards")?;
    if count.is_some_and(|count| shards.len() != count) {
        return Err(format!("{} shards", shards.len()));
    }
    let zero = || nodes.iter().map(|n| (*n, 0)).collect::<BTreeMap<u64, usize>>();
    let (mut replicas, mut leaders) = (zero(), zero());
    for shard in shards {
        let (id, voters, learners) = (&shard["id"], ids(&shard["replicas"]), ids(&shard["learners"]));
        if voters.len() != REPLICAS || !learners.is_empty() || voters.iter().any(|n| !nodes.contains(n)) {
            return Err(format!("shard {id}: replicas {voters:?}, learners {learners:?}"));
        }
        for n in &voters {
            *replicas.get_mut(n).unwrap() += 1;
        }
        match shard["leader"].as_u64().filter(|l| voters.contains(l)) {
            Some(leader) => *leaders.get_mut(&leader).unwrap() += 1,
            None => return Err(format!("shard {id}: leader {} not among {voters:?}", shard["leader"])),
        }
    }
    Ok(Placement { replicas, leaders })
}

/// Operators running, as node `via` sees them.
async fn running_operators(cluster: &Cluster, via: u64) -> Result<Vec<Value>, String> {
    let ops = cluster.try_json(via, "/v1/operators").await?;
    Ok(ops["running"].as_array().cloned().unwrap_or_default())
}

/// Ok when the shards are on `nodes` with replica and leader counts within 1 of each other
/// and no operator runs (so the scheduler has nothing left to do). Leaders are counted
/// from `/v1/shards`: `/v1/cluster`'s `leaders` also counts the PD group's leader, which
/// the scheduler does not balance.
async fn balanced(cluster: &Cluster, via: u64, nodes: &[u64]) -> Result<Placement, String> {
    balanced_of(cluster, via, nodes, Some(SHARDS)).await
}

/// As [`balanced`], with `count` shards (any number if `None`).
async fn balanced_of(cluster: &Cluster, via: u64, nodes: &[u64], count: Option<usize>) -> Result<Placement, String> {
    let placement = placement_of(cluster, via, nodes, count).await?;
    // /v1/cluster's per-node replica counts come from the same map: they must agree.
    let view = cluster.try_json(via, "/v1/cluster").await?;
    for node in view["nodes"].as_array().into_iter().flatten() {
        let id = node["id"].as_u64().unwrap_or(0);
        if let Some(count) = placement.replicas.get(&id) {
            if node["state"] != "up" || node["shards"].as_u64() != Some(*count as u64) {
                return Err(format!(
                    "/v1/cluster shows node {id} as {node} but it holds {count} replicas"
                ));
            }
        }
    }
    if spread(&placement.replicas) > 1 || spread(&placement.leaders) > 1 {
        return Err(format!("not balanced: {placement:?}"));
    }
    let running = running_operators(cluster, via).await?;
    if !running.is_empty() {
        return Err(format!("{placement:?}, operators running: {running:?}"));
    }
    Ok(placement)
}

/// Starts 3 initial nodes with `extra` and joins node 4, waiting until it has its share.
async fn four_balanced_nodes(extra: &[&str]) -> Cluster {
    let mut args = vec!["--initial-shards", "8"];
    args.extend_from_slice(extra);
    let mut cluster = Cluster::start(3, &args).await;
    cluster.join(4, &[1, 2], &[]);
    wait_for("node 4 to join and get its share", Duration::from_secs(60), || {
        balanced(&cluster, 1, &[1, 2, 3, 4])
    })
    .await;
    cluster
}

/// Node `id` in `/v1/cluster` on node `via`.
async fn member(cluster: &Cluster, via: u64, id: u64) -> Result<Value, String> {
    let view = cluster.try_json(via, "/v1/cluster").await?;
    view["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"] == id)
        .cloned()
        .ok_or_else(|| format!("node {id} is not in {view}"))
}

/// A finished operator by id, if it has finished.
async fn finished(cluster: &Cluster, via: u64, id: u64) -> Result<Option<Value>, String> {
    let ops = cluster.try_json(via, "/v1/operators").await?;
    Ok(ops["finished"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["id"] == id)
        .cloned())
}

/// The findings of one `explain` checker.
fn findings(explain: &Value, checker: &str) -> Vec<String> {
    explain["checkers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["checker"] == checker)
        .flat_map(|c| c["findings"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect()
}

fn outcomes(ops: &Value) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for op in ops["finished"].as_array().into_iter().flatten() {
        let kind = format!(
            "{} {}",
            op["kind"]["type"].as_str().unwrap_or("?"),
            op["outcome"]["outcome"].as_str().unwrap_or("?")
        );
        *counts.entry(kind).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_under_load_balances_and_loses_nothing() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3, &["--initial-shards", "8"]).await;
    let writer = Writer::start(&cluster, 1, "join-");
    wait_until("the writer to get going", Duration::from_secs(20), || async {
        writer.acked() >= 50
    })
    .await;

    let joined = Instant::now();
    cluster.join(4, &[1, 2], &[]);
    let placement = wait_for(
        "node 4 to get its share of replicas and leaders",
        Duration::from_secs(60),
        || balanced(&cluster, 1, &[1, 2, 3, 4]),
    )
    .await;
    eprintln!("balanced {:.1?} after the join: {placement:?}", joined.elapsed());
    // 24 replicas within 1 of each other on 4 nodes: 6 each.
    assert!(placement.replicas.values().all(|c| *c == 6), "{placement:?}");
    assert!(placement.leaders.values().all(|c| *c == 2), "{placement:?}");
    let ops = cluster.json(1, "/v1/operators").await;
    eprintln!("operators: {:?}", outcomes(&ops));

    let writes = writer.stop().await;
    eprintln!("writer: {}", writes.summary());
    writes.assert_only_retryable_errors();
    // Read back through the joined node: it routes like any other.
    writes.verify(&cluster, 4, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_then_remove() {
    let _serial = serial().await;
    let cluster = four_balanced_nodes(&[]).await;
    let writer = Writer::start(&cluster, 1, "drain-");
    wait_until("the writer to get going", Duration::from_secs(20), || async {
        writer.acked() >= 20
    })
    .await;

    // An up node that holds replicas cannot be removed: that would lose them.
    let refused = cluster.send_json(1, Method::DELETE, "/v1/nodes/4", Value::Null).await;
    assert_eq!(refused.status, 409, "{}", String::from_utf8_lossy(&refused.body));
    let error: Value = serde_json::from_slice(&refused.body).expect("a JSON error body");
    assert_eq!(error["error"]["code"], "conflict", "{error}");
    assert_eq!(member(&cluster, 1, 4).await.unwrap()["state"], "up");

    let drained = Instant::now();
    let reply = cluster
        .send_json(1, Method::POST, "/v1/nodes/4/drain", Value::Null)
        .await;
    assert_eq!(reply.status, 202, "{}", String::from_utf8_lossy(&reply.body));
    wait_for("node 4 to be drained", Duration::from_secs(60), || async {
        let node = member(&cluster, 1, 4).await?;
        let empty = node["state"] == "drained" && node["shards"] == 0 && node["leaders"] == 0;
        empty.then_some(()).ok_or(format!("{node}"))
    })
    .await;
    eprintln!("drained in {:.1?}", drained.elapsed());
    // Its replicas went to the others: every shard still has 3 voters (waited for, as
    // node 1's leader hints may lag a change of leader).
    let placement = wait_for("every shard on nodes 1 to 3", Duration::from_secs(10), || {
        placement(&cluster, 1, &[1, 2, 3])
    })
    .await;
    assert!(placement.replicas.values().all(|c| *c == SHARDS), "{placement:?}");

    let reply = cluster.send_json(1, Method::DELETE, "/v1/nodes/4", Value::Null).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    wait_for("node 4 to show as removed", Duration::from_secs(10), || async {
        let node = member(&cluster, 1, 4).await?;
        (node["state"] == "removed").then_some(()).ok_or(format!("{node}"))
    })
    .await;

    let writes = writer.stop().await;
    eprintln!("writer: {}", writes.summary());
    writes.assert_only_retryable_errors();
    writes.verify(&cluster, 1, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_pd_voter_re_replicates() {
    let _serial = serial().await;
    let mut cluster = four_balanced_nodes(&["--down-after-secs", "3"]).await;
    let voters = ids(&cluster.json(1, "/v1/cluster").await["pd_voters"]);
    assert!(voters.contains(&3), "node 3 is a PD voter: {voters:?}");
    let writer = Writer::start(&cluster, 1, "voter-");
    wait_until("the writer to get going", Duration::from_secs(20), || async {
        writer.acked() >= 20
    })
    .await;

    let killed = Instant::now();
    cluster.kill(3);
    wait_for(
        "every shard on 3 live nodes and node 3 replaced as a PD voter",
        Duration::from_secs(90),
        || async {
            let view = cluster.try_json(1, "/v1/cluster").await?;
            let voters = ids(&view["pd_voters"]);
            if voters.len() != REPLICAS || voters.contains(&3) {
                return Err(format!("PD voters {voters:?}"));
            }
            placement(&cluster, 1, &[1, 2, 4]).await
        },
    )
    .await;
    eprintln!("re-replicated {:.1?} after the kill", killed.elapsed());

    let writes = writer.stop().await;
    eprintln!("writer: {}", writes.summary());
    writes.assert_only_retryable_errors();
    writes.verify(&cluster, 1, Duration::from_secs(30)).await;

    // Down and holding nothing: it can be retired.
    let removed = cluster.cli(1, &["remove", "3"]).await;
    assert!(removed.success, "{removed:?}");
    wait_for("node 3 to show as removed", Duration::from_secs(10), || async {
        let node = member(&cluster, 1, 3).await?;
        (node["state"] == "removed").then_some(()).ok_or(format!("{node}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_operators_and_explain() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3, &["--initial-shards", "8", "--schedule-paused"]).await;
    cluster.join(4, &[1], &[]);
    wait_for("node 4 to join", Duration::from_secs(30), || async {
        let node = member(&cluster, 1, 4).await?;
        (node["state"] == "up").then_some(()).ok_or(format!("{node}"))
    })
    .await;

    // Paused, the scheduler says what it would do and does nothing.
    let explain = wait_for(
        "explain to name the move it would make",
        Duration::from_secs(30),
        || async {
            let explain = cluster.try_json(1, "/v1/schedule/explain").await?;
            let paused = findings(&explain, "limits")
                .iter()
                .any(|f| f.contains("scheduling is paused"));
            let proposes = findings(&explain, "balance-replicas")
                .iter()
                .any(|f| f.contains("propose move") && f.contains("to node 4"));
            (explain["paused"] == true && paused && proposes)
                .then_some(explain.clone())
                .ok_or(format!("{explain}"))
        },
    )
    .await;
    eprintln!("explain: {}", explain["checkers"]);
    let table = cluster.cli(1, &["explain"]).await;
    assert!(
        table.success && table.stdout.contains("scheduling is paused"),
        "{table:?}"
    );
    let ops = cluster.json(1, "/v1/operators").await;
    assert_eq!(ops["running"], json!([]), "paused: nothing runs");
    assert_eq!(ops["finished"], json!([]), "paused: nothing ran");

    // Move a follower replica of a shard to node 4 (the leader stays where it is).
    let shards = cluster.json(1, "/v1/shards").await;
    let shard = &shards["shards"][0];
    let (id, voters, leader) = (
        shard["id"].as_u64().unwrap(),
        ids(&shard["replicas"]),
        shard["leader"].as_u64(),
    );
    let from = *voters.iter().find(|n| Some(**n) != leader).unwrap();
    let moved = cluster
        .cli(1, &["move", &id.to_string(), "--from", &from.to_string(), "--to", "4"])
        .await;
    assert!(moved.success, "{moved:?}");
    let op: Value = serde_json::from_str(&moved.stdout).expect("the CLI prints the operator");
    let op = op["operator"].as_u64().expect("an operator id");
    let path = format!("/v1/shards/{id}");
    wait_for("the move to finish", Duration::from_secs(30), || async {
        let done = finished(&cluster, 1, op)
            .await?
            .ok_or(format!("operator {op} is not finished"))?;
        if done["outcome"]["outcome"] != "succeeded" || done["origin"] != "manual" {
            return Err(format!("operator {op}: {done}"));
        }
        let shard = cluster.try_json(1, &path).await?;
        let (voters, learners) = (ids(&shard["replicas"]), ids(&shard["learners"]));
        let moved = voters.contains(&4) && !voters.contains(&from) && voters.len() == REPLICAS && learners.is_empty();
        moved.then_some(()).ok_or(format!("shard {id}: {shard}"))
    })
    .await;

    // Then its leadership to node 4.
    let transferred = cluster.cli(1, &["transfer-leader", &id.to_string(), "--to", "4"]).await;
    assert!(transferred.success, "{transferred:?}");
    let op: Value = serde_json::from_str(&transferred.stdout).expect("the CLI prints the operator");
    let op = op["operator"].as_u64().expect("an operator id");
    wait_for("the leader transfer to finish", Duration::from_secs(30), || async {
        let done = finished(&cluster, 1, op)
            .await?
            .ok_or(format!("operator {op} is not finished"))?;
        if done["outcome"]["outcome"] != "succeeded" || done["kind"]["type"] != "transfer_leader" {
            return Err(format!("operator {op}: {done}"));
        }
        let shard = cluster.try_json(1, &path).await?;
        (shard["leader"] == 4)
            .then_some(())
            .ok_or(format!("shard {id}: {shard}"))
    })
    .await;

    // A move to a node that already holds the shard does not fit: 409 with a JSON error.
    let voters = ids(&cluster.json(1, &path).await["replicas"]);
    let body = json!({"from": voters[0], "to": voters[1]});
    let refused = cluster.send_json(1, Method::POST, &format!("{path}/move"), body).await;
    assert_eq!(refused.status, 409, "{}", String::from_utf8_lossy(&refused.body));
    let error: Value = serde_json::from_slice(&refused.body).expect("a JSON error body");
    assert_eq!(error["error"]["code"], "conflict", "{error}");
    assert!(
        error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{error}"
    );
    let (a, b) = (voters[0].to_string(), voters[1].to_string());
    let refused = cluster
        .cli(1, &["move", &id.to_string(), "--from", &a, "--to", &b])
        .await;
    assert!(!refused.success && refused.stderr.contains("409"), "{refused:?}");

    // Unpaused, the scheduler picks up where explain said it would.
    let set = cluster.cli(1, &["config", "set", "paused=false"]).await;
    assert!(set.success, "{set:?}");
    let config: Value = serde_json::from_str(&cluster.cli(1, &["config", "get"]).await.stdout).unwrap();
    assert_eq!(config["paused"], false, "{config}");
    let explain = cluster.json(1, "/v1/schedule/explain").await;
    assert_eq!(explain["paused"], false, "{explain}");
    assert!(
        !findings(&explain, "limits").iter().any(|f| f.contains("paused")),
        "{}",
        explain["checkers"]
    );
    wait_for(
        "the scheduler to start an operator",
        Duration::from_secs(30),
        || async {
            let ops = cluster.try_json(1, "/v1/operators").await?;
            let mut all = ops["running"]
                .as_array()
                .into_iter()
                .chain(ops["finished"].as_array())
                .flatten();
            all.any(|o| o["origin"] == "scheduler")
                .then_some(())
                .ok_or(format!("{ops}"))
        },
    )
    .await;
}

// ---- Splits ----------------------------------------------------------------------------

/// The ring's end: the last shard's range ends here.
const RING_END: u128 = 1 << 64;

/// A hash as the API shows it: `0x…` hex, up to 2^64.
fn hash_of(value: &Value) -> Result<u128, String> {
    value
        .as_str()
        .and_then(|s| s.strip_prefix("0x"))
        .and_then(|hex| u128::from_str_radix(hex, 16).ok())
        .ok_or_else(|| format!("{value} is not a 0x… hash"))
}

/// The shards in node `via`'s map, sorted by start; Err unless they tile the ring: the
/// first starts at 0, each starts where the one before it ends, the last ends at 2^64.
async fn tiling(cluster: &Cluster, via: u64) -> Result<Vec<Value>, String> {
    let body = cluster.try_json(via, "/v1/shards").await?;
    let mut ranged = Vec::new();
    for shard in body["shards"].as_array().ok_or("no shards in /v1/shards")? {
        let (start, end) = (hash_of(&shard["range"]["start"])?, hash_of(&shard["range"]["end"])?);
        ranged.push((start, end, shard.clone()));
    }
    ranged.sort_by_key(|(start, _, _)| *start);
    let mut next = 0;
    for (start, end, shard) in &ranged {
        if *start != next || end <= start {
            return Err(format!(
                "node {via}: shard {} is [{start:#x}, {end:#x}) after a shard ending at {next:#x}",
                shard["id"]
            ));
        }
        next = *end;
    }
    if next != RING_END {
        return Err(format!("node {via}: the last shard ends at {next:#x}"));
    }
    Ok(ranged.into_iter().map(|(_, _, shard)| shard).collect())
}

/// A node's shards sorted by start, and their (id, range) pairs for comparing maps.
type TiledMap = (Vec<Value>, Vec<(Value, Value)>);

/// Waits until every live node's map holds the same shards (ids and ranges), tiling the
/// ring, with at least `min` of them; returns them sorted by start.
async fn tiled_everywhere(cluster: &Cluster, min: usize, timeout: Duration) -> Vec<Value> {
    wait_for(
        &format!("at least {min} shards tiling the ring on every node"),
        timeout,
        || async {
            let mut seen: Option<TiledMap> = None;
            for node in cluster.live_nodes() {
                let shards = tiling(cluster, node).await?;
                let ranges: Vec<(Value, Value)> =
                    shards.iter().map(|s| (s["id"].clone(), s["range"].clone())).collect();
                match &seen {
                    Some((_, first)) if *first != ranges => {
                        return Err(format!("node {node}'s map differs: {ranges:?} vs {first:?}"))
                    }
                    Some(_) => {}
                    None => seen = Some((shards, ranges)),
                }
            }
            let (shards, _) = seen.ok_or("no live node")?;
            (shards.len() >= min)
                .then_some(shards.clone())
                .ok_or(format!("{} shards", shards.len()))
        },
    )
    .await
}

/// Live keys per shard, each from the replica on its leader (whose `/v1/shards/{id}` has
/// "keys"), read while node `via`'s map stayed the same; Err if a leader is unknown or
/// no longer leads, or the routing changed meanwhile (a split in between would count
/// its keys twice or not at all).
async fn keys_by_shard(cluster: &Cluster, via: u64) -> Result<BTreeMap<u64, u64>, String> {
    let before = cluster.try_json(via, "/v1/shards").await?;
    let mut keys = BTreeMap::new();
    for shard in before["shards"].as_array().into_iter().flatten() {
        let id = shard["id"].as_u64().ok_or("a shard without an id")?;
        let leader = shard["leader"]
            .as_u64()
            .filter(|l| cluster.addrs.contains_key(l))
            .ok_or(format!("shard {id}: leader {}", shard["leader"]))?;
        let detail = cluster.try_json(leader, &format!("/v1/shards/{id}")).await?;
        if detail["local_replica"]["state"] != "Leader" {
            return Err(format!("shard {id}: node {leader} does not lead it: {detail}"));
        }
        let count = detail["keys"]
            .as_u64()
            .ok_or(format!("shard {id}: no keys in {detail}"))?;
        keys.insert(id, count);
    }
    let after = cluster.try_json(via, "/v1/routing").await?;
    if after["routing_version"] != before["routing_version"] {
        return Err(format!(
            "the routing changed from {} to {} while counting",
            before["routing_version"], after["routing_version"]
        ));
    }
    Ok(keys)
}

/// Finished split operators in `/v1/operators` (which keeps the last 32 finished), by outcome.
fn finished_splits(ops: &Value) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for op in ops["finished"].as_array().into_iter().flatten() {
        if op["kind"]["type"] == "split" {
            let outcome = op["outcome"]["outcome"].as_str().unwrap_or("?").to_string();
            *counts.entry(outcome).or_default() += 1;
        }
    }
    counts
}

/// Ok when no shard is over `max_keys` (counted by its leader), no operator runs, and the
/// split checker has nothing to do. The checker alone is not enough: it judges by the
/// sizes leaders last reported, which lag the writes by a heartbeat or more.
async fn splits_settled(cluster: &Cluster, via: u64, max_keys: u64) -> Result<BTreeMap<u64, u64>, String> {
    let keys = keys_by_shard(cluster, via).await?;
    if keys.values().any(|k| *k > max_keys) {
        return Err(format!("shards over {max_keys} keys: {keys:?}"));
    }
    let running = running_operators(cluster, via).await?;
    if !running.is_empty() {
        return Err(format!("operators running: {running:?}"));
    }
    let explain = cluster.try_json(via, "/v1/schedule/explain").await?;
    let split = findings(&explain, "split");
    if split.iter().all(|f| f.starts_with("nothing to do")) && explain["running"] == 0 {
        Ok(keys)
    } else {
        Err(format!("split checker: {split:?}"))
    }
}

/// Which of the 504 writes happened, by a linearizable read of each through node `via`.
async fn unknown_written(cluster: &Cluster, via: u64, writes: &Writes) -> usize {
    let mut written = 0;
    for (key, value) in &writes.unknown {
        let reply = wait_for(&format!("a read of {key}"), Duration::from_secs(20), || async {
            let reply = get(cluster.client(via), key, "").await;
            match reply.status.as_u16() {
                200 | 404 => Ok(reply),
                status => Err(format!("{status}")),
            }
        })
        .await;
        written += usize::from(reply.status == 200 && reply.body.as_ref() == value.as_bytes());
    }
    written
}

/// Waits until the shards' key counts (from their leaders) add up to `expected`.
async fn keys_add_up(cluster: &Cluster, expected: u64, timeout: Duration) -> BTreeMap<u64, u64> {
    wait_for(
        &format!("the shards' key counts to add up to {expected}"),
        timeout,
        || async {
            let keys = keys_by_shard(cluster, 1).await?;
            let sum: u64 = keys.values().sum();
            (sum == expected)
                .then_some(keys.clone())
                .ok_or(format!("{sum} keys: {keys:?}"))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_split_multiplies_shards_and_loses_nothing() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &["--initial-shards", "2", "--split-max-keys", "30"]).await;
    let started = Instant::now();
    // Paced, so it keeps writing while the first splits happen without writing thousands.
    let writer = Writer::start_paced(&cluster, 1, "split-", Duration::from_millis(10));
    // When node 1's map first showed at least 6 shards.
    let six: std::sync::Mutex<Option<Duration>> = Default::default();
    let shard_count = || async {
        let shards = cluster.try_json(1, "/v1/shards").await?;
        let count = shards["shards"].as_array().map_or(0, |s| s.len());
        if count >= 6 {
            six.lock().unwrap().get_or_insert(started.elapsed());
        }
        Ok::<usize, String>(count)
    };
    // Stop once it has written a few hundred keys and at least one split happened under it.
    wait_for(
        "300 writes and a split while writing",
        Duration::from_secs(60),
        || async {
            let count = shard_count().await?;
            (writer.acked() >= 300 && count > 2)
                .then_some(())
                .ok_or(format!("{} acknowledged, {count} shards", writer.acked()))
        },
    )
    .await;
    let writes = writer.stop().await;
    eprintln!("writer ({:.1?}): {}", started.elapsed(), writes.summary());

    wait_for(
        "at least 6 shards and no operator running",
        Duration::from_secs(60),
        || async {
            let count = shard_count().await?;
            let running = running_operators(&cluster, 1).await?;
            (count >= 6 && running.is_empty())
                .then_some(())
                .ok_or(format!("{count} shards, running: {running:?}"))
        },
    )
    .await;
    let shards = tiled_everywhere(&cluster, 6, Duration::from_secs(20)).await;
    let ops = cluster.json(1, "/v1/operators").await;
    eprintln!(
        "{} shards {:.1?} after the writer started (6 after {:.1?}); finished splits {:?}; operators {:?}",
        shards.len(),
        started.elapsed(),
        six.lock().unwrap().unwrap(),
        finished_splits(&ops),
        outcomes(&ops)
    );
    for shard in &shards {
        assert!(shard["epoch"].as_u64().is_some_and(|e| e >= 1), "{shard}");
    }
    assert!(finished_splits(&ops).get("succeeded").is_some_and(|n| *n >= 4), "{ops}");
    assert_eq!(finished_splits(&ops).len(), 1, "only succeeded splits: {ops}");

    writes.assert_only_retryable_errors();
    writes.verify(&cluster, 2, Duration::from_secs(30)).await;
    let expected = writes.acked.len() + unknown_written(&cluster, 2, &writes).await;
    let keys = keys_add_up(&cluster, expected as u64, Duration::from_secs(30)).await;
    eprintln!("keys per shard: {keys:?}");

    // The scheduler finishes the job: in the end no shard is over the threshold, and
    // still nothing is lost.
    wait_for("the splits to settle", Duration::from_secs(60), || {
        splits_settled(&cluster, 1, 30)
    })
    .await;
    let shards = tiled_everywhere(&cluster, 6, Duration::from_secs(20)).await;
    let keys = keys_add_up(&cluster, expected as u64, Duration::from_secs(30)).await;
    eprintln!(
        "settled {:.1?} after the writer started: {} shards, keys per shard {keys:?}",
        started.elapsed(),
        shards.len()
    );
    assert!(keys.values().all(|k| *k <= 30), "{keys:?}");
    writes.verify(&cluster, 3, Duration::from_secs(30)).await;
}

/// The term of `shard`'s leader once one of the three nodes says it leads (the scheduler
/// is paused, so no transfer moves it on).
async fn leader_term(cluster: &Cluster, shard: u64) -> u64 {
    wait_for(
        &format!("a leader of shard {shard}"),
        Duration::from_secs(20),
        || async {
            for node in 1..=3 {
                let Ok(detail) = cluster.try_json(node, &format!("/v1/shards/{shard}")).await else {
                    continue;
                };
                if detail["local_replica"]["state"] == "Leader" {
                    return detail["term"].as_u64().ok_or(format!("no term: {detail}"));
                }
            }
            Err(format!("no node leads shard {shard} yet"))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_split_through_the_cli() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &["--initial-shards", "1", "--schedule-paused"]).await;

    // Without --at the point comes from the data: an empty shard, or one with a single
    // key, has none (409 with a JSON error).
    let refused = cluster.cli(1, &["split", "1"]).await;
    assert!(!refused.success && refused.stderr.contains("409"), "{refused:?}");
    let reply = cluster
        .send_json(2, Method::POST, "/v1/shards/1/split", json!({}))
        .await;
    assert_eq!(reply.status, 409, "{}", String::from_utf8_lossy(&reply.body));
    let error: Value = serde_json::from_slice(&reply.body).expect("a JSON error body");
    assert_eq!(error["error"]["code"], "conflict", "{error}");
    let mut writes = Writes::default();
    let write = |i: usize| {
        let (key, value) = (format!("manual-{i}"), format!("value-{i}"));
        let cluster = &cluster;
        async move {
            let reply = put(cluster.client(1), &key, value.as_bytes(), &[]).await;
            assert_eq!(reply.status, 200, "PUT {key}: {}", String::from_utf8_lossy(&reply.body));
            (key, value, version_of(&reply))
        }
    };
    writes.acked.push(write(0).await);
    let refused = cluster.cli(3, &["split", "1"]).await;
    assert!(
        !refused.success && refused.stderr.contains("409"),
        "one key: {refused:?}"
    );
    for i in 1..100 {
        writes.acked.push(write(i).await);
    }

    let split = cluster.cli(1, &["split", "1"]).await;
    assert!(split.success, "{split:?}");
    let op: Value = serde_json::from_str(&split.stdout).expect("the CLI prints the operator");
    let op = op["operator"].as_u64().expect("an operator id");
    let done = wait_for("the split to finish", Duration::from_secs(30), || async {
        let done = finished(&cluster, 1, op)
            .await?
            .ok_or(format!("operator {op} is not finished"))?;
        let ok =
            done["outcome"]["outcome"] == "succeeded" && done["kind"]["type"] == "split" && done["kind"]["shard"] == 1;
        ok.then_some(done.clone()).ok_or(format!("operator {op}: {done}"))
    })
    .await;
    eprintln!("split: {done}");
    let (at, child) = (hash_of(&done["kind"]["at"]).unwrap(), done["kind"]["child"].clone());
    let mut first_terms = vec![leader_term(&cluster, child.as_u64().unwrap()).await];
    let shards = tiled_everywhere(&cluster, 2, Duration::from_secs(20)).await;
    assert_eq!(shards.len(), 2, "{shards:?}");
    assert_eq!(shards[0]["id"], 1, "{shards:?}");
    assert_eq!(shards[1]["id"], child, "{shards:?}");
    assert_eq!(hash_of(&shards[0]["range"]["end"]).unwrap(), at, "{shards:?}");
    let keys = keys_add_up(&cluster, 100, Duration::from_secs(20)).await;
    eprintln!("keys per shard: {keys:?}");
    assert!(keys.values().all(|k| *k > 0), "both halves hold keys: {keys:?}");
    writes.verify(&cluster, 2, Duration::from_secs(30)).await;

    // The point must be strictly inside the shard: not its start, not its end.
    for outside in [format!("{:#018x}", 0), format!("{at:#018x}")] {
        let refused = cluster.cli(1, &["split", "1", "--at", &outside]).await;
        assert!(
            !refused.success && refused.stderr.contains("409"),
            "--at {outside}: {refused:?}"
        );
    }

    // A split at a point given: the child at the middle of its range.
    let middle = at + (RING_END - at) / 2;
    let child = child.as_u64().unwrap().to_string();
    let split = cluster
        .cli(1, &["split", &child, "--at", &format!("{middle:#x}")])
        .await;
    assert!(split.success, "{split:?}");
    let op: Value = serde_json::from_str(&split.stdout).expect("the CLI prints the operator");
    let op = op["operator"].as_u64().expect("an operator id");
    wait_for("the second split to finish", Duration::from_secs(30), || async {
        let done = finished(&cluster, 1, op)
            .await?
            .ok_or(format!("operator {op} is not finished"))?;
        (done["outcome"]["outcome"] == "succeeded")
            .then_some(())
            .ok_or(format!("operator {op}: {done}"))
    })
    .await;
    let shards = tiled_everywhere(&cluster, 3, Duration::from_secs(20)).await;
    assert_eq!(shards.len(), 3, "{shards:?}");
    assert_eq!(hash_of(&shards[2]["range"]["start"]).unwrap(), middle, "{shards:?}");
    first_terms.push(leader_term(&cluster, shards[2]["id"].as_u64().unwrap()).await);
    // Only the map's first replica of a child campaigns at once; the others start with
    // the same first entry and wait. If every replica campaigned at once, each would vote
    // for itself in term 1, and no child would be led in term 1. A machine stalled past an
    // election timeout can still let a waiting replica campaign too, hence "any".
    assert!(
        first_terms.contains(&1),
        "terms of the children's first leaders: {first_terms:?}"
    );
    let keys = keys_add_up(&cluster, 100, Duration::from_secs(20)).await;
    eprintln!("keys per shard after the split at {middle:#x}: {keys:?}");
    writes.verify(&cluster, 3, Duration::from_secs(30)).await;
    // Paused: the scheduler split nothing of its own.
    let ops = cluster.json(1, "/v1/operators").await;
    assert!(
        ops["finished"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|o| o["origin"] == "manual"),
        "{ops}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_child_moves_to_a_joined_node() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3, &["--initial-shards", "1", "--split-max-keys", "30"]).await;
    let started = Instant::now();
    let writer = Writer::start(&cluster, 1, "child-");
    wait_until("200 writes", Duration::from_secs(30), || async {
        writer.acked() >= 200
    })
    .await;
    let writes = writer.stop().await;
    eprintln!("writer: {}", writes.summary());
    writes.assert_only_retryable_errors();
    wait_for("the splits to settle", Duration::from_secs(60), || {
        splits_settled(&cluster, 1, 30)
    })
    .await;
    let shards = tiled_everywhere(&cluster, 2, Duration::from_secs(20)).await;
    eprintln!(
        "{} shards {:.1?} after the writer started",
        shards.len(),
        started.elapsed()
    );

    let joined = Instant::now();
    cluster.join(4, &[1, 2], &[]);
    let placement = wait_for("node 4 to get its share", Duration::from_secs(90), || {
        balanced_of(&cluster, 1, &[1, 2, 3, 4], None)
    })
    .await;
    eprintln!("balanced {:.1?} after the join: {placement:?}", joined.elapsed());
    let shards = tiled_everywhere(&cluster, 2, Duration::from_secs(20)).await;
    let on_4: Vec<&Value> = shards.iter().filter(|s| ids(&s["replicas"]).contains(&4)).collect();
    assert!(
        on_4.iter().any(|s| s["id"] != 1),
        "node 4 holds a split child: {shards:?}"
    );

    // Node 4's replicas hold their shards' data, as many keys as their leaders.
    let leaders = wait_for("node 4's replicas to catch up", Duration::from_secs(30), || async {
        let leaders = keys_by_shard(&cluster, 1).await?;
        for shard in &on_4 {
            let id = shard["id"].as_u64().unwrap();
            let detail = cluster.try_json(4, &format!("/v1/shards/{id}")).await?;
            let local = &detail["local_replica"];
            if local["keys"].as_u64() != leaders.get(&id).copied() {
                return Err(format!(
                    "shard {id}: node 4 has {local}, its leader {:?} keys",
                    leaders.get(&id)
                ));
            }
        }
        Ok(leaders)
    })
    .await;
    let expected = writes.acked.len() + unknown_written(&cluster, 1, &writes).await;
    assert_eq!(leaders.values().sum::<u64>(), expected as u64, "{leaders:?}");
    for shard in &on_4 {
        let detail = cluster.json(4, &format!("/v1/shards/{}", shard["id"])).await;
        eprintln!(
            "node 4: shard {} keys {} snapshot installs {}",
            shard["id"], detail["local_replica"]["keys"], detail["local_replica"]["snapshot_installs"]
        );
    }

    // Stale reads through node 4 are served by its own replica: each key of a shard it
    // holds reads back from there.
    let hosted: Vec<(u128, u128)> = on_4
        .iter()
        .map(|s| {
            (
                hash_of(&s["range"]["start"]).unwrap(),
                hash_of(&s["range"]["end"]).unwrap(),
            )
        })
        .collect();
    let mut local_reads = 0;
    for (key, value, version) in &writes.acked {
        let hash = u128::from(key_hash(key.as_bytes()));
        if !hosted.iter().any(|(start, end)| (*start..*end).contains(&hash)) {
            continue;
        }
        let reply = get(cluster.client(4), key, "?consistency=stale").await;
        let read_version = reply.header("x-version").and_then(|v| v.parse::<u64>().ok());
        assert!(
            reply.status == 200 && reply.body.as_ref() == value.as_bytes() && read_version == Some(*version),
            "stale read of {key} on node 4: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        local_reads += 1;
    }
    eprintln!("{local_reads} keys read from node 4's own replicas");
    assert!(local_reads > 0);
    writes.verify(&cluster, 4, Duration::from_secs(30)).await;
}

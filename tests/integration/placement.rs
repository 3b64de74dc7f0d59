//! The placement driver with real processes: a joined node gets its share under load, a
//! drained node empties and is removed, a dead PD voter is replaced and its replicas are
//! re-created, and manual operators, `explain` and the settings work through the CLI.
//! Every acknowledged write reads back afterwards.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{json, Value};

use crate::harness::{serial, wait_for, wait_until, Cluster, Writer};

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

/// Where the shards are, from `/v1/shards` on node `via`: Err unless every shard has
/// exactly 3 voters, all on `nodes`, no learner, and a leader among its voters.
async fn placement(cluster: &Cluster, via: u64, nodes: &[u64]) -> Result<Placement, String> {
    let body = cluster.try_json(via, "/v1/shards").await?;
    let shards = body["shards"].as_array().ok_or("no shards in /v1/shards")?;
    if shards.len() != SHARDS {
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
    let placement = placement(cluster, via, nodes).await?;
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

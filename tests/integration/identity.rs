//! Cluster identity: a node that lost its disk never comes back as itself, and no node
//! joins the wrong cluster. Every refusal leaves the running cluster serving, with nothing
//! lost.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{get, put, serial, wait_until, Cluster};

/// Waits until the PD has recorded every member's incarnation (the nodes registered).
async fn wait_registered(cluster: &Cluster, via: u64) -> Value {
    let registered = |view: &Value| {
        view["cluster_id"].is_string()
            && view["nodes"]
                .as_array()
                .is_some_and(|nodes| nodes.iter().all(|n| n["incarnation"].is_string()))
    };
    wait_until("every member registered", Duration::from_secs(20), || async {
        registered(&cluster.json(via, "/v1/cluster").await)
    })
    .await;
    cluster.json(via, "/v1/cluster").await
}

async fn write_some(cluster: &Cluster, via: u64, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for i in 0..40 {
        let key = format!("{prefix}{i}");
        assert_eq!(put(cluster.client(via), &key, key.as_bytes(), &[]).await.status, 200);
        keys.push(key);
    }
    keys
}

async fn all_readable(cluster: &Cluster, via: u64, keys: &[String]) {
    for key in keys {
        let reply = get(cluster.client(via), key, "").await;
        assert_eq!(reply.status, 200, "{key}");
        assert_eq!(reply.body.as_ref(), key.as_bytes());
    }
}

/// Wipes node `id`'s data dir and restarts it: it must refuse, saying what happened.
async fn wiped_node_is_refused(cluster: &mut Cluster, id: u64, serving: u64) {
    let before = write_some(cluster, serving, &format!("before-wipe-{id}-")).await;
    cluster.kill(id);
    // The old disk, kept aside so the machine can come back with it afterwards.
    let kept = cluster.dir.path().join(format!("kept-node{id}"));
    std::fs::rename(cluster.data_dir(id), &kept).unwrap();
    let (status, stderr) = cluster.run_expecting_exit(id, Duration::from_secs(20));
    assert!(!status.success(), "a wiped node {id} started");
    assert!(stderr.contains("lost"), "the refusal says the disk was lost: {stderr}");
    assert!(stderr.contains("--join"), "the refusal says how to recover: {stderr}");
    // The others serve on (once the groups node {id} led have elected new leaders): new
    // writes, and every earlier key.
    cluster.wait_healthy(Duration::from_secs(20)).await;
    wait_until("writes flow again", Duration::from_secs(20), || async {
        put(cluster.client(serving), &format!("probe-{id}"), b"p", &[])
            .await
            .status
            == 200
    })
    .await;
    let after = write_some(cluster, serving, &format!("after-wipe-{id}-")).await;
    all_readable(cluster, serving, &before).await;
    all_readable(cluster, serving, &after).await;
    // With its own disk back, the node is itself again and catches up.
    std::fs::remove_dir_all(cluster.data_dir(id)).unwrap();
    std::fs::rename(&kept, cluster.data_dir(id)).unwrap();
    cluster.restart(id);
    cluster.wait_healthy(Duration::from_secs(30)).await;
    all_readable(cluster, id, &after).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_or_bootstrapping_node_never_comes_back_as_itself() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3, &[]).await;
    let view = wait_registered(&cluster, 2).await;
    println!("cluster {}", view["cluster_id"]);
    wiped_node_is_refused(&mut cluster, 3, 2).await;
    // Node 1 bootstraps the groups (the first replica of everything): it must not
    // initialize a second cluster either.
    wiped_node_is_refused(&mut cluster, 1, 2).await;
    let after = cluster.json(2, "/v1/cluster").await;
    assert_eq!(after["cluster_id"], view["cluster_id"], "still the one cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clusters_data_dir_or_a_damaged_identity_is_refused() {
    let _serial = serial().await;
    let mut a = Cluster::start(3, &[]).await;
    let mut b = Cluster::start(3, &[]).await;
    let a_view = wait_registered(&a, 1).await;
    let b_view = wait_registered(&b, 1).await;
    assert_ne!(a_view["cluster_id"], b_view["cluster_id"]);
    let keys = write_some(&a, 1, "a-").await;
    for id in 1..=3 {
        b.kill(id);
    }
    a.kill(3);
    // Node 3 of cluster B's data dir, started as node 3 of cluster A (A's peers).
    let a3 = a.data_dir(3);
    std::fs::remove_dir_all(&a3).unwrap();
    copy_dir(&b.data_dir(3), &a3);
    let (status, stderr) = a.run_expecting_exit(3, Duration::from_secs(20));
    assert!(!status.success());
    assert!(stderr.contains("another cluster"), "{stderr}");
    all_readable(&a, 1, &keys).await;

    // A damaged identity record is refused, naming the file, never treated as new.
    std::fs::remove_dir_all(&a3).unwrap();
    copy_dir(&b.data_dir(3), &a3);
    std::fs::write(
        a3.join("identity"),
        "midasflow identity v1\n{\"node_id\":3}\nchecksum 0\n",
    )
    .unwrap();
    let (status, stderr) = a.run_expecting_exit(3, Duration::from_secs(20));
    assert!(!status.success());
    assert!(stderr.contains("identity") && stderr.contains("damaged"), "{stderr}");

    // A database that lost its contents (its log file emptied) is refused, never opened as
    // an empty store. (Cluster B's own node 3, its peers down: only the data dir can tell.)
    std::fs::write(b.data_dir(3).join("db").join("db"), b"").unwrap();
    let (status, stderr) = b.run_expecting_exit(3, Duration::from_secs(20));
    assert!(!status.success(), "a node with an unreadable database started");
    assert!(stderr.contains("/db"), "the refusal names the database: {stderr}");
    // A data dir of node 2 started as node 3.
    std::fs::remove_dir_all(&a3).unwrap();
    copy_dir(&b.data_dir(2), &a3);
    let (status, stderr) = a.run_expecting_exit(3, Duration::from_secs(20));
    assert!(!status.success());
    assert!(stderr.contains("belongs to node 2"), "{stderr}");
    all_readable(&a, 2, &keys).await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Nodes of a new cluster started in any order, seconds apart, form one cluster once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_forms_once_whatever_the_start_order() {
    let _serial = serial().await;
    let mut cluster = Cluster::prepare(3, &[]);
    // A fixed shuffle and spread (0 to 5 s), so a failure replays.
    for (id, delay_ms) in [(3, 0), (1, 2_500), (2, 5_000)] {
        tokio::time::sleep(Duration::from_millis(
            delay_ms.min(5_000) - if delay_ms >= 2_500 { 2_500 } else { 0 },
        ))
        .await;
        cluster.restart(id);
    }
    cluster.wait_healthy(Duration::from_secs(30)).await;
    let view = wait_registered(&cluster, 1).await;
    for id in 2..=3 {
        let other = cluster.json(id, "/v1/cluster").await;
        assert_eq!(
            other["cluster_id"], view["cluster_id"],
            "node {id} is in the same cluster"
        );
    }
    let keys = write_some(&cluster, 3, "new-").await;
    all_readable(&cluster, 1, &keys).await;
}

/// A wiped node that starts while no peer can answer comes up as new, but the first peer
/// that knows its real incarnation refuses it, and it stops acting as a member and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_that_no_peer_could_check_stops_when_one_can() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3, &[]).await;
    wait_registered(&cluster, 1).await;
    let keys = write_some(&cluster, 1, "early-").await;
    for id in 1..=3 {
        cluster.kill(id);
    }
    std::fs::remove_dir_all(cluster.data_dir(3)).unwrap();
    // Node 3 alone: nobody answers its identity query, so it starts as a new node.
    let mut wiped = cluster
        .command(3)
        .env("RUST_LOG", "warn,openraft=error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the wiped node to serve", Duration::from_secs(10), || async {
        cluster.client(3).get_path("/livez").await.is_ok()
    })
    .await;
    cluster.restart(1);
    cluster.restart(2);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = wiped.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = wiped.kill();
            let _ = wiped.wait();
            panic!("the wiped node kept running once its peers could tell it was not node 3");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut wiped.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("refused this node's identity"), "{stderr}");
    wait_until("writes flow on nodes 1 and 2", Duration::from_secs(30), || async {
        put(cluster.client(1), "probe", b"p", &[]).await.status == 200
    })
    .await;
    all_readable(&cluster, 2, &keys).await;
}

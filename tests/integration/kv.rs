//! Reads and writes across nodes and shards; compare-and-set races.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::harness::{get, metric_sum, put, serial, version_of, wait_until, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_one_node_read_through_the_others_on_every_shard() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]).await;
    let mut shards_seen = BTreeSet::new();
    for i in 0..64 {
        let key = format!("key-{i}");
        let value = format!("value-{i}");
        let reply = put(cluster.client(1), &key, value.as_bytes(), &[]).await;
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
        assert_eq!(version_of(&reply), 1);
        let shard: u64 = reply.header("x-shard").unwrap().parse().unwrap();
        shards_seen.insert(shard);
        for reader in [2, 3] {
            let read = get(cluster.client(reader), &key, "").await;
            assert_eq!(read.status, 200, "linearizable read of {key} via node {reader}");
            assert_eq!(read.body.as_ref(), value.as_bytes());
            assert_eq!(read.header("x-version"), Some("1"));
            assert_eq!(read.header("x-shard"), Some(shard.to_string().as_str()));
        }
    }
    let expected: BTreeSet<u64> = (1..=8).collect();
    assert_eq!(shards_seen, expected, "the keys must land on every shard");
    // Of nodes 2 and 3, at most one leads a shard, so half of those reads at least were on
    // followers: they answer from their own replica after the leader's read index.
    let follower_reads = metric_sum(&cluster, &[2, 3], "midasflow_kv_follower_reads_total").await;
    assert!(follower_reads >= 1.0, "no linearizable read was answered by a follower");
    // Reads in a row on one shard find its leader's lease running (on by default, kept
    // fresh by heartbeats that every follower accepted): no quorum round each.
    let lease_reads = metric_sum(&cluster, &[1, 2, 3], "midasflow_kv_lease_reads_total").await;
    assert!(
        lease_reads >= 1.0,
        "no linearizable read was confirmed under a read lease"
    );

    // Stale reads catch up: every replica applies every acknowledged write.
    for reader in [2, 3] {
        wait_until(
            "stale reads to show the last write",
            Duration::from_secs(10),
            || async {
                let read = get(cluster.client(reader), "key-63", "?consistency=stale").await;
                read.status == 200 && read.body.as_ref() == b"value-63" && read.header("x-applied-index").is_some()
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_races_have_exactly_one_winner() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]).await;

    // If-None-Match: * creation race, writers spread over all nodes.
    let creators = (0..9).map(|i| {
        let client = cluster.client(i % 3 + 1);
        async move {
            put(
                client,
                "created-once",
                format!("writer-{i}").as_bytes(),
                &[("if-none-match", "*".into())],
            )
            .await
        }
    });
    let replies = futures::future::join_all(creators).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "statuses: {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 412).count(),
        8,
        "statuses: {statuses:?}"
    );

    // If-Match rounds: every round, all writers race on the current version.
    let first = put(cluster.client(1), "counter", b"0", &[]).await;
    let mut current = version_of(&first);
    for round in 0..5 {
        let writers = (0..6).map(|i| {
            let client = cluster.client(i % 3 + 1);
            let value = format!("round-{round}-writer-{i}");
            async move {
                put(
                    client,
                    "counter",
                    value.as_bytes(),
                    &[("if-match", current.to_string())],
                )
                .await
            }
        });
        let replies = futures::future::join_all(writers).await;
        let winners: Vec<_> = replies.iter().filter(|r| r.status == 200).collect();
        let losers = replies.iter().filter(|r| r.status == 412).count();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one writer wins version {}",
            current + 1
        );
        assert_eq!(losers, 5, "round {round}: the others get 412");
        assert_eq!(version_of(winners[0]), current + 1);
        current += 1;
    }
    let read = get(cluster.client(2), "counter", "").await;
    assert_eq!(read.header("x-version"), Some(current.to_string().as_str()));

    // Delete is a version; a re-created key continues counting, so If-Match cannot ABA.
    let deleted = crate::harness::put(cluster.client(1), "counter", b"", &[]).await;
    assert_eq!(version_of(&deleted), current + 1);
    let path = format!("/v1/kv/{}", "counter");
    let del = cluster
        .client(3)
        .request(hyper::Method::DELETE, &path, &[], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(del.status, 200);
    assert_eq!(version_of(&del), current + 2);
    assert_eq!(get(cluster.client(1), "counter", "").await.status, 404);
    let stale_cas = put(cluster.client(2), "counter", b"x", &[("if-match", current.to_string())]).await;
    assert_eq!(stale_cas.status, 412);
    let recreated = put(cluster.client(2), "counter", b"again", &[("if-match", "0".into())]).await;
    assert_eq!(version_of(&recreated), current + 3);
    let history = cluster.json(1, "/v1/kv/counter/history").await;
    let versions: Vec<u64> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions.first(), Some(&(current + 3)));
    assert!(versions.len() <= 8, "history is bounded by --history-versions");
    let old = get(cluster.client(1), "counter", "?version=1").await;
    assert_eq!(old.status, 410, "version 1 was compacted away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_client_routes_to_leaders_and_nodes_answer_421_when_asked_not_to_forward() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]).await;

    // A node that does not lead the key's shard answers 421 with the map.
    let probe = put(cluster.client(1), "routed", b"v0", &[]).await;
    let shard = probe.header("x-shard").unwrap().to_string();
    let leader = cluster.json(1, &format!("/v1/shards/{shard}")).await["leader"]
        .as_u64()
        .unwrap();
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    let misdirected = put(
        cluster.client(follower),
        "routed",
        b"v1",
        &[("x-no-forward", "1".into())],
    )
    .await;
    assert_eq!(misdirected.status, 421);
    let map: serde_json::Value = serde_json::from_slice(&misdirected.body).unwrap();
    assert!(map["routing_version"].as_u64().unwrap() >= 1);
    assert_eq!(map["shards"].as_array().unwrap().len(), 8);
    assert_eq!(
        get(cluster.client(leader), "routed", "").await.body.as_ref(),
        b"v0",
        "the 421 wrote nothing"
    );

    // The smart client sends X-No-Forward: 1 to the leader it has cached, so success means
    // it reached each shard's leader directly.
    let seeds: Vec<String> = cluster.addrs.values().cloned().collect();
    let smart = midasflow::client::SmartClient::connect(seeds).await.unwrap();
    for i in 0..40 {
        let key = format!("smart-{i}");
        let path = format!("/v1/kv/{key}");
        let reply = smart
            .request(
                hyper::Method::PUT,
                key.as_bytes(),
                &path,
                &[],
                bytes::Bytes::from(key.clone()),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
        let read = smart
            .request(hyper::Method::GET, key.as_bytes(), &path, &[], bytes::Bytes::new())
            .await
            .unwrap();
        assert_eq!(read.body.as_ref(), key.as_bytes());
    }
}

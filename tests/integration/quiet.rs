//! Quiet groups on real processes: idle shard groups stop ticking, a request wakes one,
//! and a quiet group whose leader's node dies elects a new leader, by node liveness
//! alone (no request) or at once on a request. Deadlines bound the waits; nothing here
//! asserts a timing (docs/performance.md has the measurements).

use std::time::Duration;

use serde_json::Value;

use crate::harness::{get, metric, metric_sum, metric_with, put, serial, wait_for, wait_until, Cluster};

/// `Ok` once every node reports all `shards` of its replicas quiet.
async fn all_quiet(cluster: &Cluster, shards: u64) -> Result<(), String> {
    for node in cluster.live_nodes() {
        let quiet = metric(cluster, node, "midasflow_raft_quiet_groups").await;
        if quiet < shards as f64 {
            return Err(format!("node {node}: {quiet} of {shards} shard replicas quiet"));
        }
    }
    Ok(())
}

/// The leader `via` reports for `shard`.
async fn leader_of(cluster: &Cluster, via: u64, shard: u64) -> Option<u64> {
    let shard: Value = cluster.try_json(via, &format!("/v1/shards/{shard}")).await.ok()?;
    shard["leader"].as_u64()
}

/// A key that hashes to `shard`, found by writing probe keys through `via`.
async fn key_on(cluster: &Cluster, via: u64, shard: u64) -> String {
    for i in 0..10_000 {
        let key = format!("quiet-probe-{i}");
        let reply = put(cluster.client(via), &key, b"v", &[]).await;
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        if body["shard"].as_u64() == Some(shard) {
            return key;
        }
    }
    panic!("no key found for shard {shard}");
}

/// Leaders answer bare commit-point updates themselves (`network::CommitHold`): a
/// follower learns the commit point from the next append or heartbeat. In a settled
/// cluster (every group quiet, so no leader moves to carry it in a new term's entry),
/// every replica still applies the last write of each shard with no more writes after
/// it: the woken groups' heartbeats carry it. (Fails when a held update is never sent:
/// checked by breaking `CommitHold` to hold heartbeats too.)
#[tokio::test]
async fn every_replica_applies_the_last_write_without_more_writes() {
    let _serial = serial().await;
    let shards = 8u64;
    let cluster = Cluster::start(3, &["--initial-shards", "8", "--quiet-after-ms", "500"]).await;
    wait_for("every shard replica quiet", Duration::from_secs(30), || {
        all_quiet(&cluster, shards)
    })
    .await;
    for i in 0..40 {
        let reply = put(cluster.client(1), &format!("last-{i}"), format!("v{i}").as_bytes(), &[]).await;
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    }
    let held = metric_sum(&cluster, &[1, 2, 3], "midasflow_raft_commit_updates_held_total").await;
    assert!(held >= 1.0, "no leader held a bare commit-point update");
    for reader in [1, 2, 3] {
        for i in 0..40 {
            let (key, value) = (format!("last-{i}"), format!("v{i}"));
            wait_until(
                "every replica to apply every write",
                Duration::from_secs(10),
                || async {
                    let read = get(cluster.client(reader), &key, "?consistency=stale").await;
                    read.status == 200 && read.body.as_ref() == value.as_bytes()
                },
            )
            .await;
        }
    }
}

#[tokio::test]
async fn idle_groups_go_quiet_wake_on_requests_and_elect_after_leader_loss() {
    let _serial = serial().await;
    let shards = 8u64;
    let mut cluster = Cluster::start(3, &["--initial-shards", "8", "--quiet-after-ms", "500"]).await;
    wait_for("every shard replica quiet", Duration::from_secs(30), || {
        all_quiet(&cluster, shards)
    })
    .await;

    // Quiet leaders send no heartbeats: only the placement driver's group still does.
    let heartbeats = "midasflow_raft_heartbeat_rpcs_total";
    let before = metric_sum(&cluster, &[1, 2, 3], heartbeats).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = metric_sum(&cluster, &[1, 2, 3], heartbeats).await - before;
    // Ticking, 8 shard groups would send about 8 × 2 × 2 s / 0.15 s ≈ 210 more.
    assert!(sent < 80.0, "{sent} heartbeats in 2 s with every shard group quiet");

    // A request wakes its group, and is served.
    let wakeups = "midasflow_raft_group_wakeups_total";
    let wakeups_before = metric_sum(&cluster, &[1, 2, 3], wakeups).await;
    let reply = put(cluster.client(1), "wake-me", b"up", &[]).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let wakeups_after = metric_sum(&cluster, &[1, 2, 3], wakeups).await;
    assert!(wakeups_after > wakeups_before, "the write woke its group");
    assert_eq!(get(cluster.client(2), "wake-me", "").await.status, 200);

    // The node leading the most shards dies. Each of its shards was quiet.
    wait_for("every shard replica quiet again", Duration::from_secs(30), || {
        all_quiet(&cluster, shards)
    })
    .await;
    let mut led: Vec<(u64, u64)> = Vec::new();
    for shard in 1..=shards {
        if let Some(leader) = leader_of(&cluster, 1, shard).await {
            led.push((shard, leader));
        }
    }
    let victim = (1..=3)
        .max_by_key(|n| led.iter().filter(|(_, l)| l == n).count())
        .unwrap();
    let orphans: Vec<u64> = led.iter().filter(|(_, l)| *l == victim).map(|(s, _)| *s).collect();
    assert!(
        orphans.len() >= 2,
        "node {victim} leads {orphans:?}: need two of its shards"
    );
    let survivor = (1..=3).find(|n| *n != victim).unwrap();
    let (by_request, by_liveness) = (orphans[0], orphans[1]);
    let key = key_on(&cluster, survivor, by_request).await;
    wait_for("the probe writes' groups quiet again", Duration::from_secs(30), || {
        all_quiet(&cluster, shards)
    })
    .await;
    cluster.kill(victim);

    // A request to a quiet orphan: the survivor's forward fails, its replica wakes and
    // campaigns, and the write goes through.
    wait_for(
        "a write to a quiet shard whose leader died",
        Duration::from_secs(20),
        || {
            let (cluster, key) = (&cluster, &key);
            async move {
                let reply = put(cluster.client(survivor), key, b"after", &[]).await;
                match reply.status.as_u16() {
                    200 => Ok(()),
                    status => Err(format!("{status}: {}", String::from_utf8_lossy(&reply.body))),
                }
            }
        },
    )
    .await;

    // No request at all to the other orphan: node liveness (the PD heartbeats) says its
    // leader's node is gone, and the followers campaign.
    wait_until(
        "a new leader for a quiet shard nobody asked",
        Duration::from_secs(30),
        || async {
            leader_of(&cluster, survivor, by_liveness)
                .await
                .is_some_and(|l| l != victim)
        },
    )
    .await;
    let mut lost = 0.0;
    for node in cluster.live_nodes() {
        lost += metric_with(&cluster, node, wakeups, "reason=\"leader_lost\"").await;
    }
    assert!(lost > 0.0, "a replica woke because its leader's node was lost");
    let campaigns = metric_sum(&cluster, &cluster.live_nodes(), "midasflow_raft_campaigns_total").await;
    assert!(campaigns > 0.0, "the new leaders' campaigns are counted");
}

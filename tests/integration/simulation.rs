//! The turmoil simulations, run through `midasflow sim` so each simulation has its own
//! process (docs/simulation.md, Determinism). They take the cluster-test lock too: they are
//! deterministic whatever the load, but the timed cluster tests are not.

use std::process::Command;

use serde_json::Value;

use crate::harness::serial;

fn sim(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_midasflow"))
        .arg("sim")
        .args(args)
        .output()
        .expect("run midasflow sim");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn report(args: &[&str]) -> Value {
    let (_, text) = sim(args);
    let line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no report in: {text}"));
    serde_json::from_str(line).unwrap()
}

#[tokio::test]
async fn fixed_seeds_pass_in_every_scenario() {
    let _serial = serial().await;
    let (ok, text) = sim(&["--seeds", "0..3", "--jobs", "2"]);
    println!("{text}");
    assert!(ok, "3-node simulations failed:\n{text}");
    for scenario in ["crashes", "disk", "mixed", "network", "partitions", "placement"] {
        assert!(text.contains(scenario), "summary row for {scenario}");
    }
    let (ok, text) = sim(&["--seeds", "0..2", "--nodes", "5", "--scenario", "mixed", "--jobs", "2"]);
    println!("{text}");
    assert!(ok, "5-node simulations failed:\n{text}");
}

#[tokio::test]
async fn one_seed_replays_identically() {
    let _serial = serial().await;
    let args = ["--seed", "11", "--scenario", "mixed", "--json"];
    let first = report(&args);
    let second = report(&args);
    assert!(first["ops"].as_u64().unwrap() > 500, "the run did real work: {first}");
    assert_eq!(
        first["trace_hash"], second["trace_hash"],
        "same seed, same semantic trace"
    );
    assert_eq!(first["ops"], second["ops"]);
    assert_eq!(first["faults"], second["faults"]);
    let other = report(&["--seed", "12", "--scenario", "mixed", "--json"]);
    assert_ne!(first["trace_hash"], other["trace_hash"], "another seed, another run");
}

/// The first seed in 0..5 at which the checkers report a violation of one of `kinds`
/// (a violation of another kind, e.g. liveness, does not count as catching the bug).
fn caught(bug: &str, scenario: &str, kinds: &[&str]) -> Option<u64> {
    (0..5).find(|seed| {
        let seed = seed.to_string();
        let report = report(&["--seed", &seed, "--scenario", scenario, "--json", "--planted-bug", bug]);
        report["violations"].as_array().is_some_and(|v| {
            v.iter()
                .any(|v| kinds.iter().any(|k| v.as_str().unwrap_or("").starts_with(k)))
        })
    })
}

#[tokio::test]
async fn planted_follower_reads_bug_is_caught_within_five_seeds() {
    let _serial = serial().await;
    let seed = caught("follower-reads", "partitions", &["not linearizable"]);
    println!("planted follower-reads bug caught at seed {seed:?}");
    assert!(
        seed.is_some(),
        "the checkers missed stale linearizable reads in 5 seeds"
    );
}

#[tokio::test]
async fn planted_repropose_bug_is_caught_within_five_seeds() {
    let _serial = serial().await;
    let seed = caught(
        "repropose-writes",
        "mixed",
        &["not linearizable", "lost acknowledged write"],
    );
    println!("planted repropose-writes bug caught at seed {seed:?}");
    assert!(seed.is_some(), "the checkers missed writes applied twice in 5 seeds");
}

/// With the identity guard off, a node that lost its disk rejoins as its old self: the
/// checkers must see the damage (a write lost, a read that no order explains, or two
/// leaders in a term). With the guard on, the same seeds pass (`fixed_seeds_...`).
#[tokio::test]
async fn planted_missing_identity_guard_is_caught_within_five_seeds() {
    let _serial = serial().await;
    let seed = caught(
        "no-identity-guard",
        "disk",
        &["not linearizable", "lost acknowledged write", "two leaders"],
    );
    println!("planted no-identity-guard bug caught at seed {seed:?}");
    assert!(seed.is_some(), "the checkers missed an amnesiac voter in 5 seeds");
}

/// A move that records its new replicas in the map without changing the group's
/// membership: once scheduling settles, the map and the groups disagree (and the source
/// replicas it deleted leave groups without a quorum).
#[tokio::test]
async fn planted_map_before_membership_bug_is_caught_within_five_seeds() {
    let _serial = serial().await;
    let seed = caught("map-before-membership", "placement", &["placement"]);
    println!("planted map-before-membership bug caught at seed {seed:?}");
    assert!(
        seed.is_some(),
        "the checkers missed a map that moved without its groups in 5 seeds"
    );
}

/// A shard that keeps applying writes for keys its split gave away: a write routed with
/// the old map is acknowledged where no later read looks.
#[tokio::test]
async fn planted_split_without_range_check_is_caught_within_five_seeds() {
    let _serial = serial().await;
    let seed = caught(
        "split-without-range-check",
        "placement",
        &["not linearizable", "lost acknowledged write"],
    );
    println!("planted split-without-range-check bug caught at seed {seed:?}");
    assert!(
        seed.is_some(),
        "the checkers missed writes applied by a shard that split them away, in 5 seeds"
    );
}

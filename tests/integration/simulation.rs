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
    for scenario in [
        "crashes",
        "disk",
        "mixed",
        "network",
        "partitions",
        "placement",
        "quiet",
        "batch",
    ] {
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
    assert!(
        first["commit_updates_held"].as_u64().unwrap_or(0) > 0,
        "leaders held bare commit-point updates through the faults: {first}"
    );
    assert_eq!(
        first["trace_hash"], second["trace_hash"],
        "same seed, same semantic trace"
    );
    assert_eq!(first["ops"], second["ops"]);
    assert_eq!(first["faults"], second["faults"]);
    let other = report(&["--seed", "12", "--scenario", "mixed", "--json"]);
    assert_ne!(first["trace_hash"], other["trace_hash"], "another seed, another run");
}

/// Requires the planted `bug` to be caught in `scenario` at some seed of `seeds`: a
/// violation of one of `kinds` (a violation of another kind, e.g. liveness, does not count
/// as catching it). `missed` says what the checkers would have missed.
fn assert_caught(seeds: std::ops::Range<u64>, bug: &str, scenario: &str, kinds: &[&str], missed: &str) {
    let caught = |v: &str| kinds.iter().any(|k| v.starts_with(k));
    assert_caught_with(seeds, bug, scenario, &[], &caught, missed);
}

/// [`assert_caught`] with more `sim` arguments, and any test of a violation's text.
fn assert_caught_with(
    seeds: std::ops::Range<u64>,
    bug: &str,
    scenario: &str,
    extra: &[&str],
    caught: &dyn Fn(&str) -> bool,
    missed: &str,
) {
    let count = seeds.end - seeds.start;
    let seed = seeds.into_iter().find(|seed| {
        let seed = seed.to_string();
        let mut args = vec!["--seed", &seed, "--scenario", scenario, "--json", "--planted-bug", bug];
        args.extend_from_slice(extra);
        let report = report(&args);
        report["violations"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| caught(v.as_str().unwrap_or(""))))
    });
    println!("planted {bug} bug caught at seed {seed:?}");
    assert!(seed.is_some(), "the checkers missed {missed} in {count} seeds");
}

#[tokio::test]
async fn planted_follower_reads_bug_is_caught_within_five_seeds() {
    let _serial = serial().await;
    assert_caught(
        0..5,
        "follower-reads",
        "partitions",
        &["not linearizable"],
        "stale linearizable reads",
    );
}

/// Follower reads (ReadIndex) must wait until the replica applied the leader's read index.
#[tokio::test]
async fn planted_follower_reads_without_apply_wait_bug_is_caught_within_five_seeds() {
    let _serial = serial().await;
    assert_caught(
        0..5,
        "follower-reads-without-apply-wait",
        "crashes",
        &["not linearizable"],
        "follower reads that do not wait for the read index",
    );
}

#[tokio::test]
async fn planted_repropose_bug_is_caught_within_five_seeds() {
    let _serial = serial().await;
    assert_caught(
        0..5,
        "repropose-writes",
        "mixed",
        &["not linearizable", "lost acknowledged write"],
        "writes applied twice",
    );
}

/// With the identity guard off, a node that lost its disk rejoins as its old self: the
/// checkers must see the damage (a write lost, a read that no order explains, or two
/// leaders in a term). With the guard on, the same seeds pass (`fixed_seeds_...`).
#[tokio::test]
async fn planted_missing_identity_guard_is_caught_within_five_seeds() {
    let _serial = serial().await;
    assert_caught(
        0..5,
        "no-identity-guard",
        "disk",
        &["not linearizable", "lost acknowledged write", "two leaders"],
        "an amnesiac voter",
    );
}

/// A move that records its new replicas in the map without changing the group's
/// membership: once scheduling settles, the map and the groups disagree (and the source
/// replicas it deleted leave groups without a quorum).
#[tokio::test]
async fn planted_map_before_membership_bug_is_caught_within_five_seeds() {
    let _serial = serial().await;
    assert_caught(
        0..5,
        "map-before-membership",
        "placement",
        &["placement"],
        "a map that moved without its groups",
    );
}

/// A node that lost its disk is replaced as `docs/operations.md` says: a new node id on
/// the same address, with `--join`, then the old id removed. Messages still meant for the
/// old node reach the new one, which must refuse them; the old node's replicas must end up
/// on the new node.
#[tokio::test]
async fn a_node_that_lost_its_disk_is_replaced_on_its_own_address() {
    let _serial = serial().await;
    let report = report(&["--seed", "0", "--scenario", "disk", "--json"]);
    assert_eq!(report["violations"], serde_json::json!([]), "{report}");
    let replaced = report["replaced"]
        .as_array()
        .expect("the operator replaced the wiped node");
    let (old, new) = (replaced[0].as_u64().unwrap(), replaced[1].as_u64().unwrap());
    let wiped = report["faults"][0]["fault"]["DiskLoss"]["wiped"].as_u64();
    assert_eq!(Some(old), wiped, "the node replaced is the one wiped: {report}");
    assert_eq!(new, 4, "node {old} replaced by node {new}");
    let misdirected = report["refused_requests"]["misdirected"].as_u64().unwrap_or(0);
    assert!(
        misdirected > 0,
        "messages for node {old} reached node {new} and were refused: {report}"
    );
}

/// A scheduler that treats a removed node as live never re-creates the replicas it held:
/// after the replacement the map still lists them on the removed id.
#[tokio::test]
async fn planted_removed_nodes_look_live_bug_is_caught_within_five_seeds() {
    let _serial = serial().await;
    assert_caught(
        0..5,
        "removed-nodes-look-live",
        "disk",
        &["placement"],
        "a removed node's replicas left in the map",
    );
}

/// A shard that keeps applying writes for keys its split gave away: a write routed with
/// the old map is acknowledged where no later read looks. It takes a write to reach the
/// parent's leader between its split and its node's new map, which about one seed in
/// eight of this scenario produces (seeds 10, 16 and 19 of 0..26), hence the wider window.
#[tokio::test]
async fn planted_split_without_range_check_is_caught_within_twenty_seeds() {
    let _serial = serial().await;
    assert_caught(
        0..20,
        "split-without-range-check",
        "placement",
        &["not linearizable", "lost acknowledged write"],
        "writes applied by a shard that split them away",
    );
}

/// A batched proposal that hands each write its neighbour's result. A one-write batch
/// cannot misroute, so catching it also shows the simulation's writes do share proposals.
#[tokio::test]
async fn planted_batch_results_misrouted_bug_is_caught_within_three_seeds() {
    let _serial = serial().await;
    assert_caught(
        0..3,
        "batch-results-misrouted",
        "mixed",
        &["not linearizable", "lost acknowledged write"],
        "writes answered with another write's result",
    );
}

/// A read lease that ignores when the followers last accepted the leader's appends (a
/// lease without its clock bound, though still checked in the Raft core): a leader cut off
/// keeps answering while the majority elects another and takes writes. A stale read needs
/// a client to read through the cut-off leader after the majority wrote: seeds 8 and 10
/// of the quiet scenario's 0..16 arrange it (and 26, 32 and 36 of `partitions` 0..40).
#[tokio::test]
async fn planted_lease_ignores_acknowledgements_bug_is_caught_within_eleven_seeds() {
    let _serial = serial().await;
    assert_caught(
        0..11,
        "lease-ignores-acknowledgements",
        "quiet",
        &["not linearizable", "lost acknowledged write"],
        "reads served under a lease with no clock bound",
    );
}

/// A quiet leader that trusts itself for reads: isolated, it keeps answering from its
/// applied state while the majority elects another leader and takes writes. The quiet
/// scenario's faults strike in idle gaps; the stale reads need a later burst to read
/// through the isolated node after the majority wrote, which few seeds arrange.
#[tokio::test]
async fn planted_quiet_reads_without_quorum_is_caught_within_twelve_seeds() {
    let _serial = serial().await;
    assert_caught(
        0..12,
        "quiet-reads-without-quorum",
        "quiet",
        &["not linearizable"],
        "stale reads from an isolated quiet leader",
    );
}

/// A node that answers a Raft batch's messages in the order they finish hands one group's
/// answer to another: a leader counts an append its follower refused, or a vote granted
/// in another group. Only answers that differ in kind do harm, and most shared batches
/// carry alike answers (heartbeats), so few seeds catch it: seed 32 of the partitions
/// scenario sees openraft's own assertions panicking inside a node (the only one of
/// 0..40 since new groups' first votes are asked again; seeds 3 and 11 before).
#[tokio::test]
async fn planted_batch_answers_out_of_order_is_caught_within_twelve_seeds() {
    let _serial = serial().await;
    assert_caught(
        28..40,
        "batch-answers-in-completion-order",
        "partitions",
        &["two leaders", "not linearizable", "lost acknowledged write", "panic"],
        "Raft answers handed to the wrong groups",
    );
}

/// A replica handed a campaign slot must be woken: with the planted bug, the groups no
/// client touches stay leaderless after a crash or partition in the batch scenario (many
/// groups, one slot per node), and the liveness check sees it.
#[tokio::test]
async fn planted_campaign_slots_without_wake_is_caught_within_three_seeds() {
    let _serial = serial().await;
    assert_caught(
        0..3,
        "campaign-slots-without-wake",
        "batch",
        &["liveness: some group still had no leader"],
        "rationed campaigns that never start",
    );
}

/// A leaderless replica waiting for a campaign slot must not campaign when a request wakes
/// its tick: with the planted bug (the gate not enforced, as before there was one), the
/// crashes scenario's clients reach leaderless replicas after each restart, and the
/// campaign-bound checker sees them campaign without a slot.
#[tokio::test]
async fn planted_campaign_gate_by_tick_only_is_caught_within_two_seeds() {
    let _serial = serial().await;
    assert_caught(
        0..2,
        "campaign-gate-by-tick-only",
        "crashes",
        &["campaign bound"],
        "campaigns past the node's bound under client load",
    );
}

/// Only leaders and followers whose Raft state names their leader keep their campaign gate
/// open: with the planted bug, every replica not campaigning this pass keeps it open, and
/// after a crash in the batch scenario a reopened replica whose tick a request woke
/// campaigns knowing no leader and holding no slot.
#[tokio::test]
async fn planted_leaderless_gates_open_is_caught_within_three_seeds() {
    let _serial = serial().await;
    assert_caught(
        0..3,
        "leaderless-gates-open",
        "batch",
        &["campaign bound"],
        "campaign gates open on replicas that know no leader",
    );
}

/// A replica that follows only the placement driver's hint must ask that leader to make
/// itself known: with the planted bug, after a crash in the batch scenario a quiet leader
/// that counts the restarted replica caught up never reaches it.
#[tokio::test]
async fn planted_hint_followers_never_ask_is_caught_within_two_seeds() {
    let _serial = serial().await;
    assert_caught(
        0..2,
        "hint-followers-never-ask",
        "batch",
        &["liveness"],
        "restarted replicas that never learn their quiet leader",
    );
}

/// With room to adapt (4 slots per node), a node whose campaigns run out of time (the
/// quiet scenario isolates quiet groups' leaders) halves its campaign budget; the slots
/// it opens stay within the budget it reports.
#[tokio::test]
async fn the_campaign_budget_shrinks_while_campaigns_cannot_finish() {
    let _serial = serial().await;
    let report = report(&[
        "--seed",
        "0",
        "--scenario",
        "quiet",
        "--max-campaigning-replicas",
        "4",
        "--json",
    ]);
    assert!(
        report["violations"].as_array().is_some_and(|v| v.is_empty()),
        "violations: {}",
        report["violations"]
    );
    assert!(
        report["campaign_budget_cuts"].as_u64().is_some_and(|cuts| cuts > 0),
        "no node ever cut its campaign budget: {report}"
    );
    assert!(
        report["campaign_budget_min"].as_u64().is_some_and(|min| min < 4),
        "the budget never went below the bound: {report}"
    );
}

/// A node must ration campaign slots by its adapted budget: with the planted bug it opens
/// as many as its bound allows while campaigns run out of time, and the campaign-bound
/// checker sees more slots open than the budget the node reported.
#[tokio::test]
async fn planted_campaign_budget_ignored_is_caught_within_two_seeds() {
    let _serial = serial().await;
    assert_caught_with(
        0..2,
        "campaign-budget-ignored",
        "quiet",
        &["--max-campaigning-replicas", "4"],
        &|v| v.starts_with("campaign bound") && v.contains("holding campaign slots, more than its budget"),
        "campaign slots opened past the adapted budget",
    );
}

/// Leaders answer bare commit-point updates themselves, but never openraft's leadership
/// check for a linearizable read: answered without the follower, it confirms a leader
/// that the majority has replaced.
#[tokio::test]
async fn planted_commit_hold_answers_checks_is_caught_within_six_seeds() {
    let _serial = serial().await;
    assert_caught(
        0..6,
        "commit-hold-answers-checks",
        "partitions",
        &["not linearizable"],
        "leadership checks answered without the followers",
    );
}

/// A held commit point must reach the follower with the stream's next message: held for
/// good (heartbeats held too), followers never apply a group's last writes, and a stale
/// read through them keeps showing an older version after the clients stop.
#[tokio::test]
async fn planted_commit_hold_keeps_heartbeats_is_caught_within_two_seeds() {
    let _serial = serial().await;
    assert_caught(
        0..2,
        "commit-hold-keeps-heartbeats",
        "quiet",
        &["replicas diverge"],
        "followers that never learn their group's last commit point",
    );
}

/// A split child's replicas must start with the same first entry: with a configuration of
/// its own node alone, each elects itself, and the checker sees two leaders in one term.
#[tokio::test]
async fn planted_split_child_alone_in_its_first_entry_is_caught_within_two_seeds() {
    let _serial = serial().await;
    assert_caught(
        0..2,
        "split-child-alone-in-its-first-entry",
        "placement",
        &["two leaders in group"],
        "split children whose replicas each form a group of one",
    );
}

/// Only the map's first replica campaigns in a new split child, so the
/// child is led in its first term; with every replica campaigning (the planted bug), each
/// votes for itself in that term and no child is led in it.
#[tokio::test]
async fn split_children_are_led_in_their_first_term() {
    let _serial = serial().await;
    for seed in ["0", "1"] {
        let args = ["--seed", seed, "--scenario", "placement", "--json"];
        let fixed = report(&args);
        assert!(fixed["violations"].as_array().is_some_and(|v| v.is_empty()), "{fixed}");
        let led = fixed["split_children_led"].as_u64().unwrap();
        let first_term = fixed["split_children_led_in_first_term"].as_u64().unwrap();
        assert!(led > 0, "seed {seed}: no split child had a leader: {fixed}");
        assert!(
            2 * first_term > led,
            "seed {seed}: {first_term} of {led} split children led in their first term"
        );

        let planted = report(&[&args[..], &["--planted-bug", "split-child-every-replica-campaigns"]].concat());
        assert_eq!(
            planted["split_children_led_in_first_term"], 0,
            "seed {seed}: every replica campaigned, yet a child was led in its first term: {planted}"
        );
    }
}

/// The quiet scenario does what it is for: replicas go quiet, and wake both on requests
/// and because their leader's node was lost. Its messages also share batches.
#[tokio::test]
async fn the_quiet_scenario_quiets_groups_and_wakes_them() {
    let _serial = serial().await;
    let report = report(&["--seed", "1", "--scenario", "quiet", "--json"]);
    assert!(
        report["violations"].as_array().is_some_and(|v| v.is_empty()),
        "{report}"
    );
    assert!(report["quiet_entered"].as_u64().unwrap() > 10, "{report}");
    for reason in ["request", "leader_lost"] {
        assert!(
            report["wakeups"][reason].as_u64().unwrap_or(0) > 0,
            "no {reason} wake-up: {report}"
        );
    }
    assert!(
        report["raft_shared_batches"].as_u64().unwrap() > 0,
        "no batch carried two messages: {report}"
    );
    // Busy groups' leaders read under the lease; quiet ones (no heartbeats, so no fresh
    // acknowledgements) confirm by a round.
    for how in ["lease_reads", "round_reads"] {
        assert!(report[how].as_u64().unwrap_or(0) > 0, "no {how}: {report}");
    }
    // One campaign slot per node: some replica that would have campaigned waited its turn,
    // and some got it (counted as its own wake-up reason, not as activity).
    assert!(
        report["campaigns_deferred"].as_u64().unwrap_or(0) > 0,
        "no campaign waited for a slot: {report}"
    );
    assert!(
        report["wakeups"]["campaign_slot"].as_u64().unwrap_or(0) > 0,
        "no replica woken for its campaign slot: {report}"
    );
    // Elections happened, each seen by the campaign-bound checker.
    assert!(
        report["campaigns_started"].as_u64().unwrap_or(0) > 0,
        "no campaign seen: {report}"
    );
}

//! When a group goes quiet and when it wakes (pure: no IO, no clock).
//!
//! An idle group costs nothing: its leader stops ticking, so it sends no heartbeats, and
//! its followers stop ticking, so they run no election timers. What a follower's election
//! timer was for, noticing that the leader is gone, comes from node liveness instead: the
//! one node-level heartbeat every node sends the placement driver. A request, log growth,
//! a new leader, or a membership change wakes the group; so does a follower seeing its
//! leader's node lost, which then campaigns as usual. A candidate's vote request (a new
//! term with no leader yet) does not: the candidate's own timer keeps the election going,
//! and waking its peers would have them campaign too. At most a bounded number of a node's
//! replicas campaign at once ([`ration_campaigns`]); the rest have their campaign [`Gate`]
//! closed until their turn (and stop ticking, until a request wakes the tick).
//!
//! Quiet changes only timers. Votes, terms, appends and `ensure_linearizable` work the
//! same, so "at most one leader per term" and linearizable reads do not depend on it.

/// What this replica is in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    /// A voter following a leader other than itself.
    Follower,
    /// A candidate, a learner, or a replica that knows no leader.
    Other,
}

/// What node liveness says of a follower's leader's node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Live,
    /// Silent past the suspect threshold.
    Lost,
    /// This node's liveness view is stale (it has not reached the placement driver).
    Unknown,
}

/// What the node knows that the decision needs (from its heartbeats to the placement
/// driver).
pub trait NodeView {
    /// Liveness of a node, from a fresh view only.
    fn liveness(&self, node: u64) -> Liveness;
    /// Whether this node's view is fresh (it reached the placement driver lately).
    fn fresh(&self) -> bool;
    /// The leader of `group` as the placement driver last heard of it.
    fn leader_hint(&self, group: u64) -> Option<LeaderHint>;
    /// Whether this node is the one to campaign first for a leaderless `group`: its first
    /// replica in the map whose node is live.
    fn campaigns_first(&self, group: u64) -> bool;
}

/// The placement driver's word on a group's leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderHint {
    pub node: u64,
    /// The term the node reported leading the group in.
    pub term: u64,
    /// The node's latest heartbeat still lists the group among those it leads.
    pub current: bool,
}

/// The leader a replica at `term` may wait on quietly: the one its Raft state names
/// (`believed`), or, when that names none (a reopened replica), the placement driver's
/// hint while the hinted node still reports leading the group in a term no older than the
/// replica's. A lapsed hint names nobody to wait on: after a whole-cluster restart at
/// 10,000 shards, a hint naming a candidate that could not win (its log one entry short)
/// kept the two replicas with the whole log quiet behind it, and the group never elected
/// a leader. A hint from an older term names a leader whose appends the replica refuses,
/// so a quiet leader would never reach it: a replica cut off that campaigned (simulation
/// `batch` seed 15), or one that voted for a candidate that then lost, would wait behind
/// its quiet leader for good.
pub fn leader_to_follow(believed: Option<u64>, hint: Option<LeaderHint>, term: u64) -> Option<u64> {
    believed.or(hint.filter(|h| h.current && h.term >= term).map(|h| h.node))
}

/// How long a reopened replica that is not its group's first candidate waits for a
/// leader before it ticks (and may campaign) itself.
pub const STARTING_GRACE_MS: u64 = 3_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inputs {
    pub role: Role,
    /// Milliseconds since the group's last activity (a request, log growth, a leader,
    /// term or membership change).
    pub idle_ms: u64,
    /// Leader: every replica whose node is not lost has matched the last log index.
    pub replicas_caught_up: bool,
    /// One voter set and no learners: no membership change in flight.
    pub membership_settled: bool,
    /// Follower: liveness of the leader's node.
    pub leader: Liveness,
    /// Active within the last [`CAMPAIGN_SLOT_MS`] (a request, or log growth): a client
    /// may be waiting on it.
    pub wanted: bool,
    /// This node's own liveness view is fresh (it reached the placement driver lately).
    pub view_fresh: bool,
    /// The replica was reopened from disk and has seen no leader yet: it knows none (its
    /// vote comes back uncommitted), but the group most likely has one.
    pub starting: bool,
    /// Starting: milliseconds since the replica was reopened, and whether this node is the
    /// group's first candidate (after a whole-cluster restart, one replica per group
    /// campaigns instead of three).
    pub starting_for_ms: u64,
    pub first_candidate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Tick: heartbeats on a leader, the election timer on a follower.
    Active,
    /// No tick.
    Quiet,
    /// Leave the replica as it is.
    Keep,
}

/// The decision for one replica.
/// - A leader goes quiet after `quiet_after_ms` of idleness once its live replicas have
///   caught up, and only while its own node reaches the placement driver (otherwise its
///   followers could judge its node lost and depose it, back and forth).
/// - A follower goes quiet after half of it, so followers stop their election timers
///   before the leader stops the heartbeats that feed them.
/// - A stale view never wakes anyone: waking on it would depose live leaders by the
///   thousand.
pub fn decide(inputs: &Inputs, quiet_after_ms: u64) -> Decision {
    let idle_for = |ms: u64| inputs.idle_ms >= ms && inputs.membership_settled;
    match inputs.role {
        Role::Leader if idle_for(quiet_after_ms) && inputs.replicas_caught_up && inputs.view_fresh => Decision::Quiet,
        Role::Leader => Decision::Active,
        Role::Follower => match inputs.leader {
            // The leader's node is gone: the election timer must run.
            Liveness::Lost => Decision::Active,
            Liveness::Live | Liveness::Unknown if idle_for(quiet_after_ms / 2) => Decision::Quiet,
            Liveness::Live => Decision::Active,
            Liveness::Unknown => Decision::Keep,
        },
        // A stale view keeps a reopened replica waiting: campaigning on it could depose
        // live leaders. Past the grace, one that requests want campaigns in its turn, so
        // the groups clients use still elect while the placement driver is out of reach.
        Role::Other
            if inputs.starting
                && !inputs.view_fresh
                && !(inputs.wanted && inputs.starting_for_ms >= STARTING_GRACE_MS) =>
        {
            Decision::Keep
        }
        Role::Other if inputs.starting && !inputs.first_candidate && inputs.starting_for_ms < STARTING_GRACE_MS => {
            Decision::Keep
        }
        Role::Other => Decision::Active,
    }
}

/// Replicas of one node that may campaign at once, by default (`--max-campaigning-replicas`).
/// A campaign that cannot finish in time starts over on its own timer and our nudge, and
/// every try costs each peer a vote request and a durable vote: after a whole-cluster
/// restart at 10,000 shards, 15,000 leaderless replicas campaigning at once saturated the
/// machine, every vote timed out, the placement driver lost its leader to the same
/// timeouts, and no election succeeded for minutes. With a bound the load is a
/// constant, and the rest wait their turn.
pub const DEFAULT_MAX_CAMPAIGNING_REPLICAS: usize = 128;

/// How long a replica keeps its campaign slot while others wait for one: several
/// election timeouts, so a slot is not taken away mid-campaign.
pub const CAMPAIGN_SLOT_MS: u64 = 3_000;

/// Whether a replica may start an election on its own (its election timer, or the node's
/// nudge), and why. Ticking alone cannot bound campaigns: a request wakes a replica's tick
/// at once (a follower must notice a dead leader), so a leaderless replica held back only
/// by a stopped tick campaigns as soon as a client reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Gate {
    /// It may not: a voter that knows no leader (or follows only the placement driver's
    /// hint) and holds no campaign slot, a learner, or a reopened replica not judged yet.
    Closed = 0,
    Leader,
    /// Its Raft state names the leader it follows: a request that reaches it while that
    /// leader is gone makes it campaign at once.
    Follower,
    /// It holds one of the node's campaign slots ([`ration_campaigns`]).
    Slot,
    /// A leadership transfer chose it.
    Transfer,
    /// A replica just created (a new group, a split child, a move's target), until the
    /// next pass judges it.
    Created,
}

impl Gate {
    const ALL: [Gate; 6] = [
        Gate::Closed,
        Gate::Leader,
        Gate::Follower,
        Gate::Slot,
        Gate::Transfer,
        Gate::Created,
    ];

    pub fn is_open(self) -> bool {
        self != Gate::Closed
    }

    pub fn name(self) -> &'static str {
        match self {
            Gate::Closed => "closed",
            Gate::Leader => "leader",
            Gate::Follower => "follower",
            Gate::Slot => "slot",
            Gate::Transfer => "transfer",
            Gate::Created => "created",
        }
    }

    pub fn from_u8(value: u8) -> Gate {
        Gate::ALL.get(usize::from(value)).copied().unwrap_or(Gate::Closed)
    }
}

/// The gate of a replica that does not campaign this pass (see [`ration_campaigns`] for
/// those that do): a leader's, and a follower's whose own Raft state names its leader,
/// stay open; a replica that follows only the placement driver's hint, or none, waits.
pub fn gate_without_campaign(role: Role, raft_names_leader: bool) -> Gate {
    match role {
        Role::Leader => Gate::Leader,
        Role::Follower if raft_names_leader => Gate::Follower,
        Role::Follower | Role::Other => Gate::Closed,
    }
}

/// A replica that would campaign this pass (a voter that knows no leader, or follows a
/// lost one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Campaign {
    /// Active within the last [`CAMPAIGN_SLOT_MS`] (a request, or log growth): a client
    /// may be waiting on it.
    pub wanted: bool,
    /// Its group's first candidate after a restart.
    pub first_candidate: bool,
    /// How long it has held a campaign slot; `None`: it holds none.
    pub held_for_ms: Option<u64>,
    /// When its last slot ended (ms on the node's clock; 0: never held one).
    pub last_slot_ended_ms: u64,
}

/// Which replicas may campaign (tick) this pass: at most `budget`. A holder past its slot
/// goes last, so a campaign that cannot win (a log too short: its voters refuse it without
/// taking its term, so nothing ever stops it) does not keep a slot from others for ever.
/// Before it: wanted ones (a client waits on them: they beat idle groups for as long as
/// they wait), holders within their slot (a campaign is not cut short), groups' first
/// candidates on their first slot, then whoever waited longest since its last slot (ties,
/// replicas that never held one, in the order given).
pub fn ration_campaigns(campaigns: &[Campaign], budget: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (0..campaigns.len()).collect();
    order.sort_by_key(|i| {
        let c = &campaigns[*i];
        let expired = c.held_for_ms.is_some_and(|ms| ms >= CAMPAIGN_SLOT_MS);
        let in_slot = c.held_for_ms.is_some_and(|ms| ms < CAMPAIGN_SLOT_MS);
        let never_held = c.held_for_ms.is_none() && c.last_slot_ended_ms == 0;
        let waited_since = match c.held_for_ms {
            Some(_) => u64::MAX,
            None => c.last_slot_ended_ms,
        };
        (
            expired,
            !c.wanted,
            !in_slot,
            !(c.first_candidate && never_held),
            waited_since,
        )
    });
    let mut chosen = vec![false; campaigns.len()];
    for i in order.into_iter().take(budget) {
        chosen[i] = true;
    }
    chosen
}

/// How many of a node's replicas may hold campaign slots now: the configured bound
/// (`--max-campaigning-replicas`) while campaigns end in elections, less while they run
/// out of time. A bound too large for the machine makes every vote time out, so every
/// campaign expires and none succeeds (at 10,000 shards, 1,024 slots per node on this
/// project's test box stalled a restart for minutes, where 128 settled in 15 s); the
/// budget finds a level the machine can finish instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CampaignBudget {
    pub slots: usize,
    /// When the current window of outcomes began (ms on the node's clock).
    pub window_started_ms: u64,
    /// What the slots did in the current window.
    pub seen: SlotOutcomes,
}

impl CampaignBudget {
    pub fn new(max: usize) -> CampaignBudget {
        CampaignBudget {
            slots: max.max(1),
            window_started_ms: 0,
            seen: SlotOutcomes::default(),
        }
    }
}

/// What the campaign slots did since the last pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotOutcomes {
    /// Slots that ended because their replica's group has a leader.
    pub won: usize,
    /// Slots held for [`CAMPAIGN_SLOT_MS`] or longer without a leader.
    pub expired: usize,
}

/// How long the budget gathers slot outcomes before each decision: a slot's length and
/// two passes of `tend` (`TEND_INTERVAL_MS`, 500 ms), so every campaign the last decision
/// admitted has had its whole slot, and been counted, by the next. Slots admitted before
/// the last decision are counted too: after a cut, the next window still sees the runs
/// out of slots the larger budget admitted, so a cut tends to be followed by another.
pub const CAMPAIGN_BUDGET_WINDOW_MS: u64 = CAMPAIGN_SLOT_MS + 1_000;

/// Adds a pass's outcomes to the window and, once the window is
/// [`CAMPAIGN_BUDGET_WINDOW_MS`] long, decides and starts the next. Halved, never below
/// one slot, when more slots ran out of time than were won and those are a quarter of the
/// budget or more: one campaign that cannot win (a log too short) runs out whatever the
/// load, and must not shrink a large budget. Grown back by a sixteenth of `max` when
/// fewer than a quarter ran out. Deciding once per window, not every pass: growing every
/// pass, a restart at 10,000 shards with 1,024 slots swung between overload and cuts and
/// took 101 s where another run took 49 s.
pub fn adapt_campaign_budget(
    budget: CampaignBudget,
    max: usize,
    outcomes: SlotOutcomes,
    now_ms: u64,
) -> CampaignBudget {
    let max = max.max(1);
    let slots = budget.slots.clamp(1, max);
    let seen = SlotOutcomes {
        won: budget.seen.won + outcomes.won,
        expired: budget.seen.expired + outcomes.expired,
    };
    if now_ms.saturating_sub(budget.window_started_ms) < CAMPAIGN_BUDGET_WINDOW_MS {
        return CampaignBudget { slots, seen, ..budget };
    }
    let slots = if seen.expired > seen.won && seen.expired * 4 >= slots {
        (slots / 2).max(1)
    } else if seen.expired * 4 < slots {
        (slots + (max / 16).max(1)).min(max)
    } else {
        slots
    };
    CampaignBudget {
        slots,
        window_started_ms: now_ms,
        seen: SlotOutcomes::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(won: usize, expired: usize) -> SlotOutcomes {
        SlotOutcomes { won, expired }
    }

    #[test]
    fn the_campaign_budget_halves_when_campaigns_run_out_of_time() {
        let start = CampaignBudget::new(1024);
        let cut = adapt_campaign_budget(start, 1024, outcomes(10, 600), CAMPAIGN_BUDGET_WINDOW_MS);
        assert_eq!(cut.slots, 512);
        // The campaigns that cut admits have not had their slot yet: no second cut, but
        // what runs out meanwhile counts at the window's end.
        let soon = adapt_campaign_budget(cut, 1024, outcomes(0, 400), 4_500);
        assert_eq!(soon.slots, 512, "one decision per window");
        let later = adapt_campaign_budget(soon, 1024, outcomes(0, 0), 8_000);
        assert_eq!(later.slots, 256, "expiries inside the window count at its end");
        let mut budget = later;
        for window in 1..=20 {
            budget = adapt_campaign_budget(budget, 1024, outcomes(0, budget.slots), 8_000 + 4_000 * window);
        }
        assert_eq!(budget.slots, 1, "never below one slot");
        assert_eq!(
            adapt_campaign_budget(CampaignBudget::new(0), 0, outcomes(0, 5), 10_000).slots,
            1
        );
        let fresh = CampaignBudget::new(64);
        assert_eq!(
            adapt_campaign_budget(fresh, 64, outcomes(0, 64), CAMPAIGN_BUDGET_WINDOW_MS - 1).slots,
            64,
            "the first window is a whole one too"
        );
    }

    #[test]
    fn one_campaign_that_cannot_win_does_not_shrink_a_large_budget() {
        let budget = CampaignBudget::new(128);
        assert_eq!(adapt_campaign_budget(budget, 128, outcomes(0, 1), 10_000).slots, 128);
        assert_eq!(adapt_campaign_budget(budget, 128, outcomes(0, 31), 10_000).slots, 128);
        assert_eq!(adapt_campaign_budget(budget, 128, outcomes(0, 32), 10_000).slots, 64);
        assert_eq!(
            adapt_campaign_budget(budget, 128, outcomes(40, 32), 10_000).slots,
            128,
            "more won than ran out: the machine keeps up"
        );
        assert_eq!(
            adapt_campaign_budget(budget, 128, outcomes(32, 32), 10_000).slots,
            128,
            "as many won as ran out: no cut"
        );
    }

    #[test]
    fn the_campaign_budget_grows_back_once_campaigns_succeed() {
        let cut = CampaignBudget {
            slots: 8,
            window_started_ms: 1_000,
            seen: SlotOutcomes::default(),
        };
        assert_eq!(
            adapt_campaign_budget(cut, 128, outcomes(5, 0), 2_000).slots,
            8,
            "not within the window"
        );
        let grown = adapt_campaign_budget(cut, 128, outcomes(5, 0), 5_000);
        assert_eq!(grown.slots, 16, "a sixteenth of the bound");
        assert_eq!(adapt_campaign_budget(grown, 128, outcomes(5, 0), 5_500).slots, 16);
        let mut budget = grown;
        let mut windows = 1;
        while budget.slots < 128 {
            budget = adapt_campaign_budget(budget, 128, outcomes(3, 0), 5_000 + CAMPAIGN_BUDGET_WINDOW_MS * windows);
            windows += 1;
        }
        assert_eq!(windows, 15, "from 8 to 128 in steps of 8");
        assert_eq!(
            adapt_campaign_budget(cut, 128, outcomes(0, 1), 10_000).slots,
            16,
            "fewer than a quarter ran out: it grows"
        );
        assert_eq!(
            adapt_campaign_budget(cut, 128, outcomes(2, 2), 10_000).slots,
            8,
            "a quarter ran out: it holds"
        );
        assert_eq!(
            adapt_campaign_budget(cut, 128, outcomes(0, 2), 10_000).slots,
            4,
            "and more than were won: a cut"
        );
        let small = CampaignBudget { slots: 2, ..cut };
        assert_eq!(
            adapt_campaign_budget(small, 4, outcomes(1, 0), 10_000).slots,
            3,
            "a step of at least one"
        );
        let near = CampaignBudget { slots: 98, ..cut };
        assert_eq!(
            adapt_campaign_budget(near, 100, outcomes(1, 0), 10_000).slots,
            100,
            "never past the bound"
        );
        let above = CampaignBudget { slots: 500, ..cut };
        assert_eq!(
            adapt_campaign_budget(above, 100, outcomes(0, 0), 1_500).slots,
            100,
            "clamped to the bound"
        );
    }

    #[test]
    fn a_reopened_replica_follows_only_a_current_hint() {
        let current = |node| {
            Some(LeaderHint {
                node,
                term: 5,
                current: true,
            })
        };
        let lapsed = |node| {
            Some(LeaderHint {
                node,
                term: 5,
                current: false,
            })
        };
        assert_eq!(leader_to_follow(Some(2), None, 5), Some(2));
        assert_eq!(
            leader_to_follow(Some(2), current(3), 5),
            Some(2),
            "its own Raft state first"
        );
        assert_eq!(leader_to_follow(Some(2), lapsed(2), 5), Some(2));
        assert_eq!(leader_to_follow(None, current(3), 5), Some(3), "a reopened replica");
        assert_eq!(
            leader_to_follow(None, current(3), 4),
            Some(3),
            "a replica behind the leader's term"
        );
        assert_eq!(leader_to_follow(None, lapsed(3), 5), None, "no longer reported");
        assert_eq!(leader_to_follow(None, None, 5), None);
        assert_eq!(
            leader_to_follow(None, current(3), 6),
            None,
            "a replica past the leader's term (it campaigned, or voted for a candidate that lost) refuses its appends"
        );
    }

    fn waiting(last_slot_ended_ms: u64) -> Campaign {
        Campaign {
            wanted: false,
            first_candidate: false,
            held_for_ms: None,
            last_slot_ended_ms,
        }
    }

    #[test]
    fn campaigns_are_rationed() {
        let first = Campaign {
            first_candidate: true,
            ..waiting(0)
        };
        let wanted = Campaign {
            wanted: true,
            ..waiting(500)
        };
        let holder = Campaign {
            held_for_ms: Some(1_000),
            ..waiting(0)
        };
        let expired = Campaign {
            held_for_ms: Some(CAMPAIGN_SLOT_MS),
            ..waiting(0)
        };
        let all = [waiting(900), expired, waiting(100), first, holder, wanted];
        assert_eq!(ration_campaigns(&all, 0), [false; 6]);
        assert_eq!(
            ration_campaigns(&all, 1),
            [false, false, false, false, false, true],
            "a waiting client first"
        );
        assert_eq!(
            ration_campaigns(&all, 2),
            [false, false, false, false, true, true],
            "then a campaign in its slot"
        );
        assert_eq!(
            ration_campaigns(&all, 3),
            [false, false, false, true, true, true],
            "then first candidates"
        );
        assert_eq!(
            ration_campaigns(&all, 4),
            [false, false, true, true, true, true],
            "then the longest waiting"
        );
        assert_eq!(ration_campaigns(&all, 5), [true, false, true, true, true, true]);
        assert_eq!(
            ration_campaigns(&all, 6),
            [true; 6],
            "a holder past its slot keeps it if no one waits"
        );
        let first_again = Campaign {
            first_candidate: true,
            ..waiting(2_000)
        };
        assert_eq!(
            ration_campaigns(&[waiting(1_000), first_again], 1),
            [true, false],
            "a first candidate's priority is for its first slot"
        );
        let wanted_expired = Campaign {
            wanted: true,
            first_candidate: true,
            ..expired
        };
        assert_eq!(
            ration_campaigns(&[wanted_expired, waiting(0)], 1),
            [false, true],
            "past its slot, even a wanted first candidate goes last"
        );
    }

    /// Campaigns that can never win (first candidates with a log too short: no voter takes
    /// their term, so nothing stops them) fill every slot, and a plain waiter must still
    /// get one, or a group whose winners wait behind them on every node never elects.
    #[test]
    fn campaigns_that_cannot_win_do_not_starve_the_rest() {
        let budget = 2;
        // (held since, last slot ended) of each campaign that cannot win.
        let mut hogs: Vec<(Option<u64>, u64)> = vec![(None, 0); budget];
        for pass in 1..=30u64 {
            let now = pass * 500;
            let mut campaigns: Vec<Campaign> = hogs
                .iter()
                .map(|(since, ended)| Campaign {
                    first_candidate: true,
                    held_for_ms: since.map(|s| now - s),
                    last_slot_ended_ms: *ended,
                    ..waiting(0)
                })
                .collect();
            campaigns.push(waiting(0));
            let chosen = ration_campaigns(&campaigns, budget);
            if chosen[budget] {
                return;
            }
            for (hog, chosen) in hogs.iter_mut().zip(&chosen) {
                match (chosen, hog.0) {
                    (true, None) => hog.0 = Some(now),
                    (false, Some(_)) => *hog = (None, now),
                    _ => {}
                }
            }
        }
        panic!("the waiter never got a slot");
    }

    /// However many want to campaign, at most `budget` do, and each of them gets a turn:
    /// replaying passes where winners drop out and nobody wins otherwise, every replica
    /// holds a slot within a bounded number of passes.
    #[test]
    fn every_waiting_replica_gets_a_slot() {
        let (budget, replicas, pass_ms) = (4, 20, 500);
        let mut held_since: Vec<Option<u64>> = vec![None; replicas];
        let mut ended = vec![0u64; replicas];
        let mut ever = vec![false; replicas];
        for pass in 1..=60u64 {
            let now = pass * pass_ms;
            let campaigns: Vec<Campaign> = (0..replicas)
                .map(|i| Campaign {
                    held_for_ms: held_since[i].map(|s| now - s),
                    last_slot_ended_ms: ended[i],
                    ..waiting(0)
                })
                .collect();
            let chosen = ration_campaigns(&campaigns, budget);
            assert!(chosen.iter().filter(|c| **c).count() <= budget);
            for i in 0..replicas {
                match (chosen[i], held_since[i]) {
                    (true, None) => held_since[i] = Some(now),
                    (false, Some(_)) => (held_since[i], ended[i]) = (None, now),
                    _ => {}
                }
                ever[i] |= chosen[i];
            }
        }
        assert!(ever.iter().all(|e| *e), "{ever:?}");
    }

    fn inputs(role: Role, idle_ms: u64) -> Inputs {
        Inputs {
            role,
            idle_ms,
            replicas_caught_up: true,
            membership_settled: true,
            leader: Liveness::Live,
            wanted: false,
            view_fresh: true,
            starting: false,
            starting_for_ms: 0,
            first_candidate: false,
        }
    }

    #[test]
    fn table() {
        use Decision::*;
        let q = 2_000;
        let cases: Vec<(&str, Inputs, Decision)> = vec![
            ("busy leader", inputs(Role::Leader, 100), Active),
            ("idle leader", inputs(Role::Leader, 2_000), Quiet),
            (
                "idle leader, a live follower behind",
                Inputs {
                    replicas_caught_up: false,
                    ..inputs(Role::Leader, 9_000)
                },
                Active,
            ),
            (
                "idle leader, membership changing",
                Inputs {
                    membership_settled: false,
                    ..inputs(Role::Leader, 9_000)
                },
                Active,
            ),
            ("busy follower", inputs(Role::Follower, 500), Active),
            ("idle follower goes quiet first", inputs(Role::Follower, 1_000), Quiet),
            (
                "follower of a lost leader, however idle",
                Inputs {
                    leader: Liveness::Lost,
                    ..inputs(Role::Follower, 60_000)
                },
                Active,
            ),
            (
                "idle follower with a stale liveness view",
                Inputs {
                    leader: Liveness::Unknown,
                    ..inputs(Role::Follower, 60_000)
                },
                Quiet,
            ),
            (
                "busy follower with a stale liveness view",
                Inputs {
                    leader: Liveness::Unknown,
                    ..inputs(Role::Follower, 100)
                },
                Keep,
            ),
            (
                "idle leader whose own view is stale",
                Inputs {
                    view_fresh: false,
                    ..inputs(Role::Leader, 60_000)
                },
                Active,
            ),
            ("candidate or learner", inputs(Role::Other, 60_000), Active),
            (
                "reopened replica before its node's first fresh view",
                Inputs {
                    starting: true,
                    view_fresh: false,
                    ..inputs(Role::Other, 60_000)
                },
                Keep,
            ),
            (
                "reopened replica with a stale view that requests want, within the grace",
                Inputs {
                    starting: true,
                    view_fresh: false,
                    wanted: true,
                    starting_for_ms: 1_000,
                    ..inputs(Role::Other, 100)
                },
                Keep,
            ),
            (
                "... past the grace: it campaigns in its turn",
                Inputs {
                    starting: true,
                    view_fresh: false,
                    wanted: true,
                    starting_for_ms: STARTING_GRACE_MS,
                    ..inputs(Role::Other, 100)
                },
                Active,
            ),
            (
                "reopened first candidate of a group nobody leads",
                Inputs {
                    starting: true,
                    first_candidate: true,
                    ..inputs(Role::Other, 60_000)
                },
                Active,
            ),
            (
                "reopened replica of a group nobody leads, not the first candidate",
                Inputs {
                    starting: true,
                    starting_for_ms: 1_000,
                    ..inputs(Role::Other, 60_000)
                },
                Keep,
            ),
            (
                "... until the grace runs out",
                Inputs {
                    starting: true,
                    starting_for_ms: STARTING_GRACE_MS,
                    ..inputs(Role::Other, 60_000)
                },
                Active,
            ),
        ];
        for (name, case, want) in cases {
            assert_eq!(decide(&case, q), want, "{name}");
        }
    }

    #[test]
    fn only_leaders_and_followers_of_a_leader_raft_names_keep_their_gate_open() {
        assert_eq!(gate_without_campaign(Role::Leader, false), Gate::Leader);
        assert_eq!(gate_without_campaign(Role::Follower, true), Gate::Follower);
        assert_eq!(
            gate_without_campaign(Role::Follower, false),
            Gate::Closed,
            "a replica following only the placement driver's hint waits for a slot"
        );
        assert_eq!(gate_without_campaign(Role::Other, true), Gate::Closed);
        for gate in Gate::ALL {
            assert_eq!(Gate::from_u8(gate as u8), gate);
            assert_eq!(gate.is_open(), gate != Gate::Closed);
        }
    }

    /// Whatever the idleness, a follower is never quiet while its leader is active:
    /// it goes quiet at half the leader's threshold.
    #[test]
    fn followers_quiet_no_later_than_their_leader() {
        for idle_ms in (0..10_000).step_by(50) {
            let leader = decide(&inputs(Role::Leader, idle_ms), 2_000);
            let follower = decide(&inputs(Role::Follower, idle_ms), 2_000);
            if leader == Decision::Quiet {
                assert_eq!(follower, Decision::Quiet, "idle {idle_ms} ms");
            }
        }
    }
}

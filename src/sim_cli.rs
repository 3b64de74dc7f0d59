//! `midasflow sim`: runs simulations by seed, one simulation per process.
//!
//! `--seed S` runs one in this process (a fresh process, so its trace replays exactly).
//! `--seeds A..B` runs each seed in a child `midasflow sim --seed S --json` process and
//! prints a summary table; a failure prints the command that replays it.

use std::collections::BTreeMap;
use std::ops::Range;
use std::process::Command;

use clap::{Args, ValueEnum};

use crate::node::PlantedBug;
use crate::simulation::nemesis::Scenario;
use crate::simulation::{self, SimReport, SimSettings};

#[derive(Args, Debug)]
pub struct SimArgs {
    /// Run this one seed in this process and print its report (and trace with --trace).
    #[arg(long, conflicts_with = "seeds")]
    pub seed: Option<u64>,
    /// Run every seed in `A..B`, each in its own process.
    #[arg(long, value_parser = parse_range)]
    pub seeds: Option<Range<u64>>,
    /// Fault family; every scenario when omitted with --seeds, `mixed` with --seed.
    #[arg(long, value_enum)]
    pub scenario: Option<Scenario>,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=5))]
    pub nodes: u64,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=8))]
    pub clients: u64,
    /// Plant a bug the checkers must catch (debug builds only).
    #[arg(long, value_enum)]
    pub planted_bug: Option<PlantedBug>,
    /// Each node's bound on campaigning replicas; the budget adapts below it.
    #[arg(long, default_value_t = crate::simulation::SIM_MAX_CAMPAIGNING_REPLICAS as u64,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub max_campaigning_replicas: u64,
    /// Print the full semantic trace (with --seed).
    #[arg(long)]
    pub trace: bool,
    /// Print the report as one JSON line (with --seed).
    #[arg(long)]
    pub json: bool,
    /// Child processes at once (with --seeds).
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
}

fn parse_range(text: &str) -> Result<Range<u64>, String> {
    let (a, b) = text.split_once("..").ok_or("expected A..B")?;
    let a: u64 = a.parse().map_err(|_| format!("{a:?} is not a number"))?;
    let b: u64 = b.parse().map_err(|_| format!("{b:?} is not a number"))?;
    if a >= b {
        return Err(format!("{text} is empty"));
    }
    Ok(a..b)
}

fn replay_command(args: &SimArgs, seed: u64, scenario: Scenario) -> String {
    let mut cmd = format!(
        "cargo run -- sim --seed {seed} --scenario {} --nodes {} --clients {} --max-campaigning-replicas {} --trace",
        scenario.name(),
        args.nodes,
        args.clients,
        args.max_campaigning_replicas
    );
    if let Some(bug) = args.planted_bug {
        cmd.push_str(&format!(
            " --planted-bug {}",
            bug.to_possible_value().unwrap().get_name()
        ));
    }
    cmd
}

pub fn run(args: SimArgs) -> Result<(), String> {
    if args.planted_bug.is_some() && !cfg!(debug_assertions) {
        return Err("--planted-bug exists only in debug builds".into());
    }
    match (args.seed, &args.seeds) {
        (Some(seed), _) => run_one(&args, seed),
        (None, Some(seeds)) => run_many(&args, seeds.clone()),
        (None, None) => Err("give --seed S or --seeds A..B".into()),
    }
}

fn run_one(args: &SimArgs, seed: u64) -> Result<(), String> {
    let scenario = args.scenario.unwrap_or(Scenario::Mixed);
    let settings = SimSettings {
        seed,
        nodes: args.nodes,
        clients: args.clients,
        scenario,
        planted_bug: args.planted_bug,
        max_campaigning_replicas: args.max_campaigning_replicas as usize,
        keep_trace: args.trace,
    };
    let report = simulation::run(&settings)?;
    if args.json {
        println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
    } else {
        for line in &report.trace {
            println!("{line}");
        }
        println!(
            "seed {seed} scenario {} nodes {}: {} ops ({} checked, {} indeterminate), {} violations, sim {:.1} s, wall {:.1} s, trace hash {:016x}",
            scenario.name(),
            report.nodes,
            report.ops,
            report.ops_checked,
            report.indeterminate,
            report.violations.len(),
            report.sim_time_ms as f64 / 1000.0,
            report.wall_time_ms as f64 / 1000.0,
            report.trace_hash
        );
        for fault in &report.faults {
            println!(
                "  fault at {:>6} ms for {:>5} ms: {:?}",
                fault.start_ms, fault.duration_ms, fault.fault
            );
        }
        for violation in &report.violations {
            println!("  VIOLATION: {violation}");
        }
    }
    if report.violations.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "seed {seed} failed; replay: {}",
            replay_command(args, seed, scenario)
        ))
    }
}

#[derive(Default)]
struct Row {
    seeds: u64,
    ops_checked: usize,
    violations: usize,
    failed_seeds: Vec<u64>,
    sim_ms: u64,
    wall_ms: u64,
}

fn run_child(args: &SimArgs, seed: u64, scenario: Scenario) -> Result<SimReport, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "sim",
        "--json",
        "--seed",
        &seed.to_string(),
        "--scenario",
        scenario.name(),
    ])
    .args([
        "--nodes",
        &args.nodes.to_string(),
        "--clients",
        &args.clients.to_string(),
        "--max-campaigning-replicas",
        &args.max_campaigning_replicas.to_string(),
    ]);
    if let Some(bug) = args.planted_bug {
        cmd.args(["--planted-bug", bug.to_possible_value().unwrap().get_name()]);
    }
    let output = cmd.output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str::<SimReport>(line).map_err(|_| {
        format!(
            "seed {seed} ({}) produced no report: {}",
            scenario.name(),
            String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or("")
        )
    })
}

fn run_many(args: &SimArgs, seeds: Range<u64>) -> Result<(), String> {
    let scenarios: Vec<Scenario> = args.scenario.map_or(Scenario::ALL.to_vec(), |s| vec![s]);
    let jobs: Vec<(Scenario, u64)> = scenarios
        .iter()
        .flat_map(|s| seeds.clone().map(move |seed| (*s, seed)))
        .collect();
    let total = jobs.len();
    let started = std::time::Instant::now();
    let mut rows: BTreeMap<&'static str, Row> = BTreeMap::new();
    let mut failures = Vec::new();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} simulations, {elapsed} elapsed, eta {eta}  {msg}",
        )
        .expect("valid template"),
    );
    for chunk in jobs.chunks(args.jobs.max(1)) {
        let results: Vec<(Scenario, u64, Result<SimReport, String>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|(scenario, seed)| {
                    let (scenario, seed) = (*scenario, *seed);
                    scope.spawn(move || (scenario, seed, run_child(args, seed, scenario)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("sim child thread"))
                .collect()
        });
        for (scenario, seed, result) in results {
            bar.inc(1);
            let row = rows.entry(scenario.name()).or_default();
            row.seeds += 1;
            match result {
                Ok(report) => {
                    row.ops_checked += report.ops_checked;
                    row.sim_ms += report.sim_time_ms;
                    row.wall_ms += report.wall_time_ms;
                    if !report.violations.is_empty() {
                        row.violations += report.violations.len();
                        row.failed_seeds.push(seed);
                        let failure = format!(
                            "seed {seed} ({}): {}\n    replay: {}",
                            scenario.name(),
                            report.violations[0],
                            replay_command(args, seed, scenario)
                        );
                        bar.println(format!("FAILED {failure}"));
                        failures.push(failure);
                    }
                }
                Err(e) => {
                    row.violations += 1;
                    row.failed_seeds.push(seed);
                    let failure = format!("{e}\n    replay: {}", replay_command(args, seed, scenario));
                    bar.println(format!("FAILED {failure}"));
                    failures.push(failure);
                }
            }
            bar.set_message(format!("{} failing", failures.len()));
        }
    }
    bar.finish();
    eprintln!("{total} simulations in {:.0} s", started.elapsed().as_secs_f64());
    println!(
        "{:<11} {:>6} {:>11} {:>10} {:>10} {:>10}  failed seeds",
        "scenario", "seeds", "ops checked", "violations", "sim time", "wall time"
    );
    for (name, row) in &rows {
        println!(
            "{:<11} {:>6} {:>11} {:>10} {:>9.0}s {:>9.1}s  {:?}",
            name,
            row.seeds,
            row.ops_checked,
            row.violations,
            row.sim_ms as f64 / 1000.0,
            row.wall_ms as f64 / 1000.0,
            row.failed_seeds
        );
    }
    for failure in &failures {
        println!("FAILED {failure}");
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} of {total} simulations failed", failures.len()))
    }
}

//! `midasflow bench-storage`: what making a group commit durable costs, by mechanism.
//!
//! Each round writes `batch` log entries of `entry_bytes` and makes them durable, the way
//! the group-commit flusher does, then reports rounds per second, entries per second and
//! latency percentiles per mechanism:
//! - `sled-flush`: sled's `apply_batch` + `flush()` alone (`sync_file_range`: NOT durable
//!   against power loss; what midasflow did before).
//! - `sled-fdatasync`: the same + `fdatasync` of sled's log file (what midasflow does).
//! - `append-fdatasync`: one `write` of the records to an append-only file + `fdatasync`
//!   (the floor of a purpose-built log; see docs/durability.md).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::raft::log_store::DurableFiles;

#[derive(Args, Debug)]
pub struct StorageBenchArgs {
    /// Directory for the scratch files (on the disk to measure); removed afterwards.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Entries per durable round (repeat to measure several).
    #[arg(long = "batch", default_values_t = [1usize, 64])]
    pub batches: Vec<usize>,
    #[arg(long, default_value_t = 200)]
    pub entry_bytes: usize,
    #[arg(long, default_value_t = 3)]
    pub duration_secs: u64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn measure(
    duration: Duration,
    batch: usize,
    mut round: impl FnMut(u64) -> std::io::Result<()>,
) -> Result<Value, String> {
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut rounds = 0u64;
    while started.elapsed() < duration {
        let t = Instant::now();
        round(rounds).map_err(|e| e.to_string())?;
        latency_us.saturating_record(t.elapsed().as_micros() as u64);
        rounds += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(json!({
        "batch": batch,
        "syncs_per_sec": rounds as f64 / secs,
        "entries_per_sec": (rounds as usize * batch) as f64 / secs,
        "p50_us": latency_us.value_at_quantile(0.5),
        "p99_us": latency_us.value_at_quantile(0.99),
    }))
}

pub fn run(args: StorageBenchArgs) -> Result<(), String> {
    let scratch = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .map_err(|e| e.to_string())?;
    let duration = Duration::from_secs(args.duration_secs);
    let entry = vec![b'e'; args.entry_bytes];
    let mut results = Vec::new();
    for &batch in &args.batches {
        for mechanism in ["sled-flush", "sled-fdatasync", "append-fdatasync"] {
            let dir = scratch.path().join(format!("{mechanism}-{batch}"));
            let result = match mechanism {
                "append-fdatasync" => {
                    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                    let mut file = std::fs::File::create(dir.join("log")).map_err(|e| e.to_string())?;
                    let mut buffer = Vec::with_capacity(batch * (entry.len() + 16));
                    measure(duration, batch, |round| {
                        buffer.clear();
                        for i in 0..batch as u64 {
                            buffer.extend_from_slice(&(round * batch as u64 + i).to_be_bytes());
                            buffer.extend_from_slice(&(entry.len() as u32).to_be_bytes());
                            buffer.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&entry).to_be_bytes()[..4]);
                            buffer.extend_from_slice(&entry);
                        }
                        file.write_all(&buffer)?;
                        file.sync_data()
                    })?
                }
                _ => {
                    let db = sled::Config::new()
                        .path(&dir)
                        .flush_every_ms(None)
                        .open()
                        .map_err(|e| e.to_string())?;
                    let tree = db.open_tree("raft_log").map_err(|e| e.to_string())?;
                    let mut files = DurableFiles::open(&dir).map_err(|e| e.to_string())?;
                    let sync = mechanism == "sled-fdatasync";
                    measure(duration, batch, |round| {
                        let mut writes = sled::Batch::default();
                        for i in 0..batch as u64 {
                            writes.insert(&(round * batch as u64 + i).to_be_bytes(), entry.as_slice());
                        }
                        tree.apply_batch(writes).map_err(std::io::Error::other)?;
                        db.flush().map_err(std::io::Error::other)?;
                        if sync {
                            files.sync()?;
                        }
                        Ok(())
                    })?
                }
            };
            let mut result = result;
            result["mechanism"] = json!(mechanism);
            println!("{result}");
            results.push(result);
        }
    }
    let report = json!({"entry_bytes": args.entry_bytes, "duration_secs": args.duration_secs, "results": results});
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&report).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(())
}

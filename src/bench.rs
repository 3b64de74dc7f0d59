//! `midasflow bench`: a closed-loop load generator with hdrhistogram percentiles.
//!
//! Each connection sends one request at a time, so throughput and latency trade off the
//! way they do for real clients. Results go to stdout and, with `--out`, to a JSON file.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use hyper::{Method, StatusCode};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::client::{encode_key, Client, SmartClient};

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Unconditional PUTs.
    Write,
    /// Linearizable GETs (keys are preloaded).
    Read,
    /// `?consistency=stale` GETs (keys are preloaded).
    Stale,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Send to the shard's leader, as the smart client does.
    Leader,
    /// Send to the nodes round-robin and let them forward.
    Any,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Node addresses, comma-separated (`host:port`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    pub endpoints: Vec<String>,
    #[arg(long, value_enum, default_value_t = Workload::Write)]
    pub workload: Workload,
    #[arg(long, value_enum, default_value_t = Routing::Leader)]
    pub routing: Routing,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Keys are drawn uniformly from this many.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    #[arg(long, default_value_t = 128)]
    pub value_bytes: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// With --ca-cert, nodes are reached over https.
    #[command(flatten)]
    pub security: crate::api::client::ClientSecurity,
}

/// A 16-byte key, as the benchmark method specifies.
fn key_of(index: u64) -> Vec<u8> {
    format!("k{index:015}").into_bytes()
}

enum Target {
    Smart(Box<SmartClient>),
    RoundRobin(Vec<Client>),
}

impl Target {
    async fn send(&self, conn: usize, method: Method, key: &[u8], query: &str, body: Bytes) -> Option<StatusCode> {
        let path = format!("/v1/kv/{}{query}", encode_key(key));
        let reply = match self {
            Target::Smart(client) => client.request(method, key, &path, &[], body).await,
            Target::RoundRobin(clients) => clients[conn % clients.len()].request(method, &path, &[], body).await,
        };
        reply.ok().map(|r| r.status)
    }
}

pub async fn run(args: BenchArgs) -> Result<(), String> {
    let auth = args.security.auth()?;
    let scheme = if auth.tls.is_some() { "https" } else { "http" };
    let target = Arc::new(match args.routing {
        Routing::Leader => Target::Smart(Box::new(
            SmartClient::connect_with(args.endpoints.clone(), auth)
                .await
                .map_err(|e| e.to_string())?,
        )),
        Routing::Any => Target::RoundRobin(
            args.endpoints
                .iter()
                .map(|e| Client::with_auth(&format!("{scheme}://{e}"), auth.clone()))
                .collect(),
        ),
    });
    let value = Bytes::from(vec![b'v'; args.value_bytes]);
    if args.workload != Workload::Write {
        eprintln!("preloading {} keys...", args.keys);
        let next = Arc::new(AtomicU64::new(0));
        let loaders: Vec<_> = (0..args.connections)
            .map(|conn| {
                let (target, next, value, keys) = (target.clone(), next.clone(), value.clone(), args.keys);
                tokio::spawn(async move {
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= keys {
                            return;
                        }
                        target.send(conn, Method::PUT, &key_of(index), "", value.clone()).await;
                    }
                })
            })
            .collect();
        for loader in loaders {
            loader.await.map_err(|e| e.to_string())?;
        }
        // Scripts that act during the timed run (ops/bench/split_stall.py) wait for this.
        eprintln!("preloaded {} keys", args.keys);
    }
    let (method, query) = match args.workload {
        Workload::Write => (Method::PUT, ""),
        Workload::Read => (Method::GET, ""),
        Workload::Stale => (Method::GET, "?consistency=stale"),
    };
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration_secs);
    let workers: Vec<_> = (0..args.connections)
        .map(|conn| {
            let (target, done, value, method) = (target.clone(), done.clone(), value.clone(), method.clone());
            let mut rng = SmallRng::seed_from_u64(args.seed.wrapping_mul(1_000_003).wrapping_add(conn as u64));
            let keys = args.keys;
            tokio::spawn(async move {
                let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let key = key_of(rng.gen_range(0..keys));
                    let body = if method == Method::PUT {
                        value.clone()
                    } else {
                        Bytes::new()
                    };
                    let sent = Instant::now();
                    let status = target.send(conn, method.clone(), &key, query, body).await;
                    latency_us.saturating_record(sent.elapsed().as_micros() as u64);
                    if status != Some(StatusCode::OK) {
                        errors += 1;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                (latency_us, errors)
            })
        })
        .collect();
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = done.load(Ordering::Relaxed);
                eprintln!("{:>5.1}s  {:>8} ops/s", started.elapsed().as_secs_f64(), now - last);
                last = now;
            }
        })
    };
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut errors = 0;
    for worker in workers {
        let (h, e) = worker.await.map_err(|e| e.to_string())?;
        latency_us.add(&h).map_err(|e| e.to_string())?;
        errors += e;
    }
    progress.abort();
    let elapsed = started.elapsed().as_secs_f64();
    let ops = latency_us.len();
    let ms = |q: f64| latency_us.value_at_quantile(q) as f64 / 1000.0;
    let results = json!({
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "routing": format!("{:?}", args.routing).to_lowercase(),
        "connections": args.connections,
        "keys": args.keys,
        "key_bytes": 16,
        "value_bytes": args.value_bytes,
        "elapsed_seconds": elapsed,
        "operations": ops,
        "errors": errors,
        "throughput_ops_per_second": ops as f64 / elapsed,
        "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999), "max": latency_us.max() as f64 / 1000.0},
    });
    println!("{}", serde_json::to_string_pretty(&results).unwrap_or_default());
    if let Some(path) = args.out {
        std::fs::write(&path, serde_json::to_vec_pretty(&results).unwrap_or_default())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    if errors > ops / 100 {
        return Err(format!("{errors} of {ops} requests failed"));
    }
    Ok(())
}

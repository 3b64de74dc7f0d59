//! midasflow: a sharded, Raft-replicated key-value store.
//!
//! See `docs/ARCHITECTURE.md` for the map of the code.

pub mod api;
pub mod bench;
pub mod bench_storage;
pub mod cli;
pub mod codec;
pub mod demo;
pub mod identity;
pub mod launch;
pub mod log_limit;
pub mod node;
pub mod placement;
pub mod raft;
pub mod security;
pub mod shard;
pub mod sim_cli;
#[path = "../simulation/mod.rs"]
pub mod simulation;
pub mod telemetry;

pub use api::client;

//! Integration tests: real `midasflow server` processes on 127.0.0.1 ports the tests pick.
//!
//! One binary with modules, so the build links once. Cluster tests take a process-wide
//! lock: several 3-node clusters at once on a 2-core machine would measure the machine,
//! not midasflow.

mod bad_input;
mod console;
mod durability;
mod harness;
mod hostile;
mod identity;
mod kv;
mod ops;
mod placement;
mod powercut_fs;
mod quiet;
mod security;
mod simulation;

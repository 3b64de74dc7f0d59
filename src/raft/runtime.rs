//! openraft's async runtime, with its random numbers drawn through a seam.
//!
//! openraft draws election timeouts from `AsyncRuntime::thread_rng()`. In production that
//! is the OS-seeded thread RNG; a simulation seeds a thread-local generator per node and
//! group (see [`seed_thread_rng`]) so the same seed gives the same elections.

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use openraft::async_runtime::{AsyncRuntime, TokioOneShotSender};
use openraft::{OptionalSend, TokioInstant};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

thread_local! {
    static SEEDED: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Makes every later draw on this thread come from a generator seeded with `seed`.
pub fn seed_thread_rng(seed: u64) {
    SEEDED.with(|cell| *cell.borrow_mut() = Some(StdRng::seed_from_u64(seed)));
}

/// Runs synchronous work that can take long (a split's scan and batch, a snapshot's
/// copy, encoding or install) without holding up the other tasks of its tokio worker:
/// on the server's multi-threaded runtime those move to another thread meanwhile, so Raft
/// messages and other groups' requests keep being served (three splits applied at once on
/// a 2-core node ran on its workers while Raft requests to it timed out after 100 ms). On
/// a single-threaded runtime (the simulation, unit tests) there is no other worker, and
/// `f` just runs.
pub fn run_blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// A seed for one group on one node, derived from a simulation's seed.
pub fn group_seed(base: u64, node: u64, group: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&[base.to_le_bytes(), node.to_le_bytes(), group.to_le_bytes()].concat())
}

/// Draws from the seeded generator when one is set on this thread, else the OS thread RNG.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeamRng;

impl SeamRng {
    fn with<T>(f: impl FnOnce(&mut dyn RngCore) -> T) -> T {
        SEEDED.with(|cell| match cell.borrow_mut().as_mut() {
            Some(rng) => f(rng),
            None => f(&mut rand::thread_rng()),
        })
    }
}

impl RngCore for SeamRng {
    fn next_u32(&mut self) -> u32 {
        Self::with(|r| r.next_u32())
    }
    fn next_u64(&mut self) -> u64 {
        Self::with(|r| r.next_u64())
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        Self::with(|r| r.fill_bytes(dest))
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        Self::with(|r| r.try_fill_bytes(dest))
    }
}

/// tokio, as openraft's `TokioRuntime`, except for the RNG seam.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SeamRuntime;

impl AsyncRuntime for SeamRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = SeamRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        SeamRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(tx), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn seeded_draws_repeat() {
        seed_thread_rng(group_seed(42, 1, 3));
        let first: Vec<u64> = (0..4).map(|_| SeamRng.gen_range(0..1000)).collect();
        seed_thread_rng(group_seed(42, 1, 3));
        let second: Vec<u64> = (0..4).map(|_| SeamRng.gen_range(0..1000)).collect();
        assert_eq!(first, second);
        assert_ne!(group_seed(42, 1, 3), group_seed(42, 2, 3));
    }
}

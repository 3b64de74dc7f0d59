//! A bound on how fast the node's log can grow. A storm of failures repeats the same few
//! messages: at 10,000 shards a whole-cluster restart made openraft log every vote that
//! timed out at ERROR, 350 MB in 45 s, enough to fill a small disk. Each call site (one
//! `tracing` macro in the code) may log [`EVENTS_PER_WINDOW_MAX`] events per
//! [`WINDOW_MS`]; the rest are dropped and counted in
//! `midasflow_log_events_suppressed_total`. The number of call sites is fixed at build
//! time, so the table here is bounded too.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Events one call site may log per window.
pub const EVENTS_PER_WINDOW_MAX: u32 = 20;
/// The window, in milliseconds.
pub const WINDOW_MS: u64 = 10_000;

/// The rate limit, as a `tracing` layer: an event it refuses reaches no other layer.
pub struct LogRateLimit {
    events_per_window: u32,
    window: Duration,
    sites: Mutex<HashMap<Identifier, Site>>,
}

struct Site {
    window_started: Instant,
    logged: u32,
}

impl Default for LogRateLimit {
    fn default() -> Self {
        LogRateLimit::new(EVENTS_PER_WINDOW_MAX, Duration::from_millis(WINDOW_MS))
    }
}

impl LogRateLimit {
    pub fn new(events_per_window: u32, window: Duration) -> Self {
        LogRateLimit {
            events_per_window,
            window,
            sites: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an event of call site `site` at `now` may be logged.
    fn admit(&self, site: Identifier, now: Instant) -> bool {
        let mut sites = self.sites.lock().unwrap_or_else(PoisonError::into_inner);
        let site = sites.entry(site).or_insert(Site {
            window_started: now,
            logged: 0,
        });
        if now.saturating_duration_since(site.window_started) >= self.window {
            site.window_started = now;
            site.logged = 0;
        }
        if site.logged < self.events_per_window {
            site.logged += 1;
            true
        } else {
            false
        }
    }
}

impl<S: Subscriber> Layer<S> for LogRateLimit {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let admitted = self.admit(event.metadata().callsite(), Instant::now());
        if !admitted {
            metrics::counter!("midasflow_log_events_suppressed_total").increment(1);
        }
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tracing_subscriber::layer::SubscriberExt;

    /// Counts the events that reach it.
    struct Count(Arc<AtomicUsize>);

    impl<S: Subscriber> Layer<S> for Count {
        fn on_event(&self, _: &Event<'_>, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A storm from one call site is cut to the limit; another call site keeps its own
    /// allowance.
    #[test]
    fn a_storm_from_one_call_site_is_cut_to_the_limit() {
        let seen = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(Count(seen.clone()))
            .with(LogRateLimit::new(5, Duration::from_secs(3600)));
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..1_000 {
                tracing::error!(i, "the same failure again");
            }
            assert_eq!(seen.load(Ordering::Relaxed), 5);
            tracing::warn!("another call site");
        });
        assert_eq!(seen.load(Ordering::Relaxed), 6);
    }

    /// A new window gives the call site its allowance back.
    #[test]
    fn the_allowance_comes_back_with_the_next_window() {
        let limit = LogRateLimit::new(2, Duration::from_millis(100));
        struct Site;
        static SITE: Site = Site;
        impl tracing::Callsite for Site {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &tracing::Metadata<'_> {
                unimplemented!("not called by admit")
            }
        }
        let id = || Identifier(&SITE);
        let start = Instant::now();
        assert!(limit.admit(id(), start));
        assert!(limit.admit(id(), start));
        assert!(!limit.admit(id(), start + Duration::from_millis(99)));
        assert!(limit.admit(id(), start + Duration::from_millis(100)));
    }
}

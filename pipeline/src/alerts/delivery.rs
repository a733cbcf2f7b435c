//! The delivery thread shared by every receiver kind: a bounded queue, one
//! worker, retries with capped exponential backoff and jitter.
//!
//! A receiver only says how one attempt went ([`Transport::attempt`]); this
//! module decides when to retry, what to drop when the queue is full, and
//! how long to wait at shutdown. Delivery never blocks the data path:
//! [`DeliveryQueue::push`] only takes a lock.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::retry::{Backoff, Outcome};

/// Serde defaults every receiver's config shares.
pub(super) mod defaults {
    use std::time::Duration;

    /// Per-request (or per-connection) timeout.
    pub fn timeout() -> Duration {
        Duration::from_secs(10)
    }
    /// First retry delay.
    pub fn initial_backoff() -> Duration {
        Duration::from_millis(500)
    }
    /// Longest delay between retries (HTTP receivers).
    pub fn max_backoff() -> Duration {
        Duration::from_secs(30)
    }
    /// Items waiting in a receiver's queue.
    pub fn queue() -> usize {
        1000
    }
}

/// One receiver's way of delivering an item.
pub trait Transport: Send + 'static {
    /// What is queued: a request body, an email.
    type Item: Send + 'static;
    /// Try once.
    fn attempt(&mut self, item: &Self::Item) -> Outcome;
}

/// Retry and queue bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Delays between the retries of one item.
    pub backoff: Backoff,
    /// Items waiting; beyond this the oldest is dropped.
    pub queue_capacity: usize,
    /// Rate limit: at least this long between two items (not between
    /// retries of one). Zero for none.
    pub min_interval: Duration,
}

impl RetryPolicy {
    /// `min_interval` for at most `per_minute` items a minute (none if 0).
    pub fn interval_for(per_minute: u32) -> Duration {
        match per_minute {
            0 => Duration::ZERO,
            n => Duration::from_secs(60) / n,
        }
    }
}

/// Delivery counters, for logs, `/metrics` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Items the receiver took.
    pub delivered: u64,
    /// Attempts that failed and were retried.
    pub retries: u64,
    /// Items the receiver refused for good (not retried).
    pub rejected: u64,
    /// Items dropped because the queue was full.
    pub dropped: u64,
    /// Items still queued (or in flight) when the queue was closed.
    pub undelivered: u64,
}

struct Queue<T> {
    items: VecDeque<T>,
    closing: bool,
    /// An item is being delivered (the queue is not drained yet).
    busy: bool,
    stats: DeliveryStats,
}

type Shared<T> = Arc<(Mutex<Queue<T>>, Condvar)>;

/// A receiver's queue and its delivery thread.
pub struct DeliveryQueue<T> {
    name: String,
    policy: RetryPolicy,
    shared: Shared<T>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> DeliveryQueue<T> {
    /// Start delivering through `transport` on a thread named after `name`.
    pub fn start<X: Transport<Item = T>>(
        name: &str,
        transport: X,
        policy: RetryPolicy,
    ) -> std::io::Result<Self> {
        let shared: Shared<T> = Arc::new((
            Mutex::new(Queue {
                items: VecDeque::new(),
                closing: false,
                busy: false,
                stats: DeliveryStats::default(),
            }),
            Condvar::new(),
        ));
        let worker_shared = shared.clone();
        let worker_name = name.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("deliver {name}"))
            .spawn(move || run(&worker_name, transport, policy, &worker_shared))?;
        Ok(Self {
            name: name.to_string(),
            policy,
            shared,
            thread: Some(thread),
        })
    }

    /// Queue an item; when full, the oldest waiting item is dropped (counted
    /// and logged).
    pub fn push(&self, item: T) {
        let (lock, wake) = &*self.shared;
        let mut q = lock.lock().expect("delivery queue lock");
        if q.items.len() >= self.policy.queue_capacity.max(1) {
            q.items.pop_front();
            q.stats.dropped += 1;
            tracing::warn!(
                receiver = %self.name,
                capacity = self.policy.queue_capacity,
                "delivery queue full: dropped the oldest notification"
            );
        }
        q.items.push_back(item);
        wake.notify_all();
    }

    /// Deliver what is queued, waiting at most `deadline`; then stop.
    pub fn close(mut self, deadline: Duration) -> DeliveryStats {
        let (lock, wake) = &*self.shared;
        let until = Instant::now() + deadline;
        let mut q = lock.lock().expect("delivery queue lock");
        while (!q.items.is_empty() || q.busy) && Instant::now() < until {
            let left = until.saturating_duration_since(Instant::now());
            q = wake.wait_timeout(q, left).expect("delivery queue lock").0;
        }
        q.closing = true;
        q.stats.undelivered = q.items.len() as u64 + u64::from(q.busy);
        let stats = q.stats;
        drop(q);
        wake.notify_all();
        if stats.undelivered > 0 {
            tracing::error!(
                receiver = %self.name,
                undelivered = stats.undelivered,
                "receiver still failing at shutdown; notifications not delivered"
            );
        } else if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        stats
    }
}

fn run<X: Transport>(name: &str, mut transport: X, policy: RetryPolicy, shared: &Shared<X::Item>) {
    let (lock, wake) = &**shared;
    let mut last_start: Option<Instant> = None;
    loop {
        let item = {
            let mut q = lock.lock().expect("delivery queue lock");
            loop {
                if q.closing {
                    return;
                }
                if let Some(item) = q.items.pop_front() {
                    q.busy = true;
                    break item;
                }
                q = wake.wait(q).expect("delivery queue lock");
            }
        };
        // Rate limit: items wait their turn; nothing is dropped for it.
        if let Some(prev) = last_start {
            let since = Instant::now().duration_since(prev);
            if since < policy.min_interval {
                std::thread::sleep(policy.min_interval - since);
            }
        }
        last_start = Some(Instant::now());
        let mut delays = policy.backoff.delays();
        loop {
            match transport.attempt(&item) {
                Outcome::Done => {
                    lock.lock().expect("delivery queue lock").stats.delivered += 1;
                    break;
                }
                Outcome::Reject(why) => {
                    tracing::error!(receiver = %name, %why, "receiver refused the notification; not retrying");
                    lock.lock().expect("delivery queue lock").stats.rejected += 1;
                    break;
                }
                Outcome::Retry { reason: why, after } => {
                    let wait = policy.backoff.wait(&mut delays, after);
                    tracing::warn!(receiver = %name, %why, retry_in_ms = wait.as_millis() as u64, "delivery failed; will retry");
                    {
                        let mut q = lock.lock().expect("delivery queue lock");
                        q.stats.retries += 1;
                        if q.closing {
                            return;
                        }
                    }
                    std::thread::sleep(wait);
                }
            }
        }
        lock.lock().expect("delivery queue lock").busy = false;
        wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails `failures` times, then delivers; records what it saw.
    struct Flaky {
        failures: usize,
        seen: Arc<Mutex<Vec<u32>>>,
    }

    impl Transport for Flaky {
        type Item = u32;
        fn attempt(&mut self, item: &u32) -> Outcome {
            self.seen.lock().unwrap().push(*item);
            if *item == 13 {
                return Outcome::Reject("unlucky".into());
            }
            if self.failures > 0 {
                self.failures -= 1;
                return Outcome::retry("down");
            }
            Outcome::Done
        }
    }

    fn policy(capacity: usize) -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(4),
            },
            queue_capacity: capacity,
            min_interval: Duration::ZERO,
        }
    }

    #[test]
    fn the_rate_limit_spaces_items_out() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let t = Flaky {
            failures: 0,
            seen: seen.clone(),
        };
        let mut p = policy(10);
        p.min_interval = RetryPolicy::interval_for(1200); // 50 ms apart
        let started = Instant::now();
        let q = DeliveryQueue::start("t", t, p).unwrap();
        for i in 1..=4 {
            q.push(i);
        }
        let stats = q.close(Duration::from_secs(5));
        assert_eq!(stats.delivered, 4);
        // Three gaps of 50 ms: a lower bound, which load cannot break.
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[test]
    fn retries_then_delivers_in_order_and_rejects_for_good() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let t = Flaky {
            failures: 3,
            seen: seen.clone(),
        };
        let q = DeliveryQueue::start("t", t, policy(10)).unwrap();
        for i in [1, 13, 2] {
            q.push(i);
        }
        let stats = q.close(Duration::from_secs(5));
        assert_eq!(*seen.lock().unwrap(), vec![1, 1, 1, 1, 13, 2]);
        assert_eq!(
            (
                stats.delivered,
                stats.retries,
                stats.rejected,
                stats.undelivered
            ),
            (2, 3, 1, 0)
        );
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_shutdown_counts_the_rest() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let t = Flaky {
            failures: usize::MAX,
            seen: seen.clone(),
        };
        let q = DeliveryQueue::start("t", t, policy(2)).unwrap();
        for i in 1..=5 {
            q.push(i);
        }
        let stats = q.close(Duration::from_millis(50));
        assert_eq!(stats.delivered, 0);
        assert!(stats.dropped >= 2, "{stats:?}");
        assert_eq!(stats.dropped + stats.undelivered, 5, "{stats:?}");
    }
}

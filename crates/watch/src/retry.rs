//! Jittered exponential backoff shared by every source.

use std::time::Duration;

/// Exponential backoff with "equal jitter": each delay is drawn from [d/2, d] where d doubles from
/// `initial` up to `max`. `reset` after a success. `attempts` bounds the number of consecutive
/// failures (None: retry forever).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempts: Option<u32>,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, attempts: Option<u32>) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Backoff { initial, max: max.max(initial), attempts, failures: 0 }
    }

    /// Records a failure and returns how long to wait before the next try, or None when the
    /// configured number of attempts is used up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.attempts.is_some_and(|a| self.failures >= a) {
            return None;
        }
        let exp = self.failures.min(32);
        self.failures = self.failures.saturating_add(1);
        let base = self.initial.saturating_mul(1u32 << exp.min(31)).min(self.max);
        let half = base / 2;
        let jitter = Duration::from_nanos(fastrand::u64(0..=half.as_nanos().min(u64::MAX as u128) as u64));
        Some(half + jitter)
    }

    /// The longest delay this backoff waits: where it settles for persistent errors.
    pub fn slowest(&self) -> Duration {
        self.max
    }

    /// Consecutive failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), None);
        let d1 = b.next_delay().unwrap();
        assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100), "{d1:?}");
        for _ in 0..10 {
            b.next_delay();
        }
        let d = b.next_delay().unwrap();
        assert!(d >= Duration::from_millis(500) && d <= Duration::from_secs(1), "{d:?}");
        b.reset();
        assert!(b.next_delay().unwrap() <= Duration::from_millis(100));
    }

    #[test]
    fn attempts_run_out() {
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_millis(2), Some(2));
        assert!(b.next_delay().is_some());
        assert!(b.next_delay().is_some());
        assert!(b.next_delay().is_none());
    }
}

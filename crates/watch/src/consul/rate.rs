//! The rate limit on each blocking loop: a small token bucket.
//!
//! Consul's documentation asks clients to rate-limit their blocking loops: a prefix that flaps (or a
//! server that keeps answering at once) must not turn the loop into a tight one. A token bucket does
//! that without delaying an isolated change: a quiet loop has a full bucket, so its next request goes
//! out at once; only a sustained run of immediate answers is spaced out to the refill rate.

use std::time::Duration;

use tokio::time::Instant;

/// Up to `capacity` requests back to back, then one per `refill`.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    capacity: f64,
    refill: Duration,
    /// Tokens available at `updated` (fractional: refilled continuously).
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    pub fn new(capacity: u32, refill: Duration) -> Self {
        let capacity = f64::from(capacity.max(1));
        TokenBucket {
            capacity,
            refill: refill.max(Duration::from_micros(1)),
            tokens: capacity,
            updated: Instant::now(),
        }
    }

    /// Waits until a request may be made, and takes its token.
    pub async fn acquire(&mut self) {
        self.top_up();
        if self.tokens < 1.0 {
            let missing = 1.0 - self.tokens;
            tokio::time::sleep(self.refill.mul_f64(missing)).await;
            self.top_up();
        }
        self.tokens = (self.tokens - 1.0).max(0.0);
    }

    fn top_up(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.updated).as_secs_f64() / self.refill.as_secs_f64();
        self.tokens = (self.tokens + earned).min(self.capacity);
        self.updated = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_is_free_then_spaced_then_refilled() {
        let mut bucket = TokenBucket::new(3, Duration::from_millis(100));
        let start = Instant::now();
        for _ in 0..3 {
            bucket.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "a burst within capacity is not delayed");
        bucket.acquire().await;
        bucket.acquire().await;
        let spaced = start.elapsed();
        assert!(spaced >= Duration::from_millis(200) && spaced < Duration::from_millis(210), "{spaced:?}");
        // A quiet period refills the bucket: the next request (an isolated change) goes out at once.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = Instant::now();
        bucket.acquire().await;
        assert_eq!(before.elapsed(), Duration::ZERO);
    }
}

//! In-memory bounds on how often one caller may do something: a token bucket per key (a
//! source address, a device). Refusals cost no database work. The number of keys is bounded;
//! past it, buckets that have refilled are forgotten first, then all of them. And pacing: a
//! transfer kept at no more than a number of bytes a second (`Pace`, `paced`), for content a
//! device downloads and content a replica fetches.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Keys tracked at most per throttle.
const MAX_KEYS: usize = 100_000;

pub struct Throttle {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Throttle {
    /// `per_minute` refill, up to `burst` at once (both at least 1).
    pub fn new(per_minute: u64, burst: u64) -> Self {
        Self {
            per_second: per_minute.max(1) as f64 / 60.0,
            burst: burst.max(1) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one token for `key`; `Err(seconds)` until the next one refills.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= MAX_KEYS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket { tokens: self.burst, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * self.per_second).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / self.per_second).ceil() as u64)
        }
    }
}

/// Keeps a transfer at no more than `rate` bytes a second on average: after each chunk, how
/// long to wait.
pub struct Pace {
    rate: u64,
    started: std::time::Instant,
    bytes: u64,
}

impl Pace {
    pub fn new(rate: u64) -> Self {
        Self { rate, started: std::time::Instant::now(), bytes: 0 }
    }

    pub fn after(&mut self, n: u64) -> std::time::Duration {
        self.bytes += n;
        self.wait(self.started.elapsed())
    }

    /// How long to wait when `elapsed` has passed since the start: until the bytes so far
    /// took `bytes / rate` seconds (nothing without a limit, or when behind it).
    fn wait(&self, elapsed: std::time::Duration) -> std::time::Duration {
        if self.rate == 0 {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_secs_f64(self.bytes as f64 / self.rate as f64).saturating_sub(elapsed)
    }
}

/// `stream`'s chunks passed on at most `rate` bytes a second on average (0: as they come).
pub fn paced<E: Send + 'static>(
    stream: futures::stream::BoxStream<'static, Result<bytes::Bytes, E>>,
    rate: u64,
) -> futures::stream::BoxStream<'static, Result<bytes::Bytes, E>> {
    use futures::StreamExt;
    if rate == 0 {
        return stream;
    }
    futures::stream::unfold((stream, Pace::new(rate)), |(mut stream, mut pace)| async move {
        let item = stream.next().await?;
        if let Ok(chunk) = &item {
            tokio::time::sleep(pace.after(chunk.len() as u64)).await;
        }
        Some((item, (stream, pace)))
    })
    .boxed()
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_paced_transfer_waits_until_its_bytes_took_their_time() {
        use std::time::Duration;
        let mut pace = Pace::new(1000);
        pace.bytes = 500;
        assert_eq!(pace.wait(Duration::from_millis(100)), Duration::from_millis(400));
        assert_eq!(pace.wait(Duration::from_millis(700)), Duration::ZERO, "behind the limit: no wait");
        pace.bytes = 2000;
        assert_eq!(pace.wait(Duration::from_secs(1)), Duration::from_secs(1));
        let unlimited = Pace { rate: 0, started: std::time::Instant::now(), bytes: 1 << 30 };
        assert_eq!(unlimited.wait(Duration::ZERO), Duration::ZERO);
    }
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_refill_rate_per_key() {
        let t = Throttle::new(60, 3);
        let start = Instant::now();
        assert_eq!((0..3).map(|_| t.take("a", start)).filter(Result::is_ok).count(), 3);
        assert_eq!(t.take("a", start), Err(1));
        assert_eq!(t.take("b", start), Ok(()), "keys are apart");
        assert_eq!(t.take("a", start + Duration::from_millis(1100)), Ok(()));
        assert!(t.take("a", start + Duration::from_millis(1100)).is_err());
    }
}

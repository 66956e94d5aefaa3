//! In-memory bounds on how often one caller may do something: a token bucket per key (a
//! source address, a device). Refusals cost no database work. The number of keys is bounded;
//! past it, buckets that have refilled are forgotten first, then all of them.

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

#[cfg(test)]
mod tests {
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

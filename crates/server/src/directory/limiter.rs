//! Per-requester token buckets for KeyPackage claims (anti-scraping, RFC 9750 §5.1).
//!
//! In-process: with several api processes each enforces its own bucket, so the effective
//! limit scales with the number of processes. Must never block: it only does arithmetic
//! under a short-held mutex.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket per requester key.
#[derive(Debug)]
pub struct ClaimLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl ClaimLimiter {
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_sec: f64::from(per_minute) / 60.0,
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take `cost` tokens for `requester` at `now`; `Err(wait)` says how long until they
    /// would be available.
    pub fn check_at(&self, requester: &str, cost: u32, now: Instant) -> Result<(), Duration> {
        let cost = f64::from(cost.max(1));
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > 100_000 {
            // Forget full buckets; they would be full again anyway.
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec < burst
            });
        }
        let (tokens, at) = buckets
            .entry(requester.to_owned())
            .or_insert((self.burst, now));
        let refilled = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_sec)
            .min(self.burst);
        if refilled >= cost {
            *tokens = refilled - cost;
            *at = now;
            Ok(())
        } else {
            *tokens = refilled;
            *at = now;
            Err(Duration::from_secs_f64((cost - refilled) / self.per_sec))
        }
    }

    /// [`check_at`](Self::check_at) with the current time.
    pub fn check(&self, requester: &str, cost: u32) -> Result<(), Duration> {
        self.check_at(requester, cost, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let l = ClaimLimiter::new(60, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at("a", 1, t0).is_ok());
        }
        let wait = l.check_at("a", 1, t0).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        assert!(l.check_at("b", 1, t0).is_ok(), "buckets are per requester");
        assert!(l.check_at("a", 1, t0 + Duration::from_secs(1)).is_ok());
        assert!(l.check_at("a", 1, t0 + Duration::from_secs(1)).is_err());
    }
}

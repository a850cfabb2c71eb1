//! Per-tenant rate limit and daily quota on `POST /v1/messages`.
//!
//! In-process, like the KeyPackage claim limiter: with several API processes each enforces
//! its own share. The quota counts accepted sends per UTC day. It must never block: only
//! arithmetic under a short-held mutex.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::directory::ClaimLimiter;

/// Why a send was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too fast; retry after this long.
    RateLimited(Duration),
    /// The day's quota is used up; retry after this long (the next UTC day).
    QuotaExceeded(Duration),
}

/// Rate limit (token bucket) and quota per tenant. `0` turns either off.
pub struct SendLimiter {
    rate: Option<ClaimLimiter>,
    daily_quota: u64,
    used: Mutex<HashMap<String, (i64, u64)>>,
}

const DAY_MS: i64 = 24 * 3600 * 1000;

impl SendLimiter {
    pub fn new(rate_per_sec: u32, burst: u32, daily_quota: u64) -> Self {
        Self {
            rate: (rate_per_sec > 0).then(|| {
                ClaimLimiter::new(rate_per_sec.saturating_mul(60), burst.max(rate_per_sec))
            }),
            daily_quota,
            used: Mutex::new(HashMap::new()),
        }
    }

    /// Take one send for `tenant` at `now_ms` (Unix ms, for the quota day).
    pub fn check(&self, tenant: &str, now_ms: i64) -> Result<(), Refusal> {
        if let Some(rate) = &self.rate {
            rate.check(tenant, 1).map_err(Refusal::RateLimited)?;
        }
        if self.daily_quota == 0 {
            return Ok(());
        }
        let day = now_ms.div_euclid(DAY_MS);
        let mut used = self
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = used.entry(tenant.to_owned()).or_insert((day, 0));
        if entry.0 != day {
            *entry = (day, 0);
        }
        if entry.1 >= self.daily_quota {
            let next_day_ms = (day + 1) * DAY_MS - now_ms;
            return Err(Refusal::QuotaExceeded(Duration::from_millis(
                u64::try_from(next_day_ms).unwrap_or(0),
            )));
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_resets_each_day_and_rate_limits() {
        let l = SendLimiter::new(0, 0, 2);
        assert!(l.check("t", 10).is_ok());
        assert!(l.check("t", 11).is_ok());
        assert!(matches!(l.check("t", 12), Err(Refusal::QuotaExceeded(_))));
        assert!(l.check("u", 12).is_ok(), "per tenant");
        assert!(l.check("t", DAY_MS + 1).is_ok(), "next day");
        let r = SendLimiter::new(1, 2, 0);
        assert!(r.check("t", 0).is_ok());
        assert!(r.check("t", 0).is_ok());
        assert!(matches!(r.check("t", 0), Err(Refusal::RateLimited(_))));
    }
}

//! Per-tenant rate limit and daily quota on `POST /v1/messages` and `/v1/messages/batch`.
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
    /// More messages in one request than the burst allows: it could never pass.
    OverBurst(u32),
}

/// Rate limit (token bucket) and quota per tenant. `0` turns either off.
pub struct SendLimiter {
    rate: Option<ClaimLimiter>,
    burst: u32,
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
            burst: burst.max(rate_per_sec),
            daily_quota,
            used: Mutex::new(HashMap::new()),
        }
    }

    /// Take `count` sends (one request: 1, or a batch's size) for `tenant` at `now_ms` (Unix
    /// ms, for the quota day): all of them or none.
    pub fn check(&self, tenant: &str, count: u32, now_ms: i64) -> Result<(), Refusal> {
        let count = count.max(1);
        if let Some(rate) = &self.rate {
            if count > self.burst {
                return Err(Refusal::OverBurst(self.burst));
            }
            rate.check(tenant, count).map_err(Refusal::RateLimited)?;
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
        if entry.1.saturating_add(u64::from(count)) > self.daily_quota {
            let next_day_ms = (day + 1) * DAY_MS - now_ms;
            return Err(Refusal::QuotaExceeded(Duration::from_millis(
                u64::try_from(next_day_ms).unwrap_or(0),
            )));
        }
        entry.1 += u64::from(count);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_resets_each_day_and_rate_limits() {
        let l = SendLimiter::new(0, 0, 2);
        assert!(l.check("t", 1, 10).is_ok());
        assert!(l.check("t", 1, 11).is_ok());
        assert!(matches!(
            l.check("t", 1, 12),
            Err(Refusal::QuotaExceeded(_))
        ));
        assert!(l.check("u", 1, 12).is_ok(), "per tenant");
        assert!(l.check("t", 1, DAY_MS + 1).is_ok(), "next day");
        let r = SendLimiter::new(1, 2, 0);
        assert!(r.check("t", 1, 0).is_ok());
        assert!(r.check("t", 1, 0).is_ok());
        assert!(matches!(r.check("t", 1, 0), Err(Refusal::RateLimited(_))));
    }

    /// A batch takes its whole size from the bucket and the quota, or nothing.
    #[test]
    fn a_batch_is_taken_whole_or_not_at_all() {
        let q = SendLimiter::new(0, 0, 10);
        assert!(q.check("t", 8, 0).is_ok());
        assert!(matches!(q.check("t", 3, 0), Err(Refusal::QuotaExceeded(_))));
        assert!(q.check("t", 2, 0).is_ok(), "the refused batch took nothing");
        assert!(matches!(q.check("t", 1, 0), Err(Refusal::QuotaExceeded(_))));
        let r = SendLimiter::new(10, 20, 0);
        assert_eq!(r.check("t", 21, 0), Err(Refusal::OverBurst(20)));
        assert!(r.check("t", 20, 0).is_ok());
        assert!(matches!(r.check("t", 5, 0), Err(Refusal::RateLimited(_))));
    }
}

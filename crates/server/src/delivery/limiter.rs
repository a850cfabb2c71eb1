//! Per-tenant rate limit and daily quota on `POST /v1/messages` and `/v1/messages/batch`.
//!
//! The rate limit is a token bucket in this process, like the KeyPackage claim limiter: with
//! several api processes each enforces the configured rate on its own share of the traffic.
//!
//! The daily quota (accepted sends per UTC day) is counted in the store
//! ([`DeliveryStore::take_quota`]), so it survives a restart and api processes that share a
//! store share one count. A process takes the quota in blocks (a 64th of it, 1 to 1,000 sends)
//! and answers from the block it holds, so a send costs the store nothing until the block is
//! used up. What a block costs: sends held by one process are not available to another, so a
//! tenant can be refused by one process while another still holds a few; and a process that
//! stops (or restarts) loses what it held. A tenant can never get more than the quota. Once
//! the store has no more for the day, the process refuses without asking it again.
//!
//! It must never hold a lock across an await except the refill lock (one store call).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::store::DeliveryStore;
use crate::directory::ClaimLimiter;
use crate::store::StoreError;

/// Why a send was refused.
#[derive(Debug)]
pub enum Refusal {
    /// Too fast; retry after this long.
    RateLimited(Duration),
    /// The day's quota is used up; retry after this long (the next UTC day).
    QuotaExceeded(Duration),
    /// More messages in one request than the burst allows: it could never pass.
    OverBurst(u32),
    /// The quota count could not be read from the store.
    Store(StoreError),
}

/// The quota this process holds for a tenant.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// UTC day (days since the Unix epoch).
    day: i64,
    /// Sends taken from the store and not yet used.
    left: u64,
    /// The store had no more for `day`.
    exhausted: bool,
}

/// Rate limit (token bucket) and quota per tenant. `0` turns either off.
pub struct SendLimiter {
    rate: Option<ClaimLimiter>,
    burst: u32,
    daily_quota: u64,
    /// Sends taken from the store per take.
    block: u64,
    held: Mutex<HashMap<String, Held>>,
    /// One take from the store at a time, so requests that find the block empty together
    /// take one block, not one each.
    refill: tokio::sync::Mutex<()>,
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
            block: (daily_quota / 64).clamp(1, 1_000),
            held: Mutex::new(HashMap::new()),
            refill: tokio::sync::Mutex::new(()),
        }
    }

    /// Take `count` sends (one request: 1, or a batch's size) for `tenant` at `now_ms` (Unix
    /// ms, for the quota day): all of them or none. The quota part may call `store`.
    pub async fn check(
        &self,
        store: &dyn DeliveryStore,
        tenant: &str,
        count: u32,
        now_ms: i64,
    ) -> Result<(), Refusal> {
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
        let count = u64::from(count);
        let refused = || {
            let next_day_ms = (day + 1) * DAY_MS - now_ms;
            Refusal::QuotaExceeded(Duration::from_millis(
                u64::try_from(next_day_ms).unwrap_or(0),
            ))
        };
        match self.take_held(tenant, day, count) {
            Taken::Yes => return Ok(()),
            Taken::Exhausted => return Err(refused()),
            Taken::Short(_) => {}
        }
        let _one = self.refill.lock().await;
        // Another request may have refilled while this one waited.
        let left = match self.take_held(tenant, day, count) {
            Taken::Yes => return Ok(()),
            Taken::Exhausted => return Err(refused()),
            Taken::Short(left) => left,
        };
        let want = (count - left).max(self.block);
        let got = store
            .take_quota(tenant, day, want, self.daily_quota)
            .await
            .map_err(Refusal::Store)?;
        {
            let mut held = self.lock();
            let h = held.entry(tenant.to_owned()).or_insert(Held {
                day,
                left: 0,
                exhausted: false,
            });
            if h.day != day {
                *h = Held {
                    day,
                    left: 0,
                    exhausted: false,
                };
            }
            h.left += got;
            h.exhausted = got < want;
        }
        match self.take_held(tenant, day, count) {
            Taken::Yes => Ok(()),
            Taken::Exhausted | Taken::Short(_) => Err(refused()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Take `count` from what this process holds for `tenant` on `day`, if it holds enough.
    fn take_held(&self, tenant: &str, day: i64, count: u64) -> Taken {
        let mut held = self.lock();
        let Some(h) = held.get_mut(tenant).filter(|h| h.day == day) else {
            return Taken::Short(0);
        };
        if h.left >= count {
            h.left -= count;
            Taken::Yes
        } else if h.exhausted {
            Taken::Exhausted
        } else {
            Taken::Short(h.left)
        }
    }
}

enum Taken {
    Yes,
    /// Not enough held (this much is); the store may have more.
    Short(u64),
    /// Not enough held, and the store has no more today.
    Exhausted,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::memory::MemoryBackend;

    fn quota_exceeded(r: Result<(), Refusal>) -> bool {
        matches!(r, Err(Refusal::QuotaExceeded(_)))
    }

    #[tokio::test]
    async fn quota_resets_each_day_and_rate_limits() {
        let s = MemoryBackend::new();
        let l = SendLimiter::new(0, 0, 2);
        assert!(l.check(&s, "t", 1, 10).await.is_ok());
        assert!(l.check(&s, "t", 1, 11).await.is_ok());
        assert!(quota_exceeded(l.check(&s, "t", 1, 12).await));
        assert!(l.check(&s, "u", 1, 12).await.is_ok(), "per tenant");
        assert!(l.check(&s, "t", 1, DAY_MS + 1).await.is_ok(), "next day");
        let r = SendLimiter::new(1, 2, 0);
        assert!(r.check(&s, "t", 1, 0).await.is_ok());
        assert!(r.check(&s, "t", 1, 0).await.is_ok());
        assert!(matches!(
            r.check(&s, "t", 1, 0).await,
            Err(Refusal::RateLimited(_))
        ));
    }

    /// A batch takes its whole size from the bucket and the quota, or nothing.
    #[tokio::test]
    async fn a_batch_is_taken_whole_or_not_at_all() {
        let s = MemoryBackend::new();
        let q = SendLimiter::new(0, 0, 10);
        assert!(q.check(&s, "t", 8, 0).await.is_ok());
        assert!(quota_exceeded(q.check(&s, "t", 3, 0).await));
        assert!(
            q.check(&s, "t", 2, 0).await.is_ok(),
            "the refused batch took nothing"
        );
        assert!(quota_exceeded(q.check(&s, "t", 1, 0).await));
        let r = SendLimiter::new(10, 20, 0);
        assert!(matches!(
            r.check(&s, "t", 21, 0).await,
            Err(Refusal::OverBurst(20))
        ));
        assert!(r.check(&s, "t", 20, 0).await.is_ok());
        assert!(matches!(
            r.check(&s, "t", 5, 0).await,
            Err(Refusal::RateLimited(_))
        ));
    }

    /// Two limiters on one store (two api processes, or one restarted) share the quota:
    /// together they never pass more than it, and they take it in blocks, not per send.
    #[tokio::test]
    async fn processes_share_the_quota_through_the_store() {
        let s = MemoryBackend::new();
        let (a, b) = (SendLimiter::new(0, 0, 6_400), SendLimiter::new(0, 0, 6_400));
        assert_eq!(a.block, 100);
        let mut passed = 0;
        for i in 0..7_000 {
            let l = if i % 3 == 0 { &a } else { &b };
            passed += u64::from(l.check(&s, "t", 1, 0).await.is_ok());
        }
        assert_eq!(passed, 6_400, "exactly the quota, across both");
        assert!(
            a.lock()["t"].exhausted && b.lock()["t"].exhausted,
            "both stop asking the store for today"
        );
        // A third (a restart) finds the day's count in the store.
        let c = SendLimiter::new(0, 0, 6_400);
        assert!(quota_exceeded(c.check(&s, "t", 1, 5).await));
        // The first send took a block of 100 from the store; the next 99 need no store call.
        assert!(c.check(&s, "u", 1, 0).await.is_ok());
        assert_eq!(c.lock()["u"].left, 99);
        assert_eq!(s.take_quota("u", 0, 6_400, 6_400).await.unwrap(), 6_300);
    }
}

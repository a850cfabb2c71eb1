//! When to try a failed job again: exponential backoff with full jitter (AWS architecture
//! blog, "Exponential Backoff And Jitter"), a provider's `Retry-After` as a lower bound, and
//! a retry window per message class after which the job is given up.
//!
//! Pure arithmetic on milliseconds and a random draw, so it can be tested without a clock. It
//! must never schedule a retry past the window: a retry that would start after the window
//! ends is a give-up instead.

use std::time::Duration;

use rand::Rng;
use sealgate_proto::send::MessageClass;

use crate::config::DeliveryConfig;

/// The retry policy, from [`DeliveryConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    pub window_transactional: Duration,
    pub window_sensitive: Duration,
    pub window_marketing: Duration,
    pub window_callback: Duration,
}

/// What to do with a job that failed transiently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Run again at this Unix ms.
    RetryAt(i64),
    /// The window is used up: dead-letter it.
    GiveUp,
}

impl RetryPolicy {
    pub fn from_config(c: &DeliveryConfig) -> Self {
        Self {
            base: Duration::from_millis(c.retry_base_ms),
            cap: Duration::from_millis(c.retry_cap_ms),
            window_transactional: Duration::from_secs(c.retry_window_transactional_secs),
            window_sensitive: Duration::from_secs(c.retry_window_sensitive_secs),
            window_marketing: Duration::from_secs(c.retry_window_marketing_secs),
            window_callback: Duration::from_secs(c.callback_retry_window_secs),
        }
    }

    /// The retry window of a message class.
    pub fn window(&self, class: MessageClass) -> Duration {
        match class {
            MessageClass::Transactional => self.window_transactional,
            MessageClass::Sensitive => self.window_sensitive,
            MessageClass::Marketing => self.window_marketing,
        }
    }

    /// The backoff ceiling before attempt `attempt + 1`: `min(cap, base * 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << exp).min(self.cap)
    }

    /// Decide after the `attempt`-th failure of a job whose window started at `started_ms`
    /// and lasts `window`, at `now_ms`, with the provider's `retry_after` if any. `draw`
    /// picks the jitter in `[0, 1)`.
    pub fn decide_with(
        &self,
        attempt: u32,
        started_ms: i64,
        window: Duration,
        now_ms: i64,
        retry_after: Option<Duration>,
        draw: f64,
    ) -> RetryDecision {
        let ceiling = self.ceiling(attempt);
        let jittered = ceiling.mul_f64(draw.clamp(0.0, 1.0));
        let delay = retry_after.map_or(jittered, |ra| jittered.max(ra));
        let at = now_ms.saturating_add(millis(delay));
        let end = started_ms.saturating_add(millis(window));
        if at > end {
            RetryDecision::GiveUp
        } else {
            RetryDecision::RetryAt(at)
        }
    }

    /// [`decide_with`](Self::decide_with) with a random jitter.
    pub fn decide(
        &self,
        attempt: u32,
        started_ms: i64,
        window: Duration,
        now_ms: i64,
        retry_after: Option<Duration>,
    ) -> RetryDecision {
        let draw = rand::thread_rng().r#gen::<f64>();
        self.decide_with(attempt, started_ms, window, now_ms, retry_after, draw)
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::from_config(&DeliveryConfig::default())
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = policy();
        assert_eq!(p.ceiling(1), Duration::from_secs(1));
        assert_eq!(p.ceiling(2), Duration::from_secs(2));
        assert_eq!(p.ceiling(5), Duration::from_secs(16));
        assert_eq!(p.ceiling(40), Duration::from_secs(300));
    }

    #[test]
    fn full_jitter_spans_zero_to_ceiling_and_retry_after_is_a_floor() {
        let p = policy();
        let w = Duration::from_secs(3600);
        assert_eq!(
            p.decide_with(3, 0, w, 1000, None, 0.0),
            RetryDecision::RetryAt(1000)
        );
        assert_eq!(
            p.decide_with(3, 0, w, 1000, None, 0.5),
            RetryDecision::RetryAt(3000)
        );
        assert_eq!(
            p.decide_with(3, 0, w, 1000, Some(Duration::from_secs(30)), 0.5),
            RetryDecision::RetryAt(31_000)
        );
        for _ in 0..200 {
            match p.decide(4, 0, w, 0, None) {
                RetryDecision::RetryAt(at) => assert!((0..=8000).contains(&at)),
                RetryDecision::GiveUp => panic!("inside the window"),
            }
        }
    }

    #[test]
    fn windows_per_class_and_give_up_past_the_end() {
        let p = policy();
        assert_eq!(
            p.window(MessageClass::Transactional),
            Duration::from_secs(72 * 3600)
        );
        assert_eq!(
            p.window(MessageClass::Marketing),
            Duration::from_secs(7 * 24 * 3600)
        );
        let w = Duration::from_secs(60);
        assert_eq!(
            p.decide_with(1, 0, w, 59_500, None, 0.9),
            RetryDecision::GiveUp
        );
        assert_eq!(
            p.decide_with(1, 0, w, 30_000, Some(Duration::from_secs(31)), 0.0),
            RetryDecision::GiveUp
        );
    }
}

//! The clock the send pipeline stamps and schedules with, in Unix milliseconds.
//!
//! Production uses the system clock (shared by every process on the database). Tests use a
//! clock driven by tokio's time, so `tokio::time::pause()` moves retry windows and leases
//! forward without waiting. It must never go backwards within one process.

use tokio::time::Instant;

/// A source of "now" in Unix milliseconds. Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The system wall clock.
    System,
    /// Wall time at creation plus tokio time elapsed since (follows paused/advanced time).
    Tokio { wall_ms: i64, start: Instant },
}

impl Clock {
    /// A clock that follows tokio's time from now on.
    pub fn tokio() -> Self {
        Clock::Tokio {
            wall_ms: crate::store::now_millis(),
            start: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => crate::store::now_millis(),
            Clock::Tokio { wall_ms, start } => {
                wall_ms.saturating_add(i64::try_from(start.elapsed().as_millis()).unwrap_or(0))
            }
        }
    }
}

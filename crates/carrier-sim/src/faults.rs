//! Chooses, per send request, which fault (if any) the simulator injects.
//!
//! It exists so that the choice is one pure function of the fault shares and a seeded RNG:
//! the same seed and the same request order give the same faults, which keeps tests
//! reproducible. It must never perform a side effect itself; the handlers act on its answer
//! before touching any inbox (except for [`Fault::TimeoutAfterAccept`], whose whole point is
//! that the side effect happens).

use rand::Rng;

use crate::config::FaultConfig;

/// What to do with one send request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Serve the request normally.
    None,
    /// Answer with this 5xx status (500 or 503).
    ServerError(u16),
    /// Answer 429 with `Retry-After` in seconds.
    RateLimited {
        /// The `Retry-After` value.
        retry_after_secs: u64,
    },
    /// Sleep this many milliseconds, then answer 504 without any side effect.
    Timeout {
        /// How long to hang.
        ms: u64,
    },
    /// Perform the send, then sleep this many milliseconds and answer 504.
    TimeoutAfterAccept {
        /// How long to hang after the side effect.
        ms: u64,
    },
    /// Answer 400 INVALID_ARGUMENT.
    Permanent4xx,
}

/// Draws one uniform number and maps it onto the cumulative shares, in a fixed order so a
/// seed means the same thing across runs. Shares that add up to less than 1 leave the rest
/// to [`Fault::None`].
pub fn draw(faults: &FaultConfig, rng: &mut impl Rng) -> Fault {
    let r: f64 = rng.r#gen();
    let mut edge = faults.error_5xx;
    if r < edge {
        let status = if rng.gen_bool(0.5) { 500 } else { 503 };
        return Fault::ServerError(status);
    }
    edge += faults.rate_429;
    if r < edge {
        return Fault::RateLimited {
            retry_after_secs: faults.retry_after_secs,
        };
    }
    edge += faults.timeout;
    if r < edge {
        return Fault::Timeout {
            ms: faults.timeout_ms,
        };
    }
    edge += faults.timeout_after_accept;
    if r < edge {
        return Fault::TimeoutAfterAccept {
            ms: faults.timeout_ms,
        };
    }
    edge += faults.permanent_4xx;
    if r < edge {
        return Fault::Permanent4xx;
    }
    Fault::None
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn shares_hold_and_seed_reproduces() {
        let faults = FaultConfig {
            error_5xx: 0.2,
            rate_429: 0.1,
            permanent_4xx: 0.05,
            ..FaultConfig::default()
        };
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..10_000)
                .map(|_| draw(&faults, &mut rng))
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        let count = |f: fn(&Fault) -> bool| a.iter().filter(|x| f(x)).count();
        let s5 = count(|f| matches!(f, Fault::ServerError(_)));
        let s429 = count(|f| matches!(f, Fault::RateLimited { .. }));
        let s4 = count(|f| matches!(f, Fault::Permanent4xx));
        assert!((1800..2200).contains(&s5), "5xx {s5}");
        assert!((850..1150).contains(&s429), "429 {s429}");
        assert!((380..620).contains(&s4), "4xx {s4}");
        assert!(a.contains(&Fault::ServerError(500)) && a.contains(&Fault::ServerError(503)));
    }

    #[test]
    fn no_shares_no_faults() {
        let mut rng = StdRng::seed_from_u64(1);
        let faults = FaultConfig::default();
        assert!((0..1000).all(|_| draw(&faults, &mut rng) == Fault::None));
    }
}

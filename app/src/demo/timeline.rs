//! The demo's repeating timeline: the Istio bookinfo tutorials one after another (traffic
//! shifting, request routing, fault injection, circuit breaking, outlier detection).
//!
//! Phases last `60 s / speed`, rounded to whole seconds, and start on whole seconds, so a
//! graph window of a phase (`from`/`to` in unix seconds) covers whole rollup buckets at
//! `--rollup-resolution 1s`.

use serde::Serialize;

/// One step of the tutorials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    ReviewsV1,
    Canary90_10,
    Canary50_50,
    ReviewsV2V3,
    JasonToV2,
    RatingsAbort,
    RatingsDelay,
    CircuitBreaker,
    OutlierEjection,
}

/// A reviews version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reviews {
    V1,
    V2,
    V3,
}

/// What the ratings VirtualService injects (at the caller's sidecar).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// 503 with `FI` for this share of requests.
    Abort(f64),
    /// A 5 s delay (`DI`) for this share of requests.
    Delay(f64),
}

/// The delay of `Fault::Delay`, as in Istio's fault-injection task.
pub const FAULT_DELAY_MS: u64 = 5000;

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::ReviewsV1,
        Phase::Canary90_10,
        Phase::Canary50_50,
        Phase::ReviewsV2V3,
        Phase::JasonToV2,
        Phase::RatingsAbort,
        Phase::RatingsDelay,
        Phase::CircuitBreaker,
        Phase::OutlierEjection,
    ];

    #[cfg(test)]
    pub fn index(self) -> usize {
        Phase::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::ReviewsV1 => "reviews-v1",
            Phase::Canary90_10 => "canary-90-10",
            Phase::Canary50_50 => "canary-50-50",
            Phase::ReviewsV2V3 => "reviews-v2-v3",
            Phase::JasonToV2 => "jason-to-v2",
            Phase::RatingsAbort => "ratings-abort",
            Phase::RatingsDelay => "ratings-delay",
            Phase::CircuitBreaker => "circuit-breaker",
            Phase::OutlierEjection => "outlier-ejection",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Phase::ReviewsV1 => "productpage → reviews: all traffic to v1 (no ratings calls)",
            Phase::Canary90_10 => "traffic shifting: reviews 90% v1, 10% v2",
            Phase::Canary50_50 => "traffic shifting: reviews 50% v1, 50% v2",
            Phase::ReviewsV2V3 => "traffic shifting: reviews 50% v2, 50% v3; both call ratings",
            Phase::JasonToV2 => {
                "request routing: header end-user=jason → reviews v2, everyone else → v1"
            }
            Phase::RatingsAbort => {
                "fault injection: ratings aborts 50% of requests with 503 (FI); reviews v2/v3 50/50"
            }
            Phase::RatingsDelay => {
                "fault injection: ratings delays 50% of requests by 5 s (DI); reviews v2/v3 50/50"
            }
            Phase::CircuitBreaker => {
                "circuit breaking: fortio, 3 connections → details with maxConnections 1 and \
                 http1MaxPendingRequests 1: 503 UO, upstream_rq_pending_overflow rising, rq_pending_open = 1"
            }
            Phase::OutlierEjection => {
                "outlier detection: details answers 503 half the time; 3 consecutive 5xx eject it, \
                 then 503 UH (no healthy upstream) until it returns; ejections_enforced_total rising"
            }
        }
    }

    /// The reviews version a page view goes to; `roll` is uniform in [0, 1).
    pub fn reviews(self, jason: bool, roll: f64) -> Reviews {
        match self {
            Phase::ReviewsV1 | Phase::CircuitBreaker | Phase::OutlierEjection => Reviews::V1,
            Phase::Canary90_10 => {
                if roll < 0.9 {
                    Reviews::V1
                } else {
                    Reviews::V2
                }
            }
            Phase::Canary50_50 => {
                if roll < 0.5 {
                    Reviews::V1
                } else {
                    Reviews::V2
                }
            }
            Phase::ReviewsV2V3 | Phase::RatingsAbort | Phase::RatingsDelay => {
                if roll < 0.5 {
                    Reviews::V2
                } else {
                    Reviews::V3
                }
            }
            Phase::JasonToV2 => {
                if jason {
                    Reviews::V2
                } else {
                    Reviews::V1
                }
            }
        }
    }

    pub fn ratings_fault(self) -> Option<Fault> {
        match self {
            Phase::RatingsAbort => Some(Fault::Abort(0.5)),
            Phase::RatingsDelay => Some(Fault::Delay(0.5)),
            _ => None,
        }
    }

    /// Whether the fortio load client runs.
    pub fn fortio(self) -> bool {
        matches!(self, Phase::CircuitBreaker | Phase::OutlierEjection)
    }

    /// The share of fortio's requests its sidecar refuses (pending queue full).
    pub fn overflow_share(self) -> f64 {
        if self == Phase::CircuitBreaker {
            0.4
        } else {
            0.0
        }
    }

    /// The share of requests details answers 503 (it is "sick").
    pub fn details_failure_share(self) -> f64 {
        if self == Phase::OutlierEjection {
            0.5
        } else {
            0.0
        }
    }
}

/// One occurrence of a phase: `[from_s, to_s)` in unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Slot {
    pub cycle: u64,
    pub index: usize,
    #[serde(skip)]
    pub phase: Phase,
    pub from_s: i64,
    pub to_s: i64,
}

/// The timeline from a start second.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    pub start_s: i64,
    pub phase_secs: i64,
}

impl Timeline {
    pub fn new(speed: f64, start_s: i64) -> Timeline {
        let phase_secs = ((60.0 / speed).round() as i64).max(1);
        Timeline {
            start_s,
            phase_secs,
        }
    }

    pub fn cycle_secs(&self) -> i64 {
        self.phase_secs * Phase::ALL.len() as i64
    }

    /// The phase occurrence at `t_ns` (before the start: the first one).
    pub fn at(&self, t_ns: i64) -> Slot {
        let since = (t_ns.div_euclid(1_000_000_000) - self.start_s).max(0);
        let cycle = since / self.cycle_secs();
        let index = ((since % self.cycle_secs()) / self.phase_secs) as usize;
        let from_s = self.start_s + cycle * self.cycle_secs() + index as i64 * self.phase_secs;
        Slot {
            cycle: cycle as u64,
            index,
            phase: Phase::ALL[index],
            from_s,
            to_s: from_s + self.phase_secs,
        }
    }
}

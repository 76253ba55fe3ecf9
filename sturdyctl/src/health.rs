//! The miss counter: when an unanswered shim counts as hung.
//!
//! Each interval every shim is probed once with a deadline of one interval. Only a probe
//! that got no reply at all within its deadline is a miss; any reply, an error status
//! included, proves the shim reads its socket and answers. `misses` consecutive misses
//! make the shim hung. A shim stopped for less than `misses` intervals therefore always
//! answers one probe in time and is left alone, while one stopped for good is declared
//! hung at most `misses + 1` intervals after it stopped.

use std::time::Duration;

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    /// A reply arrived (of any kind) within the deadline.
    Answered,
    /// No reply within the deadline, or the socket refused the connection.
    Missed,
}

/// What the watchdog should make of the latest probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Answering, as before.
    Healthy,
    /// Answered again after this many misses: it was slow, not hung.
    Recovered {
        /// Consecutive misses before this answer.
        after: u32,
        /// How long it went unanswered.
        silent_for: Duration,
    },
    /// Missed, but fewer than the limit in a row.
    Missed {
        /// Consecutive misses so far.
        misses: u32,
    },
    /// `misses` probes in a row went unanswered: kill and recover it.
    Hung {
        /// Consecutive misses.
        misses: u32,
        /// Since when it has not answered (time of the first missed probe).
        silent_for: Duration,
    },
}

/// Consecutive-miss counter of one shim, driven by probe results and an injected clock.
#[derive(Debug, Clone)]
pub struct Health {
    limit: u32,
    misses: u32,
    first_miss_at: Option<Duration>,
}

impl Health {
    /// A counter that declares a shim hung after `limit` consecutive misses (at least 1).
    pub fn new(limit: u32) -> Self {
        Self {
            limit: limit.max(1),
            misses: 0,
            first_miss_at: None,
        }
    }

    /// Consecutive misses so far.
    pub fn misses(&self) -> u32 {
        self.misses
    }

    /// Feeds one probe, started at `sent_at` (any monotonic clock), and says what to do.
    pub fn observe(&mut self, result: ProbeResult, sent_at: Duration, now: Duration) -> Verdict {
        match result {
            ProbeResult::Answered => {
                let after = std::mem::take(&mut self.misses);
                match self.first_miss_at.take() {
                    Some(first) if after > 0 => Verdict::Recovered {
                        after,
                        silent_for: now.saturating_sub(first),
                    },
                    _ => Verdict::Healthy,
                }
            }
            ProbeResult::Missed => {
                self.misses += 1;
                let first = *self.first_miss_at.get_or_insert(sent_at);
                if self.misses >= self.limit {
                    Verdict::Hung {
                        misses: self.misses,
                        silent_for: now.saturating_sub(first),
                    }
                } else {
                    Verdict::Missed {
                        misses: self.misses,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn hung_only_after_limit_consecutive_misses() {
        let mut h = Health::new(3);
        assert_eq!(
            h.observe(ProbeResult::Answered, Duration::ZERO, S),
            Verdict::Healthy
        );
        assert_eq!(
            h.observe(ProbeResult::Missed, S, 2 * S),
            Verdict::Missed { misses: 1 }
        );
        assert_eq!(
            h.observe(ProbeResult::Missed, 2 * S, 3 * S),
            Verdict::Missed { misses: 2 }
        );
        assert_eq!(
            h.observe(ProbeResult::Answered, 3 * S, 3 * S + S / 2),
            Verdict::Recovered {
                after: 2,
                silent_for: 2 * S + S / 2
            }
        );
        // The count starts over after an answer.
        for i in 0..2 {
            assert!(matches!(
                h.observe(ProbeResult::Missed, (4 + i) * S, (5 + i) * S),
                Verdict::Missed { .. }
            ));
        }
        assert_eq!(
            h.observe(ProbeResult::Missed, 6 * S, 7 * S),
            Verdict::Hung {
                misses: 3,
                silent_for: 3 * S
            }
        );
    }

    /// Simulates the watchdog's schedule (a probe every `interval`, deadline one interval)
    /// against a shim that is stopped from `stop` for `length`: whether it would be killed.
    fn killed(interval: Duration, misses: u32, stop: Duration, length: Duration) -> bool {
        let mut h = Health::new(misses);
        let reply_time = Duration::from_millis(2);
        let mut t = Duration::ZERO;
        while t < stop + length + 4 * interval {
            // A probe sent at t is answered at t + reply_time if the shim runs then, else
            // when it resumes; it is a miss if that is after the deadline.
            let answer_at = if t + reply_time > stop && t < stop + length {
                stop + length + reply_time
            } else {
                t + reply_time
            };
            let deadline = t + interval;
            let result = if answer_at <= deadline {
                ProbeResult::Answered
            } else {
                ProbeResult::Missed
            };
            if let Verdict::Hung { .. } = h.observe(result, t, answer_at.min(deadline)) {
                return true;
            }
            t += interval;
        }
        false
    }

    #[test]
    fn a_stop_shorter_than_the_window_is_never_killed_at_any_phase() {
        let interval = Duration::from_secs(1);
        for phase_ms in (0..1000).step_by(50) {
            let stop = Duration::from_millis(5000 + phase_ms);
            assert!(
                !killed(interval, 3, stop, Duration::from_millis(2900)),
                "2.9 s stop at phase {phase_ms} ms killed"
            );
            assert!(
                killed(interval, 3, stop, Duration::from_secs(30)),
                "a 30 s stop at phase {phase_ms} ms was never killed"
            );
        }
    }
}

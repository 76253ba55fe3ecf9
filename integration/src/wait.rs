//! Waiting for a condition instead of sleeping a fixed time.

use std::time::{Duration, Instant};

/// How often a condition is polled: short enough for the watchdog tests' millisecond
/// figures, long enough to stay out of the profile.
const POLL: Duration = Duration::from_millis(5);

/// Polls `f` until it holds or `limit` has passed; whether it held (checked once more at
/// the end, so a condition met at the deadline counts).
pub async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(POLL).await;
    }
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn holds_or_times_out() {
        let t0 = Instant::now();
        assert!(
            until(Duration::from_secs(5), || t0.elapsed()
                > Duration::from_millis(30))
            .await
        );
        assert!(!until(Duration::from_millis(30), || false).await);
        let mut calls = 0;
        // A condition checked once more at the deadline.
        assert!(
            until(Duration::ZERO, || {
                calls += 1;
                true
            })
            .await
        );
        assert_eq!(calls, 1);
    }
}

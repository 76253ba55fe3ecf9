//! Waiting for a condition instead of sleeping a fixed time.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled: short enough for the watchdog tests' millisecond
/// figures, long enough to stay out of the profile.
const POLL: Duration = Duration::from_millis(5);

/// Polls `f` until it holds or `limit` has passed; whether it held (checked once more at
/// the end, so a condition met at the deadline counts).
pub async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    until_some(limit, || std::future::ready(f().then_some(())))
        .await
        .is_some()
}

/// [`until`] for a condition that has to be awaited (a CRI query): polls `f` until its
/// future yields a value or `limit` has passed (asked once more at the end); that value.
pub async fn until_some<T, F>(limit: Duration, mut f: impl FnMut() -> F) -> Option<T>
where
    F: Future<Output = Option<T>>,
{
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(value) = f().await {
            return Some(value);
        }
        tokio::time::sleep(POLL).await;
    }
    f().await
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

    #[tokio::test]
    async fn some_value_or_none_at_the_limit() {
        let t0 = Instant::now();
        let late = || async { (t0.elapsed() > Duration::from_millis(30)).then_some(7) };
        assert_eq!(until_some(Duration::from_secs(5), late).await, Some(7));
        let never = || async { None::<u8> };
        assert_eq!(until_some(Duration::from_millis(30), never).await, None);
    }
}

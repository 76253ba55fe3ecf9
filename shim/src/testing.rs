//! What the unit tests share.

use std::time::{Duration, Instant};

/// Polls `f` until it holds or `limit` has passed; whether it held (checked once more at
/// the end, so a condition met at the deadline counts). The unit tests' one wait helper.
pub(crate) async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f()
}

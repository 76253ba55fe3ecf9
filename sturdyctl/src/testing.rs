//! What the unit tests share.

use std::time::{Duration, Instant};

/// Polls `f` every few milliseconds until it holds or `limit` has passed; whether it held
/// (checked once more at the end). The unit tests' one wait helper; they wait blocking.
pub(crate) fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

//! When containerd's Shutdown ends the shim (docs/bootstrap.md).
//!
//! containerd sends Shutdown after deleting a task, so a shim serving several containers
//! gets it many times: while containers remain it is answered and the shim stays; the one
//! that finds none ends it. containerd 2.1 – 2.4.0-beta.0 skip that Shutdown for a task of
//! a sandbox when the shim announced Task API 3 (sturdy does to 2.3+), so a pod whose pause
//! task was deleted before its other containers would never hear another one and its shim
//! would stay forever. Hence a refused Shutdown is remembered, and once the last container
//! is gone the shim ends after [`SHUTDOWN_GRACE`] unless a Shutdown comes first. Where
//! containerd sends Shutdown after every Delete, it always comes first.

use std::time::Duration;

/// How long after its last container the shim waits for a Shutdown that is not coming.
/// Long enough that containerd has finished with the last Delete (it drops the task and
/// closes that connection right after the reply), so the exit is never mistaken for a dead
/// shim of a task it still tracks.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What the shim does about a Shutdown request or its last container going away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Exit now.
    ExitNow,
    /// Keep serving.
    Stay,
    /// Exit after [`SHUTDOWN_GRACE`] if no container came meanwhile.
    ExitAfterGrace,
}

/// Whether containerd asked the shim to go while containers remained.
#[derive(Debug, Default)]
pub struct ShutdownState {
    refused: bool,
}

impl ShutdownState {
    /// A Shutdown request; `empty` when no container is left.
    pub fn on_request(&mut self, empty: bool) -> Verdict {
        if empty {
            Verdict::ExitNow
        } else {
            self.refused = true;
            Verdict::Stay
        }
    }

    /// The last container was removed.
    pub fn on_emptied(&self) -> Verdict {
        if self.refused {
            Verdict::ExitAfterGrace
        } else {
            Verdict::Stay
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_decisions() {
        // 1.x, or 2.x with Task API 2: Delete, Shutdown, ..., the last Delete, Shutdown.
        let mut s = ShutdownState::default();
        assert_eq!(s.on_emptied(), Verdict::Stay, "nobody asked yet");
        assert_eq!(s.on_request(true), Verdict::ExitNow);

        // Repeated Shutdowns while containers remain: answered, the shim stays.
        let mut s = ShutdownState::default();
        for _ in 0..3 {
            assert_eq!(s.on_request(false), Verdict::Stay);
        }
        // ...and once they are gone, it goes even if no Shutdown follows (2.3 with v3).
        assert_eq!(s.on_emptied(), Verdict::ExitAfterGrace);
        assert_eq!(s.on_request(true), Verdict::ExitNow);
    }
}

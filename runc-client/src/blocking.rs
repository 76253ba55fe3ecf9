//! Blocking work kept off the async runtime, on a thread of its own that may fail to start.
//!
//! tokio's blocking pool panics when it needs a new thread and the system gives none (pids
//! or threads used up, no memory for a stack) while none of its threads is alive, and a
//! panic aborts a build with `panic = abort`: a node that runs out of pids would lose
//! every shim that happened to open a file then. Here that is an error of the one call.

use std::io;

/// Stack of such a thread: file and mount syscalls, small serde work.
const STACK: usize = 512 << 10;

/// Runs `f` on a new thread named `name` and waits for its result without blocking the
/// runtime. Fails if the thread cannot be started (or `f` panicked).
pub async fn run<T, F>(name: &str, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(STACK)
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| io::Error::new(e.kind(), format!("start a {name} thread: {e}")))?;
    rx.await
        .map_err(|_| io::Error::other(format!("the {name} thread ended without a result")))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs_on_a_thread_of_its_own() {
        let here = std::thread::current().id();
        let (there, name) = super::run("probe", || {
            let t = std::thread::current();
            (t.id(), t.name().map(str::to_string))
        })
        .await
        .unwrap();
        assert_ne!(there, here);
        assert_eq!(name.as_deref(), Some("probe"));
    }
}

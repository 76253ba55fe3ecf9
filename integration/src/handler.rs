//! Runtime handlers under test, and the macros that run a test against each handler
//! (`parity_tests!`) or each containerd generation (`generation_tests!`).

use std::fmt;

/// A runtime a test can run against; `Runc` (the Go shim) is the oracle `Sturdy` must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Handler {
    /// containerd's own Go shim, `io.containerd.runc.v2`.
    Runc,
    /// Our shim, `io.containerd.sturdy.v2` (`containerd-shim-sturdy-v2` on containerd's PATH).
    Sturdy,
}

impl Handler {
    /// Both handlers, oracle first.
    pub const ALL: [Handler; 2] = [Handler::Runc, Handler::Sturdy];

    /// CRI runtime handler name, as configured under `containerd.runtimes.<name>`.
    pub fn name(self) -> &'static str {
        match self {
            Handler::Runc => "runc",
            Handler::Sturdy => "sturdy",
        }
    }

    /// containerd runtime type; the single place mapping handler to shim.
    pub fn runtime_type(self) -> &'static str {
        match self {
            Handler::Runc => "io.containerd.runc.v2",
            Handler::Sturdy => "io.containerd.sturdy.v2",
        }
    }

    /// Parse a handler name (`runc` or `sturdy`).
    pub fn from_name(name: &str) -> Option<Handler> {
        Handler::ALL.into_iter().find(|h| h.name() == name)
    }
}

impl fmt::Display for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Write a test once, get one `#[tokio::test]` per handler.
///
/// `parity_tests! { async fn runs(h: Handler) { ... } }` expands to a module `runs` with the
/// tests `runs::runc` and `runs::sturdy`; the body sees the handler as `h`.
#[macro_export]
macro_rules! parity_tests {
    ($($(#[$meta:meta])* async fn $name:ident($h:ident : Handler) $body:block)*) => {$(
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use $crate::Handler;

            async fn body($h: $crate::Handler) $body

            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn runc() {
                body($crate::Handler::Runc).await
            }

            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sturdy() {
                body($crate::Handler::Sturdy).await
            }
        }
    )*};
}

/// Runs `body` on containerd generation `g`, or skips (`test_skip`: fails in CI unless
/// allowed) where it cannot run: a generation, or the OCI runtime `STURDY_RUNC` chooses,
/// from `../shared/tools` on a host without them.
pub async fn run_on<F, Fut>(g: crate::Generation, body: F)
where
    F: FnOnce(crate::Generation) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if let Some(why) = g.unavailable() {
        test_skip::skip!("{why}");
    }
    let runtime = crate::OciRuntime::from_env().unwrap_or_else(|e| panic!("{e}"));
    if let Some(why) = runtime.unavailable() {
        test_skip::skip!("{why}");
    }
    body(g).await
}

/// Runs `body` on a fixture of generation `g` over OCI runtime `r`, or skips visibly (as
/// [`run_on`]) where either is not on this host.
pub async fn run_with<F, Fut>(g: crate::Generation, r: crate::OciRuntime, body: F)
where
    F: FnOnce(crate::Generation, crate::OciRuntime) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if let Some(why) = g.unavailable().or_else(|| r.unavailable()) {
        test_skip::skip!("{why}");
    }
    body(g, r).await
}

/// Fails to compile when `Generation` grows a variant: add its test to `generation_tests!`
/// below, then the variant here.
#[allow(dead_code)]
fn generation_tests_cover(g: crate::Generation) {
    use crate::Generation::*;
    match g {
        V1_6 | V1_7 | V2_1 | V2_2 | V2_3 | V2_4 => {}
    }
}

/// Write a test once, get one `#[tokio::test]` per containerd generation.
///
/// `generation_tests! { async fn quirk(g: Generation) { ... } }` expands to a module `quirk`
/// with one test per generation of [`crate::Generation::ALL`], `quirk::v1_6` to
/// `quirk::v2_4`; the body sees the generation as `g` and starts its fixture with
/// `Containerd::builder().generation(g)`. A generation this host cannot run is skipped
/// visibly (`test_skip`).
#[macro_export]
macro_rules! generation_tests {
    ($($(#[$meta:meta])* async fn $name:ident($g:ident : Generation) $body:block)*) => {$(
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use $crate::Generation;

            async fn body($g: $crate::Generation) $body

            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v1_6() {
                $crate::handler::run_on($crate::Generation::V1_6, body).await
            }

            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v1_7() {
                $crate::handler::run_on($crate::Generation::V1_7, body).await
            }

            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v2_1() {
                $crate::handler::run_on($crate::Generation::V2_1, body).await
            }

            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v2_2() {
                $crate::handler::run_on($crate::Generation::V2_2, body).await
            }

            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v2_3() {
                $crate::handler::run_on($crate::Generation::V2_3, body).await
            }

            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v2_4() {
                $crate::handler::run_on($crate::Generation::V2_4, body).await
            }
        }
    )*};
}

//! How a test that cannot run on this host says so, for every crate's tests.
//!
//! A test that returns early because the host lacks something (root, a cgroup v1 hierarchy,
//! a tool) passes green without testing anything. So a skip goes through [`skip!`] (or
//! [`skip`] when the caller must return something else, or goes on to test something
//! else): it prints `SKIPPED <test>: <reason>` where `cargo test` shows it even when it
//! captures output, and in CI (`CI` set and not `false`/`0`; `scripts/test.sh` sets
//! `CI=true`) it panics, failing the test, unless `tests/skips.allow` at the workspace root
//! lists the test with the reason it may skip there.
//!
//! `<test>` is `<target>::<test path>`: the test binary's name without cargo's hash (`pause`
//! for `integration/tests/pause.rs`, `sturdy_shim` for the shim's unit tests) and the name
//! libtest gives the test's thread (`pause_and_resume::sturdy`). So call it from the test's
//! own thread (a `#[tokio::test]` body runs there), not from a spawned task or thread.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Skips the running test: reports it (see the crate doc; panics in CI unless allowed) and
/// returns from the enclosing function, which must return `()`.
///
/// `test_skip::skip!("no cgroup v1 freezer for pid {pid}")`
#[macro_export]
macro_rules! skip {
    ($($reason:tt)+) => {{
        $crate::skip(::std::format!($($reason)+));
        return;
    }};
}

/// Reports that the running test skips (all or part of) its check, for callers that then
/// return a value or test something else instead. Panics in CI unless the allow-list
/// lists the test.
///
/// The `SKIPPED` line goes straight to stderr: libtest's capture only takes
/// `print!`/`eprint!`, so the line shows in a normal `cargo test` run.
#[track_caller]
pub fn skip(reason: impl fmt::Display) {
    let test = current_test();
    let reason = reason.to_string();
    let allow = AllowList::load();
    let verdict = decide(
        &test,
        &reason,
        in_ci(),
        allow.as_ref().map_err(String::as_str),
    );
    let note = match &verdict {
        Ok(Some(why)) => format!(" (allowed in CI: {why})"),
        _ => String::new(),
    };
    // One write, so parallel tests do not interleave within the line.
    let _ = std::io::stderr().write_all(format!("SKIPPED {test}: {reason}{note}\n").as_bytes());
    if let Err(e) = verdict {
        panic!("{e}");
    }
}

/// What a skip of `test` becomes: `Ok(None)` outside CI, `Ok(Some(why))` in CI when the
/// allow-list lists it, else `Err(why the test must fail)`.
pub fn decide<'a>(
    test: &str,
    reason: &str,
    ci: bool,
    allow: Result<&'a AllowList, &str>,
) -> Result<Option<&'a str>, String> {
    if !ci {
        return Ok(None);
    }
    match allow {
        Ok(list) => match list.reason_for(test) {
            Some(why) => Ok(Some(why)),
            None => Err(format!(
                "{test} skipped in CI: {reason}. A test that skips fails CI unless {} lists \
                 it with its reason; see docs/testing.md, \"Skips\"",
                allow_list_path().display()
            )),
        },
        Err(e) => Err(format!(
            "{test} skipped in CI: {reason}, and no allow-list: {e}"
        )),
    }
}

/// Whether this run is CI: `CI` set, non-empty and neither `false` nor `0`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "false" | "0"))
}

/// `tests/skips.allow` at the workspace root (`STURDY_SKIPS_ALLOW` overrides).
pub fn allow_list_path() -> PathBuf {
    match std::env::var_os("STURDY_SKIPS_ALLOW") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or(Path::new("/"))
            .join("tests/skips.allow"),
    }
}

/// `<target>::<test path>` of the running test (see the crate doc).
pub fn current_test() -> String {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed thread>");
    format!("{}::{test}", target())
}

/// The test binary's name without cargo's `-<16 hex>` suffix.
fn target() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("<unknown>");
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name.to_owned()
        }
        _ => stem.to_owned(),
    }
}

/// The tests allowed to skip in CI, each with its reason.
#[derive(Debug, Default)]
pub struct AllowList {
    entries: Vec<(String, String)>,
}

impl AllowList {
    /// Reads [`allow_list_path`]; the error names the file and what is wrong with it.
    pub fn load() -> Result<AllowList, String> {
        let path = allow_list_path();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        AllowList::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// One entry a line: the test's name (or a prefix of it ending before a `::`), white
    /// space, and the reason. Blank lines and lines starting with `#` are comments. A line
    /// without a reason is an error, so no entry can say nothing.
    pub fn parse(text: &str) -> Result<AllowList, String> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, reason) = line
                .split_once(char::is_whitespace)
                .map(|(name, reason)| (name, reason.trim()))
                .unwrap_or((line, ""));
            if reason.is_empty() {
                return Err(format!("line {}: `{name}` has no reason", n + 1));
            }
            entries.push((name.to_owned(), reason.to_owned()));
        }
        Ok(AllowList { entries })
    }

    /// The reason `test` may skip in CI: an entry equal to it, or naming a module it lies
    /// in (`pause::pause_and_resume` allows `pause::pause_and_resume::sturdy`, not
    /// `pause::pause_and_resume_twice`).
    pub fn reason_for(&self, test: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(name, _)| {
                test.strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
            })
            .map(|(_, reason)| reason.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "\
# comment
pause::pause_and_resume   freezer missing on purpose

stats::update::runc\tthe oracle cannot here
";

    fn list() -> AllowList {
        AllowList::parse(LIST).expect("parse")
    }

    #[test]
    fn a_listed_skip_passes_in_ci() {
        let l = list();
        assert_eq!(
            decide(
                "pause::pause_and_resume::sturdy",
                "no freezer",
                true,
                Ok(&l)
            ),
            Ok(Some("freezer missing on purpose"))
        );
        assert_eq!(
            decide("stats::update::runc", "why", true, Ok(&l)),
            Ok(Some("the oracle cannot here"))
        );
    }

    #[test]
    fn an_unlisted_skip_fails_in_ci() {
        let l = list();
        for test in [
            "pause::pause_and_resume_twice::sturdy",
            "stats::update::sturdy",
            "other::pause::pause_and_resume",
        ] {
            let e = decide(test, "no freezer", true, Ok(&l)).expect_err(test);
            assert!(e.contains(test) && e.contains("no freezer"), "{e}");
        }
    }

    #[test]
    fn outside_ci_every_skip_passes() {
        let l = list();
        assert_eq!(
            decide("stats::update::sturdy", "why", false, Ok(&l)),
            Ok(None)
        );
        assert_eq!(decide("x::y", "why", false, Err("unreadable")), Ok(None));
    }

    #[test]
    fn an_unreadable_list_allows_nothing_in_ci() {
        let e = decide("x::y", "why", true, Err("cannot read it")).unwrap_err();
        assert!(e.contains("cannot read it"), "{e}");
    }

    #[test]
    fn an_entry_without_a_reason_is_refused() {
        let e = AllowList::parse("ok::test  a reason\nbare::test   \n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("bare::test"), "{e}");
    }

    /// The repository's own list parses, so a broken line fails here and not only when a
    /// test happens to skip in CI.
    #[test]
    fn the_repository_allow_list_is_well_formed() {
        let l = AllowList::load().expect("tests/skips.allow");
        assert!(l
            .reason_for("test_skip::tests::the_macro_reports_and_returns")
            .is_some());
    }

    #[test]
    fn the_test_is_named_by_target_and_thread() {
        assert_eq!(
            current_test(),
            "test_skip::tests::the_test_is_named_by_target_and_thread"
        );
    }

    /// The macro end to end, on the real list (which allows this test): it returns early,
    /// and passes in CI only because the list names it.
    #[test]
    fn the_macro_reports_and_returns() {
        use std::sync::atomic::{AtomicBool, Ordering};
        static RAN_ON: AtomicBool = AtomicBool::new(false);
        fn body() {
            skip!("the mechanism's own test skips on purpose ({})", 42);
            #[allow(unreachable_code)]
            RAN_ON.store(true, Ordering::SeqCst);
        }
        body();
        assert!(!RAN_ON.load(Ordering::SeqCst), "skip! did not return");
    }

    /// An unlisted skip panics under CI through the public function too (not just
    /// `decide`): run as a child with `CI=true`, since the environment is process-wide.
    #[test]
    fn an_unlisted_skip_panics_under_ci_true() {
        const CHILD: &str = "TEST_SKIP_CHILD";
        if std::env::var_os(CHILD).is_some() {
            skip("an unlisted test skipping under CI=true");
            return;
        }
        let exe = std::env::current_exe().expect("current_exe");
        let run = |ci: &str| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "tests::an_unlisted_skip_panics_under_ci_true",
                    "--test-threads=1",
                ])
                .env(CHILD, "1")
                .env("CI", ci)
                .output()
                .expect("run the child")
        };
        let ci = run("true");
        let err = String::from_utf8_lossy(&ci.stderr);
        let out = String::from_utf8_lossy(&ci.stdout);
        assert!(!ci.status.success(), "passed under CI=true:\n{out}\n{err}");
        assert!(
            err.contains("SKIPPED test_skip::tests::an_unlisted_skip_panics_under_ci_true:")
                && (out.contains("skipped in CI") || err.contains("skipped in CI")),
            "{out}\n{err}"
        );
        let local = run("false");
        assert!(local.status.success(), "failed without CI");
    }
}

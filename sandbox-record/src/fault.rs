//! A test-only fault hook: debug builds pause at a named step of a write when
//! `STURDY_RECORD_FAULT=<step>:<milliseconds>` is set, so a test can SIGKILL the writer
//! exactly there. Release builds compile it away.

/// The steps of a durable write, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The temp file holds the new bytes (not yet synced).
    Written,
    /// The temp file is synced.
    Synced,
    /// The temp file has replaced the record (directory not yet synced).
    Renamed,
}

impl Step {
    /// The step's name in `STURDY_RECORD_FAULT`.
    pub fn name(self) -> &'static str {
        match self {
            Step::Written => "written",
            Step::Synced => "synced",
            Step::Renamed => "renamed",
        }
    }
}

/// The environment variable of the hook.
pub const ENV: &str = "STURDY_RECORD_FAULT";

/// Pauses here if the hook names this step (debug builds only).
#[inline]
pub fn at(step: Step) {
    #[cfg(debug_assertions)]
    if let Some(ms) = pause_for(step, std::env::var(ENV).ok().as_deref()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    #[cfg(not(debug_assertions))]
    let _ = step;
}

/// How long `spec` (`step:ms`, several separated by commas) pauses at `step`.
pub fn pause_for(step: Step, spec: Option<&str>) -> Option<u64> {
    spec?.split(',').find_map(|one| {
        let (name, ms) = one.trim().split_once(':')?;
        (name == step.name()).then(|| ms.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parsing() {
        assert_eq!(pause_for(Step::Synced, Some("synced:250")), Some(250));
        assert_eq!(
            pause_for(Step::Renamed, Some("written:1, renamed:9")),
            Some(9)
        );
        assert_eq!(pause_for(Step::Written, Some("synced:250")), None);
        assert_eq!(pause_for(Step::Written, Some("written:x")), None);
        assert_eq!(pause_for(Step::Written, None), None);
    }
}

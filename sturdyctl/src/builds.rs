//! Which build a running shim executes, and whether it is the build installed now.
//!
//! A build is named by the GNU build-id of its ELF image (the `build-id` crate; the shim's
//! `-v` prints the same). The running image is read through `/proc/PID/exe`, which opens
//! the file the process executes even after an install replaced or removed its path, so
//! this is what runs, not what the process or its command line claims. The installed build
//! is that of the binary containerd would start a new shim of the runtime from (the same
//! choice [`crate::recovery::delete_binary`] makes, trust-checked).
//!
//! Only files are read here; nothing is executed.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The build-id of `path`, hex; `Ok(None)` for an ELF file without one.
pub fn of_file(path: &Path) -> Result<Option<String>, String> {
    build_id::of_path(path)
        .map(|id| id.map(|i| i.to_string()))
        .map_err(|e| e.to_string())
}

/// The build-id of the image process `pid` executes.
pub fn of_process(pid: i32) -> Result<Option<String>, String> {
    of_file(Path::new(&format!("/proc/{pid}/exe")))
}

/// A running shim's build against the installed one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Comparison {
    /// Build-id of the running image.
    pub running: Option<String>,
    /// The installed binary, if one was found and trusted.
    pub installed_binary: Option<PathBuf>,
    /// Its build-id.
    pub installed: Option<String>,
    /// Whether the shim runs the installed build; `None` when that cannot be told.
    pub current: Option<bool>,
    /// Why it cannot be told, if it cannot.
    pub unknown: Option<String>,
}

/// Compares what runs (`running`, from [`of_process`]) with the binary at `installed`
/// (`Err` says why none was found).
pub fn compare(
    running: Result<Option<String>, String>,
    installed: Result<PathBuf, String>,
) -> Comparison {
    let mut c = Comparison {
        running: None,
        installed_binary: None,
        installed: None,
        current: None,
        unknown: None,
    };
    let running = match running {
        Ok(Some(id)) => id,
        Ok(None) => {
            c.unknown = Some("the running image has no build-id".into());
            return c;
        }
        Err(e) => {
            c.unknown = Some(format!("running image: {e}"));
            return c;
        }
    };
    c.running = Some(running.clone());
    let path = match installed {
        Ok(p) => p,
        Err(e) => {
            c.unknown = Some(e);
            return c;
        }
    };
    c.installed_binary = Some(path.clone());
    match of_file(&path) {
        Ok(Some(id)) => {
            c.current = Some(id == running);
            c.installed = Some(id);
        }
        Ok(None) => c.unknown = Some(format!("{}: no build-id", path.display())),
        Err(e) => c.unknown = Some(e),
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_runs_the_build_of_its_own_file() {
        let exe = std::env::current_exe().unwrap();
        let pid = std::process::id() as i32;
        let c = compare(of_process(pid), Ok(exe.clone()));
        assert_eq!(c.current, Some(true), "{c:?}");
        assert_eq!(c.running, c.installed);
        assert_eq!(c.installed_binary, Some(exe));
    }

    #[test]
    fn another_binary_is_another_build() {
        // Any other ELF file with a build-id stands for the newly installed binary.
        let other = ["/bin/ls", "/usr/bin/env", "/bin/sh"]
            .iter()
            .map(PathBuf::from)
            .find(|p| matches!(of_file(p), Ok(Some(_))));
        let Some(other) = other else {
            test_skip::skip!("no system binary with a build-id to compare with");
        };
        let c = compare(of_process(std::process::id() as i32), Ok(other));
        assert_eq!(c.current, Some(false), "{c:?}");
        assert_ne!(c.running, c.installed);
    }

    #[test]
    fn what_cannot_be_told_says_why() {
        let c = compare(Ok(None), Ok(PathBuf::from("/bin/sh")));
        assert_eq!(c.current, None);
        assert!(c.unknown.unwrap().contains("no build-id"));
        let c = compare(Ok(Some("ab".into())), Err("no trusted shim binary".into()));
        assert_eq!((c.current, c.running.as_deref()), (None, Some("ab")));
        assert!(c.unknown.unwrap().contains("no trusted"));
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("x");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let c = compare(Ok(Some("ab".into())), Ok(script));
        assert_eq!(c.current, None);
        assert!(c.unknown.as_deref().unwrap_or("").contains("ELF"), "{c:?}");
    }
}

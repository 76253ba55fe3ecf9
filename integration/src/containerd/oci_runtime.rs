//! The OCI runtime both handlers drive: Debian's runc 1.1.5, runc 1.3.6 or 1.4.3 from
//! `../shared/tools`, or Debian's crun.
//!
//! The fixture links the chosen binary as `runc` into its `bin/` dir, which comes first on
//! containerd's PATH. Both shims inherit that PATH and run `runc` from it unless a handler's
//! `BinaryName` option names another binary (sturdy: `RuntimeOptions::binary`; the Go shim:
//! its runc client's default command), so both get the same runtime the same way, without
//! an option that only one of them would read.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::tools;

/// Environment variable choosing the runtime (`1.1`, `1.3`, `1.4`, `crun`; full versions
/// like `1.4.3` or `runc-1.4.3` too); unset means Debian's runc 1.1.
pub const RUNTIME_ENV: &str = "STURDY_RUNC";

/// Debian 12's runc package installs it here.
const DEBIAN_RUNC: &str = "/usr/sbin/runc";
/// Debian 12's crun package installs it here.
const DEBIAN_CRUN: &str = "/usr/bin/crun";

/// An OCI runtime the fixture can put under both shims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OciRuntime {
    /// Debian 12's runc 1.1.5 (`/usr/sbin/runc`; no idmapped mounts).
    Runc1_1,
    /// runc 1.3.6 from `../shared/tools` (static).
    Runc1_3,
    /// runc 1.4.3 from `../shared/tools` (static).
    Runc1_4,
    /// Debian 12's crun 1.8.1 (`/usr/bin/crun`): refuses OCI spec 1.2+ (containerd 2.1 on)
    /// and hybrid cgroup hosts, so it only runs where those do not apply.
    Crun,
}

impl OciRuntime {
    /// Every runtime, Debian's runc first.
    pub const ALL: [OciRuntime; 4] = [
        OciRuntime::Runc1_1,
        OciRuntime::Runc1_3,
        OciRuntime::Runc1_4,
        OciRuntime::Crun,
    ];

    /// Short name as used by [`RUNTIME_ENV`] and the scripts (`1.1`, `1.3`, `1.4`, `crun`).
    pub fn name(self) -> &'static str {
        match self {
            OciRuntime::Runc1_1 => "1.1",
            OciRuntime::Runc1_3 => "1.3",
            OciRuntime::Runc1_4 => "1.4",
            OciRuntime::Crun => "crun",
        }
    }

    /// The exact runc release (`None` for crun: whatever Debian ships).
    pub fn version(self) -> Option<&'static str> {
        match self {
            OciRuntime::Runc1_1 => Some("1.1.5"),
            OciRuntime::Runc1_3 => Some("1.3.6"),
            OciRuntime::Runc1_4 => Some("1.4.3"),
            OciRuntime::Crun => None,
        }
    }

    /// The `../shared/tools` archive it comes from (`None`: a Debian package).
    pub fn archive(self) -> Option<&'static str> {
        match self {
            OciRuntime::Runc1_3 => Some("runc-1.3.6"),
            OciRuntime::Runc1_4 => Some("runc-1.4.3"),
            OciRuntime::Runc1_1 | OciRuntime::Crun => None,
        }
    }

    /// Parses a short name, a runc version (`1.4.3`, `v1.4`, `runc-1.4.3`, `runc1.4`) or
    /// `crun`.
    pub fn parse(s: &str) -> Option<OciRuntime> {
        let s = s.trim();
        if s == "crun" {
            return Some(OciRuntime::Crun);
        }
        let s = s.strip_prefix("runc").unwrap_or(s);
        let s = s.strip_prefix('-').unwrap_or(s).trim_start_matches('v');
        OciRuntime::ALL
            .into_iter()
            .filter(|r| r.version().is_some())
            .find(|r| {
                s == r.name()
                    || s.strip_prefix(r.name())
                        .is_some_and(|rest| rest.starts_with('.'))
            })
    }

    /// The runtime [`RUNTIME_ENV`] asks for (Debian's runc 1.1 when unset).
    pub fn from_env() -> Result<OciRuntime> {
        match std::env::var(RUNTIME_ENV) {
            Err(_) => Ok(OciRuntime::Runc1_1),
            Ok(v) if v.trim().is_empty() => Ok(OciRuntime::Runc1_1),
            Ok(v) => OciRuntime::parse(&v).ok_or_else(|| {
                Error::Unexpected(format!(
                    "{RUNTIME_ENV}={v:?} names no OCI runtime (use 1.1, 1.3, 1.4 or crun)"
                ))
            }),
        }
    }

    /// Where a Debian-packaged runtime lives (`None`: it comes from an archive).
    fn system_path(self) -> Option<&'static Path> {
        match self {
            OciRuntime::Runc1_1 => Some(Path::new(DEBIAN_RUNC)),
            OciRuntime::Crun => Some(Path::new(DEBIAN_CRUN)),
            OciRuntime::Runc1_3 | OciRuntime::Runc1_4 => None,
        }
    }

    /// Why this host cannot provide it, for a visible skip (`None`: it can). Not verified:
    /// an archive that does not match `SHA256SUMS` is found out by [`OciRuntime::binary`].
    pub fn unavailable(self) -> Option<String> {
        self.unavailable_in(&tools::tools_dir())
    }

    fn unavailable_in(self, tools: &Path) -> Option<String> {
        match (self.archive(), self.system_path()) {
            (Some(archive), _) if !tools.join(format!("{archive}.tar.xz")).is_file() => {
                Some(format!(
                    "no {self} here: {} has no {archive}.tar.xz",
                    tools.display()
                ))
            }
            (_, Some(path)) if !path.is_file() => Some(format!(
                "no {self} here: {} is not installed",
                path.display()
            )),
            _ => None,
        }
    }

    /// The runtime binary, unpacking its archive into the tools cache on first use.
    pub fn binary(self) -> Result<PathBuf> {
        if let Some(archive) = self.archive() {
            return Ok(tools::tool(archive, "runc")?);
        }
        let path = self.system_path().unwrap_or(Path::new(DEBIAN_RUNC));
        if !path.is_file() {
            return Err(Error::Unexpected(format!(
                "{self}: {} is not installed (scripts/deps.sh installs it)",
                path.display()
            )));
        }
        Ok(path.to_path_buf())
    }
}

impl fmt::Display for OciRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version() {
            Some(v) => write!(f, "runc {v}"),
            None => f.write_str("crun"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions_parse_back() {
        for r in OciRuntime::ALL {
            assert_eq!(OciRuntime::parse(r.name()), Some(r), "{r}");
            if let Some(v) = r.version() {
                assert_eq!(OciRuntime::parse(v), Some(r));
                assert_eq!(OciRuntime::parse(&format!("runc-{v}")), Some(r));
                assert_eq!(OciRuntime::parse(&format!("v{v}")), Some(r));
            }
        }
        assert_eq!(OciRuntime::parse(" 1.4 "), Some(OciRuntime::Runc1_4));
        assert_eq!(OciRuntime::parse("runc1.3"), Some(OciRuntime::Runc1_3));
        for bad in ["", "runc", "1", "1.2", "1.40", "1.4x", "crun-1.8", "youki"] {
            assert_eq!(OciRuntime::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn archived_runtimes_name_their_release() {
        for r in OciRuntime::ALL {
            match (r.archive(), r.version()) {
                (Some(a), Some(v)) => assert_eq!(a, format!("runc-{v}")),
                (Some(a), None) => panic!("{a}: an archive without a version"),
                (None, _) => assert!(r.system_path().is_some(), "{r}: from nowhere"),
            }
        }
        assert_eq!(OciRuntime::Runc1_4.to_string(), "runc 1.4.3");
        assert_eq!(OciRuntime::Crun.to_string(), "crun");
    }

    #[test]
    fn a_missing_archive_is_named_in_the_reason() {
        let tools = tempfile::tempdir().unwrap();
        let why = OciRuntime::Runc1_4.unavailable_in(tools.path()).unwrap();
        assert!(why.contains("runc 1.4.3"), "{why}");
        assert!(
            why.contains(&format!(
                "{} has no runc-1.4.3.tar.xz",
                tools.path().display()
            )),
            "{why}"
        );
        std::fs::write(tools.path().join("runc-1.4.3.tar.xz"), b"").unwrap();
        assert_eq!(OciRuntime::Runc1_4.unavailable_in(tools.path()), None);
        assert!(OciRuntime::Runc1_3.unavailable_in(tools.path()).is_some());
    }

    /// Each binary is the release its name says: `runc --version` (no container is run).
    #[test]
    fn each_runc_reports_its_release() {
        for r in OciRuntime::ALL {
            let Some(version) = r.version() else {
                continue;
            };
            if let Some(why) = r.unavailable() {
                test_skip::skip(why);
                continue;
            }
            let bin = r.binary().expect("runtime binary");
            let out = std::process::Command::new(&bin)
                .arg("--version")
                .output()
                .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
            let text = String::from_utf8_lossy(&out.stdout);
            let first = text.lines().next().unwrap_or_default();
            assert!(
                first.starts_with(&format!("runc version {version}")),
                "{r}: {} says {first:?}",
                bin.display()
            );
        }
    }
}

//! containerd generations the fixture can run: Debian's 1.6, and 1.7, 2.1, 2.2, 2.3 and 2.4
//! from `../shared/tools`, each with its own Go shim as the `runc` handler.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::tools;

/// Environment variable choosing the generation `Containerd::start()` runs (`1.6`, `1.7`,
/// `2.1`, `2.2`, `2.3`, `2.4`); unset means 1.6.
pub const GENERATION_ENV: &str = "STURDY_CONTAINERD";

/// A containerd release line with its own config format and shim protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Generation {
    /// Debian 12's containerd 1.6.20 (`apt-get install containerd`; end of life since 2025-08).
    V1_6,
    /// containerd 1.7.29 from `../shared/tools`.
    V1_7,
    /// containerd 2.1.5 from `../shared/tools` (end of life since 2026-07).
    V2_1,
    /// containerd 2.2.7 from `../shared/tools`.
    V2_2,
    /// containerd 2.3.4 from `../shared/tools`: the long-term line (to April 2028).
    V2_3,
    /// containerd 2.4.0-beta.0 from `../shared/tools` (the newest 2.4 tag there).
    V2_4,
}

/// The programs one generation runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// The containerd daemon.
    pub containerd: PathBuf,
    /// That release's Go shim, `containerd-shim-runc-v2` (the `runc` handler).
    pub go_shim: PathBuf,
}

impl Binaries {
    /// Debian's containerd package: `containerd` on PATH and its Go shim in /usr/bin.
    pub fn debian() -> Binaries {
        Binaries {
            containerd: PathBuf::from("containerd"),
            go_shim: PathBuf::from("/usr/bin/containerd-shim-runc-v2"),
        }
    }
}

impl Generation {
    /// Every generation, oldest first (what `generation_tests!` runs).
    pub const ALL: [Generation; 6] = [
        Generation::V1_6,
        Generation::V1_7,
        Generation::V2_1,
        Generation::V2_2,
        Generation::V2_3,
        Generation::V2_4,
    ];

    /// Short name as used by [`GENERATION_ENV`] and the scripts (`1.6`, `1.7`, `2.1`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Generation::V1_6 => "1.6",
            Generation::V1_7 => "1.7",
            Generation::V2_1 => "2.1",
            Generation::V2_2 => "2.2",
            Generation::V2_3 => "2.3",
            Generation::V2_4 => "2.4",
        }
    }

    /// Parses a short name; full versions like `1.7.29` or `2.4.0-beta.0` are accepted too.
    /// A bare `2` is not: it would name four lines.
    pub fn parse(s: &str) -> Option<Generation> {
        let s = s.trim().trim_start_matches('v');
        Generation::ALL.into_iter().find(|g| {
            s == g.name()
                || s.strip_prefix(g.name())
                    .is_some_and(|rest| rest.starts_with('.'))
        })
    }

    /// The generation [`GENERATION_ENV`] asks for (1.6 when unset).
    pub fn from_env() -> Result<Generation> {
        match std::env::var(GENERATION_ENV) {
            Err(_) => Ok(Generation::V1_6),
            Ok(v) if v.trim().is_empty() => Ok(Generation::V1_6),
            Ok(v) => Generation::parse(&v).ok_or_else(|| {
                Error::Unexpected(format!(
                    "{GENERATION_ENV}={v:?} names no containerd generation (use one of {})",
                    names(&Generation::ALL)
                ))
            }),
        }
    }

    /// The exact release this generation runs.
    pub fn version(self) -> &'static str {
        match self {
            Generation::V1_6 => "1.6.20",
            Generation::V1_7 => "1.7.29",
            Generation::V2_1 => "2.1.5",
            Generation::V2_2 => "2.2.7",
            Generation::V2_3 => "2.3.4",
            Generation::V2_4 => "2.4.0-beta.0",
        }
    }

    /// `config.toml` schema version the fixture writes: 2 for 1.x, 3 for 2.x. 2.3 and 2.4
    /// read version 4 natively (the `[grpc]`, `[ttrpc]`, `[debug]` and `[metrics]` tables
    /// become `io.containerd.server.v1.*` plugins) and migrate version 3 on load, as on a
    /// node upgraded from 2.1 or 2.2.
    pub fn config_version(self) -> u32 {
        match self {
            Generation::V1_6 | Generation::V1_7 => 2,
            Generation::V2_1 | Generation::V2_2 | Generation::V2_3 | Generation::V2_4 => 3,
        }
    }

    /// Whether it is a 2.x release (CRI split into `io.containerd.cri.v1.*`, Task API v3).
    pub fn is_v2(self) -> bool {
        self.config_version() >= 3
    }

    /// The `../shared/tools` archive it comes from (`None`: a Debian package).
    pub fn archive(self) -> Option<&'static str> {
        match self {
            Generation::V1_6 => None,
            Generation::V1_7 => Some("containerd-1.7.29"),
            Generation::V2_1 => Some("containerd-2.1.5"),
            Generation::V2_2 => Some("containerd-2.2.7"),
            Generation::V2_3 => Some("containerd-2.3.4"),
            Generation::V2_4 => Some("containerd-2.4.0-beta.0"),
        }
    }

    /// Whether this host can run it (1.6 always can; the others need `../shared/tools`).
    pub fn available(self) -> bool {
        self.unavailable().is_none()
    }

    /// Why this host cannot run it, for a visible skip (`None`: it can).
    pub fn unavailable(self) -> Option<String> {
        let archive = self.archive()?;
        (!tools::available(archive)).then(|| {
            format!(
                "no containerd {self} here: {} has no {archive}.tar.xz",
                tools::tools_dir().display()
            )
        })
    }

    /// Its containerd and Go shim, unpacking the archive into the cache on first use.
    pub fn binaries(self) -> Result<Binaries> {
        match self.archive() {
            None => Ok(Binaries::debian()),
            Some(archive) => {
                let dir = tools::unpacked(archive)?;
                Ok(Binaries {
                    containerd: dir.join("containerd"),
                    go_shim: dir.join("containerd-shim-runc-v2"),
                })
            }
        }
    }
}

/// `a, b or c` of the generations' short names, for messages.
pub(crate) fn names(all: &[Generation]) -> String {
    let names: Vec<&str> = all.iter().map(|g| g.name()).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.concat(),
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for g in Generation::ALL {
            assert_eq!(Generation::parse(g.name()), Some(g));
            assert_eq!(Generation::parse(g.version()), Some(g));
        }
        assert_eq!(Generation::parse("v1.7"), Some(Generation::V1_7));
        assert_eq!(Generation::parse("2.4.0-beta.0"), Some(Generation::V2_4));
        assert_eq!(Generation::parse("v2.3.4"), Some(Generation::V2_3));
        assert_eq!(Generation::parse(" 2.2 "), Some(Generation::V2_2));
        assert_eq!(Generation::parse("2"), None, "ambiguous since 2.2");
        assert_eq!(Generation::parse("2.30"), None);
        assert_eq!(Generation::parse("1.70"), None);
        assert_eq!(Generation::parse("1.8"), None);
        assert_eq!(Generation::parse("2.5"), None);
        assert_eq!(Generation::parse(""), None);
    }

    #[test]
    fn every_generation_has_its_own_archive_and_schema() {
        let mut archives = std::collections::BTreeSet::new();
        for g in Generation::ALL {
            match g.archive() {
                None => assert_eq!(g, Generation::V1_6, "only 1.6 is Debian's"),
                Some(a) => {
                    assert_eq!(a, format!("containerd-{}", g.version()), "{g}");
                    assert!(archives.insert(a), "{g}: archive shared");
                }
            }
            assert_eq!(g.config_version(), if g < Generation::V2_1 { 2 } else { 3 });
            assert_eq!(g.is_v2(), g >= Generation::V2_1, "{g}");
        }
        assert!(
            Generation::ALL.windows(2).all(|w| w[0] < w[1]),
            "oldest first"
        );
        assert_eq!(names(&Generation::ALL), "1.6, 1.7, 2.1, 2.2, 2.3 or 2.4");
    }
}

//! containerd generations the fixture can run: Debian's 1.6, and 1.7 and 2.1 from
//! `../shared/tools`, each with its own Go shim as the `runc` handler.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::tools;

/// Environment variable choosing the generation `Containerd::start()` runs (`1.6`, `1.7`,
/// `2.1`); unset means 1.6.
pub const GENERATION_ENV: &str = "STURDY_CONTAINERD";

/// A containerd release line with its own config format and shim protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Generation {
    /// Debian 12's containerd 1.6.20 (`apt-get install containerd`).
    V1_6,
    /// containerd 1.7.29 from `../shared/tools`.
    V1_7,
    /// containerd 2.1.5 from `../shared/tools`.
    V2_1,
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
    /// Every generation, oldest first.
    pub const ALL: [Generation; 3] = [Generation::V1_6, Generation::V1_7, Generation::V2_1];

    /// Short name as used by [`GENERATION_ENV`] and the scripts (`1.6`, `1.7`, `2.1`).
    pub fn name(self) -> &'static str {
        match self {
            Generation::V1_6 => "1.6",
            Generation::V1_7 => "1.7",
            Generation::V2_1 => "2.1",
        }
    }

    /// Parses a short name; `2` and full versions like `1.7.29` are accepted too.
    pub fn parse(s: &str) -> Option<Generation> {
        let s = s.trim().trim_start_matches('v');
        Generation::ALL.into_iter().find(|g| {
            s == g.name()
                || s.strip_prefix(g.name())
                    .is_some_and(|rest| rest.starts_with('.'))
                || (s == "2" && *g == Generation::V2_1)
        })
    }

    /// The generation [`GENERATION_ENV`] asks for (1.6 when unset).
    pub fn from_env() -> Result<Generation> {
        match std::env::var(GENERATION_ENV) {
            Err(_) => Ok(Generation::V1_6),
            Ok(v) if v.trim().is_empty() => Ok(Generation::V1_6),
            Ok(v) => Generation::parse(&v).ok_or_else(|| {
                Error::Unexpected(format!(
                    "{GENERATION_ENV}={v:?} names no containerd generation (use 1.6, 1.7 or 2.1)"
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
        }
    }

    /// `config.toml` schema version it reads: 2 for 1.x, 3 for 2.x.
    pub fn config_version(self) -> u32 {
        match self {
            Generation::V1_6 | Generation::V1_7 => 2,
            Generation::V2_1 => 3,
        }
    }

    /// The `../shared/tools` archive it comes from (`None`: a Debian package).
    pub fn archive(self) -> Option<&'static str> {
        match self {
            Generation::V1_6 => None,
            Generation::V1_7 => Some("containerd-1.7.29"),
            Generation::V2_1 => Some("containerd-2.1.5"),
        }
    }

    /// Whether this host can run it (1.6 always can; the others need `../shared/tools`).
    pub fn available(self) -> bool {
        match self.archive() {
            None => true,
            Some(archive) => tools::available(archive),
        }
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
        assert_eq!(Generation::parse("2"), Some(Generation::V2_1));
        assert_eq!(Generation::parse("v1.7"), Some(Generation::V1_7));
        assert_eq!(Generation::parse("1.70"), None);
        assert_eq!(Generation::parse("1.8"), None);
        assert_eq!(Generation::parse(""), None);
    }
}

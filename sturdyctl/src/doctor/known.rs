//! containerd releases with known bugs that hurt a node running sturdy (runc's table lives
//! in runc-client, which knows nothing of containerd).

use runc_client::{affected, Affected, SemVer};

use super::Severity;

/// A defect of some containerd releases.
#[derive(Debug, Clone, Copy)]
pub struct ContainerdIssue {
    /// CVE or our own name.
    pub id: &'static str,
    /// What goes wrong, one line.
    pub summary: &'static str,
    /// How bad for a node.
    pub severity: Severity,
    /// Affected `[introduced, fixed)` ranges (`None`: every earlier release).
    pub ranges: &'static [(Option<&'static str>, &'static str)],
    /// Distribution builds with the fix: (revision up to the update counter, first update).
    pub backports: &'static [(&'static str, u32)],
    /// First fixed release of each line.
    pub fixed_in: &'static str,
    /// Where it is documented.
    pub source: &'static str,
}

/// Releases open to CVE-2024-25621 and to CVE-2025-64329: the same security releases fixed both.
const FIXED_IN_1_7_29_RANGES: &[(Option<&str>, &str)] = &[
    (None, "1.7.29"),
    (Some("2.0.0-beta.0"), "2.0.7"),
    (Some("2.1.0-beta.0"), "2.1.5"),
    (Some("2.2.0-beta.0"), "2.2.0"),
];
/// The releases of [`FIXED_IN_1_7_29_RANGES`] that carry the fixes.
const FIXED_IN_1_7_29: &str = "1.7.29, 2.0.7, 2.1.5, 2.2.0";

/// The table. Debian's backports are from its containerd changelog
/// (`/usr/share/doc/containerd/changelog.Debian.gz` on Debian 12).
pub const CONTAINERD: &[ContainerdIssue] = &[
    ContainerdIssue {
        id: "containerd-7843-pod-ip-loss",
        summary: "pod network metadata (IP) is never written to disk: after a containerd \
                  restart pods lose their IP and kubelet recreates them (incident 000)",
        severity: Severity::Error,
        ranges: &[(Some("1.5.15"), "1.5.17"), (Some("1.6.9"), "1.6.15")],
        backports: &[],
        fixed_in: "1.5.17, 1.6.15",
        source: "https://github.com/containerd/containerd/issues/7843 (fix: pull 7845)",
    },
    ContainerdIssue {
        id: "CVE-2022-23648",
        summary: "a crafted image's volume can make CRI copy arbitrary host files into a \
                  container",
        severity: Severity::Error,
        ranges: &[
            (None, "1.4.13"),
            (Some("1.5.0"), "1.5.10"),
            (Some("1.6.0"), "1.6.1"),
        ],
        backports: &[],
        fixed_in: "1.4.13, 1.5.10, 1.6.1",
        source: "https://github.com/containerd/containerd/security/advisories/GHSA-crp2-qrr5-8pq7",
    },
    ContainerdIssue {
        id: "CVE-2024-40635",
        summary: "a container User UID:GID above 2^31 overflows and the container runs as \
                  root",
        severity: Severity::Error,
        ranges: &[
            (None, "1.6.38"),
            (Some("1.7.0"), "1.7.27"),
            (Some("2.0.0"), "2.0.4"),
        ],
        backports: &[("1.6.20~ds1-1+deb12u", 2)],
        fixed_in: "1.6.38, 1.7.27, 2.0.4",
        source: "https://github.com/containerd/containerd/security/advisories/GHSA-265r-hfxg-fhmg",
    },
    ContainerdIssue {
        id: "CVE-2024-25621",
        summary: "/var/lib/containerd and CRI state directories are created group/world \
                  accessible: local users can read images and pod volumes",
        severity: Severity::Warn,
        ranges: FIXED_IN_1_7_29_RANGES,
        backports: &[("1.6.20~ds1-1+deb12u", 2)],
        fixed_in: FIXED_IN_1_7_29,
        source: "https://github.com/containerd/containerd/security/advisories/GHSA-pwhc-rpq9-4c8w",
    },
    ContainerdIssue {
        id: "CVE-2025-64329",
        summary: "CRI Attach leaks goroutines: repeated attaches exhaust the node's memory",
        severity: Severity::Warn,
        ranges: FIXED_IN_1_7_29_RANGES,
        backports: &[("1.6.20~ds1-1+deb12u", 3)],
        fixed_in: FIXED_IN_1_7_29,
        source: "https://github.com/containerd/containerd/security/advisories/GHSA-m6hq-p25p-ffr2",
    },
];

/// containerd's version as printed or reported: the release, and the build's revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdVersion {
    /// Release as printed (`v1.7.29`, `1.6.20~ds1`).
    pub version: String,
    /// Revision (a commit, or a distribution's package version).
    pub revision: String,
}

impl ContainerdVersion {
    /// Parses `containerd --version`:
    /// `containerd github.com/containerd/containerd v1.7.29 442cb34…` or Debian's
    /// `containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3`.
    pub fn parse(text: &str) -> Option<ContainerdVersion> {
        let line = text.lines().find(|l| l.starts_with("containerd "))?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let version = fields.get(2)?.to_string();
        semver(&version)?;
        Some(ContainerdVersion {
            version,
            revision: fields.get(3).unwrap_or(&"").to_string(),
        })
    }

    /// The release as an orderable version.
    pub fn semver(&self) -> Option<SemVer> {
        semver(&self.version)
    }

    /// Known issues of this build, and those whose fix the distribution backported.
    pub fn issues(&self) -> (Vec<&'static ContainerdIssue>, Vec<&'static ContainerdIssue>) {
        let Some(v) = self.semver() else {
            return (Vec::new(), Vec::new());
        };
        let mut bad = Vec::new();
        let mut backported = Vec::new();
        for issue in CONTAINERD {
            match affected(&v, Some(&self.revision), issue.ranges, issue.backports) {
                Affected::Yes => bad.push(issue),
                Affected::Backported => backported.push(issue),
                Affected::No => {}
            }
        }
        (bad, backported)
    }
}

/// Debian marks repacked sources with `~ds1`; like `+build` it says nothing of the release.
fn semver(version: &str) -> Option<SemVer> {
    SemVer::parse(version.split('~').next().unwrap_or(version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &str, rev: &str) -> (Vec<&'static str>, Vec<&'static str>) {
        let (bad, back) = ContainerdVersion {
            version: v.into(),
            revision: rev.into(),
        }
        .issues();
        (
            bad.iter().map(|i| i.id).collect(),
            back.iter().map(|i| i.id).collect(),
        )
    }

    #[test]
    fn parses_upstream_and_debian_version_lines() {
        let up = ContainerdVersion::parse(
            "containerd github.com/containerd/containerd/v2 v2.1.5 fcd43222d6b07379a4be9786bda52438f0dd16a1\n",
        )
        .unwrap();
        assert_eq!(up.version, "v2.1.5");
        assert_eq!(up.semver().unwrap(), SemVer::parse("2.1.5").unwrap());
        let deb = ContainerdVersion::parse(
            "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n",
        )
        .unwrap();
        assert_eq!(deb.semver().unwrap(), SemVer::parse("1.6.20").unwrap());
        assert_eq!(deb.revision, "1.6.20~ds1-1+deb12u3");
        assert!(ContainerdVersion::parse("garbage").is_none());
        assert!(ContainerdVersion::parse("containerd x notaversion y").is_none());
    }

    #[test]
    fn the_incident_000_releases_are_flagged() {
        for v in ["1.6.9", "1.6.12", "1.6.14", "1.5.15", "1.5.16"] {
            assert!(ids(v, "").0.contains(&"containerd-7843-pod-ip-loss"), "{v}");
        }
        for v in ["1.6.8", "1.6.15", "1.5.14", "1.5.17", "1.7.0"] {
            assert!(
                !ids(v, "").0.contains(&"containerd-7843-pod-ip-loss"),
                "{v}"
            );
        }
    }

    #[test]
    fn fixed_lines_and_debian_backports() {
        assert_eq!(ids("v1.7.29", "442cb34").0, Vec::<&str>::new());
        assert_eq!(ids("v2.1.5", "fcd4322").0, Vec::<&str>::new());
        assert_eq!(ids("v2.0.7", "x").0, Vec::<&str>::new());
        assert_eq!(ids("v2.1.4", "x").0, ["CVE-2024-25621", "CVE-2025-64329"]);
        assert_eq!(
            ids("v1.7.26", "x").0,
            ["CVE-2024-40635", "CVE-2024-25621", "CVE-2025-64329"]
        );
        // This machine's Debian 12 build carries all three backports...
        let (bad, back) = ids("1.6.20~ds1", "1.6.20~ds1-1+deb12u3");
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(back, ["CVE-2024-40635", "CVE-2024-25621", "CVE-2025-64329"]);
        // ...deb12u2 lacks the attach fix, deb12u1 all of them.
        assert_eq!(
            ids("1.6.20~ds1", "1.6.20~ds1-1+deb12u2").0,
            ["CVE-2025-64329"]
        );
        assert_eq!(ids("1.6.20~ds1", "1.6.20~ds1-1+deb12u1").0.len(), 3);
    }
}

//! `runc --version`: parsing, ordering, and the table of releases known to be bad.

use std::cmp::Ordering;
use std::fmt;

/// What `<runtime> --version` reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// The version string as printed (e.g. "1.1.5+ds1").
    pub runc: String,
    /// The "commit:" line.
    pub commit: Option<String>,
    /// The OCI runtime-spec version it implements.
    pub spec: Option<String>,
    /// The runtime's own name from the first line ("runc", "crun", ...).
    pub runtime: String,
}

/// A defect of a runtime release that a caller may want to warn about or work around.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownIssue {
    /// Stable identifier (CVE or our own name).
    pub id: &'static str,
    /// What goes wrong.
    pub summary: &'static str,
    /// The first fixed release of each maintained line, for the operator's fix.
    pub fixed_in: &'static str,
    /// Where this is documented (advisory, pull request).
    pub source: &'static str,
}

/// One row of the known-bad table: versions in any `[introduced, fixed)` range of `runtime`
/// are affected, unless the build is a distribution's that carries the fix.
struct BadRange {
    runtime: &'static str,
    ranges: &'static [(Option<&'static str>, &'static str)],
    /// Distribution builds with the fix backported: (the `commit:` line up to the
    /// distribution's update counter, the first update with the fix).
    backports: &'static [(&'static str, u32)],
    issue: KnownIssue,
}

const KNOWN_BAD: &[BadRange] = &[
    BadRange {
        runtime: "runc",
        ranges: &[(Some("1.0.0-rc93"), "1.0.0-rc94")],
        backports: &[],
        issue: KnownIssue {
            id: "runc-rc93-init-hang",
            summary: "runc init can hang exporting a large seccomp filter with noNewPrivileges \
                      when fs.pipe-user-pages-soft is exhausted; containers never start",
            fixed_in: "1.0.0-rc94",
            source: "https://github.com/opencontainers/runc/pull/2871 (incident 002)",
        },
    },
    BadRange {
        runtime: "runc",
        ranges: &[(Some("1.0.0-rc93"), "1.1.12")],
        // Debian 12's runc 1.1.5+ds1-1+deb12u1 (its changelog: "CVE-2024-21626: several
        // container breakouts due to internally leaked fds").
        backports: &[("1.1.5+ds1-1+deb12u", 1)],
        issue: KnownIssue {
            id: "CVE-2024-21626",
            summary: "leaked host fd lets a container process escape via its working directory",
            fixed_in: "1.1.12",
            source:
                "https://github.com/opencontainers/runc/security/advisories/GHSA-xr7r-f8xq-vfvv",
        },
    },
    BadRange {
        runtime: "runc",
        ranges: &[
            (None, "1.2.8"),
            (Some("1.3.0-rc.1"), "1.3.3"),
            (Some("1.4.0-rc.1"), "1.4.0-rc.3"),
        ],
        backports: &[],
        issue: KnownIssue {
            id: "CVE-2025-31133",
            summary: "maskedPaths bind-mount race lets a container write host procfs files \
                      (container escape)",
            fixed_in: "1.2.8, 1.3.3, 1.4.0-rc.3",
            source:
                "https://github.com/opencontainers/runc/security/advisories/GHSA-9493-h29p-rfm2",
        },
    },
];

/// The distribution update counter of `build` if it starts with `prefix` ("…+deb12u3" → 3).
fn update_counter(build: &str, prefix: &str) -> Option<u32> {
    let rest = build.strip_prefix(prefix)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Whether `version` (with distribution build id `build`) falls in one of `ranges` without
/// one of `backports`. Shared with tables of other programs (sturdyctl's containerd table).
pub fn affected(
    version: &SemVer,
    build: Option<&str>,
    ranges: &[(Option<&str>, &str)],
    backports: &[(&str, u32)],
) -> Affected {
    let bound = |s: &str| SemVer::parse(s).expect("table versions are valid");
    let in_range = ranges
        .iter()
        .any(|(i, f)| i.is_none_or(|i| *version >= bound(i)) && *version < bound(f));
    if !in_range {
        return Affected::No;
    }
    let backported = build.is_some_and(|b| {
        backports
            .iter()
            .any(|(prefix, min)| update_counter(b, prefix).is_some_and(|n| n >= *min))
    });
    if backported {
        Affected::Backported
    } else {
        Affected::Yes
    }
}

/// Whether a release carries a known issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affected {
    /// Outside every affected range.
    No,
    /// In an affected range.
    Yes,
    /// In an affected range, but the distribution backported the fix.
    Backported,
}

impl Version {
    /// Parse the text printed by `runc --version` (or crun's equivalent).
    pub fn parse(text: &str) -> Option<Version> {
        let mut lines = text.lines();
        let first = lines.next()?.trim();
        let (runtime, version) = first.split_once(" version ")?;
        let mut v = Version {
            runc: version.trim().to_string(),
            commit: None,
            spec: None,
            runtime: runtime.trim().to_string(),
        };
        for line in lines {
            if let Some((key, value)) = line.split_once(':') {
                match key.trim() {
                    "commit" => v.commit = Some(value.trim().to_string()),
                    "spec" => v.spec = Some(value.trim().to_string()),
                    _ => {}
                }
            }
        }
        Some(v)
    }

    /// The version as an orderable number, if it looks like one.
    pub fn semver(&self) -> Option<SemVer> {
        SemVer::parse(&self.runc)
    }

    /// Known defects of this release, empty when none are known or the version is unparseable.
    /// Issues a distribution build has backported the fix for are left out
    /// ([`Version::backported_issues`] lists them).
    pub fn known_issues(&self) -> Vec<KnownIssue> {
        self.issues_where(Affected::Yes)
    }

    /// Known defects of the upstream release whose fix this distribution build carries.
    pub fn backported_issues(&self) -> Vec<KnownIssue> {
        self.issues_where(Affected::Backported)
    }

    fn issues_where(&self, want: Affected) -> Vec<KnownIssue> {
        let Some(v) = self.semver() else {
            return Vec::new();
        };
        KNOWN_BAD
            .iter()
            .filter(|b| b.runtime == self.runtime)
            .filter(|b| affected(&v, self.commit.as_deref(), b.ranges, b.backports) == want)
            .map(|b| b.issue)
            .collect()
    }
}

/// major.minor.patch with an optional pre-release tag such as "rc93"; build metadata is ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SemVer {
    /// Major.
    pub major: u64,
    /// Minor.
    pub minor: u64,
    /// Patch.
    pub patch: u64,
    /// Pre-release tag, e.g. "rc93".
    pub pre: Option<String>,
}

impl SemVer {
    /// Parse "1.1.5", "1.1.5+ds1", "v1.0.0-rc93", "1.2.0-rc.1".
    pub fn parse(s: &str) -> Option<SemVer> {
        let s = s.trim().trim_start_matches('v');
        let s = s.split('+').next()?;
        let (core, pre) = match s.split_once('-') {
            Some((c, p)) => (c, Some(p.to_string())),
            None => (s, None),
        };
        let mut parts = core.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().unwrap_or("0").parse().ok()?;
        let patch = parts.next().unwrap_or("0").parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(SemVer {
            major,
            minor,
            patch,
            pre,
        })
    }
}

/// Splits "rc93" / "rc.93" into ("rc", 93) so rc100 sorts after rc93.
fn pre_key(pre: &str) -> (String, Option<u64>) {
    let digits_at = pre.find(|c: char| c.is_ascii_digit()).unwrap_or(pre.len());
    let (word, num) = pre.split_at(digits_at);
    (
        word.trim_end_matches('.').to_string(),
        num.split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok()),
    )
}

impl Ord for SemVer {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (&self.pre, &other.pre) {
                (None, None) => Ordering::Equal,
                // A release sorts after all of its pre-releases.
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => pre_key(a).cmp(&pre_key(b)),
            })
    }
}

impl PartialOrd for SemVer {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SemVer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(pre) = &self.pre {
            write!(f, "-{pre}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> SemVer {
        SemVer::parse(s).unwrap()
    }

    #[test]
    fn parses_runc_output() {
        let out = "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\ngo: go1.19.8\nlibseccomp: 2.5.4\n";
        let ver = Version::parse(out).unwrap();
        assert_eq!(ver.runtime, "runc");
        assert_eq!(ver.runc, "1.1.5+ds1");
        assert_eq!(ver.commit.as_deref(), Some("1.1.5+ds1-1+deb12u1"));
        assert_eq!(ver.spec.as_deref(), Some("1.0.2-dev"));
        assert_eq!(ver.semver().unwrap(), v("1.1.5"));
    }

    #[test]
    fn parses_crun_output() {
        let out = "crun version 1.8.1\ncommit: f8a096be060b22ccd3d5f3ebe44108517fbf6c30\nrundir: /run/crun\nspec: 1.0.0\n+SYSTEMD +SELINUX\n";
        let ver = Version::parse(out).unwrap();
        assert_eq!(ver.runtime, "crun");
        assert_eq!(ver.runc, "1.8.1");
        assert!(ver.known_issues().is_empty());
        assert!(Version::parse("garbage").is_none());
    }

    #[test]
    fn orders_versions() {
        assert!(v("1.0.0-rc92") < v("1.0.0-rc93"));
        assert!(v("1.0.0-rc93") < v("1.0.0-rc100"));
        assert!(v("1.0.0-rc95") < v("1.0.0"));
        assert!(v("1.1.5") < v("1.1.12"));
        assert!(v("1.1.12") < v("1.2.0-rc.1"));
        assert!(v("1.2.0-rc.1") < v("1.2.0"));
        assert_eq!(v("1.1.5+ds1"), v("1.1.5"));
        assert_eq!(v("v1.1.5"), v("1.1.5"));
        assert_eq!(v("1.0.0-rc93").to_string(), "1.0.0-rc93");
        assert!(SemVer::parse("1.x.0").is_none());
    }

    fn runc(version: &str, commit: Option<&str>) -> Version {
        Version {
            runc: version.into(),
            commit: commit.map(String::from),
            spec: None,
            runtime: "runc".into(),
        }
    }

    fn issues(version: &str) -> Vec<&'static str> {
        runc(version, None)
            .known_issues()
            .iter()
            .map(|i| i.id)
            .collect()
    }

    #[test]
    fn flags_known_bad_releases() {
        assert_eq!(
            issues("1.0.0-rc93"),
            ["runc-rc93-init-hang", "CVE-2024-21626", "CVE-2025-31133"]
        );
        assert_eq!(issues("1.0.0-rc92"), ["CVE-2025-31133"]);
        assert_eq!(issues("1.0.0-rc94"), ["CVE-2024-21626", "CVE-2025-31133"]);
        assert_eq!(issues("1.1.5+ds1"), ["CVE-2024-21626", "CVE-2025-31133"]);
        assert_eq!(issues("1.1.11"), ["CVE-2024-21626", "CVE-2025-31133"]);
        assert_eq!(issues("1.1.12"), ["CVE-2025-31133"]);
        assert_eq!(issues("1.2.7"), ["CVE-2025-31133"]);
        assert!(issues("1.2.8").is_empty());
        assert_eq!(issues("1.3.2"), ["CVE-2025-31133"]);
        assert!(issues("1.3.3").is_empty());
        assert_eq!(issues("1.4.0-rc.2"), ["CVE-2025-31133"]);
        assert!(issues("1.4.0").is_empty());
        assert!(issues("unknown").is_empty());
    }

    #[test]
    fn distribution_backports_are_told_apart() {
        // Debian 12's runc prints its package version as the commit.
        let debian = runc("1.1.5+ds1", Some("1.1.5+ds1-1+deb12u1"));
        let ids = |v: Vec<KnownIssue>| v.iter().map(|i| i.id).collect::<Vec<_>>();
        assert_eq!(ids(debian.known_issues()), ["CVE-2025-31133"]);
        assert_eq!(ids(debian.backported_issues()), ["CVE-2024-21626"]);
        // The unpatched Debian build (deb12u0 never existed; "-1" has no counter).
        let plain = runc("1.1.5+ds1", Some("1.1.5+ds1-1"));
        assert_eq!(
            ids(plain.known_issues()),
            ["CVE-2024-21626", "CVE-2025-31133"]
        );
        assert!(plain.backported_issues().is_empty());
        assert_eq!(
            update_counter("1.6.20~ds1-1+deb12u3", "1.6.20~ds1-1+deb12u"),
            Some(3)
        );
        assert_eq!(
            update_counter("1.6.20~ds1-1+deb12u", "1.6.20~ds1-1+deb12u"),
            None
        );
    }
}

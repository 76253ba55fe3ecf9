//! critest (the Kubernetes CRI validation suite): the releases `../shared/tools` provides,
//! and its results: its ginkgo JSON report read into pass/fail per spec, and the summary
//! `scripts/critest.sh` prints and CI compares.

use std::fmt;

use crate::error::{Error, Result};

/// A critest release `../shared/tools` provides, with the archive of the images it pulls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum CritestVersion {
    /// cri-tools v1.26.1: 80 validation specs.
    #[default]
    V1_26,
    /// cri-tools v1.36.0: 117 validation specs, user namespaces among them. Its images are
    /// the 1.26.1 set plus `pause39.tar`, one image tagged `registry.k8s.io/pause:3.9` and
    /// `k8s.gcr.io/pause:3.9` for the "same image from different registries" specs.
    V1_36,
}

impl CritestVersion {
    /// Every release, oldest first.
    pub const ALL: [CritestVersion; 2] = [CritestVersion::V1_26, CritestVersion::V1_36];

    /// The release, as `critest.sh --critest` takes it.
    pub fn version(self) -> &'static str {
        match self {
            CritestVersion::V1_26 => "1.26.1",
            CritestVersion::V1_36 => "1.36.0",
        }
    }

    /// Parses `1.26`, `1.26.1`, `v1.36.0`, ...
    pub fn parse(s: &str) -> Option<CritestVersion> {
        let s = s.trim().trim_start_matches('v');
        CritestVersion::ALL.into_iter().find(|c| {
            let v = c.version();
            let minor = &v[..v.rfind('.').unwrap_or(v.len())];
            s == v || s == minor
        })
    }

    /// The archive of `critest` and `crictl`.
    pub fn cri_tools(self) -> &'static str {
        match self {
            CritestVersion::V1_26 => "cri-tools-1.26.1",
            CritestVersion::V1_36 => "cri-tools-1.36.0",
        }
    }

    /// The archive of the images it pulls, with its `push.list`.
    pub fn images(self) -> &'static str {
        match self {
            CritestVersion::V1_26 => "critest-images-1.26.1",
            CritestVersion::V1_36 => "critest-images-1.36.0",
        }
    }
}

impl fmt::Display for CritestVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.version())
    }
}

/// The one spec that cannot pass offline: it pulls an image by an upstream digest that a
/// locally built image can never have.
pub const DIGEST_SPEC: &str =
    "[k8s.io] Image Manager public image with digest should be pulled and removed [Conformance]";

/// Outcome of one validation spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Full name: the container texts and the leaf text, space separated (what ginkgo prints).
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// First line of the failure message (empty for passed specs).
    pub failure: String,
}

/// Every spec that ran, in report order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Results {
    /// The specs, skipped ones (the benchmarks) left out.
    pub specs: Vec<Spec>,
}

impl Results {
    /// Reads a report written by `critest -ginkgo.json-report FILE`.
    pub fn from_report(json: &[u8]) -> Result<Results> {
        let suites: Vec<serde_json::Value> = serde_json::from_slice(json)?;
        let mut specs = Vec::new();
        for suite in &suites {
            let Some(reports) = suite["SpecReports"].as_array() else {
                return Err(Error::Unexpected(
                    "critest report without SpecReports".into(),
                ));
            };
            for r in reports {
                if r["LeafNodeType"] != "It" {
                    // Suite-level nodes only report when they fail, and then every spec did.
                    if let Some(f) = failure_line(r) {
                        return Err(Error::Unexpected(format!(
                            "critest {} failed: {f}",
                            r["LeafNodeType"].as_str().unwrap_or("node")
                        )));
                    }
                    continue;
                }
                let state = r["State"].as_str().unwrap_or_default();
                if matches!(state, "skipped" | "pending") {
                    continue;
                }
                let mut name: Vec<&str> = r["ContainerHierarchyTexts"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|t| t.as_str()).collect())
                    .unwrap_or_default();
                name.push(r["LeafNodeText"].as_str().unwrap_or_default());
                let passed = state == "passed";
                specs.push(Spec {
                    name: name.join(" "),
                    passed,
                    failure: if passed {
                        String::new()
                    } else {
                        failure_line(r).unwrap_or_else(|| format!("spec {state}"))
                    },
                });
            }
        }
        Ok(Results { specs })
    }

    /// How many specs passed.
    pub fn passed(&self) -> usize {
        self.specs.iter().filter(|s| s.passed).count()
    }

    /// The specs that failed.
    pub fn failed(&self) -> impl Iterator<Item = &Spec> {
        self.specs.iter().filter(|s| !s.passed)
    }

    /// One line per spec, `PASS<TAB>name` or `FAIL<TAB>name`, for scripts to compare runs.
    pub fn to_lines(&self) -> String {
        self.specs
            .iter()
            .map(|s| format!("{}\t{}\n", if s.passed { "PASS" } else { "FAIL" }, s.name))
            .collect()
    }
}

/// The failed specs with the first line of each failure, then `N passed, M failed`.
impl fmt::Display for Results {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed: Vec<&Spec> = self.failed().collect();
        for s in &failed {
            writeln!(f, "FAIL {}", s.name)?;
            writeln!(f, "     {}", s.failure)?;
        }
        write!(f, "{} passed, {} failed", self.passed(), failed.len())
    }
}

fn failure_line(report: &serde_json::Value) -> Option<String> {
    let msg = report["Failure"]["Message"].as_str()?;
    let line = msg.lines().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"[{"SuiteSucceeded": false, "SpecReports": [
      {"LeafNodeType": "BeforeSuite", "State": "passed", "LeafNodeText": ""},
      {"LeafNodeType": "It", "State": "skipped",
       "ContainerHierarchyTexts": ["[k8s.io] Image", "benchmark"], "LeafNodeText": "listing"},
      {"LeafNodeType": "It", "State": "passed",
       "ContainerHierarchyTexts": ["[k8s.io] Runtime info", "runtime"], "LeafNodeText": "returns version"},
      {"LeafNodeType": "It", "State": "failed",
       "ContainerHierarchyTexts": ["[k8s.io] Image Manager"],
       "LeafNodeText": "public image with digest should be pulled and removed [Conformance]",
       "Failure": {"Message": "\n  pull failed: not found\nmore detail"}},
      {"LeafNodeType": "It", "State": "timedout",
       "ContainerHierarchyTexts": ["[k8s.io] Streaming"], "LeafNodeText": "exec"}
    ]}]"#;

    #[test]
    fn report_is_read_into_specs_with_first_failure_lines() {
        let r = Results::from_report(REPORT.as_bytes()).unwrap();
        assert_eq!(r.specs.len(), 3, "skipped benchmarks are not counted");
        assert_eq!(r.passed(), 1);
        let failed: Vec<&Spec> = r.failed().collect();
        assert_eq!(failed[0].name, DIGEST_SPEC);
        assert_eq!(failed[0].failure, "pull failed: not found");
        assert_eq!(failed[1].failure, "spec timedout");
        let text = r.to_string();
        assert!(text.ends_with("1 passed, 2 failed"), "{text}");
        assert!(text.contains(&format!(
            "FAIL {DIGEST_SPEC}\n     pull failed: not found\n"
        )));
        assert_eq!(
            r.to_lines().lines().next(),
            Some("PASS\t[k8s.io] Runtime info runtime returns version")
        );
    }

    #[test]
    fn critest_versions_parse_and_name_their_archives() {
        for c in CritestVersion::ALL {
            assert_eq!(CritestVersion::parse(c.version()), Some(c));
            assert_eq!(c.cri_tools(), format!("cri-tools-{c}"));
            assert_eq!(c.images(), format!("critest-images-{c}"));
        }
        assert_eq!(CritestVersion::parse("1.36"), Some(CritestVersion::V1_36));
        assert_eq!(CritestVersion::parse("v1.26"), Some(CritestVersion::V1_26));
        assert_eq!(CritestVersion::default(), CritestVersion::V1_26);
        for bad in ["", "1", "1.3", "1.36.1", "1.260"] {
            assert_eq!(CritestVersion::parse(bad), None, "{bad:?}");
        }
        // tests/tty.rs takes crictl from the default release's archive.
        assert_eq!(
            crate::tools::CRI_TOOLS,
            CritestVersion::default().cri_tools()
        );
        assert_eq!(
            crate::tools::CRITEST_IMAGES,
            CritestVersion::default().images()
        );
    }

    #[test]
    fn a_failed_suite_node_is_an_error_not_a_result() {
        let report = r#"[{"SpecReports": [{"LeafNodeType": "BeforeSuite", "State": "failed",
            "Failure": {"Message": "cannot connect"}}]}]"#;
        let err = Results::from_report(report.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("cannot connect"), "{err}");
    }
}

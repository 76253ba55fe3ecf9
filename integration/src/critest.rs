//! critest (the Kubernetes CRI validation suite) results: its ginkgo JSON report read into
//! pass/fail per spec, and the summary `scripts/critest.sh` prints and CI compares.

use std::fmt;

use crate::error::{Error, Result};

/// The critest release the tools provide.
pub const CRITEST_VERSION: &str = "1.26.1";

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
    fn a_failed_suite_node_is_an_error_not_a_result() {
        let report = r#"[{"SpecReports": [{"LeafNodeType": "BeforeSuite", "State": "failed",
            "Failure": {"Message": "cannot connect"}}]}]"#;
        let err = Results::from_report(report.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("cannot connect"), "{err}");
    }
}

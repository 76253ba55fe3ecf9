//! Where else a runtime may keep state for a container whose record cannot be used, so
//! the error can tell an operator where to look. delete never acts on what it finds here.

use std::path::{Path, PathBuf};

use crate::record::DEFAULT_RUNC_ROOT;

/// File containerd's Go runc shim writes into the bundle with its runtime options
/// (containerd itself writes none; a bundle the Go shim created before sturdy took over
/// still has it).
pub const GO_SHIM_OPTIONS: &str = "options.json";

/// Runtime state directories for `id` that exist under the default runc root or under
/// the root named in the bundle's `options.json`.
pub fn runtime_states(bundle: &Path, namespace: &str, id: &str) -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from(DEFAULT_RUNC_ROOT)];
    if let Some(root) = go_shim_root(bundle) {
        roots.push(root);
    }
    let mut found = Vec::new();
    for root in roots {
        let dir = root.join(namespace).join(id);
        // runc keeps `state.json`, crun a `status` file.
        let known = ["state.json", "status"]
            .iter()
            .any(|f| dir.join(f).is_file());
        if known && !found.contains(&dir) {
            found.push(dir);
        }
    }
    found
}

/// The `root` of the Go shim's options (its `Root`, without the namespace), if absolute.
fn go_shim_root(bundle: &Path) -> Option<PathBuf> {
    let data = std::fs::read(bundle.join(GO_SHIM_OPTIONS)).ok()?;
    let options: serde_json::Value = serde_json::from_slice(&data).ok()?;
    options["root"]
        .as_str()
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// A sentence naming the state directories found, or nothing.
pub fn describe(found: &[PathBuf]) -> Option<String> {
    if found.is_empty() {
        return None;
    }
    let dirs: Vec<String> = found.iter().map(|d| d.display().to_string()).collect();
    Some(format!(
        "a runtime state for this id exists at {} (not acted on)",
        dirs.join(" and ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_state_under_the_go_shims_root() {
        let bundle = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        assert!(runtime_states(bundle.path(), "ns", "c1").is_empty());
        std::fs::write(
            bundle.path().join(GO_SHIM_OPTIONS),
            serde_json::json!({"root": root.path(), "binary_name": "runc"}).to_string(),
        )
        .unwrap();
        assert!(runtime_states(bundle.path(), "ns", "c1").is_empty());
        let dir = root.path().join("ns/c1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("state.json"), "{}").unwrap();
        assert_eq!(runtime_states(bundle.path(), "ns", "c1"), vec![dir.clone()]);
        let text = describe(std::slice::from_ref(&dir)).unwrap();
        assert!(text.contains(&dir.display().to_string()), "{text}");
        assert!(describe(&[]).is_none());
    }
}

use std::path::Path;

use super::*;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/containerd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const FIXTURES: &[&str] = &[
    "1.6-default.toml",
    "1.7-default.toml",
    "2.1-default.toml",
    "commented-v2.toml",
    "commented-v3.toml",
    "minimal-v2.toml",
];

fn install(text: &str) -> String {
    let mut c = Config::parse(Path::new("config.toml"), text).unwrap();
    assert!(c.add_runtime(HANDLER, text).unwrap());
    c.render()
}

fn uninstall(text: &str) -> String {
    let mut c = Config::parse(Path::new("config.toml"), text).unwrap();
    assert!(c.remove_runtime(HANDLER, text).unwrap());
    c.render()
}

/// The semantic content, with sturdy's runtime taken out again.
fn without_sturdy(text: &str, schema: Schema) -> toml::Table {
    let mut t: toml::Table = text.parse().unwrap();
    if let Some(rts) = t
        .get_mut("plugins")
        .and_then(|p| p.get_mut(schema.cri_plugin()))
        .and_then(|p| p.get_mut("containerd"))
        .and_then(|p| p.get_mut("runtimes"))
        .and_then(|p| p.as_table_mut())
    {
        rts.remove(HANDLER);
        // install may have created the (then empty) parent tables of a minimal config
        if rts.is_empty() {
            let cri = t["plugins"][schema.cri_plugin()].as_table_mut().unwrap();
            cri.remove("containerd");
            if cri.is_empty() {
                t["plugins"]
                    .as_table_mut()
                    .unwrap()
                    .remove(schema.cri_plugin());
            }
            if t["plugins"].as_table().unwrap().is_empty() {
                t.remove("plugins");
            }
        }
    }
    t
}

#[test]
fn install_adds_only_sturdy_and_uninstall_restores_every_byte() {
    for name in FIXTURES {
        let original = fixture(name);
        let schema = Config::parse(Path::new(name), &original).unwrap().schema();
        let installed = install(&original);
        let c = Config::parse(Path::new(name), &installed).unwrap();
        let rt = c
            .runtime(HANDLER)
            .unwrap_or_else(|| panic!("{name}: {installed}"));
        assert_eq!(rt.runtime_type.as_deref(), Some(RUNTIME_TYPE), "{name}");
        assert_eq!(
            without_sturdy(&installed, schema),
            original.parse::<toml::Table>().unwrap(),
            "{name}: install changed more than the sturdy runtime"
        );
        // Every original line is still there, in order: only lines were added.
        let diff = similar::TextDiff::from_lines(&original, &installed);
        for op in diff.ops() {
            assert!(
                matches!(op.tag(), similar::DiffTag::Equal | similar::DiffTag::Insert),
                "{name}: install rewrote existing lines:\n{}",
                diff.unified_diff()
            );
        }
        assert_eq!(uninstall(&installed), original, "{name}: not restored");
    }
}

#[test]
fn install_is_idempotent() {
    for name in FIXTURES {
        let installed = install(&fixture(name));
        let mut c = Config::parse(Path::new(name), &installed).unwrap();
        assert!(!c.add_runtime(HANDLER, &installed).unwrap(), "{name}");
        assert_eq!(c.render(), installed);
        let original = fixture(name);
        let mut c = Config::parse(Path::new(name), &original).unwrap();
        assert!(!c.remove_runtime(HANDLER, &original).unwrap(), "{name}");
        assert_eq!(c.render(), original);
    }
}

#[test]
fn the_new_runtime_looks_like_its_siblings() {
    let v16 = install(&fixture("1.6-default.toml"));
    assert!(
        v16.contains(
            "            SystemdCgroup = false\n\n        \
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.sturdy]\n          \
             runtime_type = \"io.containerd.sturdy.v2\"\n\n      \
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.untrusted_workload_runtime]"
        ),
        "{v16}"
    );
    let v21 = install(&fixture("2.1-default.toml"));
    assert!(
        v21.contains(
            "            SystemdCgroup = false\n\n        \
             [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.sturdy]\n          \
             runtime_type = 'io.containerd.sturdy.v2'\n\n    \
             [plugins.'io.containerd.cri.v1.runtime'.cni]"
        ),
        "{v21}"
    );
    let minimal = install(&fixture("minimal-v2.toml"));
    assert!(
        minimal.ends_with(
            "\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.sturdy]\n  \
             runtime_type = \"io.containerd.sturdy.v2\"\n"
        ),
        "{minimal}"
    );
}

#[test]
fn a_foreign_runtime_named_sturdy_is_never_touched() {
    let text =
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.sturdy]\n  \
                runtime_type = \"io.containerd.runc.v2\"\n";
    let mut c = Config::parse(Path::new("c.toml"), text).unwrap();
    let err = c.add_runtime(HANDLER, text).unwrap_err();
    assert!(matches!(err, ConfigError::Conflict { .. }), "{err}");
    let err = c.remove_runtime(HANDLER, text).unwrap_err();
    assert!(matches!(err, ConfigError::Conflict { .. }), "{err}");
    assert_eq!(c.render(), text);
}

#[test]
fn unsupported_versions_and_shapes_are_refused() {
    let v1 = "[plugins.cri.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n";
    let mut c = Config::parse(Path::new("c.toml"), v1).unwrap();
    assert_eq!(c.schema(), Schema::V1);
    assert_eq!(c.runtime_names(), ["runc"]);
    assert!(matches!(
        c.add_runtime(HANDLER, v1),
        Err(ConfigError::UnsupportedVersion { version: 1, .. })
    ));
    assert!(matches!(
        Config::parse(Path::new("c.toml"), "version = 4\n"),
        Err(ConfigError::UnsupportedVersion { version: 4, .. })
    ));
    let err = Config::parse(Path::new("c.toml"), "version = 2\n[plugins\n").unwrap_err();
    assert!(err.to_string().contains("c.toml: not valid TOML"), "{err}");
    let scalar = "version = 2\nplugins = 1\n";
    let mut c = Config::parse(Path::new("c.toml"), scalar).unwrap();
    let err = c.add_runtime(HANDLER, scalar).unwrap_err();
    assert!(matches!(err, ConfigError::NotATable { .. }), "{err}");
}

#[test]
fn runtimes_and_options_are_read() {
    let c = Config::parse(Path::new("c"), &fixture("commented-v2.toml")).unwrap();
    assert_eq!(c.runtime_names(), ["runc", "crun", "kata", "runsc"]);
    let crun = c.runtime("crun").unwrap();
    assert_eq!(crun.option_str("BinaryName"), Some("/usr/bin/crun"));
    assert_eq!(crun.option_bool("SystemdCgroup"), Some(true));
    assert_eq!(
        c.get_str(&["grpc", "address"]).as_deref(),
        Some("/run/containerd/containerd.sock")
    );
    let c = Config::parse(Path::new("c"), &fixture("2.1-default.toml")).unwrap();
    assert_eq!(c.schema(), Schema::V3);
    assert_eq!(
        c.runtime("runc").unwrap().runtime_type.as_deref(),
        Some("io.containerd.runc.v2")
    );
}

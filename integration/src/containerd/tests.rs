//! Unit tests of the fixture: the files it writes, per generation and runtime.

use super::*;

/// A fixture value that was never started, so Drop has nothing to clean.
fn unstarted(g: Generation) -> Containerd {
    let mut fx = Containerd::identity(
        PathBuf::from("/tmp/sturdy-test-unit"),
        "0123abcd",
        PathBuf::from("/nonexistent"),
    );
    fx.cleaned = true;
    fx.generation = g;
    fx.subnet = Some(subnets::tests::private_slot(3));
    fx
}

#[test]
fn config_keeps_everything_in_the_temp_dir() {
    for g in Generation::ALL {
        let cfg = unstarted(g).config_toml();
        assert!(
            cfg.starts_with(&format!("version = {}\n", g.config_version())),
            "{g}"
        );
        for key in ["root", "state", "temp"] {
            let line = cfg
                .lines()
                .find(|l| l.starts_with(&format!("{key} =")))
                .unwrap();
            assert!(line.contains("/tmp/sturdy-test-unit/"), "{g}: {line}");
        }
        let sandbox = match g.config_version() {
            2 => "sandbox_image = \"sturdy.local/pause:3\"",
            _ => "sandbox = \"sturdy.local/pause:3\"",
        };
        for want in [
            "restrict_oom_score_adj = true",
            sandbox,
            "runtime_type = \"io.containerd.runc.v2\"",
            "runtime_type = \"io.containerd.sturdy.v2\"",
            "default_runtime_name = \"runc\"",
            "Root = \"/tmp/sturdy-test-unit/runc\"",
            "ConfigPath = \"/tmp/sturdy-test-unit/sturdy-runtime.toml\"",
        ] {
            assert!(cfg.contains(want), "{g}: missing {want}");
        }
        // From 2.2 on an unset config_path means the host's certs.d dirs: ours instead.
        assert_eq!(
            cfg.contains("config_path = \"/tmp/sturdy-test-unit/certs.d\""),
            g >= Generation::V2_2,
            "{g}: registry config_path"
        );
    }
    let v3 = unstarted(Generation::V2_1).config_toml();
    assert!(
        v3.contains("\"io.containerd.nri.v1.nri\""),
        "2.x NRI stays off"
    );
    assert!(v3.contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.sturdy]"));
}

#[test]
fn runc_binary_reaches_both_handlers_and_the_sturdy_options_file() {
    for g in Generation::ALL {
        let mut fx = unstarted(g);
        assert!(!fx.config_toml().contains("BinaryName"), "{g}");
        assert!(!fx.sturdy_options_toml().contains("BinaryName"), "{g}");
        fx.runc_binary = Some(PathBuf::from("/opt/runc-b"));
        let cfg = fx.config_toml();
        assert_eq!(
            cfg.matches("BinaryName = \"/opt/runc-b\"").count(),
            2,
            "{g}"
        );
        assert!(fx
            .sturdy_options_toml()
            .contains("BinaryName = \"/opt/runc-b\"\n"));
    }
}

#[test]
fn sturdy_handler_as_runc_type_names_sturdy_by_path_without_config_path() {
    for g in Generation::ALL {
        let mut fx = unstarted(g);
        fx.sturdy_runc_type = true;
        let cfg = fx.config_toml();
        assert!(!cfg.contains("io.containerd.sturdy.v2"), "{g}");
        assert!(!cfg.contains("ConfigPath"), "{g}");
        let path = format!("runtime_path = \"{}\"", fx.shim_on_path().display());
        assert_eq!(cfg.matches(&path).count(), 1, "{g}");
        assert_eq!(cfg.matches("io.containerd.runc.v2").count(), 2, "{g}");
        parsed(&fx);
    }
}

#[test]
fn cni_conflist_is_ours() {
    let mut fx = unstarted(Generation::V1_6);
    let cni: serde_json::Value = serde_json::from_str(&fx.cni_conflist()).unwrap();
    let bridge = &cni["plugins"][0];
    assert_eq!(bridge["bridge"], "stu0123abcd");
    assert_eq!(bridge["ipMasq"], false);
    assert!(bridge["bridge"].as_str().unwrap().len() <= 15);
    let range = &bridge["ipam"]["ranges"][0][0];
    assert_eq!(range["subnet"], "198.18.0.48/28");
    assert_eq!(range["gateway"], "198.18.0.49");
    assert_eq!(cni["plugins"].as_array().unwrap().len(), 1);
    fx.port_mapping = true;
    let cni: serde_json::Value = serde_json::from_str(&fx.cni_conflist()).unwrap();
    assert_eq!(cni["plugins"][1]["type"], "portmap");
}

/// `config.toml` of `fx`, parsed (it must be TOML whatever the generation).
fn parsed(fx: &Containerd) -> toml::Table {
    let text = fx.config_toml();
    text.parse()
        .unwrap_or_else(|e| panic!("{}: not TOML: {e}\n{text}", fx.generation))
}

/// `t[k0][k1]...`, panicking with the path when a table is missing.
fn at<'a>(t: &'a toml::Table, path: &[&str]) -> &'a toml::Value {
    let (last, tables) = path.split_last().expect("a path");
    let mut cur = t;
    for k in tables {
        cur = cur
            .get(*k)
            .and_then(toml::Value::as_table)
            .unwrap_or_else(|| panic!("no table {k} on the way to {path:?}"));
    }
    cur.get(*last).unwrap_or_else(|| panic!("no {path:?}"))
}

fn opt<'a>(t: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (last, tables) = path.split_last().expect("a path");
    let mut cur = t;
    for k in tables {
        cur = cur.get(*k)?.as_table()?;
    }
    cur.get(*last)
}

const CRI_V1: &str = "io.containerd.grpc.v1.cri";
const IMAGES: &str = "io.containerd.cri.v1.images";
const RUNTIME: &str = "io.containerd.cri.v1.runtime";

/// Each generation's config puts every key the fixture relies on where that generation
/// reads it (checked against containerd's sources at each tag, see docs/testing.md).
#[test]
fn each_generation_reads_its_keys_where_the_fixture_writes_them() {
    for g in Generation::ALL {
        let fx = unstarted(g);
        let t = parsed(&fx);
        assert_eq!(
            at(&t, &["version"]).as_integer(),
            Some(g.config_version().into())
        );
        assert_eq!(
            at(&t, &["grpc", "address"]).as_str(),
            Some("/tmp/sturdy-test-unit/containerd.sock"),
            "{g}: 2.3+ migrate [grpc] of a version 3 file, so it stays for every 2.x"
        );
        let disabled = at(&t, &["disabled_plugins"]).as_array().unwrap();
        let p = t["plugins"].as_table().unwrap();
        if g.is_v2() {
            assert!(disabled
                .iter()
                .any(|d| d.as_str() == Some("io.containerd.nri.v1.nri")));
            assert_eq!(
                at(p, &[IMAGES, "pinned_images", "sandbox"]).as_str(),
                Some("sturdy.local/pause:3"),
                "{g}"
            );
            assert_eq!(at(p, &[IMAGES, "snapshotter"]).as_str(), Some("overlayfs"));
            let rt = at(p, &[RUNTIME]).as_table().unwrap();
            assert_eq!(at(rt, &["restrict_oom_score_adj"]).as_bool(), Some(true));
            assert_eq!(
                at(rt, &["cni", "bin_dirs"]).as_array().unwrap(),
                &vec![toml::Value::from("/usr/lib/cni")],
                "{g}: bin_dir is deprecated from 2.1 on"
            );
            assert!(opt(rt, &["cni", "bin_dir"]).is_none(), "{g}");
            assert_eq!(
                at(rt, &["cdi_spec_dirs"]).as_array().map(Vec::len),
                Some(0),
                "{g}: no host CDI specs"
            );
            assert_eq!(
                opt(rt, &["enable_cdi"]).and_then(toml::Value::as_bool),
                (g < Generation::V2_3).then_some(false),
                "{g}: enable_cdi = false is deprecated from 2.3 on"
            );
            assert_eq!(
                at(rt, &["containerd", "runtimes", "sturdy", "runtime_type"]).as_str(),
                Some("io.containerd.sturdy.v2")
            );
            // Only the stream server stays in the old CRI plugin.
            let old = at(p, &[CRI_V1]).as_table().unwrap();
            let mut keys: Vec<&str> = old.keys().map(String::as_str).collect();
            keys.sort();
            assert_eq!(keys, ["stream_server_address", "stream_server_port"], "{g}");
            assert_eq!(
                opt(p, &[IMAGES, "registry", "config_path"]).and_then(toml::Value::as_str),
                (g >= Generation::V2_2).then_some("/tmp/sturdy-test-unit/certs.d"),
                "{g}"
            );
        } else {
            let cri = at(p, &[CRI_V1]).as_table().unwrap();
            assert_eq!(
                at(cri, &["sandbox_image"]).as_str(),
                Some("sturdy.local/pause:3")
            );
            assert_eq!(at(cri, &["cni", "bin_dir"]).as_str(), Some("/usr/lib/cni"));
            assert_eq!(
                at(cri, &["containerd", "runtimes", "runc", "runtime_type"]).as_str(),
                Some("io.containerd.runc.v2")
            );
            assert!(opt(cri, &["registry"]).is_none(), "{g}");
            assert!(p.get(IMAGES).is_none() && p.get(RUNTIME).is_none(), "{g}");
        }
    }
}

/// A registry hosts dir the builder names wins over the fixture's own in every generation.
#[test]
fn a_named_registry_dir_is_used_everywhere() {
    for g in Generation::ALL {
        let mut fx = unstarted(g);
        fx.registry_config_path = Some(PathBuf::from("/srv/hosts"));
        let t = parsed(&fx);
        let p = t["plugins"].as_table().unwrap();
        let table = if g.is_v2() { IMAGES } else { CRI_V1 };
        assert_eq!(
            at(p, &[table, "registry", "config_path"]).as_str(),
            Some("/srv/hosts"),
            "{g}"
        );
        assert_eq!(fx.config_toml().matches("config_path").count(), 1, "{g}");
    }
}

/// `prepare` links the chosen runtime as `bin/runc`, first on containerd's PATH, and
/// names no runtime in either handler's options: both shims find it the same way.
#[test]
fn the_chosen_runtime_is_runc_on_containerds_path() {
    let dir = tempfile::tempdir().unwrap();
    for (i, g) in [Generation::V1_6, Generation::V2_3].into_iter().enumerate() {
        let root = dir.path().join(format!("fx{i}"));
        std::fs::create_dir(&root).unwrap();
        let mut fx = Containerd::identity(root.clone(), "0123abcd", PathBuf::from("/nonexistent"));
        fx.cleaned = true;
        fx.generation = g;
        fx.subnet = Some(subnets::tests::private_slot(4));
        fx.oci_runtime = OciRuntime::Runc1_4;
        fx.oci_runtime_bin = PathBuf::from("/opt/tools/runc-1.4.3/runc");
        fx.prepare().unwrap();
        assert_eq!(fx.runc_on_path(), root.join("bin/runc"));
        assert_eq!(
            std::fs::read_link(root.join("bin/runc")).unwrap(),
            PathBuf::from("/opt/tools/runc-1.4.3/runc"),
            "{g}"
        );
        assert!(!fx.config_toml().contains("BinaryName"), "{g}");
        assert!(!fx.sturdy_options_toml().contains("BinaryName"), "{g}");
        assert!(root.join("certs.d").is_dir(), "{g}");
    }
}

/// The stale-fixture reaper deletes leftover containers with the runtime that made them:
/// `fixture.json` records it.
#[test]
fn the_record_names_the_runtime_for_the_reaper() {
    let dir = tempfile::tempdir().unwrap();
    let mut fx = Containerd::identity(
        dir.path().to_path_buf(),
        "0123abcd",
        PathBuf::from("/opt/sturdy/shim"),
    );
    fx.cleaned = true;
    fx.pid = 4242;
    fx.oci_runtime_bin = PathBuf::from("/opt/tools/runc-1.4.3/runc");
    fx.write_record().unwrap();
    let raw = std::fs::read(dir.path().join("fixture.json")).unwrap();
    let mut back = Containerd::from_record(dir.path(), &raw).expect("a record");
    back.cleaned = true;
    assert_eq!(back.suffix(), "0123abcd");
    assert_eq!(back.pid(), 4242);
    assert_eq!(back.shim_bin(), Path::new("/opt/sturdy/shim"));
    assert_eq!(
        back.oci_runtime_binary(),
        Path::new("/opt/tools/runc-1.4.3/runc")
    );
    // A record from before the runtime was recorded: Debian's runc, as then.
    let old = br#"{"suffix":"0123abcd","pid":1,"shim_bin":"/x"}"#;
    let mut back = Containerd::from_record(dir.path(), old).expect("a record");
    back.cleaned = true;
    assert_eq!(back.oci_runtime_binary(), Path::new("/usr/sbin/runc"));
    assert!(Containerd::from_record(dir.path(), b"{}").is_none());
}

//! `sturdyctl status` and `sturdyctl upgrade-shims` against a real containerd with a live
//! sturdy pod, as far as issue 20 is built (docs/upgrade.md): status tells which build each
//! shim runs and whether it is the installed one; `upgrade-shims` checks a new binary (trust,
//! `-v`, `-info`, the handover format and a document the running image writes) and
//! rehearses the pause on the live shim (requests held at frame boundaries, then let
//! through). The move itself, without `--dry-run`, is tests/upgrade_live.rs.
//!
//! The "new build" is a copy of the shim with another build-id written into its note: the
//! same code, which `-v` and every check then see as another build.

mod upgrade_support;

use std::os::unix::fs::PermissionsExt;

use sturdy_integration::shim_upgrade::{another_build, sturdyctl};
use sturdy_integration::{Containerd, Handler};
use upgrade_support::Pod;

fn the_shim<'a>(v: &'a serde_json::Value, pod: &Pod) -> &'a serde_json::Value {
    v["shims"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == pod.id.as_str()))
        .unwrap_or_else(|| panic!("shim of {} not listed: {v:#}", pod.id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_upgrade_checks_against_a_live_pod() {
    let mut fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let pod = Pod::start(&fx, &mut cri, Handler::Sturdy, "upgrade").await;
    let old_bin = std::fs::canonicalize(fx.shim_bin()).expect("shim binary");

    // Status: the version Connect names, the build the process runs, and that it is the
    // installed one.
    let (ok, status) = sturdyctl(&fx, &["status", "--json"]);
    assert!(ok);
    let shim = the_shim(&status, &pod);
    let old_id = build_id::of_path(&old_bin).unwrap().unwrap().to_string();
    assert_eq!(shim["version"], env!("CARGO_PKG_VERSION"), "{shim:#}");
    assert_eq!(shim["build"]["running"], old_id.as_str(), "{shim:#}");
    assert_eq!(shim["build"]["current"], true, "{shim:#}");
    assert_eq!(status["shims_on_old_binary"], 0);

    // Nothing to upgrade to yet: the installed binary is the running build.
    let (ok, up) = sturdyctl(&fx, &["upgrade-shims", "--dry-run", "--json"]);
    assert!(ok, "{up:#}");
    assert_eq!(the_shim(&up, &pod)["result"], "current", "{up:#}");

    // A new build installed where containerd finds the shim.
    let next = fx.dir().join("sturdy-next");
    std::fs::create_dir_all(&next).unwrap();
    let new_bin = next.join("containerd-shim-sturdy-v2");
    let (_, new_id) = another_build(&old_bin, &new_bin);
    fx.replace_shim_bin(&new_bin)
        .expect("install the new build");

    let (_, status) = sturdyctl(&fx, &["status", "--json"]);
    let shim = the_shim(&status, &pod);
    assert_eq!(shim["build"]["current"], false, "{shim:#}");
    assert_eq!(shim["build"]["installed"], new_id.as_str(), "{shim:#}");
    assert_eq!(status["shims_on_old_binary"], 1);

    // Dry run onto the installed new build: every check passes, nothing changes.
    let (ok, up) = sturdyctl(&fx, &["upgrade-shims", "--dry-run", "--json"]);
    let s = the_shim(&up, &pod);
    eprintln!("dry run onto the new build: {up:#}");
    assert!(ok, "{up:#}");
    assert_eq!(s["result"], "ready", "{s:#}");
    assert_eq!(s["pid"], pod.shim.pid, "{s:#}");
    assert_eq!(s["old_build"], old_id.as_str());
    assert_eq!(s["new_build"], new_id.as_str());
    assert_eq!(s["old_writes"], 2);
    assert_eq!(s["old_version"], env!("CARGO_PKG_VERSION"));

    // A rehearsal: the shim holds requests at frame boundaries until settled (containerd's
    // connection and ours parked), lets them through again, and the pod works on.
    let (ok, up) = sturdyctl(&fx, &["upgrade-shims", "--dry-run", "--rehearse", "--json"]);
    let s = the_shim(&up, &pod);
    eprintln!("rehearsal: {:#}", s["rehearsal"]);
    assert!(ok, "{up:#}");
    assert_eq!(s["result"], "ready", "{s:#}");
    assert!(
        s["rehearsal"]["connections"].as_u64().unwrap() >= 2,
        "containerd's connection and sturdyctl's: {s:#}"
    );
    assert!(
        s["rehearsal"]["paused_us"].as_u64().unwrap() < 2_000_000,
        "{s:#}"
    );
    assert!(
        s["rehearsal"]["held"].as_u64().unwrap() >= 2,
        "the sandbox's and the container's lifecycles held: {s:#}"
    );
    // The live state, captured during the pause and put back, decoded by the new binary.
    let live = &s["rehearsal"]["live_state"];
    assert_eq!(live["version"], 2, "{s:#}");
    assert!(
        live["containers"].as_u64().unwrap() >= 2 && live["connections"].as_u64().unwrap() >= 2,
        "the sandbox and its container, containerd's connection and ours: {s:#}"
    );
    assert_eq!(live["target_build_id"], new_id.as_str(), "{s:#}");
    pod.check(&fx, &mut cri, "after a rehearsal").await;

    // Binaries that must never be used: writable by others, or not starting at all.
    let open_dir = fx.dir().join("open");
    std::fs::create_dir_all(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let writable = open_dir.join("containerd-shim-sturdy-v2");
    std::fs::copy(&new_bin, &writable).unwrap();
    // An executable that exits 1 at once, whatever it is asked.
    let broken = next.join("broken-shim");
    std::fs::copy("/bin/false", &broken).expect("copy /bin/false");
    for (bin, why) in [(&writable, "not trusted"), (&broken, "-v: exit status: 1")] {
        let path = bin.to_str().unwrap();
        let (ok, up) = sturdyctl(
            &fx,
            &["upgrade-shims", "--dry-run", "--json", "--binary", path],
        );
        assert!(!ok, "{path} accepted: {up:#}");
        let s = the_shim(&up, &pod);
        assert_eq!(s["result"], "refused", "{s:#}");
        assert!(s["detail"].as_str().unwrap().contains(why), "{s:#}");
    }
    // --pod selects: another pod's id selects nothing here.
    let (ok, up) = sturdyctl(
        &fx,
        &[
            "upgrade-shims",
            "--dry-run",
            "--json",
            "--pod",
            "no-such-pod",
        ],
    );
    assert!(ok && up["shims"].as_array().unwrap().is_empty(), "{up:#}");

    // Back to the old build: the shim is current again.
    fx.replace_shim_bin(&old_bin)
        .expect("reinstall the old build");
    let (_, status) = sturdyctl(&fx, &["status", "--json"]);
    assert_eq!(the_shim(&status, &pod)["build"]["current"], true);

    assert!(pod.shim.alive());
    pod.remove(&fx, &mut cri).await;
    let left = fx.stop();
    assert!(left.is_empty(), "leaked: {left:?}");
}

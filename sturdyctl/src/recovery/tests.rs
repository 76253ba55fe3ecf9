use super::*;

/// A task whose spec and runc state name cgroups of more than the container: the root
/// of every hierarchy (`/..` climbs out of it), a shared ancestor of many pods.
fn task_naming(dir: &std::path::Path, cgroups_path: &str, runc_dirs: &[&str]) -> Task {
    let root = dir.join("runc");
    std::fs::create_dir_all(root.join("c1")).unwrap();
    let paths: serde_json::Map<String, serde_json::Value> = runc_dirs
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("ctl{i}"), serde_json::Value::from(*d)))
        .collect();
    std::fs::write(
        root.join("c1/state.json"),
        serde_json::json!({"id": "c1", "cgroup_paths": paths}).to_string(),
    )
    .unwrap();
    Task {
        namespace: "default".into(),
        id: "c1".into(),
        runc_root: Some(root),
        cgroups_path: Some(cgroups_path.into()),
        ..Default::default()
    }
}

/// Security review 2026-12, L3: the kill of a dead shim's containers never reaches beyond
/// each container's own cgroup.
#[test]
fn only_the_containers_own_cgroups_are_killed() {
    let dir = tempfile::tempdir().unwrap();
    // Existing directories of every hierarchy: what a kill would really reach.
    let hierarchy_root = "/sys/fs/cgroup";
    for (path, runc) in [
        ("/..", vec![hierarchy_root]),
        ("/", vec!["/sys/fs/cgroup/unified"]),
        ("-.slice::kubepods.slice", vec!["/sys/fs/cgroup/../cgroup"]),
    ] {
        let task = task_naming(dir.path(), path, &runc);
        let set = cgroups_of(&task);
        assert!(
            set.is_empty(),
            "{path:?}: {:?}",
            set.dirs().collect::<Vec<_>>()
        );
    }
    let own = task_naming(
        dir.path(),
        "/default/c1",
        &["/sys/fs/cgroup/memory/default/c1"],
    );
    let set = cgroups_of(&own);
    assert_eq!(
        set.dirs().collect::<Vec<_>>(),
        vec![std::path::Path::new("/sys/fs/cgroup/memory/default/c1")]
    );
}

/// Security review 2026-12, L5: only a dead socket is removed, never a file the bundle's
/// `address` names that is something else.
#[tokio::test]
async fn only_a_dead_socket_is_removed() {
    let base = std::path::Path::new("/run");
    let dir = tempfile::Builder::new()
        .prefix("sturdy-recovery-")
        .tempdir_in(base)
        .unwrap();
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "precious").unwrap();
    let (ok, detail) = remove_stale_socket(&format!("unix://{}", file.display())).await;
    assert!(!ok && detail.contains("not a socket"), "{detail}");
    assert!(file.exists(), "a regular file was removed");

    let live = dir.path().join("live.sock");
    let listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let (ok, detail) = remove_stale_socket(&format!("unix://{}", live.display())).await;
    assert!(ok && live.exists(), "{detail}");
    drop(listener);
    let (ok, detail) = remove_stale_socket(&format!("unix://{}", live.display())).await;
    assert!(ok && !live.exists(), "a dead socket was kept: {detail}");
}

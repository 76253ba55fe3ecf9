//! Update, Stats and TaskOOM through [`Tasks`], over the fake runc: its state.json points
//! the container at fixture cgroup files.

use super::*;
use containerd_shim_protos::cgroups::metrics::Metrics as V1Metrics;

/// `cgroup_paths` of a v1 container whose controllers are the v1 fixture's.
fn v1_paths(base: &Path) -> String {
    let entries: Vec<String> = ["memory", "cpu", "cpuacct", "pids", "blkio", "hugetlb"]
        .iter()
        .map(|c| format!("\"{c}\":\"{}\"", base.join(c).display()))
        .collect();
    format!("{{{}}}", entries.join(","))
}

/// `cgroup_paths` of a v2 container in `dir`.
pub(super) fn v2_paths(dir: &Path) -> String {
    format!("{{\"\":\"{}\"}}", dir.display())
}

pub(super) fn memory_events(oom_kill: u64) -> String {
    format!("low 0\nhigh 0\nmax 2\noom 1\noom_kill {oom_kill}\noom_group_kill 0\n")
}

fn resources(json: &str) -> Any {
    Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
        value: json.as_bytes().to_vec(),
        ..Default::default()
    }
}

#[tokio::test]
async fn stats_read_the_cgroup_runc_recorded_until_it_is_gone() {
    let rig = Rig::new();
    let copy = crate::cgroups::tests::copy_fixture("v1");
    let base = copy.path().join("v1");
    rig.create("c", &[("cgroups", &v1_paths(&base))])
        .await
        .unwrap();
    rig.tasks.start("c", "").await.unwrap();

    let any = rig.tasks.stats("c").unwrap();
    assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
    let m = V1Metrics::parse_from_bytes(&any.value).unwrap();
    assert_eq!(m.memory.usage.usage, 20586496);
    assert_eq!(m.cpu.usage.total, 9019547659574);
    assert_eq!(m.pids.current, 5);
    // Reading stats is no lifecycle call: no runc, no event.
    assert_eq!(rig.count("events c"), 0);
    assert_eq!(rig.topics("c"), ["/tasks/create", "/tasks/start"]);

    std::fs::remove_dir_all(&base).unwrap();
    assert!(is(&rig.tasks.stats("c"), not_found));
    assert!(is(&rig.tasks.stats("nope"), not_found));
}

#[tokio::test]
async fn update_hands_runc_the_resources_while_the_container_lives() {
    let rig = Rig::new();
    rig.create("c", &[]).await.unwrap();
    // A field no spec version has yet must reach runc as well: runc decides.
    let json =
        r#"{"memory":{"limit":67108864},"cpu":{"shares":512,"quota":50000},"future":{"x":1}}"#;
    let annotations = HashMap::from([("io.example/a".to_string(), "b".to_string())]);

    // Created and running containers take it, like paused ones.
    rig.tasks
        .update("c", Some(&resources(json)), &annotations)
        .await
        .unwrap();
    rig.tasks.start("c", "").await.unwrap();
    rig.tasks.pause("c").await.unwrap();
    rig.tasks
        .update("c", Some(&resources(json)), &HashMap::new())
        .await
        .unwrap();
    assert_eq!(rig.count("update c"), 2);
    let sent: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rig.root().join("test/c/update.json")).unwrap())
            .unwrap();
    assert_eq!(sent["memory"]["limit"], 67108864);
    assert_eq!(sent["cpu"]["shares"], 512);
    assert_eq!(sent["cpu"]["quota"], 50000);
    assert_eq!(sent["future"]["x"], 1);
    let bundle = rig.dir.path().join("c");
    assert!(
        !bundle.join("update-resources.json").exists(),
        "resources file left in the bundle"
    );
    rig.tasks.resume("c").await.unwrap();

    // Garbage never reaches runc.
    let none = HashMap::new();
    let bad = rig
        .tasks
        .update("c", Some(&resources("{nope")), &none)
        .await;
    assert!(is(&bad, invalid));
    let array = rig.tasks.update("c", Some(&resources("[1]")), &none).await;
    assert!(is(&array, invalid));
    assert!(is(
        &rig.tasks.update("c", None, &HashMap::new()).await,
        invalid
    ));
    assert_eq!(rig.count("update c"), 2);

    rig.tasks.kill("c", "", 9, false).await.unwrap();
    rig.wait("c", "").await.unwrap();
    let stopped = rig.tasks.update("c", Some(&resources(json)), &none).await;
    assert!(is(&stopped, precondition));
    assert_eq!(rig.count("update c"), 2, "a stopped container reached runc");
    assert_eq!(
        rig.topics("c"),
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exit"
        ]
    );
    rig.tasks.delete("c", "").await.unwrap();
    assert!(is(
        &rig.tasks
            .update("c", Some(&resources(json)), &HashMap::new())
            .await,
        not_found
    ));
}

/// The kernel counts the kill before init dies, but the watch task may not have run (or
/// the notification not arrived) when the shim reaps init. Here the counter changes
/// without any inotify event at all (memory.events is a symlink switched to another
/// file), so only the exit path's own check can find the OOM: it must be published, and
/// before TaskExit.
#[tokio::test]
async fn an_oom_the_watch_has_not_seen_is_published_before_the_exit() {
    let rig = Rig::new();
    let cg = tempfile::tempdir().unwrap();
    std::fs::write(cg.path().join("events-0"), memory_events(0)).unwrap();
    std::fs::write(cg.path().join("events-1"), memory_events(1)).unwrap();
    std::os::unix::fs::symlink("events-0", cg.path().join("memory.events")).unwrap();
    let init = format!(
        "ln -sfn events-1 {}/memory.events && kill -9 $$",
        cg.path().display()
    );
    rig.create("c", &[("cgroups", &v2_paths(cg.path())), ("init", &init)])
        .await
        .unwrap();
    rig.tasks.start("c", "").await.unwrap();
    let exited = rig.wait("c", "").await.unwrap();
    assert_eq!(exited.status, 137);
    assert_eq!(
        rig.topics("c"),
        ["/tasks/create", "/tasks/start", "/tasks/oom", "/tasks/exit"]
    );
    rig.tasks.delete("c", "").await.unwrap();
}

/// The usual case, the watch seeing the counter change: one TaskOOM, before TaskExit,
/// however the watch and the exit handling interleave.
#[tokio::test]
async fn an_oom_kill_is_published_once_and_before_the_exit() {
    let rig = Rig::new();
    let cg = tempfile::tempdir().unwrap();
    let events = cg.path().join("memory.events");
    std::fs::write(&events, memory_events(0)).unwrap();
    let init = format!(
        "printf 'oom 1\\noom_kill 1\\n' > {} && kill -9 $$",
        events.display()
    );
    rig.create("c", &[("cgroups", &v2_paths(cg.path())), ("init", &init)])
        .await
        .unwrap();
    rig.tasks.start("c", "").await.unwrap();
    rig.wait("c", "").await.unwrap();
    rig.tasks.delete("c", "").await.unwrap();
    assert_eq!(
        rig.topics("c"),
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/oom",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );
}

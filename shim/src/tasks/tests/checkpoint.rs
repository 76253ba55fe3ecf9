//! Checkpoint and restore through [`Tasks`], over the fake runc (which keeps the
//! arguments it got and stands in for CRIU's images and kills).

use super::*;
use containerd_shim_protos::protobuf::CodedOutputStream;
use containerd_shim_protos::shim::oci::CheckpointOptions;
use containerd_shim_protos::ttrpc::Code;

use crate::container::checkpoint::{CHECKPOINT_OPTIONS_TYPE, DUMP_LOG};

/// A Create request whose runtime options name `criu` (containerd 1.6's `criu_path`,
/// field 8, which the protos no longer have), restoring from `checkpoint` if given.
fn request(
    rig: &Rig,
    id: &str,
    bundle: &Path,
    criu: &Path,
    checkpoint: Option<&Path>,
) -> CreateTaskRequest {
    let mut req = rig.request(id, bundle);
    let mut options = req.options.take().unwrap();
    {
        let mut out = CodedOutputStream::vec(&mut options.value);
        out.write_string(8, &criu.display().to_string()).unwrap();
        out.flush().unwrap();
    }
    req.options = Some(options).into();
    if let Some(c) = checkpoint {
        req.checkpoint = c.display().to_string();
    }
    req
}

/// Any executable named `criu` stands in for CRIU: the fake runc never runs it.
fn criu(rig: &Rig) -> PathBuf {
    let dir = rig.dir.path().join("criu-bin");
    let criu = dir.join("criu");
    if !criu.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(rig.dir.path().join("runc"), &criu).unwrap();
    }
    criu
}

/// Creates and starts `id`, with CRIU present.
async fn running(rig: &Rig, id: &str, steer: &[(&str, &str)]) -> PathBuf {
    let bundle = rig.bundle(id, steer);
    rig.tasks
        .create(request(rig, id, &bundle, &criu(rig), None))
        .await
        .unwrap();
    rig.tasks.start(id, "").await.unwrap();
    bundle
}

fn options(o: CheckpointOptions) -> Any {
    Any {
        type_url: CHECKPOINT_OPTIONS_TYPE.into(),
        value: o.write_to_bytes().unwrap(),
        ..Default::default()
    }
}

fn args(rig: &Rig, id: &str, cmd: &str) -> String {
    let path = rig.root().join("test").join(id).join(format!("{cmd}.args"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

#[tokio::test]
async fn checkpoint_leaves_the_container_running_with_containerds_options() {
    let rig = Rig::new();
    let bundle = running(&rig, "c", &[]).await;
    let image = rig.dir.path().join("img");
    let o = CheckpointOptions {
        open_tcp: true,
        file_locks: true,
        empty_namespaces: vec!["network".into()],
        ..Default::default()
    };
    rig.tasks
        .checkpoint("c", image.to_str().unwrap(), Some(&options(o)))
        .await
        .unwrap();
    let got = args(&rig, "c", "checkpoint");
    let work = bundle.join("criu-work");
    for want in [
        format!("--image-path {}", image.display()),
        format!("--work-path {}", work.display()),
        "--tcp-established".into(),
        "--file-locks".into(),
        "--empty-ns network".into(),
        "--leave-running".into(),
    ] {
        assert!(got.contains(&want), "{want:?} missing in {got:?}");
    }
    assert!(image.join("fake-images").exists());
    assert!(!work.exists(), "the shim's CRIU work dir was left behind");
    assert_eq!(rig.tasks.state("c", "").unwrap().state, State::Running);
    rig.tasks.kill("c", "", 9, false).await.unwrap();
    rig.wait("c", "").await.unwrap();
}

#[tokio::test]
async fn checkpoint_with_exit_stops_the_container_and_reports_its_exit() {
    let rig = Rig::new();
    running(&rig, "c", &[]).await;
    let image = rig.dir.path().join("img");
    let o = CheckpointOptions {
        exit: true,
        work_path: rig.dir.path().join("work").display().to_string(),
        ..Default::default()
    };
    rig.tasks
        .checkpoint("c", image.to_str().unwrap(), Some(&options(o)))
        .await
        .unwrap();
    let got = args(&rig, "c", "checkpoint");
    assert!(!got.contains("--leave-running"), "{got}");
    assert!(
        got.contains(&format!(
            "--work-path {}",
            rig.dir.path().join("work").display()
        )),
        "containerd's work path: {got}"
    );
    assert_eq!(rig.wait("c", "").await.unwrap().status, 137);
    assert_eq!(
        rig.topics("c"),
        ["/tasks/create", "/tasks/start", "/tasks/exit"]
    );
    rig.tasks.delete("c", "").await.unwrap();
}

#[tokio::test]
async fn checkpoint_needs_a_running_or_paused_container() {
    let rig = Rig::new();
    let bundle = rig.bundle("c", &[]);
    rig.tasks
        .create(request(&rig, "c", &bundle, &criu(&rig), None))
        .await
        .unwrap();
    let image = rig.dir.path().join("img");
    let path = image.to_str().unwrap();
    assert!(is(
        &rig.tasks.checkpoint("c", path, None).await,
        precondition
    ));
    assert_eq!(rig.count("checkpoint c"), 0);
    rig.tasks.start("c", "").await.unwrap();
    rig.tasks.pause("c").await.unwrap();
    rig.tasks.checkpoint("c", path, None).await.unwrap();
    rig.tasks.resume("c").await.unwrap();
    rig.tasks.kill("c", "", 9, false).await.unwrap();
    rig.wait("c", "").await.unwrap();
    assert!(is(
        &rig.tasks.checkpoint("c", path, None).await,
        precondition
    ));
    rig.tasks.delete("c", "").await.unwrap();
    assert!(is(&rig.tasks.checkpoint("c", path, None).await, not_found));
    assert_eq!(rig.count("checkpoint c"), 1);
}

#[tokio::test]
async fn checkpoint_and_restore_without_criu_fail_their_precondition_naming_it() {
    let rig = Rig::new();
    let missing = rig.dir.path().join("no-criu-here").join("criu");
    let bundle = rig.bundle("c", &[]);
    rig.tasks
        .create(request(&rig, "c", &bundle, &missing, None))
        .await
        .unwrap();
    rig.tasks.start("c", "").await.unwrap();
    let image = rig.dir.path().join("img");
    let err = rig
        .tasks
        .checkpoint("c", image.to_str().unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FAILED_PRECONDITION, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("CRIU not found") && text.contains(&missing.display().to_string()),
        "{text}"
    );
    assert_eq!(rig.count("checkpoint c"), 0, "runc ran without CRIU");
    assert_eq!(rig.tasks.state("c", "").unwrap().state, State::Running);
    rig.tasks.kill("c", "", 9, false).await.unwrap();

    std::fs::create_dir_all(&image).unwrap();
    std::fs::write(image.join("fake-images"), "").unwrap();
    let bundle = rig.bundle("r", &[]);
    rig.tasks
        .create(request(&rig, "r", &bundle, &missing, Some(&image)))
        .await
        .unwrap();
    let err = rig.tasks.start("r", "").await.unwrap_err();
    assert_eq!(err.code(), Code::FAILED_PRECONDITION, "{err}");
    assert!(err.to_string().contains("CRIU not found"), "{err}");
    assert_eq!(rig.count("restore r"), 0);
    assert_eq!(rig.tasks.state("r", "").unwrap().state, State::Created);
    rig.tasks.delete("r", "").await.unwrap();
}

#[tokio::test]
async fn a_criu_failure_names_criu_s_error_and_keeps_its_log() {
    let rig = Rig::new();
    let bundle = running(
        &rig,
        "c",
        &[(
            "checkpoint-criu-fail",
            "vdso: Unexpected rt vDSO area bounds",
        )],
    )
    .await;
    let image = rig.dir.path().join("img");
    let err = rig
        .tasks
        .checkpoint("c", image.to_str().unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::UNKNOWN, "{err}");
    let kept = bundle.join(DUMP_LOG);
    let text = err.to_string();
    assert!(
        text.contains("Unexpected rt vDSO area bounds")
            && text.contains(&kept.display().to_string()),
        "{text}"
    );
    assert!(std::fs::read_to_string(&kept).unwrap().contains("vDSO"));
    assert!(!bundle.join("criu-work").exists());
    assert_eq!(rig.tasks.state("c", "").unwrap().state, State::Running);
    rig.tasks.kill("c", "", 9, false).await.unwrap();
}

/// The log kept and quoted is the one in the work directory the shim gave runc, even when
/// runc's message names another path (a planted log, or a FIFO that would hang the read).
#[tokio::test]
async fn only_the_criu_log_in_the_work_directory_is_kept() {
    let rig = Rig::new();
    let planted = rig.dir.path().join("planted.log");
    std::fs::write(&planted, "(00.01) Error (planted): read as root\n").unwrap();
    let bundle = running(
        &rig,
        "c",
        &[
            ("checkpoint-criu-fail", "the real reason"),
            ("checkpoint-criu-log", planted.to_str().unwrap()),
        ],
    )
    .await;
    let image = rig.dir.path().join("img");
    let err = rig
        .tasks
        .checkpoint("c", image.to_str().unwrap(), None)
        .await
        .unwrap_err();
    let text = err.to_string();
    let kept = bundle.join(DUMP_LOG);
    assert!(
        text.contains("the real reason") && !text.contains("planted"),
        "{text}"
    );
    assert!(text.contains(&kept.display().to_string()), "{text}");
    let copy = std::fs::read_to_string(&kept).unwrap();
    assert!(
        copy.contains("the real reason") && !copy.contains("planted"),
        "{copy}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    rig.tasks.kill("c", "", 9, false).await.unwrap();
}

/// Checkpoint images for `restore` in the rig's directory.
fn images(rig: &Rig) -> PathBuf {
    let image = rig.dir.path().join("img");
    std::fs::create_dir_all(&image).unwrap();
    std::fs::write(image.join("fake-images"), "").unwrap();
    image
}

#[tokio::test]
async fn restore_runs_at_start_in_place_of_runc_create_and_start() {
    let rig = Rig::new();
    let image = images(&rig);
    let bundle = rig.bundle("r", &[]);
    let pid = rig
        .tasks
        .create(request(&rig, "r", &bundle, &criu(&rig), Some(&image)))
        .await
        .unwrap();
    assert_eq!(pid, 0, "nothing runs before the restore");
    assert!(
        rig.calls().is_empty(),
        "runc called at create: {:?}",
        rig.calls()
    );
    assert_eq!(rig.tasks.state("r", "").unwrap().state, State::Created);
    let created = rig.events.events();
    assert!(
        matches!(&created[0], Event::Create { checkpoint, pid: 0, .. } if *checkpoint == image.display().to_string()),
        "{:?}",
        created[0]
    );

    let pid = rig.tasks.start("r", "").await.unwrap();
    assert!(pid > 0);
    assert_eq!(rig.calls(), ["restore r"]);
    let got = args(&rig, "r", "restore");
    for want in [
        format!("--bundle {}", bundle.display()),
        format!("--pid-file {}", bundle.join("init.pid").display()),
        format!("--image-path {}", image.display()),
        format!("--work-path {}", bundle.display()),
        "--detach".into(),
        "--no-subreaper".into(),
    ] {
        assert!(got.contains(&want), "{want:?} missing in {got:?}");
    }
    let s = rig.tasks.state("r", "").unwrap();
    assert_eq!((s.state, s.pid), (State::Running, pid));
    rig.tasks.kill("r", "", 9, false).await.unwrap();
    assert_eq!(rig.wait("r", "").await.unwrap().status, 137);
    rig.tasks.delete("r", "").await.unwrap();
    assert_eq!(
        rig.topics("r"),
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );
    assert_eq!(rig.tasks.shared().router.live(), 0);
}

#[tokio::test]
async fn a_restored_init_that_exits_at_once_is_reported_after_its_start() {
    let rig = Rig::new();
    let image = images(&rig);
    let bundle = rig.bundle("r", &[("init", "exit 3")]);
    rig.tasks
        .create(request(&rig, "r", &bundle, &criu(&rig), Some(&image)))
        .await
        .unwrap();
    rig.tasks.start("r", "").await.unwrap();
    assert_eq!(rig.wait("r", "").await.unwrap().status, 3);
    assert_eq!(
        rig.topics("r"),
        ["/tasks/create", "/tasks/start", "/tasks/exit"]
    );
}

#[tokio::test]
async fn a_failed_restore_stays_created_can_be_retried_and_deleted_at_once() {
    let rig = Rig::new();
    let image = images(&rig);
    let bundle = rig.bundle(
        "r",
        &[("restore-fail", "criu failed: type RESTORE errno 0")],
    );
    rig.tasks
        .create(request(&rig, "r", &bundle, &criu(&rig), Some(&image)))
        .await
        .unwrap();
    let err = rig.tasks.start("r", "").await.unwrap_err();
    assert!(err.to_string().contains("type RESTORE"), "{err}");
    assert_eq!(rig.tasks.state("r", "").unwrap().state, State::Created);
    // The stdio is still there for a second try.
    std::fs::remove_file(bundle.join("fake-restore-fail")).unwrap();
    rig.tasks.start("r", "").await.unwrap();
    rig.tasks.kill("r", "", 9, false).await.unwrap();
    rig.wait("r", "").await.unwrap();
    rig.tasks.delete("r", "").await.unwrap();

    // Never restored: no process to wait for at Delete.
    let bundle = rig.bundle("n", &[]);
    rig.tasks
        .create(request(&rig, "n", &bundle, &criu(&rig), Some(&image)))
        .await
        .unwrap();
    let started = Instant::now();
    rig.tasks.delete("n", "").await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "delete waited {:?} for a process that never ran",
        started.elapsed()
    );
    assert!(rig.tasks.is_empty());
    assert_eq!(rig.tasks.shared().router.live(), 0);
}

#[tokio::test]
async fn a_checkpoint_that_is_not_an_absolute_path_is_refused() {
    let rig = Rig::new();
    let bundle = rig.bundle("r", &[]);
    let r = rig
        .tasks
        .create(request(
            &rig,
            "r",
            &bundle,
            &criu(&rig),
            Some(Path::new("img")),
        ))
        .await;
    assert!(is(&r, invalid), "{r:?}");
    running(&rig, "c", &[]).await;
    assert!(is(&rig.tasks.checkpoint("c", "img", None).await, invalid));
    let wrong = Any {
        type_url: "containerd.runc.v1.Options".into(),
        ..Default::default()
    };
    let path = rig.dir.path().join("img");
    assert!(is(
        &rig.tasks
            .checkpoint("c", path.to_str().unwrap(), Some(&wrong))
            .await,
        invalid
    ));
    assert_eq!(rig.count("checkpoint c"), 0);
    rig.tasks.kill("c", "", 9, false).await.unwrap();
}

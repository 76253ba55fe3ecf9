//! What reaches the runtime's argv, and what is refused before anything is spawned.

mod common;

use std::path::Path;
use std::time::Duration;

use common::fake::{next, Fake};
use runc_client::CreateOpts;

#[tokio::test]
async fn typed_calls_pass_arguments_and_parse_output() {
    let fake = Fake::new(
        "echo \"$@\" >> \"$DIR/args\"\n\
         for last; do :; done\n\
         case \" $* \" in\n\
         *' state '*) echo '{\"ociVersion\":\"1.0.2\",\"id\":\"c9\",\"pid\":77,\"status\":\"running\",\"bundle\":\"/b\",\"rootfs\":\"/b/rootfs\",\"created\":\"x\",\"annotations\":{\"k\":\"v\"}}' ;;\n\
         *' ps '*) echo '[3,4]' ;;\n\
         *' update '*) cat > \"$DIR/stdin\" ;;\n\
         *' events '*) echo '{\"type\":\"stats\",\"id\":\"c9\",\"data\":{}}' ;;\n\
         *' --version '*) printf 'runc version 1.0.0-rc93\\ncommit: abc\\nspec: 1.0.2\\n' ;;\n\
         esac",
    );
    let runc = &fake.runc;
    let state = runc.state("c9").await.unwrap();
    assert_eq!((state.pid, state.status.as_str()), (77, "running"));
    assert_eq!(state.annotations["k"], "v");
    assert_eq!(runc.ps("c9").await.unwrap(), vec![3, 4]);
    runc.kill("c9", 9, true).await.unwrap();
    runc.delete("c9", true).await.unwrap();
    let resources = oci_spec::runtime::LinuxResourcesBuilder::default()
        .pids(
            oci_spec::runtime::LinuxPidsBuilder::default()
                .limit(42i64)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    runc.update("c9", &resources).await.unwrap();
    let sent: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fake.path("stdin")).unwrap()).unwrap();
    assert_eq!(sent["pids"]["limit"], 42);
    let checkpoint = runc_client::CheckpointOpts {
        image_path: "/img".into(),
        work_path: Some("/work".into()),
        parent_path: Some("/pre".into()),
        leave_running: true,
        tcp_established: true,
        ext_unix_sk: true,
        shell_job: true,
        file_locks: true,
        page_server: Some("10.0.0.1:27".into()),
        empty_namespaces: vec!["network".into()],
        cgroups_mode: Some("soft".into()),
        ..Default::default()
    };
    // CRIU must exist before runc runs; any executable named criu stands in for it here.
    let with_criu = runc_client::Runc::new(
        runc_client::RuncConfig {
            criu: Some(fake.criu()),
            ..runc.config().clone()
        },
        runc_client::Reaper::global(),
    );
    with_criu.checkpoint("c9", &checkpoint).await.unwrap();
    let restore = runc_client::RestoreOpts {
        checkpoint: checkpoint.clone(),
        pid_file: "/p.pid".into(),
        detach: true,
        no_subreaper: true,
        lsm_profile: Some("apparmor:x".into()),
        ..Default::default()
    };
    with_criu
        .restore("c9", Path::new("/bundle"), &restore)
        .await
        .unwrap();
    runc.start("c9").await.unwrap();
    runc.pause("c9").await.unwrap();
    runc.resume("c9").await.unwrap();
    runc.create("c9", Path::new("/bundle"), &CreateOpts::default())
        .await
        .unwrap();
    let process: oci_spec::runtime::Process = serde_json::from_value(
        serde_json::json!({"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}}),
    )
    .unwrap();
    runc.exec("c9", &process, &Default::default())
        .await
        .unwrap();
    for signal in [0, 34, 64] {
        runc.kill("c9", signal, false).await.unwrap();
    }
    runc.stats("c9").await.unwrap();
    let mut events = runc.events("c9", Duration::from_millis(250)).await.unwrap();
    next(&mut events).await.unwrap().unwrap();
    assert!(next(&mut events).await.is_none());
    let version = runc.version().await.unwrap();
    assert_eq!(version.runc, "1.0.0-rc93");
    assert_eq!(version.known_issues().len(), 3);

    let args = std::fs::read_to_string(fake.path("args")).unwrap();
    let lines: Vec<String> = args
        .lines()
        .map(|l| l.split_once(" json ").unwrap().1)
        .map(|l| match l.split_once("exec --process /") {
            // The spec's path is random; only its place in argv matters here.
            Some((_, rest)) => format!("exec --process SPEC {}", rest.split_once(' ').unwrap().1),
            None => l.to_string(),
        })
        .collect();
    assert_eq!(
        lines,
        [
            "state -- c9",
            "ps --format json -- c9",
            "kill --all -- c9 9",
            "delete --force -- c9",
            "update --resources - -- c9",
            "checkpoint --image-path /img --work-path /work --tcp-established --ext-unix-sk \
             --shell-job --file-locks --empty-ns network --manage-cgroups-mode soft \
             --parent-path /pre --page-server 10.0.0.1:27 --leave-running -- c9",
            // No --parent-path or --page-server: runc restore has neither.
            "restore --bundle /bundle --detach --pid-file /p.pid --no-subreaper \
             --lsm-profile apparmor:x --image-path /img --work-path /work --tcp-established \
             --ext-unix-sk --shell-job --file-locks --empty-ns network \
             --manage-cgroups-mode soft -- c9",
            "start -- c9",
            "pause -- c9",
            "resume -- c9",
            "create --bundle /bundle -- c9",
            "exec --process SPEC -- c9",
            "kill -- c9 0",
            "kill -- c9 34",
            "kill -- c9 64",
            "events --stats -- c9",
            "events --interval=250ms -- c9",
            "--version",
        ]
    );
    // Drained commands log JSON to stderr: no log file to create per call. Create, exec and
    // restore hand their stdio over, so they alone need a log file.
    for line in args.lines() {
        if [" restore ", " create ", " exec "]
            .iter()
            .any(|c| line.contains(c))
        {
            assert!(line.starts_with("--log /"), "{line}");
        } else {
            assert!(line.starts_with("--log-format json "), "{line}");
        }
    }
}

/// runc finds the configured CRIU first on its PATH (runc 1.4 has no `--criu`); a CRIU that
/// is not there stops checkpoint and restore before runc is spawned, naming what is missing.
#[tokio::test]
async fn checkpoint_and_restore_need_criu_before_runc_runs() {
    let fake = Fake::new("echo \"$@\" >> \"$DIR/args\"; echo \"$PATH\" >> \"$DIR/path\"");
    let criu = fake.criu();
    let with = |criu: &Path| {
        runc_client::Runc::new(
            runc_client::RuncConfig {
                criu: Some(criu.to_path_buf()),
                ..fake.runc.config().clone()
            },
            runc_client::Reaper::global(),
        )
    };
    let opts = runc_client::CheckpointOpts {
        image_path: "/img".into(),
        ..Default::default()
    };
    with(&criu).checkpoint("c9", &opts).await.unwrap();
    let args = std::fs::read_to_string(fake.path("args")).unwrap();
    assert!(!args.contains("--criu"), "{args}");
    let path = std::fs::read_to_string(fake.path("path")).unwrap();
    assert_eq!(
        path.trim().split(':').next(),
        criu.parent().and_then(Path::to_str),
        "{path}"
    );

    let missing = fake.path("no-criu-here").join("criu");
    let runc = with(&missing);
    let restore = runc_client::RestoreOpts {
        checkpoint: opts.clone(),
        ..Default::default()
    };
    for (what, err) in [
        (
            "checkpoint",
            runc.checkpoint("c9", &opts).await.unwrap_err(),
        ),
        (
            "restore",
            runc.restore("c9", Path::new("/b"), &restore)
                .await
                .unwrap_err(),
        ),
    ] {
        assert!(err.is_criu_missing(), "{what}: {err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("{what} c9"))
                && text.contains(&missing.display().to_string())
                && text.contains("does not exist"),
            "{text}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(fake.path("args"))
            .unwrap()
            .lines()
            .count(),
        1,
        "runc was spawned without CRIU"
    );
}

/// A CRIU failure comes back typed, with CRIU's own reason from the log runc names.
#[tokio::test]
async fn a_criu_failure_reports_criu_s_errors() {
    let fake = Fake::new(
        "printf '(00.1) Error (criu/kerndat.c:1615): kerndat_vdso_fill_symtable failed\\n' \
           > \"$DIR/dump.log\"\n\
         printf '{\"level\":\"error\",\"msg\":\"criu failed: type DUMP errno 0\\\\nlog file: %s/dump.log\"}\\n' \"$DIR\" >&2\n\
         exit 1",
    );
    let runc = runc_client::Runc::new(
        runc_client::RuncConfig {
            criu: Some(fake.criu()),
            ..fake.runc.config().clone()
        },
        runc_client::Reaper::global(),
    );
    let opts = runc_client::CheckpointOpts {
        work_path: Some(fake.dir.path().to_path_buf()),
        ..Default::default()
    };
    let err = runc.checkpoint("c9", &opts).await.unwrap_err();
    match &err {
        runc_client::Error::Criu {
            command,
            id,
            message,
            log,
            errors,
            ..
        } => {
            assert_eq!((*command, id.as_str()), ("checkpoint", "c9"));
            assert_eq!(message, "criu failed: type DUMP errno 0");
            assert_eq!(log, &fake.path("dump.log"));
            assert_eq!(
                errors,
                &["Error (criu/kerndat.c:1615): kerndat_vdso_fill_symtable failed"]
            );
        }
        other => panic!("{other:?}"),
    }
}

/// CRIU's log is read from the work directory the call gave runc, never from the path
/// runc's message names (it may quote the container): a log planted elsewhere is not read.
#[tokio::test]
async fn the_criu_log_is_read_from_the_work_directory_only() {
    let fake = Fake::new(
        "mkdir -p \"$DIR/work\" \"$DIR/planted\"\n\
         printf '(00.1) Error (criu/real.c:1): the real reason\\n' > \"$DIR/work/dump.log\"\n\
         printf '(00.1) Error (planted): read as root\\n' > \"$DIR/planted/dump.log\"\n\
         printf '{\"level\":\"error\",\"msg\":\"criu failed: type DUMP errno 0\\\\nlog file: %s/planted/dump.log\"}\\n' \"$DIR\" >&2\n\
         exit 1",
    );
    let runc = runc_client::Runc::new(
        runc_client::RuncConfig {
            criu: Some(fake.criu()),
            ..fake.runc.config().clone()
        },
        runc_client::Reaper::global(),
    );
    let opts = runc_client::CheckpointOpts {
        image_path: "/img".into(),
        work_path: Some(fake.path("work")),
        ..Default::default()
    };
    let err = runc.checkpoint("c9", &opts).await.unwrap_err();
    match &err {
        runc_client::Error::Criu {
            message,
            log,
            errors,
            ..
        } => {
            assert_eq!(message, "criu failed: type DUMP errno 0");
            assert_eq!(log, &fake.path("work/dump.log"));
            assert_eq!(errors, &["Error (criu/real.c:1): the real reason"]);
        }
        other => panic!("{other:?}"),
    }
    // Without a work directory nothing is read: runc's path is only reported.
    let opts = runc_client::CheckpointOpts {
        work_path: None,
        ..opts
    };
    match runc.checkpoint("c9", &opts).await.unwrap_err() {
        runc_client::Error::Criu { log, errors, .. } => {
            assert_eq!(log, fake.path("planted/dump.log"));
            assert!(errors.is_empty(), "{errors:?}");
        }
        other => panic!("{other:?}"),
    }
}

/// Ids that are not containerd identifiers and signals outside 0..=64 never reach the runtime.
#[tokio::test]
async fn invalid_ids_and_signals_are_refused_before_spawning() {
    let fake = Fake::new("echo \"$@\" >> \"$DIR/args\"");
    let runc = &fake.runc;
    let long = "a".repeat(77);
    for id in [
        "--help",
        "-9",
        "../x",
        "a/b",
        "",
        "a..b",
        "-a",
        "a-",
        "a b",
        long.as_str(),
    ] {
        let process = oci_spec::runtime::Process::default();
        let checkpoint = runc_client::CheckpointOpts::default();
        let resources = oci_spec::runtime::LinuxResources::default();
        let results: Vec<(&str, runc_client::Result<()>)> = vec![
            (
                "create",
                runc.create(id, Path::new("/b"), &CreateOpts::default())
                    .await,
            ),
            ("start", runc.start(id).await),
            ("exec", runc.exec(id, &process, &Default::default()).await),
            ("kill", runc.kill(id, 9, false).await),
            ("delete", runc.delete(id, true).await),
            ("state", runc.state(id).await.map(drop)),
            ("ps", runc.ps(id).await.map(drop)),
            ("pause", runc.pause(id).await),
            ("resume", runc.resume(id).await),
            ("update", runc.update(id, &resources).await),
            ("stats", runc.stats(id).await.map(drop)),
            (
                "events",
                runc.events(id, Duration::from_secs(1)).await.map(drop),
            ),
            ("checkpoint", runc.checkpoint(id, &checkpoint).await),
            (
                "restore",
                runc.restore(id, Path::new("/b"), &Default::default()).await,
            ),
        ];
        let mut results = results;
        // raw takes "" for global commands; any other id must be valid.
        if !id.is_empty() {
            let raw = runc
                .raw("state", id, &["state"], Duration::from_secs(5))
                .await;
            results.push(("raw", raw.map(drop)));
        }
        for (what, result) in results {
            let err = result
                .err()
                .unwrap_or_else(|| panic!("{what} {id:?} was accepted"));
            assert!(
                matches!(&err, runc_client::Error::InvalidId { id: got, .. } if got == id),
                "{what} {id:?}: {err:?}"
            );
            assert!(err.is_invalid_argument(), "{what} {id:?}");
        }
    }
    for signal in [-1, 65, 128, i32::MAX, i32::MIN] {
        let err = runc.kill("c9", signal, true).await.unwrap_err();
        assert!(
            matches!(&err, runc_client::Error::InvalidSignal { signal: s, id, .. } if *s == signal && id == "c9"),
            "{signal}: {err:?}"
        );
        assert!(err.is_invalid_argument());
    }
    assert!(
        !fake.path("args").exists(),
        "the runtime was spawned: {:?}",
        std::fs::read_to_string(fake.path("args"))
    );
}

/// A container with 50,000 processes: `ps` lists 400 KiB of pids, more than the default
/// output limit (64 KiB, about 9,000 pids), and still parses whole.
#[tokio::test]
async fn ps_lists_many_more_processes_than_the_default_output_limit_holds() {
    let fake = Fake::new("printf '['; seq -s, 1000000 1049999 | tr -d '\\n'; printf ']'");
    let pids = fake.runc.ps("c9").await.unwrap();
    assert_eq!(pids.len(), 50_000);
    assert_eq!((pids[0], pids[49_999]), (1_000_000, 1_049_999));
}

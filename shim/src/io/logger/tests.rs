use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use super::super::{prepare_stdio, Owner, StdioPaths, DRAIN_IDLE_LIMIT};
use super::*;
use crate::testing::until;

const T: Duration = Duration::from_secs(20);

const OWNER: Owner<'static> = Owner {
    container: "ctr",
    process: "exec-1",
    namespace: "ns",
};

/// Writes an executable shell script `body` into `dir`.
fn script(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("logger.sh");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); the reaper collects ours promptly.
    // SAFETY: kill(2) with signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A logger that copies fd 3 and fd 4 into files and records what it was given.
const COPYING_LOGGER: &str = r#"
dir="$2"
{ echo "$# $1 $3 [$4]"; /usr/bin/tr '\0' '\n' < /proc/$$/environ; } > "$dir/env.tmp"
/bin/mv "$dir/env.tmp" "$dir/env"
/bin/cat <&3 > "$dir/out" &
/bin/cat <&4 > "$dir/err" &
printf R >&5
exec 5>&-
wait
"#;

/// The logger gets the query as arguments, the ids in its environment and nothing else,
/// stdout on fd 3, stderr on fd 4, and a byte on fd 5 counts as ready.
#[tokio::test]
async fn a_logger_gets_both_streams_its_args_and_the_ids() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_string_lossy().into_owned();
    let bin = script(dir.path(), COPYING_LOGGER);
    let args = ["dir".to_string(), d, "debug".into(), String::new()];
    let started = start(&OWNER, &bin, &args, T).await.unwrap();
    let pid = started.logger.pid();
    let (mut out, mut err) = (started.stdout, started.stderr);
    out.write_all(b"to stdout\n").await.unwrap();
    err.write_all(b"to stderr\n").await.unwrap();
    drop((out, err));
    assert!(until(T, || !alive(pid)).await, "the logger never saw EOF");
    // Its whole environment, as exec(2) got it.
    assert_eq!(
        read(&dir.path().join("env")),
        "4 dir debug []\nCONTAINER_ID=exec-1\nCONTAINER_NAMESPACE=ns\n"
    );
    assert_eq!(read(&dir.path().join("out")), "to stdout\n");
    assert_eq!(read(&dir.path().join("err")), "to stderr\n");
    started.logger.stop(Duration::from_secs(1)).await;
}

/// A logger that never says it is ready fails the start when the limit is reached, and
/// is killed.
#[tokio::test]
async fn a_logger_never_ready_is_an_error_and_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let bin = script(dir.path(), "echo $$ > \"$2/pid\"\nexec /bin/sleep 600");
    let args = ["dir".to_string(), dir.path().to_string_lossy().into_owned()];
    let t = Instant::now();
    let err = start(&OWNER, &bin, &args, Duration::from_millis(500))
        .await
        .err()
        .expect("started without being ready");
    assert!(t.elapsed() >= Duration::from_millis(500));
    assert!(err.to_string().contains("not ready"), "{err}");
    assert!(err.to_string().contains("logger.sh"), "{err}");
    let pid: i32 = read(&dir.path().join("pid")).trim().parse().unwrap();
    assert!(until(T, || !alive(pid)).await, "the logger survived");
}

/// A logger that cannot be started fails the start with the binary's name.
#[tokio::test]
async fn a_missing_logger_is_an_error() {
    let err = start(&OWNER, Path::new("/nonexistent/logger"), &[], T)
        .await
        .err()
        .expect("started a missing binary");
    assert!(err.to_string().contains("/nonexistent/logger"), "{err}");
}

/// Stop sends SIGTERM; a logger that ignores it is killed once the grace period is over.
#[tokio::test]
async fn stop_terminates_then_kills() {
    let dir = tempfile::tempdir().unwrap();
    for (body, ignores_term) in [
        ("exec 5>&-\nexec /bin/sleep 600", false),
        ("trap '' TERM\nexec 5>&-\nexec /bin/sleep 600", true),
    ] {
        let bin = script(dir.path(), body);
        let logger = start(&OWNER, &bin, &[], T).await.unwrap().logger;
        let pid = logger.pid();
        let grace = Duration::from_millis(800);
        let t = Instant::now();
        logger.stop(grace).await;
        let took = t.elapsed();
        assert!(until(T, || !alive(pid)).await, "pid {pid} survived stop");
        if ignores_term {
            assert!(took >= grace, "killed before the grace period: {took:?}");
        } else {
            assert!(took < grace, "SIGTERM was not sent: {took:?}");
        }
    }
}

/// A logger dropped without stop (a failed Create) is killed.
#[tokio::test]
async fn a_dropped_logger_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let bin = script(dir.path(), "trap '' TERM\nexec 5>&-\nexec /bin/sleep 600");
    let logger = start(&OWNER, &bin, &[], T).await.unwrap().logger;
    let pid = logger.pid();
    drop(logger);
    assert!(until(T, || !alive(pid)).await, "pid {pid} survived");
}

/// A logger that reads nothing for a while never blocks the process's writes: 4 MiB are
/// written at once (spooled), and reach the logger in order once it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_logger_does_not_block_the_process() {
    const SIZE: usize = 4 << 20;
    let dir = tempfile::tempdir().unwrap();
    let bin = script(
        dir.path(),
        r#"exec 5>&-
while [ ! -e "$2/go" ]; do /bin/sleep 0.05; done
/bin/cat <&3 > "$2/out""#,
    );
    let uri = format!("binary://{}?dir={}", bin.display(), dir.path().display());
    let paths = StdioPaths {
        stdout: uri.clone(),
        stderr: uri,
        ..Default::default()
    };
    let spill = tempfile::tempdir().unwrap();
    let prepared = prepare_stdio(&OWNER, &paths, 0, 0, spill.path())
        .await
        .unwrap();
    let copiers = prepared.copiers;
    let mut container = File::from(prepared.io.stdout.unwrap());
    drop(prepared.io.stderr);
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let expected = data.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(container.write_all(&data));
    });
    tokio::task::spawn_blocking(move || rx.recv_timeout(T))
        .await
        .unwrap()
        .expect("the process was blocked by a logger that does not read")
        .unwrap();
    std::fs::write(dir.path().join("go"), "").unwrap();
    copiers.progress().drain(Duration::from_secs(60)).await;
    let out = dir.path().join("out");
    assert!(
        until(DRAIN_IDLE_LIMIT + T, || std::fs::metadata(&out)
            .map(|m| m.len())
            .unwrap_or(0)
            == SIZE as u64)
        .await,
        "the logger got {} bytes",
        read(&out).len()
    );
    assert!(
        std::fs::read(&out).unwrap() == expected,
        "output reordered or corrupted"
    );
    drop(copiers);
}

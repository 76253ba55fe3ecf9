use super::open::{DIR_MODE, FILE_MODE};
use super::*;
use crate::testing::until;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

async fn wait_for_content(path: &Path, want: usize) -> String {
    let read = || std::fs::read_to_string(path).unwrap_or_default();
    until(Duration::from_secs(10), || read().len() >= want).await;
    read()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Opens `path` as root's own log (IoUid/IoGid 0), within a deadline: a hang fails.
async fn open_log(path: &Path) -> Result<(Option<pipe::Sender>, Option<pipe::Sender>)> {
    match tokio::time::timeout(Duration::from_secs(5), open("c", path, true, true, 0, 0)).await {
        Ok(r) => r,
        Err(_) => {
            // An open(2) waiting for a FIFO's reader would keep the runtime (and so the
            // test) from ever ending: give it one, then fail.
            let _ = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path);
            panic!("opening {} hung", path.display())
        }
    }
}

/// The error text of refusing `path`.
async fn refusal(path: &Path) -> String {
    match open_log(path).await {
        Ok(_) => panic!("{} was accepted", path.display()),
        Err(e) => e.to_string(),
    }
}

/// Whether this test can change owners; says so when it cannot.
fn root(test: &str) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        test_skip::skip(format!("{test}: needs root to change file owners"));
    }
    root
}

/// Parent directories are created (0750), the file too (0640), and both streams land in it.
#[tokio::test]
async fn both_streams_land_in_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c.log");
    let (out, err) = open_log(&path).await.unwrap();
    assert_eq!(mode(&dir.path().join("a")), DIR_MODE);
    assert_eq!(mode(&dir.path().join("a/b")), DIR_MODE);
    assert_eq!(mode(&path), FILE_MODE);
    let (mut out, mut err) = (out.unwrap(), err.unwrap());
    out.write_all(b"out\n").await.unwrap();
    assert_eq!(wait_for_content(&path, 4).await, "out\n");
    err.write_all(b"err\n").await.unwrap();
    assert_eq!(wait_for_content(&path, 8).await, "out\nerr\n");
}

/// An existing log is appended to, never truncated; a stream not asked for gets no pipe.
#[tokio::test]
async fn an_existing_file_is_appended_to() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.log");
    std::fs::write(&path, "old\n").unwrap();
    let (out, err) = open("c", &path, true, false, 0, 0).await.unwrap();
    assert!(err.is_none());
    out.unwrap().write_all(b"new\n").await.unwrap();
    assert_eq!(wait_for_content(&path, 8).await, "old\nnew\n");
}

/// A path that cannot be a file fails the request with the path in the error.
#[tokio::test]
async fn an_unusable_path_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = open_log(dir.path()).await.err().unwrap();
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
}

/// A new log and the directories made for it belong to IoUid/IoGid (the group only for
/// directories); an existing directory keeps its owner.
#[tokio::test]
async fn a_new_log_belongs_to_io_uid_and_gid() {
    if !root("a_new_log_belongs_to_io_uid_and_gid") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new/c.log");
    let (out, _) = open("c", &path, true, false, 1234, 5678).await.unwrap();
    drop(out);
    let file = std::fs::metadata(&path).unwrap();
    assert_eq!((file.uid(), file.gid()), (1234, 5678));
    assert_eq!(file.mode() & 0o7777, FILE_MODE);
    let new_dir = std::fs::metadata(dir.path().join("new")).unwrap();
    assert_eq!((new_dir.uid(), new_dir.gid()), (0, 5678));
    assert_eq!(new_dir.mode() & 0o7777, DIR_MODE);
    let top = std::fs::metadata(dir.path()).unwrap();
    assert_eq!((top.uid(), top.gid()), (0, 0));
}

/// A symlink as the log is refused, and the file it points to is left alone.
#[tokio::test]
async fn a_symlink_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("authorized_keys");
    std::fs::write(&target, "key\n").unwrap();
    let path = dir.path().join("c.log");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let err = refusal(&path).await;
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "key\n");
    // A dangling one would otherwise be created through.
    let dangling = dir.path().join("d.log");
    std::os::unix::fs::symlink(dir.path().join("cron-job"), &dangling).unwrap();
    let err = refusal(&dangling).await;
    assert!(err.contains("symbolic link"), "{err}");
    assert!(!dir.path().join("cron-job").exists());
}

/// A FIFO as the log is refused at once, with or without a reader, never waited on.
#[tokio::test]
async fn a_fifo_is_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.log");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let err = refusal(&path).await;
    assert!(err.contains("FIFO"), "{err}");
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .unwrap();
    let err = refusal(&path).await;
    assert!(err.contains("FIFO"), "{err}");
}

/// A device, a socket or a directory as the log is refused; a device is never opened.
#[tokio::test]
async fn other_file_types_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev.log");
    match nix::sys::stat::mknod(
        &dev,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(1, 3),
    ) {
        Ok(()) => {
            let err = refusal(&dev).await;
            assert!(err.contains("a device"), "{err}");
        }
        Err(e) => test_skip::skip(format!("the device part: mknod: {e}")),
    }
    let sock = dir.path().join("sock.log");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let err = refusal(&sock).await;
    assert!(err.contains("a socket"), "{err}");
    let sub = dir.path().join("sub.log");
    std::fs::create_dir(&sub).unwrap();
    let err = refusal(&sub).await;
    assert!(err.contains("a directory"), "{err}");
}

/// A log with another name (a hard link someone made to a file of theirs or of root's)
/// is refused.
#[tokio::test]
async fn a_hard_link_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("shadow");
    std::fs::write(&other, "secret\n").unwrap();
    let path = dir.path().join("c.log");
    std::fs::hard_link(&other, &path).unwrap();
    let err = refusal(&path).await;
    assert!(err.contains("hard links"), "{err}");
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "secret\n");
}

/// An existing log owned by someone other than root or IoUid is refused; IoUid's is used.
#[tokio::test]
async fn a_log_of_another_user_is_refused() {
    if !root("a_log_of_another_user_is_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.log");
    std::fs::write(&path, "").unwrap();
    std::os::unix::fs::chown(&path, Some(4321), Some(4321)).unwrap();
    let err = refusal(&path).await;
    assert!(err.contains("owned by uid 4321"), "{err}");
    let (out, _) = open("c", &path, true, false, 4321, 4321).await.unwrap();
    assert!(out.is_some());
}

/// The log's directory must be root's and writable by nobody else, sticky or not; a
/// directory above it may be world-writable only with the sticky bit.
#[tokio::test]
async fn directories_others_can_change_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let path = logs.join("c.log");
    for (m, why) in [
        (0o775, "writable by group or others"),
        (0o757, "writable by group or others"),
        (0o1777, "writable by group or others"),
    ] {
        chmod(&logs, m);
        let err = refusal(&path).await;
        assert!(
            err.contains(why) && err.contains(&format!("{m:o}")),
            "{m:o}: {err}"
        );
        assert!(!path.exists());
    }
    chmod(&logs, 0o755);
    chmod(dir.path(), 0o777);
    let err = refusal(&path).await;
    assert!(
        err.contains("a directory above") && err.contains("writable by group or others"),
        "{err}"
    );
    chmod(dir.path(), 0o1777);
    open_log(&path)
        .await
        .expect("a sticky ancestor (like /tmp)");
    chmod(dir.path(), 0o700);
    if root("directories_others_can_change_are_refused (owner part)") {
        std::os::unix::fs::chown(&logs, Some(4321), None).unwrap();
        let err = refusal(&path).await;
        assert!(err.contains("owned by uid 4321, not root"), "{err}");
        std::os::unix::fs::chown(&logs, Some(0), None).unwrap();
        std::os::unix::fs::chown(dir.path(), Some(4321), None).unwrap();
        let err = refusal(&path).await;
        assert!(err.contains("a directory above"), "{err}");
        std::os::unix::fs::chown(dir.path(), Some(0), None).unwrap();
    }
}

/// Two streams appending to one file through their copy threads, holding a line's
/// beginning for `wait`; the write ends of their pipes and the file's path.
fn two_streams(dir: &Path, wait: Duration) -> (File, File, std::path::PathBuf) {
    let path = dir.join("both.log");
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .unwrap();
    let mut writers = Vec::new();
    for name in ["out", "err"] {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let file = file.try_clone().unwrap();
        std::thread::spawn(move || copy_holding(read, file, name, wait));
        writers.push(File::from(write));
    }
    let err = writers.pop().unwrap();
    (writers.pop().unwrap(), err, path)
}

/// A line one stream began is not cut by the other stream's line: it is held until its end.
#[tokio::test]
async fn a_line_begun_is_not_cut_by_the_other_stream() {
    let dir = tempfile::tempdir().unwrap();
    // Held far longer than this test can take: only its end releases the line.
    let (mut out, mut err, path) = two_streams(dir.path(), Duration::from_secs(30));
    out.write_all(b"out-1 be").unwrap();
    err.write_all(b"err-1\n").unwrap();
    assert_eq!(wait_for_content(&path, 6).await, "err-1\n");
    out.write_all(b"gun and ended\nout-2\n").unwrap();
    drop((out, err));
    assert_eq!(
        wait_for_content(&path, 32).await,
        "err-1\nout-1 begun and ended\nout-2\n"
    );
}

/// A line that does not end (a prompt) is written after the wait, and whatever is left at
/// the end of the stream too; a line longer than the buffer goes out in pieces.
#[tokio::test]
async fn an_unended_line_is_written_after_the_wait_and_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (mut out, err, path) = two_streams(dir.path(), Duration::from_millis(50));
    out.write_all(b"Password: ").unwrap();
    assert_eq!(wait_for_content(&path, 10).await, "Password: ");
    let long = vec![b'x'; CHUNK + 10];
    out.write_all(&long).unwrap();
    out.write_all(b"tail").unwrap();
    drop((out, err));
    let text = wait_for_content(&path, 10 + CHUNK + 14).await;
    assert_eq!(text.len(), 10 + CHUNK + 14, "{} bytes", text.len());
    assert!(text.ends_with("xtail"), "{:?}", &text[text.len() - 20..]);
}

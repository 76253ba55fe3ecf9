use super::*;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;

fn fifo(dir: &std::path::Path, name: &str) -> String {
    let path = dir.join(name);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test]
async fn unread_counts_pipe_content() {
    let (r, w) = nix::unistd::pipe().unwrap();
    assert_eq!(unread(r.as_raw_fd()), Some(0));
    nix::unistd::write(&w, b"hello").unwrap();
    assert_eq!(unread(r.as_raw_fd()), Some(5));
}

#[tokio::test]
async fn abort_ends_a_drain() {
    let dir = tempfile::tempdir().unwrap();
    let paths = StdioPaths {
        stdout: fifo(dir.path(), "out"),
        ..Default::default()
    };
    let (io, mut copiers) = prepare("c", &paths, 0, 0, dir.path()).unwrap();
    let _held = io.stdout;
    let progress = copiers.progress();
    copiers.abort();
    let t = Instant::now();
    progress.drain(Duration::from_secs(60)).await;
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn drain_gives_up_on_a_silent_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let paths = StdioPaths {
        stdout: fifo(dir.path(), "out"),
        ..Default::default()
    };
    let (io, copiers) = prepare("c", &paths, 0, 0, dir.path()).unwrap();
    // A "grandchild" keeps the write end open and never writes.
    let _held = io.stdout;
    let t = Instant::now();
    copiers.progress().drain(Duration::from_secs(60)).await;
    let took = t.elapsed();
    assert!(took >= DRAIN_IDLE_LIMIT, "{took:?}");
    assert!(took < DRAIN_IDLE_LIMIT + Duration::from_secs(2), "{took:?}");
}

/// containerd 1.6's ExecSync hung for good when its reader opened an empty stderr FIFO
/// only after the exec's output had ended (see `fifo_eof`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_opening_after_the_output_ended_gets_eof() {
    let dir = tempfile::tempdir().unwrap();
    let paths = StdioPaths {
        stdout: fifo(dir.path(), "out"),
        stderr: fifo(dir.path(), "err"),
        ..Default::default()
    };
    let (io, copiers) = prepare("c", &paths, 0, 0, dir.path()).unwrap();
    // The process exits without writing anything; its output loops end.
    drop(io);
    copiers.progress().drain(Duration::from_secs(10)).await;
    assert_eq!(copiers.progress().active.load(Ordering::Relaxed), 0);
    let (tx, rx) = std::sync::mpsc::channel();
    for path in [paths.stdout.clone(), paths.stderr.clone()] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let n = std::fs::File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut buf))
                .map_err(|e| e.to_string());
            tx.send((path, n)).unwrap();
        });
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(r) => got.push(r),
            Err(_) => break,
        }
    }
    if got.len() < 2 {
        // Release readers stuck in open(2) before failing.
        for path in [&paths.stdout, &paths.stderr] {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path);
        }
    }
    assert_eq!(got.len(), 2, "a late reader never got its EOF: {got:?}");
    assert!(got.iter().all(|(_, n)| n == &Ok(0)), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_a_slow_reader_and_loses_nothing() {
    const SIZE: usize = 512 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let path = fifo(dir.path(), "out");
    let paths = StdioPaths {
        stdout: path.clone(),
        ..Default::default()
    };
    let (io, copiers) = prepare("c", &paths, 0, 0, dir.path()).unwrap();
    let mut writer = std::fs::File::from(io.stdout.unwrap());
    let write = std::thread::spawn(move || {
        writer.write_all(&vec![b'x'; SIZE]).unwrap();
        // Dropping the writer is the container exiting.
    });
    // The reader shows up late and then reads everything.
    let read = std::thread::spawn(move || {
        std::thread::sleep(DRAIN_IDLE_LIMIT + Duration::from_secs(1));
        let mut f = std::fs::File::open(&path).unwrap();
        let mut total = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while total < SIZE {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    let t = Instant::now();
    let progress = copiers.progress();
    progress.drain(Duration::from_secs(60)).await;
    assert!(
        t.elapsed() > DRAIN_IDLE_LIMIT,
        "drain gave up on a slow reader"
    );
    assert_eq!(
        progress.active.load(Ordering::Relaxed),
        0,
        "copy loop still running"
    );
    write.join().unwrap();
    assert_eq!(read.join().unwrap(), SIZE);
}

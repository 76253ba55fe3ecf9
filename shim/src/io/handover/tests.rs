use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle as ThreadHandle;
use std::time::Duration;

use super::super::budget::SpillBudget;
use super::super::output::leftover;
use super::super::spool::{pattern, spill_links, Spool};
use super::super::{prepare, unread, Progress, StdioPaths, OUTPUT_MEMORY_BOUND};
use super::*;
use crate::testing::until;

const LIMIT: Duration = Duration::from_secs(20);

fn fifo(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    path.to_string_lossy().into_owned()
}

async fn wait_for(what: &str, f: impl FnMut() -> bool) {
    assert!(until(LIMIT, f).await, "{what} not within {LIMIT:?}");
}

/// Writes `size` pattern bytes into `to` in 4 KiB pieces, counting them in `written`, then
/// closes it (the process exits).
fn write_pattern(mut to: File, size: u64, written: Arc<AtomicU64>) -> ThreadHandle<()> {
    std::thread::spawn(move || {
        let mut at = 0;
        while at < size {
            let n = (size - at).min(4096) as usize;
            to.write_all(&pattern(at, n)).unwrap();
            at += n as u64;
            written.store(at, Ordering::Relaxed);
        }
    })
}

/// Opens the FIFO, reads it to EOF in pieces of varying size (a short pause every few
/// reads when `slow`), counting in `got`; returns how many bytes matched the pattern
/// before the first difference, and how many were read in all.
fn read_pattern(path: String, slow: bool, got: Arc<AtomicU64>) -> ThreadHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let mut f = File::open(&path).unwrap();
        let mut buf = vec![0u8; 70_000];
        let (mut at, mut matched, mut piece, mut reads) = (0u64, None, 1usize, 0u64);
        loop {
            piece = (piece * 7 + 13) % buf.len() + 1;
            let n = f.read(&mut buf[..piece]).unwrap();
            if n == 0 {
                return (matched.unwrap_or(at), at);
            }
            if matched.is_none() && buf[..n] != pattern(at, n)[..] {
                matched = Some(at);
            }
            at += n as u64;
            got.store(at, Ordering::Relaxed);
            reads += 1;
            if slow && reads % 8 == 0 {
                // Pacing, not waiting: keeps the shim's side of the FIFO backed up.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    })
}

/// Joins a thread without blocking the runtime.
async fn join<T: Send + 'static>(t: ThreadHandle<T>) -> T {
    tokio::time::timeout(
        LIMIT,
        tokio::task::spawn_blocking(move || t.join().unwrap()),
    )
    .await
    .expect("thread did not finish")
    .unwrap()
}

fn stdout_to(path: &str) -> StdioPaths {
    StdioPaths {
        stdout: path.to_string(),
        ..Default::default()
    }
}

fn counts(p: &Progress) -> (u64, u64) {
    (
        p.active.load(Ordering::Relaxed),
        p.writing.load(Ordering::Relaxed),
    )
}

/// The identity of the file behind `fd`.
fn inode(fd: RawFd) -> (u64, u64) {
    // SAFETY: only borrowed for the fstat, while its owner holds it open.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let st = nix::sys::stat::fstat(fd.as_fd()).unwrap();
    (st.st_dev, st.st_ino)
}

/// A process writing continuously into a slowly read FIFO, handed over (and resumed)
/// twice mid-stream: the reader sees every byte exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_stream_handovers_lose_and_repeat_nothing() {
    const SIZE: u64 = 6 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = fifo(dir.path(), "out");
    let (io, mut copiers) = prepare("c", &stdout_to(&path), 0, 0, dir.path()).unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let read = read_pattern(path, true, got.clone());
    let written = Arc::new(AtomicU64::new(0));
    let write = write_pattern(File::from(io.stdout.unwrap()), SIZE, written.clone());
    let mut held_bytes = 0;
    for round in 1..=2u64 {
        wait_for("reader progress", || {
            got.load(Ordering::Relaxed) >= round * SIZE / 4
        })
        .await;
        let mut handed = copiers.hand_over().await.unwrap();
        let out = handed.stdout.as_ref().expect("a running stream was handed");
        held_bytes += out.pending.len();
        assert!(handed.stderr.is_none() && handed.stdin.is_none());
        assert_eq!(counts(&copiers.progress()), (0, 0));
        // As after an exec: the fds may come without O_NONBLOCK.
        for fd in handed.fds() {
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
            )
            .unwrap();
        }
        if let Some(s) = handed.stdout.as_mut() {
            assert_eq!(s.eof, s.source.is_none());
        }
        copiers = Copiers::resume("c", handed, dir.path()).unwrap();
    }
    join(write).await;
    copiers.progress().drain(LIMIT).await;
    assert_eq!(counts(&copiers.progress()), (0, 0));
    drop(copiers);
    let (matched, total) = join(read).await;
    assert_eq!((matched, total), (SIZE, SIZE));
    eprintln!("{held_bytes} bytes were held by the loops at the handovers");
}

/// Nobody reads the FIFO: output piles up in the spool's memory and its spill file. It is
/// all handed over (the spill file read back and closed) and arrives in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spilled_backlog_is_handed_over_in_order() {
    const SIZE: u64 = 1 << 20;
    const FIFO_SIZE: u64 = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let spill = tempfile::tempdir().unwrap();
    let path = fifo(dir.path(), "out");
    let (io, mut copiers) = prepare("c", &stdout_to(&path), 0, 0, spill.path()).unwrap();
    let progress = copiers.progress();
    let written = Arc::new(AtomicU64::new(0));
    join(write_pattern(File::from(io.stdout.unwrap()), SIZE, written)).await;
    let on_file = SIZE - FIFO_SIZE - OUTPUT_MEMORY_BOUND as u64;
    wait_for("the backlog to spill", || {
        progress.spilled.load(Ordering::Relaxed) == on_file
    })
    .await;
    assert_eq!(spill_links(spill.path()).len(), 1);

    let handed = copiers.hand_over().await.unwrap();
    let out = handed.stdout.as_ref().unwrap();
    assert_eq!(out.pending.len() as u64, SIZE - FIFO_SIZE);
    assert!(out.pending == pattern(FIFO_SIZE, out.pending.len()));
    assert!(spill_links(spill.path()).is_empty(), "spill file left open");
    assert_eq!(counts(&progress), (0, 0));

    let copiers = Copiers::resume("c", handed, spill.path()).unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let read = read_pattern(path, false, got);
    copiers.progress().drain(LIMIT).await;
    assert_eq!(counts(&copiers.progress()), (0, 0));
    drop(copiers);
    assert_eq!(join(read).await, (SIZE, SIZE));
}

/// Bytes of the read buffer the spool refused are newer than all of the spool, spill
/// file included.
#[test]
fn leftover_puts_the_spool_before_the_read_buffer() {
    let spill = tempfile::tempdir().unwrap();
    let budget = Arc::new(SpillBudget::new(u64::MAX));
    let mut spool = Spool::new("c", spill.path(), 8, 1 << 20, budget, Arc::default());
    assert_eq!(spool.push(&pattern(0, 100)), 100);
    // Part of memory written out, so memory is refilled from the file's middle.
    let n = spool.front().len().min(3);
    spool.consume(n);
    let got = leftover(&mut spool, &pattern(100, 10));
    assert_eq!(got, pattern(n as u64, 110 - n));
    assert!(spool.is_empty());
}

/// A loop that copied everything and ended, and a stdin loop ended by CloseIO, hand
/// nothing over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_loops_hand_over_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let paths = StdioPaths {
        stdin: fifo(dir.path(), "in"),
        stdout: fifo(dir.path(), "out"),
        stderr: fifo(dir.path(), "err"),
        terminal: false,
    };
    let (io, mut copiers) = prepare("c", &paths, 0, 0, dir.path()).unwrap();
    let stdin = File::from(io.stdin.unwrap());
    drop((io.stdout, io.stderr));
    copiers.close_stdin();
    let eof = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        (&stdin).read_to_end(&mut buf).map(|_| buf)
    });
    assert_eq!(
        tokio::time::timeout(LIMIT, eof)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        b""
    );
    let progress = copiers.progress();
    wait_for("the output loops to end", || counts(&progress) == (0, 0)).await;
    let handed = copiers.hand_over().await.unwrap();
    assert!(handed.stdin.is_none() && handed.stdout.is_none() && handed.stderr.is_none());
    assert!(handed.fds().is_empty());
}

#[test]
fn what_is_refused() {
    assert!(refusal(true, Sink::Fifo).is_some());
    assert!(refusal(false, Sink::Logger).is_some());
    assert!(refusal(false, Sink::File).is_some());
    assert_eq!(refusal(false, Sink::Fifo), None);
}

/// A refused handover stops nothing: the loop goes on copying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_handover_leaves_the_loops_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = fifo(dir.path(), "out");
    let (io, mut copiers) = prepare("c", &stdout_to(&path), 0, 0, dir.path()).unwrap();
    copiers.sink = Sink::File;
    let err = copiers.hand_over().await.unwrap_err();
    assert!(err.to_string().contains("file://"), "{err}");
    copiers.sink = Sink::Logger;
    assert!(copiers.hand_over().await.is_err());
    assert_eq!(counts(&copiers.progress()), (1, 0));
    let got = Arc::new(AtomicU64::new(0));
    let read = read_pattern(path, false, got);
    let written = Arc::new(AtomicU64::new(0));
    join(write_pattern(
        File::from(io.stdout.unwrap()),
        100_000,
        written,
    ))
    .await;
    copiers.progress().drain(LIMIT).await;
    drop(copiers);
    assert_eq!(join(read).await, (100_000, 100_000));
}

/// Draining resumed copiers waits for their source's EOF (not the idle limit) and for
/// every byte to be written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_resumed_copiers_waits_for_eof() {
    let dir = tempfile::tempdir().unwrap();
    let path = fifo(dir.path(), "out");
    let (io, mut copiers) = prepare("c", &stdout_to(&path), 0, 0, dir.path()).unwrap();
    let mut writer = File::from(io.stdout.unwrap());
    writer.write_all(&pattern(0, 1000)).unwrap();
    let handed = copiers.hand_over().await.unwrap();
    let copiers = Copiers::resume("c", handed, dir.path()).unwrap();
    let progress = copiers.progress();
    assert_eq!(progress.active.load(Ordering::Relaxed), 1);
    let got = Arc::new(AtomicU64::new(0));
    let read = read_pattern(path, false, got.clone());
    wait_for("the first bytes", || got.load(Ordering::Relaxed) == 1000).await;
    assert_eq!(
        progress.active.load(Ordering::Relaxed),
        1,
        "ended before EOF"
    );
    let closed = Arc::new(AtomicBool::new(false));
    let writing = {
        let closed = closed.clone();
        std::thread::spawn(move || {
            writer.write_all(&pattern(1000, 200_000)).unwrap();
            closed.store(true, Ordering::Relaxed);
        })
    };
    let t = std::time::Instant::now();
    progress.drain(Duration::from_secs(60)).await;
    assert!(
        t.elapsed() < super::super::DRAIN_IDLE_LIMIT,
        "{:?}",
        t.elapsed()
    );
    assert_eq!(counts(&progress), (0, 0));
    assert!(closed.load(Ordering::Relaxed));
    join(writing).await;
    drop(copiers);
    assert_eq!(join(read).await, (201_000, 201_000));
}

/// Aborting and dropping the copiers a handover emptied closes none of the handed fds:
/// they are the same files afterwards, and a resumed loop still copies through them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_and_drop_after_a_handover_keep_the_fds() {
    let dir = tempfile::tempdir().unwrap();
    let paths = StdioPaths {
        stdin: fifo(dir.path(), "in"),
        ..stdout_to(&fifo(dir.path(), "out"))
    };
    let (io, mut copiers) = prepare("c", &paths, 0, 0, dir.path()).unwrap();
    let handed = copiers.hand_over().await.unwrap();
    let fds = handed.fds();
    assert_eq!(fds.len(), 4, "stdin fifo and pipe, stdout source and sink");
    let before: Vec<_> = fds.iter().map(|&fd| inode(fd)).collect();
    copiers.abort();
    drop(copiers);
    tokio::task::yield_now().await;
    let after: Vec<_> = fds.iter().map(|&fd| inode(fd)).collect();
    assert_eq!(before, after);

    let mut copiers = Copiers::resume("c", handed, dir.path()).unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let read = read_pattern(paths.stdout.clone(), false, got);
    let written = Arc::new(AtomicU64::new(0));
    join(write_pattern(File::from(io.stdout.unwrap()), 5000, written)).await;
    // stdin: containerd's side → the process's pipe, then CloseIO → EOF.
    let mut client = std::fs::OpenOptions::new()
        .write(true)
        .open(&paths.stdin)
        .unwrap();
    client.write_all(b"hello").unwrap();
    let process_stdin = File::from(io.stdin.unwrap());
    wait_for("stdin to arrive", || {
        unread(process_stdin.as_raw_fd()) == Some(5)
    })
    .await;
    copiers.close_stdin();
    let input = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        (&process_stdin).read_to_end(&mut buf).map(|_| buf)
    });
    let input = tokio::time::timeout(LIMIT, input).await.unwrap().unwrap();
    assert_eq!(input.unwrap(), b"hello");
    copiers.progress().drain(LIMIT).await;
    drop(copiers);
    assert_eq!(join(read).await, (5000, 5000));
}

/// The process does not read its stdin: the loop holds bytes for the full pipe. They are
/// handed over, then the rest of the FIFO, then (CloseIO after the resume) EOF, in order;
/// handed over again while closing, the close still happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_held_bytes_and_closing_are_handed_over() {
    // Fits the pipe, the loop's buffer and the FIFO: the client is done before the
    // process reads anything.
    const SIZE: usize = 150 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let paths = StdioPaths {
        stdin: fifo(dir.path(), "in"),
        ..Default::default()
    };
    let (io, mut copiers) = prepare("c", &paths, 0, 0, dir.path()).unwrap();
    let process_stdin = File::from(io.stdin.unwrap());
    let data: Vec<u8> = pattern(0, SIZE);
    let client = {
        let (path, data) = (paths.stdin.clone(), data.clone());
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            f.write_all(&data).unwrap();
        })
    };
    // Only to look at what the FIFO holds.
    let fifo_look = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&paths.stdin)
        .unwrap();
    wait_for("the loop to hold bytes for the full pipe", || {
        client.is_finished()
            && unread(process_stdin.as_raw_fd()) == Some(64 * 1024)
            && unread(fifo_look.as_raw_fd()).is_some_and(|n| (n as usize) < SIZE - 64 * 1024)
    })
    .await;
    let handed = copiers.hand_over().await.unwrap();
    let s = handed.stdin.as_ref().unwrap();
    assert!(!s.closing);
    assert!(
        !s.pending.is_empty(),
        "the loop held nothing for the full pipe"
    );
    let mut copiers = Copiers::resume("c", handed, dir.path()).unwrap();
    // The client's bytes are all in the FIFO, or taken by the loop.
    join(client).await;
    copiers.close_stdin();
    let handed = copiers.hand_over().await.unwrap();
    let s = handed.stdin.as_ref().unwrap();
    assert!(s.closing, "CloseIO was not handed over");
    let copiers = Copiers::resume("c", handed, dir.path()).unwrap();
    let got = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        (&process_stdin).read_to_end(&mut buf).map(|_| buf)
    });
    let got = tokio::time::timeout(LIMIT, got).await.unwrap().unwrap();
    let got = got.unwrap();
    assert_eq!(got.len(), SIZE);
    assert!(got == data, "stdin reordered or corrupted");
    drop(copiers);
}

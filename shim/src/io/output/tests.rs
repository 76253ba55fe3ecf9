use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::super::spool::{pattern, spill_links};
use super::super::*;
use super::copy_output;
use crate::testing::until;

fn fifo(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    path.to_string_lossy().into_owned()
}

/// Writes `size` pattern bytes into `to` on its own thread (a blocking write stands for
/// the container), then closes it; the receiver hears when the last byte was written.
fn write_pattern(mut to: File, size: u64) -> mpsc::Receiver<std::io::Result<()>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut at = 0;
        let mut result = Ok(());
        while at < size {
            let n = (size - at).min(100_000) as usize;
            if let Err(e) = to.write_all(&pattern(at, n)) {
                result = Err(e);
                break;
            }
            at += n as u64;
        }
        drop(to);
        let _ = tx.send(result);
    });
    rx
}

/// Opens the FIFO and reads `size` bytes in pieces of varying length, checking the
/// pattern; returns the number of bytes that matched before the first difference.
fn read_pattern(path: String, size: u64) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut f = File::open(&path).unwrap();
        let mut buf = vec![0u8; 70_000];
        let mut at = 0u64;
        let mut piece = 1usize;
        while at < size {
            piece = (piece * 7 + 13) % buf.len() + 1;
            let want = piece.min((size - at) as usize);
            let n = f.read(&mut buf[..want]).unwrap();
            if n == 0 || buf[..n] != pattern(at, n)[..] {
                return at;
            }
            at += n as u64;
        }
        at
    })
}

async fn wait_for(what: &str, limit: Duration, f: impl Fn() -> bool) {
    assert!(until(limit, f).await, "{what} not within {limit:?}");
}

fn stdout_to(path: &str) -> StdioPaths {
    StdioPaths {
        stdout: path.to_string(),
        ..Default::default()
    }
}

/// 16 MiB written while nobody reads the FIFO never block the writer; the late reader
/// then gets every byte in order; memory stays within the bound, the rest went through
/// a spill file that never shows in the directory and is closed once drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_reader_never_blocks_the_writer() {
    const SIZE: u64 = 16 << 20;
    let dir = tempfile::tempdir().unwrap();
    let spill = tempfile::tempdir().unwrap();
    let path = fifo(dir.path(), "out");
    let (io, copiers) = prepare("c", &stdout_to(&path), 0, 0, spill.path()).unwrap();
    let progress = copiers.progress();
    let t = Instant::now();
    let written = write_pattern(File::from(io.stdout.unwrap()), SIZE);
    // Off the runtime: recv_timeout blocks.
    let written =
        tokio::task::spawn_blocking(move || written.recv_timeout(Duration::from_secs(20)))
            .await
            .unwrap();
    written
        .expect("the writer was blocked for 20 s: the shim stopped draining the pipe")
        .unwrap();
    eprintln!("16 MiB written without a reader in {:?}", t.elapsed());
    assert!(
        progress.spilled.load(Ordering::Relaxed) > 0,
        "nothing spilled"
    );
    assert_eq!(progress.spill_open.load(Ordering::Relaxed), 1);
    assert_eq!(std::fs::read_dir(spill.path()).unwrap().count(), 0);

    let read = read_pattern(path, SIZE);
    progress.drain(Duration::from_secs(60)).await;
    assert_eq!(
        progress.active.load(Ordering::Relaxed),
        0,
        "loop still running"
    );
    assert_eq!(
        read.join().unwrap(),
        SIZE,
        "bytes in order before the first difference"
    );
    let peak = progress.spool_peak.load(Ordering::Relaxed);
    assert!(peak <= OUTPUT_MEMORY_BOUND as u64, "memory peak {peak}");
    assert!(peak > 0, "the memory buffer was never used");
    assert_eq!(progress.spill_open.load(Ordering::Relaxed), 0);
    assert!(spill_links(spill.path()).is_empty());
    assert_eq!(std::fs::read_dir(spill.path()).unwrap().count(), 0);
}

/// A reader that takes pieces of varying size and falls behind while the writer keeps
/// writing crosses memory → file → memory several times and still sees every byte in
/// order: bursts land on top of a half-read spill file, then the reader catches up
/// completely and the next burst starts in memory again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_reader_sees_everything_in_order() {
    const BURST: u64 = 3 * OUTPUT_MEMORY_BOUND as u64;
    const BURSTS: u64 = 6;
    let dir = tempfile::tempdir().unwrap();
    let spill = tempfile::tempdir().unwrap();
    let path = fifo(dir.path(), "out");
    let (io, copiers) = prepare("c", &stdout_to(&path), 0, 0, spill.path()).unwrap();
    let progress = copiers.progress();
    // The reader may take up to `credit` bytes in all; `done` is what it took so far.
    let credit = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let read = {
        let (credit, done, stopped) = (credit.clone(), done.clone(), stopped.clone());
        std::thread::spawn(move || {
            let mut f = File::open(&path).unwrap();
            let mut buf = vec![0u8; 70_000];
            let (mut at, mut piece) = (0u64, 1usize);
            while at < BURST * BURSTS {
                let allowed = credit.load(Ordering::Relaxed) - at;
                if allowed == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                piece = (piece * 7 + 13) % buf.len() + 1;
                let want = piece.min(allowed as usize);
                let n = f.read(&mut buf[..want]).unwrap();
                if n == 0 || buf[..n] != pattern(at, n)[..] {
                    break;
                }
                at += n as u64;
                done.store(at, Ordering::Relaxed);
            }
            stopped.store(true, Ordering::Relaxed);
            at
        })
    };
    let mut to = File::from(io.stdout.unwrap());
    for b in 0..BURSTS {
        // On a thread of its own, so a writer held back forever fails the test in 20 s.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(
                to.write_all(&pattern(b * BURST, BURST as usize))
                    .map(|()| to),
            );
        });
        to = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
            .await
            .unwrap()
            .expect("the writer was held back: the shim stopped draining the pipe")
            .unwrap();
        let target = if b % 2 == 0 {
            // Half of what is queued: the next burst lands behind a half-read file.
            credit.load(Ordering::Relaxed) + BURST / 2
        } else {
            (b + 1) * BURST
        };
        credit.store(target, Ordering::Relaxed);
        let (d, p, s) = (done.clone(), progress.clone(), stopped.clone());
        wait_for("the reader", Duration::from_secs(30), move || {
            // A reader that stopped on a wrong byte ends the wait; the join below fails.
            s.load(Ordering::Relaxed)
                || d.load(Ordering::Relaxed) >= target
                    && (b % 2 == 0 || p.writing.load(Ordering::Relaxed) == 0)
        })
        .await;
        if stopped.load(Ordering::Relaxed) {
            break;
        }
    }
    drop(to);
    progress.drain(Duration::from_secs(60)).await;
    assert_eq!(read.join().unwrap(), BURST * BURSTS);
    let files = progress.spill_created.load(Ordering::Relaxed);
    assert!(
        files >= BURSTS / 2,
        "{files} spill files: too few transitions"
    );
    assert!(progress.spool_peak.load(Ordering::Relaxed) <= OUTPUT_MEMORY_BOUND as u64);
    assert_eq!(progress.spill_open.load(Ordering::Relaxed), 0);
}

/// A tmpfs of a few pages, unmounted (lazily, so an open file cannot keep it) on drop.
struct TinyTmpfs(std::path::PathBuf);

impl TinyTmpfs {
    fn mount(at: &Path, size: &str) -> nix::Result<TinyTmpfs> {
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(format!("size={size},mode=0700").as_str()),
        )?;
        Ok(TinyTmpfs(at.to_path_buf()))
    }
}

impl Drop for TinyTmpfs {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("unmounting {}: {e}", self.0.display());
        }
    }
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut usage), 0);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// When the spill filesystem is full, the loop stops reading the pipe (the writer
/// waits), does not spin meanwhile, and once the reader comes everything arrives in
/// order.
// current_thread: the copy loop runs on this thread, so a spinning loop shows in its
// CPU time.
#[tokio::test]
async fn a_full_spill_filesystem_means_back_pressure_not_loss() {
    const SIZE: u64 = 2 << 20;
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join("spill");
    std::fs::create_dir(&spill).unwrap();
    let _mount = match TinyTmpfs::mount(&spill, "96k") {
        Ok(m) => m,
        Err(e) => test_skip::skip!("cannot mount a tmpfs here: {e}"),
    };
    let path = fifo(dir.path(), "out");
    let (io, copiers) = prepare("c", &stdout_to(&path), 0, 0, &spill).unwrap();
    let progress = copiers.progress();
    let written = write_pattern(File::from(io.stdout.unwrap()), SIZE);
    let p = progress.clone();
    wait_for("a spill failure", Duration::from_secs(20), move || {
        p.spill_failures.load(Ordering::Relaxed) > 0
    })
    .await;
    let spilled = progress.spilled.load(Ordering::Relaxed);
    assert!(spilled > 0 && spilled <= 96 << 10, "spilled {spilled}");

    let cpu = thread_cpu();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let used = thread_cpu() - cpu;
    assert!(
        used < Duration::from_millis(100),
        "spinning: {used:?} of CPU in 500 ms"
    );
    assert!(
        matches!(written.try_recv(), Err(mpsc::TryRecvError::Empty)),
        "the writer was never held back: the test proves nothing"
    );
    assert_eq!(progress.writing.load(Ordering::Relaxed), 1);

    let read = read_pattern(path, SIZE);
    progress.drain(Duration::from_secs(60)).await;
    assert_eq!(
        read.join().unwrap(),
        SIZE,
        "bytes in order before the first difference"
    );
    written.recv().unwrap().unwrap();
    assert!(progress.spool_peak.load(Ordering::Relaxed) <= OUTPUT_MEMORY_BOUND as u64);
    assert_eq!(progress.spill_open.load(Ordering::Relaxed), 0);
}

/// One flooded stream without a reader: its copy loop on a spool drawing from `budget`.
struct Flood {
    path: String,
    progress: Arc<Progress>,
    written: mpsc::Receiver<std::io::Result<()>>,
}

impl Flood {
    /// Reads `floods` at once, each to its end (`size` bytes), which must all be in order;
    /// then waits for their copies to drain.
    async fn read_all(floods: &[Flood], size: u64) {
        let reads: Vec<_> = floods
            .iter()
            .map(|f| read_pattern(f.path.clone(), size))
            .collect();
        for (n, (f, read)) in floods.iter().zip(reads).enumerate() {
            let got = tokio::task::spawn_blocking(move || read.join().unwrap())
                .await
                .unwrap();
            assert_eq!(
                got, size,
                "stream {n}: bytes in order before the first difference"
            );
            f.progress.drain(Duration::from_secs(60)).await;
        }
    }

    fn start(dir: &Path, spill: &Path, n: usize, budget: &Arc<SpillBudget>, size: u64) -> Flood {
        let path = fifo(dir, &format!("out{n}"));
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let from = pipe::Receiver::from_owned_fd(read).unwrap();
        let (to, node) = open_output_fifo("c", &path).unwrap();
        let progress = Arc::new(Progress::default());
        progress.active.fetch_add(1, Ordering::Relaxed);
        let spool = spool::Spool::new(
            "c",
            spill,
            OUTPUT_MEMORY_BOUND,
            OUTPUT_SPILL_LIMIT,
            budget.clone(),
            progress.clone(),
        );
        tokio::spawn(copy_output(
            Some(from),
            to,
            node,
            spool,
            progress.clone(),
            ActiveGuard(progress.clone()),
            super::super::handover::Stop::never(),
            Vec::new(),
        ));
        Flood {
            path,
            progress,
            written: write_pattern(File::from(write), size),
        }
    }

    fn spilled(&self) -> u64 {
        self.progress.spilled.load(Ordering::Relaxed)
    }
}

/// Bytes held by the spill files under `dir` that this process has open.
fn spill_bytes(dir: &Path) -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let fd = e.ok()?.path();
            let target = std::fs::read_link(&fd).ok()?;
            let target = target.to_string_lossy();
            (target.starts_with(&*dir.to_string_lossy()) && target.contains(spool::SPILL_PREFIX))
                .then(|| std::fs::metadata(&fd).map_or(0, |m| m.len()))
        })
        .sum()
}

/// Many processes flooding output nobody reads share the shim's spill budget: the spill
/// files never hold more than the budget in all, each writer is held back (not the
/// runtime, which does not spin), a stream that gives budget back lets the others spill
/// on without their readers, and once every reader came each got all its bytes in order.
// current_thread: every copy loop runs on this thread, so spinning shows in its CPU time.
#[tokio::test]
async fn floods_share_the_spill_budget_and_lose_nothing() {
    const BUDGET: u64 = 1 << 20;
    const STREAMS: usize = 6;
    // More than memory, pipe and the whole budget take: no writer can finish alone.
    const SIZE: u64 = 2 << 20;
    let dir = tempfile::tempdir().unwrap();
    let spill = tempfile::tempdir().unwrap();
    let budget = Arc::new(SpillBudget::new(BUDGET));
    let floods: Vec<Flood> = (0..STREAMS)
        .map(|n| Flood::start(dir.path(), spill.path(), n, &budget, SIZE))
        .collect();
    let b = budget.clone();
    wait_for("the budget used up", Duration::from_secs(20), move || {
        b.used() >= BUDGET
    })
    .await;
    let cpu = thread_cpu();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let used = thread_cpu() - cpu;
    assert!(
        used < Duration::from_millis(100),
        "spinning: {used:?} in 500 ms"
    );
    // Checked after the pause: streams the budget did not stop would have spilled on.
    let on_file = spill_bytes(spill.path());
    assert!(on_file <= BUDGET, "{on_file} bytes in spill files");
    assert!(budget.peak() <= BUDGET, "peak {}", budget.peak());
    for (n, f) in floods.iter().enumerate() {
        assert!(
            matches!(f.written.try_recv(), Err(mpsc::TryRecvError::Empty)),
            "writer {n} was never held back: the test proves nothing"
        );
    }

    // The first half's readers come; what they give back goes to the others.
    let (first, rest) = floods.split_at(STREAMS / 2);
    let before: u64 = rest.iter().map(Flood::spilled).sum();
    Flood::read_all(first, SIZE).await;
    let b = budget.clone();
    wait_for("the rest spilling on", Duration::from_secs(20), move || {
        b.used() == BUDGET
    })
    .await;
    let after: u64 = rest.iter().map(Flood::spilled).sum();
    assert!(
        after > before,
        "the waiting streams took none of the budget given back ({before} -> {after})"
    );
    assert!(spill_bytes(spill.path()) <= BUDGET);

    Flood::read_all(rest, SIZE).await;
    for f in &floods {
        f.written
            .recv_timeout(Duration::from_secs(20))
            .unwrap()
            .unwrap();
        assert_eq!(f.progress.spill_open.load(Ordering::Relaxed), 0);
    }
    assert_eq!(budget.used(), 0, "budget not given back");
    assert!(budget.peak() <= BUDGET, "peak {}", budget.peak());
}

/// Aborting the copiers (Delete) closes the spill file right away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_releases_the_spill_file() {
    let dir = tempfile::tempdir().unwrap();
    let spill = tempfile::tempdir().unwrap();
    let path = fifo(dir.path(), "out");
    let (io, mut copiers) = prepare("c", &stdout_to(&path), 0, 0, spill.path()).unwrap();
    let progress = copiers.progress();
    let written = write_pattern(File::from(io.stdout.unwrap()), 1 << 20);
    tokio::task::spawn_blocking(move || written.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("writer blocked")
        .unwrap();
    assert_eq!(progress.spill_open.load(Ordering::Relaxed), 1);
    assert_eq!(spill_links(spill.path()).len(), 1);
    copiers.abort();
    let p = progress.clone();
    wait_for(
        "the spill file closing",
        Duration::from_secs(5),
        move || p.spill_open.load(Ordering::Relaxed) == 0,
    )
    .await;
    assert!(spill_links(spill.path()).is_empty());
}

/// Data waiting for an absent reader keeps `drain` waiting (to its limit), while
/// `drain_moving` gives up after the idle limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_data_is_progress_for_drain_only() {
    let dir = tempfile::tempdir().unwrap();
    let spill = tempfile::tempdir().unwrap();
    let path = fifo(dir.path(), "out");
    let (io, copiers) = prepare("c", &stdout_to(&path), 0, 0, spill.path()).unwrap();
    let progress = copiers.progress();
    let written = write_pattern(File::from(io.stdout.unwrap()), 256 << 10);
    tokio::task::spawn_blocking(move || written.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("writer blocked")
        .unwrap();
    let t = Instant::now();
    progress.drain_moving(Duration::from_secs(60)).await;
    let took = t.elapsed();
    assert!(took < DRAIN_IDLE_LIMIT + Duration::from_secs(1), "{took:?}");
    let limit = DRAIN_IDLE_LIMIT + Duration::from_secs(1);
    let t = Instant::now();
    progress.drain(limit).await;
    assert!(t.elapsed() >= limit, "drain gave up on a waiting reader");
}

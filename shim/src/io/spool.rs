//! The backlog of one output stream while containerd is not reading its FIFO: memory up to
//! a fixed bound, then an unlinked spill file in the bundle, handed back strictly in order.
//! Spill file bytes are bounded per stream (`spill_limit`) and, shared by every stream of
//! the shim, by a [`SpillBudget`].
//!
//! The queue is always `memory ++ file[read_at..write_at]`. New bytes go to memory only while
//! the file is empty; once anything is on file, they go to the file too, and memory is
//! refilled from the file's head. That keeps the order whatever the mix of partial reads.
//!
//! The file is touched with small synchronous pread/pwrite calls (at most 64 KiB) from the
//! copy task. That is a deliberate exception to "never block a runtime thread": the spill
//! file is a local file in the bundle (usually tmpfs), so these calls cost a page-cache copy,
//! and only while a reader is behind by more than the memory bound.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::budget::SpillBudget;
use super::Progress;

/// Bytes moved from the spill file back into memory at a time (one FIFO's worth).
const REFILL_CHUNK: usize = 64 * 1024;
/// Freed buffers at least this big are handed back to the kernel (`malloc_trim`): glibc
/// keeps freed heap resident otherwise, and an idle shim should not keep a past burst.
const TRIM_ABOVE: usize = 64 * 1024;
/// File name prefix of spill files (only visible between creation and unlink).
pub(super) const SPILL_PREFIX: &str = ".sturdy-stdio-spill-";

/// A bounded in-memory queue backed by a spill file.
pub(super) struct Spool {
    /// Container id, for logs.
    id: String,
    /// Most bytes (and capacity) memory may hold.
    bound: usize,
    mem: VecDeque<u8>,
    /// Where spill files are created (the bundle).
    dir: PathBuf,
    /// Present only while it holds unread bytes.
    spill: Option<Spill>,
    /// Most bytes a spill file may grow to (its read part is freed only when it is closed).
    spill_limit: u64,
    /// Spilling failed (ENOSPC, EIO, ...) or the file reached its limit: until the spool
    /// has drained completely, take only what fits in memory (the caller then stops reading
    /// its pipe).
    spill_paused: bool,
    /// Where the file's bytes are charged; released when the file is closed.
    budget: Arc<SpillBudget>,
    /// The last push found the budget used up: the caller waits for a release (see
    /// [`Spool::waits_for_budget`]) or for its reader, then pushes again.
    budget_wait: bool,
    /// Whether a pause was already logged at warn level for this stream.
    warned: bool,
    progress: Arc<Progress>,
}

/// An unlinked file holding the part of the queue after memory. Its `write_at` bytes are
/// charged to the budget until it is closed (the read part stays allocated until then).
struct Spill {
    file: File,
    read_at: u64,
    write_at: u64,
}

impl Spool {
    /// An empty spool; allocates nothing until bytes arrive.
    pub(super) fn new(
        id: &str,
        dir: &Path,
        bound: usize,
        spill_limit: u64,
        budget: Arc<SpillBudget>,
        progress: Arc<Progress>,
    ) -> Spool {
        Spool {
            id: id.to_string(),
            bound: bound.max(1),
            mem: VecDeque::new(),
            dir: dir.to_path_buf(),
            spill: None,
            spill_limit,
            spill_paused: false,
            budget,
            budget_wait: false,
            warned: false,
            progress,
        }
    }

    /// The budget this spool's file draws from.
    pub(super) fn budget(&self) -> &Arc<SpillBudget> {
        &self.budget
    }

    /// Whether the last push was refused only because the shim's spill budget was used
    /// up: a release may let the next push take more.
    pub(super) fn waits_for_budget(&self) -> bool {
        self.budget_wait
    }

    /// Whether nothing is queued.
    pub(super) fn is_empty(&self) -> bool {
        self.mem.is_empty() && self.spill.is_none()
    }

    /// Bytes queued, in memory and on file.
    #[cfg(test)]
    pub(super) fn len(&self) -> u64 {
        self.mem.len() as u64 + self.spill.as_ref().map_or(0, |s| s.write_at - s.read_at)
    }

    /// Appends as much of `data` as it can without breaking the order and returns how much
    /// it took; less than all only while spilling is paused (failed, at its limit, or the
    /// budget used up): the caller keeps the rest and stops reading (back-pressure).
    pub(super) fn push(&mut self, data: &[u8]) -> usize {
        self.budget_wait = false;
        let mut taken = 0;
        if self.spill.is_none() {
            taken = self.push_memory(data);
        }
        if taken < data.len() && !self.spill_paused {
            taken += self.push_spill(&data[taken..]);
        }
        taken
    }

    /// The oldest queued bytes (empty if none), refilling memory from the file if needed.
    pub(super) fn front(&mut self) -> &[u8] {
        if self.mem.is_empty() {
            self.refill();
        }
        self.mem.as_slices().0
    }

    /// Drops the first `n` bytes, which [`Spool::front`] returned.
    pub(super) fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.mem.len());
        self.mem.drain(..n.min(self.mem.len()));
        if self.is_empty() {
            self.release();
        }
    }

    fn push_memory(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.bound - self.mem.len());
        if n == 0 {
            return 0;
        }
        let want = self.mem.len() + n;
        if want > self.mem.capacity() {
            // Grow by doubling but never past the bound: the bound is on resident memory.
            let target = want.max(self.mem.capacity() * 2).min(self.bound);
            self.mem.reserve_exact(target - self.mem.len());
            self.note_capacity();
        }
        self.mem.extend(&data[..n]);
        n
    }

    fn push_spill(&mut self, data: &[u8]) -> usize {
        let room = self.spill_limit - self.spill.as_ref().map_or(0, |s| s.write_at);
        if room == 0 {
            self.pause_spilling(format!(
                "output backlog reached the spill limit ({} bytes on file)",
                self.spill_limit
            ));
            return 0;
        }
        let want = (data.len() as u64).min(room);
        let granted = self.budget.reserve(want);
        // Also when it granted part: the rest is refused for want of budget.
        self.budget_wait = granted < want;
        if granted == 0 {
            self.note_pause(format!(
                "the shim's spill budget ({} bytes for all its processes) is used up",
                self.budget.limit()
            ));
            return 0;
        }
        let data = &data[..granted as usize];
        if self.spill.is_none() {
            match create_spill(&self.dir) {
                Ok(file) => {
                    self.progress.spill_open.fetch_add(1, Ordering::Relaxed);
                    self.progress.spill_created.fetch_add(1, Ordering::Relaxed);
                    self.spill = Some(Spill {
                        file,
                        read_at: 0,
                        write_at: 0,
                    });
                }
                Err(e) => {
                    self.budget.release(granted);
                    self.pause_spilling(format!(
                        "cannot create a spill file in {}: {e}",
                        self.dir.display()
                    ));
                    self.progress.spill_failures.fetch_add(1, Ordering::Relaxed);
                    return 0;
                }
            }
        }
        let Some(spill) = self.spill.as_mut() else {
            self.budget.release(granted);
            return 0;
        };
        let mut written = 0;
        let mut failure = None;
        while written < data.len() {
            match spill.file.write_at(&data[written..], spill.write_at) {
                Ok(0) => {
                    failure = Some(io::Error::from(io::ErrorKind::WriteZero));
                    break;
                }
                Ok(n) => {
                    written += n;
                    spill.write_at += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        self.progress
            .spilled
            .fetch_add(written as u64, Ordering::Relaxed);
        // Only what reached the file stays charged (to the file's `write_at`).
        self.budget.release(granted - written as u64);
        if let Some(e) = failure {
            self.pause_spilling(format!("cannot write the spill file: {e}"));
            self.progress.spill_failures.fetch_add(1, Ordering::Relaxed);
            self.drop_spill_if_drained();
        }
        written
    }

    /// Moves the head of the file into (empty) memory.
    fn refill(&mut self) {
        let Some(spill) = self.spill.as_mut() else {
            return;
        };
        let n = (spill.write_at - spill.read_at).min(REFILL_CHUNK.min(self.bound) as u64) as usize;
        // Exact, not amortized growth: memory is empty here, and must stay within the bound.
        self.mem.reserve_exact(n);
        self.mem.resize(n, 0);
        self.progress
            .spool_peak
            .fetch_max(self.mem.capacity() as u64, Ordering::Relaxed);
        match spill
            .file
            .read_exact_at(self.mem.make_contiguous(), spill.read_at)
        {
            Ok(()) => spill.read_at += n as u64,
            Err(e) => {
                // The bytes on file are unreadable: nothing can bring them back, so say how
                // much was lost and carry on with what comes next.
                log::error!(
                    "container {}: reading the stdio spill file failed: {e}; {} bytes of output lost",
                    self.id,
                    spill.write_at - spill.read_at
                );
                self.mem.clear();
                spill.read_at = spill.write_at;
            }
        }
        self.drop_spill_if_drained();
        if self.is_empty() {
            self.release();
        }
    }

    /// Closes the file once everything on it was read: it is unlinked, so closing frees
    /// its space, and the next spill starts a new one.
    fn drop_spill_if_drained(&mut self) {
        if self.spill.as_ref().is_some_and(|s| s.read_at == s.write_at) {
            self.close_spill();
        }
    }

    /// Closes the spill file, which frees its space, and gives its bytes back.
    fn close_spill(&mut self) {
        if let Some(spill) = self.spill.take() {
            drop(spill.file);
            self.budget.release(spill.write_at);
            self.progress.spill_open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Frees memory once the spool is empty, and allows spilling again.
    fn release(&mut self) {
        self.spill_paused = false;
        self.budget_wait = false;
        let capacity = self.mem.capacity();
        if capacity == 0 {
            return;
        }
        self.mem = VecDeque::new();
        if capacity >= TRIM_ABOVE {
            crate::memory::trim_heap();
        }
    }

    fn pause_spilling(&mut self, why: String) {
        self.spill_paused = true;
        self.note_pause(why);
    }

    /// Logs why the stream's output waits: at warn level once per stream.
    fn note_pause(&mut self, why: String) {
        if self.warned {
            log::debug!("container {}: {why}", self.id);
        } else {
            self.warned = true;
            log::warn!(
                "container {}: {why}; pausing the process's output until containerd has \
                 read the backlog",
                self.id
            );
        }
    }

    fn note_capacity(&self) {
        self.progress
            .spool_peak
            .fetch_max(self.mem.capacity() as u64, Ordering::Relaxed);
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.close_spill();
    }
}

/// A new, private, already unlinked file in `dir`.
fn create_spill(dir: &Path) -> io::Result<File> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    for _ in 0..16 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{SPILL_PREFIX}{}-{n}", std::process::id()));
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => f,
            // Left by a shim killed between open and unlink: take another name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        // Unlinked at once: the bytes live exactly as long as the descriptor, so nothing is
        // left behind even if the shim is killed.
        std::fs::remove_file(&path)?;
        return Ok(file);
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free spill file name",
    ))
}

/// `len` bytes of a pattern from byte offset `from` on: position-dependent with a period
/// far beyond any test size, so loss, duplication and reordering all show.
#[cfg(test)]
pub(super) fn pattern(from: u64, len: usize) -> Vec<u8> {
    (from..from + len as u64)
        .map(|i| (i % 251) as u8 ^ (i / 251 % 256) as u8 ^ (i >> 24) as u8)
        .collect()
}

/// Targets of this process's open fds that are spill files under `dir`.
#[cfg(test)]
pub(super) fn spill_links(dir: &Path) -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.starts_with(&*dir.to_string_lossy()) && p.contains(SPILL_PREFIX))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random sizes (xorshift), so a failure replays.
    struct Sizes(u64);

    impl Sizes {
        fn next(&mut self, max: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            1 + (self.0 % max as u64) as usize
        }
    }

    fn unlimited() -> Arc<SpillBudget> {
        Arc::new(SpillBudget::new(u64::MAX))
    }

    fn take_all(spool: &mut Spool) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let front = spool.front();
            if front.is_empty() {
                return out;
            }
            let n = front.len();
            out.extend_from_slice(front);
            spool.consume(n);
        }
    }

    /// Random pushes and partial takes across many memory → file → memory transitions
    /// come out in order; memory never exceeds the bound and no file outlives its content.
    #[test]
    fn order_survives_every_transition() {
        const BOUND: usize = 1000;
        const TOTAL: u64 = 2_000_000;
        let dir = tempfile::tempdir().unwrap();
        let progress = Arc::new(Progress::default());
        let mut spool = Spool::new(
            "c",
            dir.path(),
            BOUND,
            u64::MAX,
            unlimited(),
            progress.clone(),
        );
        let mut sizes = Sizes(0x9e3779b97f4a7c15);
        let (mut pushed, mut taken) = (0u64, 0u64);
        while taken < TOTAL {
            // Bursts of writes, then bursts of reads, of varying lengths.
            for _ in 0..sizes.next(8) {
                if pushed < TOTAL {
                    let len = sizes.next(700).min((TOTAL - pushed) as usize);
                    assert_eq!(spool.push(&pattern(pushed, len)), len);
                    pushed += len as u64;
                }
                assert!(spool.mem.capacity() <= BOUND, "{}", spool.mem.capacity());
            }
            // Reads outpace writes on average, so the file often drains completely and
            // the next burst starts in memory again.
            for _ in 0..sizes.next(14) {
                let front = spool.front();
                if front.is_empty() {
                    assert_eq!(taken, pushed);
                    break;
                }
                let n = front.len().min(sizes.next(900));
                assert_eq!(&front[..n], &pattern(taken, n)[..], "at byte {taken}");
                spool.consume(n);
                taken += n as u64;
                assert_eq!(spool.len(), pushed - taken);
            }
        }
        assert!(spool.is_empty());
        assert_eq!(spool.mem.capacity(), 0, "memory not released");
        let created = progress.spill_created.load(Ordering::Relaxed);
        assert!(
            created > 10,
            "only {created} spill files: too few transitions"
        );
        assert!(progress.spool_peak.load(Ordering::Relaxed) <= BOUND as u64);
        assert_eq!(progress.spill_open.load(Ordering::Relaxed), 0);
        assert!(spill_links(dir.path()).is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// The spill file is never visible in the directory, and dropping the spool (what
    /// aborting the copy loop does) closes it.
    #[test]
    fn spill_file_is_unlinked_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let progress = Arc::new(Progress::default());
        let mut spool = Spool::new(
            "c",
            dir.path(),
            100,
            u64::MAX,
            unlimited(),
            progress.clone(),
        );
        assert_eq!(spool.push(&pattern(0, 1000)), 1000);
        assert_eq!(progress.spill_open.load(Ordering::Relaxed), 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let links = spill_links(dir.path());
        assert_eq!(links.len(), 1, "{links:?}");
        assert!(links[0].ends_with("(deleted)"), "{links:?}");
        drop(spool);
        assert_eq!(progress.spill_open.load(Ordering::Relaxed), 0);
        assert!(spill_links(dir.path()).is_empty());
    }

    /// A spill file that reached its limit pauses spilling like a failure (nothing lost,
    /// the caller keeps the rest), and a fresh file is allowed once the backlog drained.
    #[test]
    fn spill_limit_means_back_pressure() {
        let dir = tempfile::tempdir().unwrap();
        let progress = Arc::new(Progress::default());
        let mut spool = Spool::new("c", dir.path(), 100, 1000, unlimited(), progress.clone());
        assert_eq!(spool.push(&pattern(0, 2000)), 1100);
        assert_eq!(spool.push(&pattern(1100, 900)), 0);
        assert_eq!(take_all(&mut spool), pattern(0, 1100));
        assert_eq!(spool.push(&pattern(1100, 900)), 900);
        assert_eq!(take_all(&mut spool), pattern(1100, 900));
        assert_eq!(progress.spill_created.load(Ordering::Relaxed), 2);
        assert_eq!(progress.spill_failures.load(Ordering::Relaxed), 0);
    }

    /// Spools sharing a budget spill no more than it holds in all; one that finds it used
    /// up takes only memory and says it waits for budget; closing a drained or dropped file
    /// gives its bytes back.
    #[test]
    fn a_shared_budget_bounds_every_spool() {
        let dir = tempfile::tempdir().unwrap();
        let budget = Arc::new(SpillBudget::new(1000));
        let spool = |budget: &Arc<SpillBudget>| {
            let progress = Arc::new(Progress::default());
            Spool::new("c", dir.path(), 100, u64::MAX, budget.clone(), progress)
        };
        let (mut a, mut b) = (spool(&budget), spool(&budget));
        assert_eq!(a.push(&pattern(0, 700)), 700);
        assert!(!a.waits_for_budget());
        assert_eq!(
            b.push(&pattern(0, 900)),
            500,
            "memory and the rest of the budget"
        );
        assert!(b.waits_for_budget());
        assert_eq!(budget.used(), 1000);
        assert_eq!(a.push(&pattern(700, 100)), 0);
        assert!(a.waits_for_budget());
        assert_eq!(take_all(&mut a), pattern(0, 700));
        assert_eq!(budget.used(), 400, "a drained file keeps its bytes");
        assert_eq!(b.push(&pattern(500, 400)), 400);
        assert!(!b.waits_for_budget());
        assert_eq!(budget.used(), 800);
        drop(b);
        assert_eq!(budget.used(), 0, "a dropped spool keeps its bytes");
        assert_eq!(budget.peak(), 1000);
    }

    /// With nowhere to spill, the spool takes what fits in memory and refuses the rest
    /// (the caller keeps it and stops reading), losing nothing; it tries again once empty.
    #[test]
    fn unusable_spill_dir_means_back_pressure() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        let progress = Arc::new(Progress::default());
        let mut spool = Spool::new("c", &missing, 100, u64::MAX, unlimited(), progress.clone());
        assert_eq!(spool.push(&pattern(0, 150)), 100);
        assert_eq!(
            spool.push(&pattern(100, 50)),
            0,
            "took more than memory holds"
        );
        assert_eq!(spool.front(), &pattern(0, 100)[..]);
        spool.consume(60);
        assert_eq!(spool.push(&pattern(100, 50)), 50);
        assert_eq!(take_all(&mut spool), pattern(60, 90));
        std::fs::create_dir(&missing).unwrap();
        assert_eq!(
            spool.push(&pattern(150, 300)),
            300,
            "did not retry spilling"
        );
        assert_eq!(progress.spill_created.load(Ordering::Relaxed), 1);
    }
}

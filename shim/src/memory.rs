//! Keeping the resident footprint of an idle shim small.
//!
//! A node runs one shim per pod, so every resident page is paid for hundreds of times.
//! The kernel maps file pages around each fault ("fault-around", 64 KiB) and reads ahead;
//! for a shim that executes a small fraction of its binary that makes most of the binary
//! resident. Marking our own executable mappings MADV_RANDOM before most code has run
//! makes only the pages the shim really executes resident. Nothing is evicted, so this
//! costs a few extra minor faults and never slows a hot path down.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Keeps glibc malloc to one arena: the shim's few threads do little allocation, and
/// per-thread arenas would each keep their own free pages resident.
pub fn single_arena() {
    // SAFETY: mallopt only tunes the allocator; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hands freed heap pages back to the kernel. Called after bursts of work (container
/// create, delete, exits) so an idle shim does not keep the peak of its last burst.
pub fn trim_heap() {
    // SAFETY: malloc_trim is thread-safe and only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How long [`trim_heap_soon`] waits: a burst of execs (ExecSync storms) ends in a burst
/// of deletes, and one trim after the last returns more than one per delete.
const TRIM_SOON_DELAY: Duration = Duration::from_millis(200);

/// Whether a [`trim_heap_soon`] trim is pending.
static TRIM_PENDING: AtomicBool = AtomicBool::new(false);

/// [`trim_heap`] shortly, once for any number of calls meanwhile. Needs a tokio runtime;
/// outside one it trims at once.
pub fn trim_heap_soon() {
    if TRIM_PENDING.swap(true, Ordering::AcqRel) {
        return;
    }
    let trim = async {
        tokio::time::sleep(TRIM_SOON_DELAY).await;
        TRIM_PENDING.store(false, Ordering::Release);
        trim_heap();
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn(trim)),
        Err(_) => {
            TRIM_PENDING.store(false, Ordering::Release);
            trim_heap();
        }
    }
}

/// Applies MADV_RANDOM to every mapping of the running executable. Best effort.
pub fn random_access_binary() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for (start, end) in mappings_of(&maps, &exe) {
        // SAFETY: the range is one of our own mappings; MADV_RANDOM changes only paging
        // heuristics, never contents.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_RANDOM);
        }
    }
}

/// Address ranges in /proc/self/maps text that map `path`.
fn mappings_of(maps: &str, path: &Path) -> Vec<(usize, usize)> {
    let want = path.to_string_lossy();
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let name = fields.nth(4)?;
            if name != want {
                return None;
            }
            let (s, e) = range.split_once('-')?;
            Some((
                usize::from_str_radix(s, 16).ok()?,
                usize::from_str_radix(e, 16).ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_our_mappings() {
        let maps = "\
55d0a0000000-55d0a0100000 r--p 00000000 fe:00 123 /usr/bin/shim
55d0a0100000-55d0a0300000 r-xp 00100000 fe:00 123 /usr/bin/shim
7f0000000000-7f0000001000 rw-p 00000000 00:00 0
7f0000001000-7f0000002000 r-xp 00000000 fe:00 9 /usr/lib/libc.so.6
";
        let got = mappings_of(maps, Path::new("/usr/bin/shim"));
        assert_eq!(
            got,
            vec![
                (0x55d0a0000000, 0x55d0a0100000),
                (0x55d0a0100000, 0x55d0a0300000)
            ]
        );
    }

    /// The `VmFlags` of every mapping of `path` in /proc/self/smaps text.
    fn vm_flags_of(smaps: &str, path: &Path) -> Vec<String> {
        let mut ours = false;
        let mut flags = Vec::new();
        for line in smaps.lines() {
            match line.split_once(char::is_whitespace) {
                Some(("VmFlags:", f)) if ours => flags.push(f.trim().to_owned()),
                // A mapping's header is a maps(5) line; its fields are `Name: value`.
                Some((first, _)) if !first.ends_with(':') => {
                    ours = !mappings_of(line, path).is_empty()
                }
                _ => {}
            }
        }
        flags
    }

    /// The kernel shows MADV_RANDOM as `rr` in a mapping's VmFlags (proc(5)).
    #[test]
    fn random_access_marks_every_mapping_of_our_binary() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        random_access_binary();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let flags = vm_flags_of(&smaps, &exe);
        assert!(
            !flags.is_empty(),
            "no mapping of {} in smaps",
            exe.display()
        );
        for f in &flags {
            assert!(f.split_whitespace().any(|f| f == "rr"), "{f:?} of {exe:?}");
        }
    }

    /// Freed heap pages in the middle of the heap stay resident until [`trim_heap`]. Run in
    /// a child (this test binary again) so other tests' allocations do not move the
    /// resident size it measures.
    #[test]
    fn trim_heap_returns_freed_pages_to_the_kernel() {
        const CHILD: &str = "STURDY_TRIM_HEAP_CHILD";
        const BLOCKS: usize = 8192; // of 4 KiB: 32 MiB, in chunks far below the mmap threshold
        const MIB: i64 = 1 << 20;
        fn resident() -> i64 {
            let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
            let pages: i64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
            // SAFETY: sysconf has no memory-safety preconditions.
            pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as i64
        }
        if std::env::var_os(CHILD).is_some() {
            let blocks: Vec<Vec<u8>> = (0..BLOCKS).map(|_| vec![1u8; 4096]).collect();
            // Keeps the freed blocks off the top of the heap, where free() itself would
            // give them back.
            let guard = vec![1u8; 4096];
            let full = resident();
            drop(blocks);
            let freed = resident();
            assert!(
                full - freed < 8 * MIB,
                "free() already gave {} MiB back: nothing left for trim_heap to prove",
                (full - freed) / MIB
            );
            trim_heap();
            let trimmed = resident();
            assert!(
                freed - trimmed > 24 * MIB,
                "trim_heap gave back {} KiB of 32 MiB freed",
                (freed - trimmed) / 1024
            );
            drop(guard);
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "memory::tests::trim_heap_returns_freed_pages_to_the_kernel",
            ])
            .args(["--test-threads=1", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

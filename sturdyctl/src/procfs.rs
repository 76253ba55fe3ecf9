//! What /proc says about a process: its identity (start time and executable), whether it is
//! still alive, and its command line.
//!
//! A pid alone names a process only until it is reaped; the start time (field 22 of
//! `/proc/PID/stat`, clock ticks since boot) and the executable together pin the process
//! discovery saw, so a later signal cannot land on a process that reused the pid.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The process discovery saw: pid, start time and executable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcIdentity {
    /// Process id.
    pub pid: i32,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat).
    pub start_time: u64,
    /// Target of /proc/PID/exe when recorded.
    pub exe: PathBuf,
}

/// State letter and start time from the text of /proc/PID/stat.
pub fn parse_stat(text: &str) -> Option<(char, u64)> {
    // comm (field 2) is parenthesised and may contain spaces and ')': the fields after it
    // start after the last ')'.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 (starttime) is index 19.
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Parent pid (field 4) from the text of /proc/PID/stat.
pub fn parse_ppid(text: &str) -> Option<i32> {
    let (_, rest) = text.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The parent of `pid`, if it exists.
pub fn parent(pid: i32) -> Option<i32> {
    parse_ppid(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// State letter and start time of `pid`, or an error if it does not exist.
pub fn stat(pid: i32) -> std::io::Result<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat: unexpected format"),
        )
    })
}

/// The executable of `pid` (its /proc/PID/exe link).
pub fn exe(pid: i32) -> std::io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
}

/// The identity of `pid` right now.
pub fn identity(pid: i32) -> std::io::Result<ProcIdentity> {
    let (_, start_time) = stat(pid)?;
    Ok(ProcIdentity {
        pid,
        start_time,
        exe: exe(pid)?,
    })
}

/// True if `pid` exists and has not exited (a zombie has: nobody may reap it here).
pub fn alive(pid: i32) -> bool {
    matches!(stat(pid), Ok((state, _)) if state != 'Z' && state != 'X')
}

/// The command line of `pid`, one string per argument; empty if unreadable.
pub fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| split_cmdline(&raw))
        .unwrap_or_default()
}

/// Splits a NUL-separated /proc cmdline.
pub fn split_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The value after `flag` in a command line (`-id X`), if present.
pub fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.windows(2)
        .find(|w| w[0] == flag)
        .map(|w| w[1].as_str())
}

/// Every numeric entry of /proc.
pub fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// When a process that started `start_time` clock ticks after boot started, in ms since
/// the Unix epoch (whole-second precision: /proc/stat gives the boot time in seconds).
pub fn start_epoch_ms(start_time: u64) -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0)?;
    Some(btime * 1000 + start_time.saturating_mul(1000) / hz)
}

/// The executable path without the " (deleted)" the kernel appends once the file is gone.
pub fn live_path(exe: &Path) -> PathBuf {
    let s = exe.to_string_lossy();
    PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let text = "25244 (containerd-shim) S 1 25244 25244 0 -1 4194304 732 2986 0 0 1 0 1 2 20 0 3 0 559244 21524480 2997";
        assert_eq!(parse_stat(text), Some(('S', 559244)));
        let odd = "7 (a) b) (c) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42 0 0";
        assert_eq!(parse_stat(odd), Some(('Z', 42)));
        assert_eq!(parse_stat("7 (short) S 1"), None);
    }

    #[test]
    fn own_identity_and_flags() {
        let me = identity(std::process::id() as i32).unwrap();
        assert!(me.start_time > 0);
        assert!(alive(me.pid));
        let args = split_cmdline(b"/bin/shim\0-namespace\0k8s.io\0-id\0abc\0\0");
        assert_eq!(flag(&args, "-id"), Some("abc"));
        assert_eq!(flag(&args, "-address"), None);
        assert_eq!(
            live_path(Path::new("/usr/bin/x (deleted)")),
            PathBuf::from("/usr/bin/x")
        );
    }
}

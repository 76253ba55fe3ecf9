//! What the benchmarks measure: a process's memory, and percentiles of samples.

/// Memory of one process from `/proc/PID/smaps_rollup`, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    /// Resident set size.
    pub rss: u64,
    /// Proportional set size: shared pages divided among their users.
    pub pss: u64,
    /// Unique set size: pages no other process maps.
    pub uss: u64,
}

/// The memory of `pid`; `None` if its smaps_rollup cannot be read (gone, or no such file).
pub fn mem_of(pid: i32) -> Option<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(Mem {
        rss: field("Rss:"),
        pss: field("Pss:"),
        uss: field("Private_Clean:") + field("Private_Dirty:"),
    })
}

/// The `p`th percentile (nearest rank) of `v`, which it sorts; NaN for no samples.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((p / 100.0) * (v.len() - 1) as f64).round() as usize]
}

/// The number given after `name` in a benchmark's command line, else `default`.
pub fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.windows(2)
        .find(|w| w[0] == name)
        .map(|w| w[1].parse().unwrap_or_else(|_| panic!("{name}: a number")))
        .unwrap_or(default)
}

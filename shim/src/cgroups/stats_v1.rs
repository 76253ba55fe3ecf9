//! cgroup v1 statistics as containerd's `io.containerd.cgroups.v1.Metrics`, with the
//! meanings its own collector gives them: CPU time in nanoseconds, an unlimited pids.max
//! as 0, block IO from the CFQ/BFQ files or else the throttle counters, device names from
//! /proc/partitions.

use std::collections::HashMap;
use std::path::Path;

use containerd_shim_protos::cgroups::metrics::{
    BlkIOEntry, BlkIOStat, CPUStat, CPUUsage, HugetlbStat, MemoryEntry, MemoryOomControl,
    MemoryStat, Metrics, PidsStat, Throttle,
};
use containerd_shim_protos::protobuf::MessageField;

use super::files::{self, flat_keyed, number};
use super::{Cgroup, CgroupError};

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The metrics of a v1 cgroup, device names taken from the host's /proc/partitions.
pub fn collect(cg: &Cgroup) -> Result<Metrics, CgroupError> {
    collect_with(cg, Path::new("/proc/partitions"))
}

/// [`collect`] with the partitions table at `partitions` (tests use a fixture).
pub fn collect_with(cg: &Cgroup, partitions: &Path) -> Result<Metrics, CgroupError> {
    let mut m = Metrics::new();
    if let Some(dir) = cg.v1_dir("pids") {
        m.pids = pids(dir)?;
    }
    m.cpu = cpu(cg.v1_dir("cpuacct"), cg.v1_dir("cpu"))?;
    if let Some(dir) = cg.v1_dir("memory") {
        (m.memory, m.memory_oom_control) = memory(dir)?;
    }
    if let Some(dir) = cg.v1_dir("blkio") {
        m.blkio = blkio(dir, partitions)?;
    }
    if let Some(dir) = cg.v1_dir("hugetlb") {
        m.hugetlb = hugetlb(dir)?;
    }
    Ok(m)
}

fn pids(dir: &Path) -> Result<MessageField<PidsStat>, CgroupError> {
    let Some(current) = number(&dir.join("pids.current"), 0)? else {
        return Ok(MessageField::none());
    };
    Ok(MessageField::some(PidsStat {
        current,
        limit: number(&dir.join("pids.max"), 0)?.unwrap_or_default(),
        ..Default::default()
    }))
}

/// USER_HZ: cpuacct.stat counts in these ticks.
fn clock_ticks() -> u128 {
    // SAFETY: sysconf only reads a configuration value.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as u128,
        _ => 100,
    }
}

fn ticks_to_nanos(ticks: u64, hz: u128) -> u64 {
    (ticks as u128 * NANOS_PER_SEC / hz).min(u64::MAX as u128) as u64
}

fn cpu(acct: Option<&Path>, cpu: Option<&Path>) -> Result<MessageField<CPUStat>, CgroupError> {
    let mut stat = CPUStat::new();
    let mut found = false;
    if let Some(dir) = acct {
        if let Some(total) = number(&dir.join("cpuacct.usage"), 0)? {
            found = true;
            let mut usage = CPUUsage {
                total,
                ..Default::default()
            };
            let path = dir.join("cpuacct.usage_percpu");
            if let Some(text) = files::read(&path)? {
                usage.per_cpu = text
                    .split_whitespace()
                    .map(|v| files::parse_number(&path, v, 0))
                    .collect::<Result<_, _>>()?;
            }
            let hz = clock_ticks();
            flat_keyed(&dir.join("cpuacct.stat"), |k, v| match k {
                "user" => usage.user = ticks_to_nanos(v, hz),
                "system" => usage.kernel = ticks_to_nanos(v, hz),
                _ => {}
            })?;
            stat.usage = MessageField::some(usage);
        }
    }
    if let Some(dir) = cpu {
        let mut t = Throttle::new();
        let present = flat_keyed(&dir.join("cpu.stat"), |k, v| match k {
            "nr_periods" => t.periods = v,
            "nr_throttled" => t.throttled_periods = v,
            "throttled_time" => t.throttled_time = v,
            _ => {}
        })?;
        if present {
            found = true;
            stat.throttling = MessageField::some(t);
        }
    }
    Ok(if found {
        MessageField::some(stat)
    } else {
        MessageField::none()
    })
}

type MemoryParts = (MessageField<MemoryStat>, MessageField<MemoryOomControl>);

fn memory(dir: &Path) -> Result<MemoryParts, CgroupError> {
    let mut s = MemoryStat::new();
    if !flat_keyed(&dir.join("memory.stat"), |k, v| {
        set_memory_stat(&mut s, k, v)
    })? {
        return Ok((MessageField::none(), MessageField::none()));
    }
    s.usage = entry(dir, "memory")?;
    // Absent without swap accounting (swapaccount=0) and on kernels without kmem.
    s.swap = entry(dir, "memory.memsw")?;
    s.kernel = entry(dir, "memory.kmem")?;
    s.kernel_tcp = entry(dir, "memory.kmem.tcp")?;
    let mut oom = MemoryOomControl::new();
    let present = flat_keyed(&dir.join("memory.oom_control"), |k, v| match k {
        "oom_kill_disable" => oom.oom_kill_disable = v,
        "under_oom" => oom.under_oom = v,
        "oom_kill" => oom.oom_kill = v,
        _ => {}
    })?;
    let oom = if present {
        MessageField::some(oom)
    } else {
        MessageField::none()
    };
    Ok((MessageField::some(s), oom))
}

fn set_memory_stat(s: &mut MemoryStat, key: &str, v: u64) {
    let field = match key {
        "cache" => &mut s.cache,
        "rss" => &mut s.rss,
        "rss_huge" => &mut s.rss_huge,
        "mapped_file" => &mut s.mapped_file,
        "dirty" => &mut s.dirty,
        "writeback" => &mut s.writeback,
        "pgpgin" => &mut s.pg_pg_in,
        "pgpgout" => &mut s.pg_pg_out,
        "pgfault" => &mut s.pg_fault,
        "pgmajfault" => &mut s.pg_maj_fault,
        "inactive_anon" => &mut s.inactive_anon,
        "active_anon" => &mut s.active_anon,
        "inactive_file" => &mut s.inactive_file,
        "active_file" => &mut s.active_file,
        "unevictable" => &mut s.unevictable,
        "hierarchical_memory_limit" => &mut s.hierarchical_memory_limit,
        "hierarchical_memsw_limit" => &mut s.hierarchical_swap_limit,
        "total_cache" => &mut s.total_cache,
        "total_rss" => &mut s.total_rss,
        "total_rss_huge" => &mut s.total_rss_huge,
        "total_mapped_file" => &mut s.total_mapped_file,
        "total_dirty" => &mut s.total_dirty,
        "total_writeback" => &mut s.total_writeback,
        "total_pgpgin" => &mut s.total_pg_pg_in,
        "total_pgpgout" => &mut s.total_pg_pg_out,
        "total_pgfault" => &mut s.total_pg_fault,
        "total_pgmajfault" => &mut s.total_pg_maj_fault,
        "total_inactive_anon" => &mut s.total_inactive_anon,
        "total_active_anon" => &mut s.total_active_anon,
        "total_inactive_file" => &mut s.total_inactive_file,
        "total_active_file" => &mut s.total_active_file,
        "total_unevictable" => &mut s.total_unevictable,
        _ => return,
    };
    *field = v;
}

/// usage/limit/max/failcnt of `<prefix>.*_in_bytes`; none when the usage file is absent.
fn entry(dir: &Path, prefix: &str) -> Result<MessageField<MemoryEntry>, CgroupError> {
    let file = |name: &str| dir.join(format!("{prefix}.{name}"));
    let Some(usage) = number(&file("usage_in_bytes"), u64::MAX)? else {
        return Ok(MessageField::none());
    };
    Ok(MessageField::some(MemoryEntry {
        usage,
        limit: number(&file("limit_in_bytes"), u64::MAX)?.unwrap_or_default(),
        max: number(&file("max_usage_in_bytes"), u64::MAX)?.unwrap_or_default(),
        failcnt: number(&file("failcnt"), u64::MAX)?.unwrap_or_default(),
        ..Default::default()
    }))
}

/// major:minor → /dev/<name>, from /proc/partitions (two header lines, then
/// `major minor #blocks name`).
fn devices(path: &Path) -> Result<HashMap<(u64, u64), String>, CgroupError> {
    let mut map = HashMap::new();
    let Some(text) = files::read(path)? else {
        return Ok(map);
    };
    for line in text.lines().skip(2) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [major, minor, _, name] = f[..] {
            if let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) {
                map.entry((major, minor))
                    .or_insert_with(|| format!("/dev/{name}"));
            }
        }
    }
    Ok(map)
}

/// One blkio file: `major:minor [op] value` lines and a `Total value` line (skipped).
fn blkio_entries(
    path: &Path,
    devices: &mut Option<HashMap<(u64, u64), String>>,
    partitions: &Path,
) -> Result<Vec<BlkIOEntry>, CgroupError> {
    let Some(text) = files::read(path)? else {
        return Ok(Vec::new());
    };
    let bad = |line: &str| CgroupError::Parse {
        path: path.to_path_buf(),
        text: line.to_string(),
    };
    let mut entries = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dev, op, value) = match f[..] {
            ["Total", _] => continue,
            [dev, value] => (dev, "", value),
            [dev, op, value] => (dev, op, value),
            _ => return Err(bad(line)),
        };
        let (major, minor) = dev.split_once(':').ok_or_else(|| bad(line))?;
        let major: u64 = major.parse().map_err(|_| bad(line))?;
        let minor: u64 = minor.parse().map_err(|_| bad(line))?;
        if devices.is_none() {
            *devices = Some(self::devices(partitions)?);
        }
        let device = devices
            .as_ref()
            .and_then(|d| d.get(&(major, minor)).cloned())
            .unwrap_or_default();
        entries.push(BlkIOEntry {
            op: op.to_string(),
            device,
            major,
            minor,
            value: files::parse_number(path, value, u64::MAX)?,
            ..Default::default()
        });
    }
    Ok(entries)
}

fn blkio(dir: &Path, partitions: &Path) -> Result<MessageField<BlkIOStat>, CgroupError> {
    let mut s = BlkIOStat::new();
    let mut devs = None;
    let mut read = |name: &str| blkio_entries(&dir.join(name), &mut devs, partitions);
    // The CFQ/BFQ files exist only with those schedulers; the throttle counters always.
    if dir.join("blkio.io_serviced_recursive").exists() {
        s.sectors_recursive = read("blkio.sectors_recursive")?;
        s.io_service_bytes_recursive = read("blkio.io_service_bytes_recursive")?;
        s.io_serviced_recursive = read("blkio.io_serviced_recursive")?;
        s.io_queued_recursive = read("blkio.io_queued_recursive")?;
        s.io_service_time_recursive = read("blkio.io_service_time_recursive")?;
        s.io_wait_time_recursive = read("blkio.io_wait_time_recursive")?;
        s.io_merged_recursive = read("blkio.io_merged_recursive")?;
        s.io_time_recursive = read("blkio.time_recursive")?;
    }
    let cfq = [
        &s.sectors_recursive,
        &s.io_service_bytes_recursive,
        &s.io_serviced_recursive,
        &s.io_queued_recursive,
        &s.io_service_time_recursive,
        &s.io_wait_time_recursive,
        &s.io_merged_recursive,
        &s.io_time_recursive,
    ];
    if cfq.iter().all(|v| v.is_empty()) {
        s.io_serviced_recursive = read("blkio.throttle.io_serviced")?;
        s.io_service_bytes_recursive = read("blkio.throttle.io_service_bytes")?;
    }
    Ok(MessageField::some(s))
}

fn hugetlb(dir: &Path) -> Result<Vec<HugetlbStat>, CgroupError> {
    files::hugepage_sizes(dir, "usage_in_bytes")?
        .into_iter()
        .map(|size| {
            let file = |name: &str| dir.join(format!("hugetlb.{size}.{name}"));
            Ok(HugetlbStat {
                usage: number(&file("usage_in_bytes"), u64::MAX)?.unwrap_or_default(),
                max: number(&file("max_usage_in_bytes"), u64::MAX)?.unwrap_or_default(),
                failcnt: number(&file("failcnt"), u64::MAX)?.unwrap_or_default(),
                pagesize: size,
                ..Default::default()
            })
        })
        .collect()
}

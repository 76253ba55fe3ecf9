//! cgroup v2 statistics as containerd's `io.containerd.cgroups.v2.Metrics`, with the
//! meanings its own collector gives them: CPU time in microseconds as the kernel counts
//! it, `max` limits as u64::MAX.

use std::path::Path;

use containerd_shim_protos::cgroups_v2::metrics::{
    CPUStat, HugeTlbStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PSIData, PSIStats,
    PidsStat,
};
use containerd_shim_protos::protobuf::MessageField;

use super::files::{self, flat_keyed, number};
use super::CgroupError;

/// The metrics of the v2 cgroup `dir`.
pub fn collect(dir: &Path) -> Result<Metrics, CgroupError> {
    let mut m = Metrics::new();
    if let Some(current) = number(&dir.join("pids.current"), u64::MAX)? {
        m.pids = MessageField::some(PidsStat {
            current,
            limit: number(&dir.join("pids.max"), u64::MAX)?.unwrap_or_default(),
            ..Default::default()
        });
    }
    m.cpu = cpu(dir)?;
    m.memory = memory(dir)?;
    let mut events = MemoryEvents::new();
    if flat_keyed(&dir.join("memory.events"), |k, v| match k {
        "low" => events.low = v,
        "high" => events.high = v,
        "max" => events.max = v,
        "oom" => events.oom = v,
        "oom_kill" => events.oom_kill = v,
        "oom_group_kill" => events.oom_group_kill = v,
        _ => {}
    })? {
        m.memory_events = MessageField::some(events);
    }
    m.io = io(dir)?;
    m.hugetlb = hugetlb(dir)?;
    Ok(m)
}

fn cpu(dir: &Path) -> Result<MessageField<CPUStat>, CgroupError> {
    let mut s = CPUStat::new();
    // cpu.stat is there in every cgroup, whether the cpu controller is enabled or not.
    if !flat_keyed(&dir.join("cpu.stat"), |k, v| match k {
        "usage_usec" => s.usage_usec = v,
        "user_usec" => s.user_usec = v,
        "system_usec" => s.system_usec = v,
        "nr_periods" => s.nr_periods = v,
        "nr_throttled" => s.nr_throttled = v,
        "throttled_usec" => s.throttled_usec = v,
        "nr_bursts" => s.nr_bursts = v,
        "burst_usec" => s.burst_usec = v,
        _ => {}
    })? {
        return Ok(MessageField::none());
    }
    s.psi = psi(&dir.join("cpu.pressure"))?;
    Ok(MessageField::some(s))
}

fn memory(dir: &Path) -> Result<MessageField<MemoryStat>, CgroupError> {
    let mut s = MemoryStat::new();
    if !flat_keyed(&dir.join("memory.stat"), |k, v| {
        set_memory_stat(&mut s, k, v)
    })? {
        return Ok(MessageField::none());
    }
    let n = |name: &str| number(&dir.join(name), u64::MAX);
    s.usage = n("memory.current")?.unwrap_or_default();
    s.usage_limit = n("memory.max")?.unwrap_or_default();
    s.swap_usage = n("memory.swap.current")?.unwrap_or_default();
    s.swap_limit = n("memory.swap.max")?.unwrap_or_default();
    // The peaks exist from Linux 5.19 (memory.peak) and 6.5 (memory.swap.peak).
    s.max_usage = n("memory.peak")?.unwrap_or_default();
    s.swap_max_usage = n("memory.swap.peak")?.unwrap_or_default();
    s.psi = psi(&dir.join("memory.pressure"))?;
    Ok(MessageField::some(s))
}

fn set_memory_stat(s: &mut MemoryStat, key: &str, v: u64) {
    let field = match key {
        "anon" => &mut s.anon,
        "file" => &mut s.file,
        "kernel_stack" => &mut s.kernel_stack,
        "slab" => &mut s.slab,
        "sock" => &mut s.sock,
        "shmem" => &mut s.shmem,
        "file_mapped" => &mut s.file_mapped,
        "file_dirty" => &mut s.file_dirty,
        "file_writeback" => &mut s.file_writeback,
        "anon_thp" => &mut s.anon_thp,
        "inactive_anon" => &mut s.inactive_anon,
        "active_anon" => &mut s.active_anon,
        "inactive_file" => &mut s.inactive_file,
        "active_file" => &mut s.active_file,
        "unevictable" => &mut s.unevictable,
        "slab_reclaimable" => &mut s.slab_reclaimable,
        "slab_unreclaimable" => &mut s.slab_unreclaimable,
        "pgfault" => &mut s.pgfault,
        "pgmajfault" => &mut s.pgmajfault,
        "workingset_refault" => &mut s.workingset_refault,
        "workingset_activate" => &mut s.workingset_activate,
        "workingset_nodereclaim" => &mut s.workingset_nodereclaim,
        "pgrefill" => &mut s.pgrefill,
        "pgscan" => &mut s.pgscan,
        "pgsteal" => &mut s.pgsteal,
        "pgactivate" => &mut s.pgactivate,
        "pgdeactivate" => &mut s.pgdeactivate,
        "pglazyfree" => &mut s.pglazyfree,
        "pglazyfreed" => &mut s.pglazyfreed,
        "thp_fault_alloc" => &mut s.thp_fault_alloc,
        "thp_collapse_alloc" => &mut s.thp_collapse_alloc,
        _ => return,
    };
    *field = v;
}

/// A pressure file: `some avg10=… avg60=… avg300=… total=…` and a `full …` line.
fn psi(path: &Path) -> Result<MessageField<PSIStats>, CgroupError> {
    let Some(text) = files::read(path)? else {
        return Ok(MessageField::none());
    };
    let mut stats = PSIStats::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let which = fields.next().unwrap_or_default();
        let mut data = PSIData::new();
        files::nested_fields(path, fields, |k, v| {
            let avg = || {
                v.parse::<f64>().map_err(|_| CgroupError::Parse {
                    path: path.to_path_buf(),
                    text: line.to_string(),
                })
            };
            match k {
                "avg10" => data.avg10 = avg()?,
                "avg60" => data.avg60 = avg()?,
                "avg300" => data.avg300 = avg()?,
                "total" => data.total = files::parse_number(path, v, u64::MAX)?,
                _ => {}
            }
            Ok(())
        })?;
        match which {
            "some" => stats.some = MessageField::some(data),
            "full" => stats.full = MessageField::some(data),
            _ => {}
        }
    }
    Ok(MessageField::some(stats))
}

/// io.stat: `major:minor rbytes=… wbytes=… rios=… wios=… dbytes=… dios=…` per device.
fn io(dir: &Path) -> Result<MessageField<IOStat>, CgroupError> {
    let path = dir.join("io.stat");
    let mut s = IOStat::new();
    if let Some(text) = files::read(&path)? {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let bad = || CgroupError::Parse {
                path: path.clone(),
                text: line.to_string(),
            };
            let mut fields = line.split_whitespace();
            let (major, minor) = fields
                .next()
                .and_then(|d| d.split_once(':'))
                .ok_or_else(bad)?;
            let mut e = IOEntry {
                major: major.parse().map_err(|_| bad())?,
                minor: minor.parse().map_err(|_| bad())?,
                ..Default::default()
            };
            files::nested_fields(&path, fields, |k, v| {
                let v = files::parse_number(&path, v, u64::MAX)?;
                match k {
                    "rbytes" => e.rbytes = v,
                    "wbytes" => e.wbytes = v,
                    "rios" => e.rios = v,
                    "wios" => e.wios = v,
                    _ => {}
                }
                Ok(())
            })?;
            s.usage.push(e);
        }
    }
    s.psi = psi(&dir.join("io.pressure"))?;
    Ok(MessageField::some(s))
}

fn hugetlb(dir: &Path) -> Result<Vec<HugeTlbStat>, CgroupError> {
    files::hugepage_sizes(dir, "current")?
        .into_iter()
        .map(|size| {
            let file = |name: &str| dir.join(format!("hugetlb.{size}.{name}"));
            let mut failcnt = 0;
            flat_keyed(&file("events"), |k, v| {
                if k == "max" {
                    failcnt = v;
                }
            })?;
            Ok(HugeTlbStat {
                current: number(&file("current"), u64::MAX)?.unwrap_or_default(),
                max: number(&file("max"), u64::MAX)?.unwrap_or_default(),
                pagesize: size,
                failcnt,
                ..Default::default()
            })
        })
        .collect()
}

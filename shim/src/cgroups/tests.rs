//! The v1 and v2 readers against fixture files (testdata/): this host is cgroup v1 hybrid,
//! so v2 can only be tested this way, and fixtures pin the exact field mapping for both.

use super::*;
use containerd_shim_protos::cgroups::metrics::Metrics as V1Metrics;
use containerd_shim_protos::cgroups_v2::metrics::Metrics as V2Metrics;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cgroups/testdata")
}

fn v1_fixture(base: &Path) -> Cgroup {
    let map = ["memory", "cpu", "cpuacct", "pids", "blkio", "hugetlb"]
        .into_iter()
        .map(|c| (c.to_string(), base.join(c)))
        .collect();
    Cgroup::V1(map)
}

/// A copy of testdata/<name> (in `<tmp>/<name>`) that a test may change or remove.
/// Copied here, not by `cp`: the process-wide reaper of the other tests would take the
/// exit status a `Command::status` waits for.
pub(crate) fn copy_fixture(name: &str) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    copy(&testdata().join(name), &tmp.path().join(name));
    tmp
}

#[test]
fn v1_metrics_from_fixture() {
    let cg = v1_fixture(&testdata().join("v1"));
    let m = stats_v1::collect_with(&cg, &testdata().join("partitions")).unwrap();

    let pids = m.pids.as_ref().expect("pids");
    assert_eq!(
        (pids.current, pids.limit),
        (5, 0),
        "pids.max 'max' reads as 0"
    );

    let cpu = m.cpu.as_ref().expect("cpu");
    let usage = cpu.usage.as_ref().expect("cpu usage");
    assert_eq!(usage.total, 9019547659574);
    assert_eq!(usage.per_cpu, [4306386307528, 4713161352046]);
    // cpuacct.stat counts USER_HZ ticks (100 on Linux).
    assert_eq!(usage.user, 642911 * 10_000_000);
    assert_eq!(usage.kernel, 259043 * 10_000_000);
    let t = cpu.throttling.as_ref().expect("throttling");
    assert_eq!(
        (t.periods, t.throttled_periods, t.throttled_time),
        (40, 7, 123456789)
    );

    let mem = m.memory.as_ref().expect("memory");
    assert_eq!(
        (mem.cache, mem.rss, mem.rss_huge),
        (12738560, 7847936, 2097152)
    );
    assert_eq!((mem.pg_pg_in, mem.pg_pg_out), (152288, 147262));
    assert_eq!((mem.pg_fault, mem.pg_maj_fault), (249177, 12));
    assert_eq!((mem.inactive_file, mem.active_file), (282624, 3387392));
    assert_eq!(mem.hierarchical_memory_limit, 67108864);
    assert_eq!(mem.hierarchical_swap_limit, 9223372036854771712);
    assert_eq!(mem.total_inactive_file, 6653530112);
    assert_eq!(mem.total_rss_huge, 4194304);
    assert_eq!(mem.total_writeback, 8192);
    let usage = mem.usage.as_ref().expect("usage entry");
    assert_eq!(
        (usage.usage, usage.limit, usage.max, usage.failcnt),
        (20586496, 67108864, 33554432, 3)
    );
    assert_eq!(mem.swap.as_ref().expect("memsw").usage, 20590592);
    assert_eq!(mem.kernel.as_ref().expect("kmem").max, 2097152);
    assert!(
        mem.kernel_tcp.is_none(),
        "absent kmem.tcp files read as no entry"
    );
    let oom = m.memory_oom_control.as_ref().expect("oom control");
    assert_eq!(
        (oom.oom_kill_disable, oom.under_oom, oom.oom_kill),
        (0, 0, 2)
    );

    // No CFQ/BFQ-style io_serviced_recursive counts: the throttle counters stand in.
    let blkio = m.blkio.as_ref().expect("blkio");
    let bytes = &blkio.io_service_bytes_recursive;
    assert_eq!(bytes.len(), 8, "{bytes:?}");
    assert_eq!(
        (bytes[0].device.as_str(), bytes[0].major, bytes[0].minor),
        ("/dev/vda", 254, 0)
    );
    assert_eq!((bytes[1].op.as_str(), bytes[1].value), ("Write", 4096));
    assert_eq!(bytes[6].device, "/dev/sdb");
    assert_eq!(blkio.io_serviced_recursive.len(), 3);
    assert!(blkio.io_queued_recursive.is_empty());

    // Sizes from the file names, reservation files skipped, sorted.
    let huge: Vec<_> = m
        .hugetlb
        .iter()
        .map(|h| (h.pagesize.as_str(), h.usage, h.max, h.failcnt))
        .collect();
    assert_eq!(huge, [("1GB", 0, 0, 0), ("2MB", 2097152, 4194304, 1)]);
}

#[test]
fn v1_metrics_as_the_any_containerd_expects() {
    let any = v1_fixture(&testdata().join("v1")).metrics().unwrap();
    assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
    let m = V1Metrics::parse_from_bytes(&any.value).unwrap();
    assert_eq!(m.memory.usage.usage, 20586496);
    assert_eq!(m.cpu.usage.total, 9019547659574);
}

#[test]
fn v2_metrics_from_fixture() {
    let any = Cgroup::V2(testdata().join("v2")).metrics().unwrap();
    assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
    let m = V2Metrics::parse_from_bytes(&any.value).unwrap();

    assert_eq!((m.pids.current, m.pids.limit), (5, 100));
    let cpu = m.cpu.as_ref().expect("cpu");
    assert_eq!(
        (cpu.usage_usec, cpu.user_usec, cpu.system_usec),
        (8431224, 6123456, 2307768)
    );
    assert_eq!(
        (cpu.nr_periods, cpu.nr_throttled, cpu.throttled_usec),
        (10, 2, 5000)
    );
    assert_eq!((cpu.nr_bursts, cpu.burst_usec), (1, 300));
    assert_eq!(cpu.psi.some.avg10, 1.5);
    assert_eq!(cpu.psi.some.total, 123456);

    let mem = m.memory.as_ref().expect("memory");
    assert_eq!((mem.anon, mem.file, mem.sock), (7847936, 12738560, 4096));
    assert_eq!((mem.inactive_file, mem.active_file), (282624, 3387392));
    assert_eq!((mem.slab, mem.kernel_stack), (512000, 98304));
    assert_eq!((mem.pgfault, mem.pgmajfault), (249177, 12));
    assert_eq!(mem.workingset_nodereclaim, 5);
    assert_eq!((mem.pglazyfree, mem.pglazyfreed), (10, 11));
    assert_eq!(mem.usage, 20586496);
    assert_eq!(mem.usage_limit, u64::MAX, "memory.max 'max' is no limit");
    assert_eq!((mem.swap_usage, mem.swap_limit), (4096, u64::MAX));
    assert_eq!(mem.max_usage, 33554432);
    assert_eq!(
        mem.swap_max_usage, 0,
        "no memory.swap.peak on older kernels"
    );
    assert_eq!(mem.psi.full.total, 555);

    let ev = m.memory_events.as_ref().expect("memory events");
    assert_eq!(
        (
            ev.low,
            ev.high,
            ev.max,
            ev.oom,
            ev.oom_kill,
            ev.oom_group_kill
        ),
        (0, 4, 9, 3, 2, 0)
    );

    let io: Vec<_> =
        m.io.usage
            .iter()
            .map(|e| (e.major, e.minor, e.rbytes, e.wbytes, e.rios, e.wios))
            .collect();
    assert_eq!(io, [(254, 0, 1024, 4096, 2, 3), (8, 16, 512, 0, 1, 0)]);
    assert_eq!(m.io.psi.some.total, 42);

    let huge: Vec<_> = m
        .hugetlb
        .iter()
        .map(|h| (h.pagesize.as_str(), h.current, h.max, h.failcnt))
        .collect();
    assert_eq!(huge, [("2MB", 2097152, u64::MAX, 1)]);
}

#[test]
fn a_removed_cgroup_is_gone_not_zero() {
    let tmp = copy_fixture("v2");
    let cg = Cgroup::V2(tmp.path().join("v2"));
    cg.metrics().unwrap();
    std::fs::remove_dir_all(tmp.path().join("v2")).unwrap();
    assert!(matches!(cg.metrics(), Err(CgroupError::Gone(_))));

    let tmp = copy_fixture("v1");
    let cg = v1_fixture(&tmp.path().join("v1"));
    cg.metrics().unwrap();
    std::fs::remove_dir_all(tmp.path().join("v1")).unwrap();
    assert!(matches!(cg.metrics(), Err(CgroupError::Gone(_))));
}

#[test]
fn garbage_in_a_cgroup_file_is_an_error() {
    let tmp = copy_fixture("v2");
    let dir = tmp.path().join("v2");
    std::fs::write(dir.join("memory.stat"), "anon twelve\n").unwrap();
    let err = Cgroup::V2(dir.clone()).metrics().unwrap_err();
    assert!(
        matches!(&err, CgroupError::Parse { path, .. } if path.ends_with("memory.stat")),
        "{err}"
    );
    std::fs::write(dir.join("memory.stat"), "anon 1\n").unwrap();
    std::fs::write(dir.join("io.stat"), "254:0 rbytes\n").unwrap();
    assert!(matches!(
        Cgroup::V2(dir).metrics(),
        Err(CgroupError::Parse { .. })
    ));
}

#[test]
fn paths_from_runc_state() {
    let hybrid: HashMap<String, PathBuf> = [
        ("memory", "/sys/fs/cgroup/memory/k8s.io/c1"),
        ("cpu", "/sys/fs/cgroup/cpu,cpuacct/k8s.io/c1"),
        ("cpuacct", "/sys/fs/cgroup/cpu,cpuacct/k8s.io/c1"),
        ("name=systemd", "/sys/fs/cgroup/systemd/k8s.io/c1"),
        ("freezer", "/sys/fs/cgroup/freezer/k8s.io/c1"),
        ("", "/sys/fs/cgroup/unified/k8s.io/c1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
    .collect();
    let cg = Cgroup::from_runc_paths(&hybrid).unwrap();
    assert_eq!(
        cg.v1_dir("memory"),
        Some(Path::new("/sys/fs/cgroup/memory/k8s.io/c1"))
    );
    assert_eq!(cg.v1_dir("freezer"), None, "only what the metrics read");
    assert!(matches!(&cg, Cgroup::V1(m) if m.len() == 3));

    let unified: HashMap<String, PathBuf> =
        [(String::new(), PathBuf::from("/sys/fs/cgroup/k8s.io/c1"))].into();
    assert_eq!(
        Cgroup::from_runc_paths(&unified),
        Some(Cgroup::V2("/sys/fs/cgroup/k8s.io/c1".into()))
    );
    assert_eq!(Cgroup::from_runc_paths(&HashMap::new()), None);
}

#[test]
fn paths_from_proc_cgroup() {
    let root = tempfile::tempdir().unwrap();
    let v1 = "12:pids:/k8s.io/c1\n4:cpu,cpuacct:/k8s.io/c1\n3:memory:/k8s.io/c1\n\
              1:name=systemd:/k8s.io/c1\n0::/k8s.io/c1\n";
    let cg = Cgroup::from_proc(v1, root.path()).unwrap();
    assert_eq!(
        cg.v1_dir("cpuacct"),
        Some(root.path().join("cpu,cpuacct/k8s.io/c1").as_path())
    );
    assert_eq!(
        cg.v1_dir("memory"),
        Some(root.path().join("memory/k8s.io/c1").as_path())
    );

    std::fs::write(root.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
    assert_eq!(
        Cgroup::from_proc("0::/k8s.io/c1\n", root.path()),
        Some(Cgroup::V2(root.path().join("k8s.io/c1")))
    );
}

#[test]
fn located_from_runc_state_json() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("c1")).unwrap();
    std::fs::write(
        root.path().join("c1/state.json"),
        r#"{"id":"c1","init_process_pid":1,"cgroup_paths":{"":"/x/c1"},"config":{}}"#,
    )
    .unwrap();
    assert_eq!(
        Cgroup::locate(root.path(), "c1", 0).unwrap(),
        Cgroup::V2("/x/c1".into())
    );
    // No runc record and no init: nothing to go by.
    assert!(matches!(
        Cgroup::locate(root.path(), "c2", 0),
        Err(CgroupError::Unknown)
    ));
}

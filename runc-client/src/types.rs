//! Typed forms of runc's JSON output: state, events and stats.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

/// runc prints `null` for empty maps and lists; treat that like an absent field.
fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Output of `runc state`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Container id.
    pub id: String,
    /// Host pid of the container init (0 once stopped).
    pub pid: i32,
    /// "created", "running", "paused" or "stopped".
    pub status: String,
    /// Bundle directory.
    #[serde(default)]
    pub bundle: PathBuf,
    /// Root filesystem path.
    #[serde(default)]
    pub rootfs: PathBuf,
    /// Creation time, RFC 3339.
    #[serde(default)]
    pub created: Option<String>,
    /// Annotations from the spec.
    #[serde(default, deserialize_with = "null_as_default")]
    pub annotations: HashMap<String, String>,
}

/// One line of `runc events`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// "stats", "oom", "intel_rdt", ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Container id.
    pub id: String,
    /// Payload, shaped by `kind`.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

impl Event {
    /// The payload as stats, when this is a "stats" event.
    pub fn stats(&self) -> Option<Stats> {
        if self.kind != "stats" {
            return None;
        }
        serde_json::from_value(self.data.clone()?).ok()
    }
}

/// Cgroup statistics from `runc events --stats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// CPU accounting.
    pub cpu: Cpu,
    /// Memory accounting.
    pub memory: Memory,
    /// Task counts.
    pub pids: Pids,
    /// Block IO.
    pub blkio: Blkio,
    /// Hugepage usage by page size.
    #[serde(deserialize_with = "null_as_default")]
    pub hugetlb: HashMap<String, Hugetlb>,
    /// Per-interface counters (when runc reports them).
    #[serde(deserialize_with = "null_as_default")]
    pub network_interfaces: Vec<NetworkInterface>,
}

/// CPU accounting.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cpu {
    /// Time consumed.
    pub usage: CpuUsage,
    /// CFS throttling.
    pub throttling: Throttling,
}

/// CPU time in nanoseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuUsage {
    /// Total CPU time.
    pub total: u64,
    /// Per-CPU total.
    #[serde(deserialize_with = "null_as_default")]
    pub percpu: Vec<u64>,
    /// Per-CPU kernel time.
    #[serde(deserialize_with = "null_as_default")]
    pub percpu_kernel: Vec<u64>,
    /// Per-CPU user time.
    #[serde(deserialize_with = "null_as_default")]
    pub percpu_user: Vec<u64>,
    /// Kernel time.
    pub kernel: u64,
    /// User time.
    pub user: u64,
}

/// CFS throttling counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Throttling {
    /// Enforcement periods elapsed.
    pub periods: u64,
    /// Periods in which the group was throttled.
    #[serde(rename = "throttledPeriods")]
    pub throttled_periods: u64,
    /// Total throttled time, ns.
    #[serde(rename = "throttledTime")]
    pub throttled_time: u64,
}

/// Memory accounting.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Memory {
    /// Page cache bytes.
    pub cache: u64,
    /// Memory (memory.usage_in_bytes and friends).
    pub usage: MemoryEntry,
    /// Memory plus swap (memsw).
    pub swap: MemoryEntry,
    /// Kernel memory (kmem).
    pub kernel: MemoryEntry,
    /// Kernel TCP buffers.
    #[serde(rename = "kernelTCP")]
    pub kernel_tcp: MemoryEntry,
    /// memory.stat, key by key.
    #[serde(deserialize_with = "null_as_default")]
    pub raw: HashMap<String, u64>,
}

/// One memory counter with its limit and high-water mark.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryEntry {
    /// Limit in bytes.
    pub limit: u64,
    /// Current usage in bytes.
    pub usage: u64,
    /// Highest usage seen.
    pub max: u64,
    /// Times the limit was hit.
    pub failcnt: u64,
}

/// Task counts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pids {
    /// Tasks now.
    pub current: u64,
    /// pids.max (0 when unlimited).
    pub limit: u64,
}

/// Block IO counters, as the cgroup v1 blkio controller reports them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Blkio {
    #[serde(
        rename = "ioServiceBytesRecursive",
        deserialize_with = "null_as_default"
    )]
    /// Bytes transferred.
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    /// IOs completed.
    #[serde(rename = "ioServicedRecursive", deserialize_with = "null_as_default")]
    pub io_serviced_recursive: Vec<BlkioEntry>,
    /// IOs queued.
    #[serde(rename = "ioQueueRecursive", deserialize_with = "null_as_default")]
    pub io_queued_recursive: Vec<BlkioEntry>,
    #[serde(
        rename = "ioServiceTimeRecursive",
        deserialize_with = "null_as_default"
    )]
    /// Time spent servicing IOs.
    pub io_service_time_recursive: Vec<BlkioEntry>,
    /// Time IOs waited in queues.
    #[serde(rename = "ioWaitTimeRecursive", deserialize_with = "null_as_default")]
    pub io_wait_time_recursive: Vec<BlkioEntry>,
    /// IOs merged.
    #[serde(rename = "ioMergedRecursive", deserialize_with = "null_as_default")]
    pub io_merged_recursive: Vec<BlkioEntry>,
    /// Device time used.
    #[serde(rename = "ioTimeRecursive", deserialize_with = "null_as_default")]
    pub io_time_recursive: Vec<BlkioEntry>,
    /// Sectors transferred.
    #[serde(rename = "sectorsRecursive", deserialize_with = "null_as_default")]
    pub sectors_recursive: Vec<BlkioEntry>,
}

/// One blkio counter for a device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlkioEntry {
    /// Device major.
    pub major: u64,
    /// Device minor.
    pub minor: u64,
    /// "Read", "Write", "Sync", "Async", "Total", or empty.
    pub op: String,
    /// The counter.
    pub value: u64,
}

/// Hugepage accounting for one page size.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hugetlb {
    /// Bytes in use.
    pub usage: u64,
    /// Highest usage seen.
    pub max: u64,
    /// Times the limit was hit.
    pub failcnt: u64,
}

/// Per-interface network counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkInterface {
    /// Interface name.
    pub name: String,
    /// Received bytes.
    pub rx_bytes: u64,
    /// Received packets.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Sent bytes.
    pub tx_bytes: u64,
    /// Sent packets.
    pub tx_packets: u64,
    /// Send errors.
    pub tx_errors: u64,
    /// Sent packets dropped.
    pub tx_dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_runc_state() {
        let s: State = serde_json::from_str(
            r#"{"ociVersion":"1.0.2-dev","id":"c1","pid":42,"status":"running",
            "bundle":"/b","rootfs":"/b/rootfs","created":"2026-01-01T00:00:00Z","owner":"",
            "annotations":null}"#,
        )
        .unwrap();
        assert_eq!(s.id, "c1");
        assert_eq!(s.pid, 42);
        assert_eq!(s.rootfs, PathBuf::from("/b/rootfs"));
        assert!(s.annotations.is_empty());
    }

    #[test]
    fn parses_stats_event() {
        let e: Event = serde_json::from_str(
            r#"{"type":"stats","id":"c1","data":{"cpu":{"usage":{"total":10,"percpu":[4,6],"kernel":1,"user":2},
            "throttling":{"periods":3,"throttledPeriods":1,"throttledTime":9}},
            "memory":{"cache":5,"usage":{"limit":100,"usage":50,"max":60,"failcnt":2},"swap":{"usage":7},
            "kernel":{"usage":8},"raw":{"rss":11}},"pids":{"current":3,"limit":0},
            "blkio":{"ioServiceBytesRecursive":[{"major":8,"minor":0,"op":"Read","value":4096}],"ioServicedRecursive":null},
            "hugetlb":{"2MB":{"usage":0,"max":0,"failcnt":0}}}}"#,
        )
        .unwrap();
        let s = e.stats().unwrap();
        assert_eq!(s.cpu.usage.percpu, vec![4, 6]);
        assert_eq!(s.cpu.throttling.throttled_time, 9);
        assert_eq!(s.memory.usage.limit, 100);
        assert_eq!(s.memory.usage.failcnt, 2);
        assert_eq!(s.memory.swap.usage, 7);
        assert_eq!(s.memory.kernel.usage, 8);
        assert_eq!(s.memory.raw["rss"], 11);
        assert_eq!(s.pids.current, 3);
        assert_eq!(s.blkio.io_service_bytes_recursive[0].value, 4096);
        assert!(s.hugetlb.contains_key("2MB"));
        let oom = Event {
            kind: "oom".into(),
            id: "c1".into(),
            data: None,
        };
        assert!(oom.stats().is_none());
    }
}

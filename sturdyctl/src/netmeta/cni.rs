//! CNI's own record of a pod's network: the result cache libcni keeps for every
//! `ADD`, `<dir>/<network>-<container id>-<interface>` (JSON `{"kind":"cniCacheV1",
//! "containerId":…,"ifName":…,"networkName":…,"result":{…}}`; `dir` is
//! `/var/lib/cni/results` for containerd 1.6, 1.7 and 2.x alike). containerd (root) writes
//! it when CNI has set the pod up, and the pod cannot change it: it is what the repair
//! trusts, unlike the addresses the pod's namespace holds now (docs/netmeta.md).

use std::fs::OpenOptions;
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where libcni keeps its results unless told otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/cni/results";
/// CRI's name for the pod's interface: its IPs are the pod's.
pub const POD_INTERFACE: &str = "eth0";
/// Largest cache file read.
const MAX_FILE: u64 = 1 << 20;
/// Most cache files one look at the directory reads (two per pod is usual).
const MAX_FILES: usize = 16_384;

/// The pod IPs one cached CNI result gave a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniResult {
    /// The cache file.
    pub file: PathBuf,
    /// The CNI network.
    pub network: String,
    /// The sandbox id.
    pub container_id: String,
    /// The IPs of the pod interface in CRI's order (the first IPv4 one first).
    pub ips: Vec<IpAddr>,
}

/// Why the cache could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// A file system call failed.
    #[error("CNI result cache {path}: {op}: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// What was attempted.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// Another user could have written it: not trusted.
    #[error("CNI result cache {path}: {reason}; not trusted")]
    Insecure {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Owned by us and writable by nobody else.
fn trusted(path: &Path, meta: &std::fs::Metadata) -> Result<(), CniError> {
    let insecure = |reason| CniError::Insecure {
        path: path.to_path_buf(),
        reason,
    };
    if meta.uid() != euid() {
        return Err(insecure(format!("owned by uid {}", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(insecure(format!(
            "writable by other users (mode {:04o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// The cache directory of one host.
#[derive(Debug, Clone)]
pub struct CniCache {
    dir: PathBuf,
}

impl CniCache {
    /// The cache at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every cached result of a pod interface (one per sandbox and network that gave it
    /// one). A missing directory is an empty cache; a file that is not such a result
    /// (another interface, CRI's loopback network, not JSON) is skipped, and so is one
    /// another user could have written.
    pub fn pod_results(&self) -> Result<Vec<CniResult>, CniError> {
        let io = |op, source| CniError::Io {
            path: self.dir.clone(),
            op,
            source,
        };
        let meta = match std::fs::metadata(&self.dir) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("stat", e)),
        };
        trusted(&self.dir, &meta)?;
        let suffix = format!("-{POD_INTERFACE}");
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io("list", e))?;
        for entry in entries.take(MAX_FILES) {
            let entry = entry.map_err(|e| io("list", e))?;
            let name = entry.file_name();
            if !name.to_string_lossy().ends_with(&suffix) {
                continue;
            }
            match read_result(&entry.path()) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => log::warn!("{e}"),
            }
        }
        out.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(out)
    }
}

/// One cache file, if it is the result of a pod interface.
fn read_result(path: &Path) -> Result<Option<CniResult>, CniError> {
    let io = |op, source| CniError::Io {
        path: path.to_path_buf(),
        op,
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| io("open", e))?;
    let meta = file.metadata().map_err(|e| io("stat", e))?;
    if !meta.is_file() || meta.len() > MAX_FILE {
        return Ok(None);
    }
    trusted(path, &meta)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE)
        .read_to_end(&mut bytes)
        .map_err(|e| io("read", e))?;
    Ok(parse(path, &bytes))
}

/// The pod IPs of a cache file's bytes, the way containerd's CRI (through go-cni) takes
/// them from a result: an IP belongs to the interface its `interface` index names (to the
/// pod interface when it names none), and the pod's are the pod interface's.
pub fn parse(path: &Path, bytes: &[u8]) -> Option<CniResult> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    if v["kind"] != "cniCacheV1" || v["ifName"] != POD_INTERFACE {
        return None;
    }
    let result = &v["result"];
    let interfaces = result["interfaces"].as_array();
    let mut ips: Vec<IpAddr> = result["ips"]
        .as_array()?
        .iter()
        .filter(|ip| {
            let name = match ip["interface"].as_u64() {
                Some(i) => interfaces
                    .and_then(|all| all.get(i as usize))
                    .and_then(|iface| iface["name"].as_str()),
                None => Some(POD_INTERFACE),
            };
            name == Some(POD_INTERFACE)
        })
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .collect();
    if let Some(v4) = ips.iter().position(IpAddr::is_ipv4) {
        let first = ips.remove(v4);
        ips.insert(0, first);
    }
    Some(CniResult {
        file: path.to_path_buf(),
        network: v["networkName"].as_str().unwrap_or_default().to_string(),
        container_id: v["containerId"].as_str()?.to_string(),
        ips,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like what containerd 1.6.20 leaves for a bridge pod (CNI 0.4.0, trimmed).
    const CACHED: &str = r#"{"kind":"cniCacheV1","containerId":"abc","config":"e30=","ifName":"eth0","networkName":"sturdy-net","cniArgs":[["K8S_POD_NAMESPACE","default"]],"result":{"cniVersion":"0.4.0","interfaces":[{"name":"br0","mac":"aa:bb:cc:dd:ee:01"},{"name":"veth1","mac":"aa:bb:cc:dd:ee:02"},{"name":"eth0","mac":"aa:bb:cc:dd:ee:03","sandbox":"/var/run/netns/cni-1"}],"ips":[{"version":"6","interface":2,"address":"fd00::5/64"},{"version":"4","interface":2,"address":"198.18.0.5/28","gateway":"198.18.0.1"},{"version":"4","interface":0,"address":"198.18.0.1/28"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}}"#;

    #[test]
    fn takes_the_pod_interfaces_ips_in_cris_order() {
        let r = parse(Path::new("/c/sturdy-net-abc-eth0"), CACHED.as_bytes()).unwrap();
        assert_eq!(r.container_id, "abc");
        assert_eq!(r.network, "sturdy-net");
        let want: Vec<IpAddr> = vec!["198.18.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        assert_eq!(r.ips, want);
    }

    #[test]
    fn an_ip_without_an_interface_is_the_pod_interfaces() {
        let v1 = r#"{"kind":"cniCacheV1","containerId":"abc","ifName":"eth0","result":{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.7/24"}]}}"#;
        let r = parse(Path::new("/c/x"), v1.as_bytes()).unwrap();
        assert_eq!(r.ips, vec!["10.1.0.7".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn other_interfaces_and_garbage_are_not_results() {
        let lo = CACHED.replace(r#""ifName":"eth0""#, r#""ifName":"lo""#);
        assert!(parse(Path::new("/c/x"), lo.as_bytes()).is_none());
        assert!(parse(Path::new("/c/x"), b"{").is_none());
        assert!(parse(Path::new("/c/x"), br#"{"kind":"other"}"#).is_none());
    }

    #[test]
    fn reads_a_directory_and_refuses_what_others_could_write() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = CniCache::new(dir.path().join("results"));
        assert!(
            cache.pod_results().unwrap().is_empty(),
            "a missing dir is empty"
        );
        std::fs::create_dir(cache.dir()).unwrap();
        std::fs::set_permissions(cache.dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let file = cache.dir().join("sturdy-net-abc-eth0");
        std::fs::write(&file, CACHED).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(cache.dir().join("cni-loopback-abc-lo"), "{}").unwrap();
        let all = cache.pod_results().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].file, file);
        // A result anyone could have written is not one.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(cache.pod_results().unwrap().is_empty());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(cache.dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            cache.pod_results(),
            Err(CniError::Insecure { .. })
        ));
    }
}

//! A throwaway image registry on 127.0.0.1 (Debian's `docker-registry`) that serves OCI
//! archives under their upstream references, so CRI pulls work offline.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};

/// The registry program (Debian package `docker-registry`).
pub const REGISTRY_BIN: &str = "docker-registry";

/// A running registry; dropping it kills the process (by PID) and leaves its dir to the owner.
#[derive(Debug)]
pub struct Registry {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

/// Where an upstream reference lives in our registry: (upstream host, path:tag).
pub fn split_reference(reference: &str) -> Option<(&str, &str)> {
    let (host, rest) = reference.split_once('/')?;
    // Only a first component with a dot or port is a registry host.
    if !(host.contains('.') || host.contains(':')) || rest.is_empty() {
        return None;
    }
    Some((host, rest))
}

/// Makes a spawned helper die with us: it must not outlive a killed test driver.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Registry {
    /// Starts a registry storing under `dir`, on a free loopback port, and waits until it
    /// answers `GET /v2/`.
    pub fn start(dir: &Path) -> Result<Registry> {
        std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        let mut last = String::new();
        // A port found free can be taken before the registry binds it: try a few.
        for _ in 0..3 {
            let port = free_port()?;
            let config = dir.join("config.yml");
            std::fs::write(&config, config_yaml(&dir.join("storage"), port))
                .ctx(|| format!("writing {}", config.display()))?;
            let log = std::fs::File::create(dir.join("registry.log"))
                .ctx(|| "creating registry log".into())?;
            let mut cmd = Command::new(REGISTRY_BIN);
            cmd.arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().ctx(|| "cloning log fd".into())?)
                .stderr(log)
                // Own group: a terminal's Ctrl-C goes to our driver, which stops us in order.
                .process_group(0);
            die_with_parent(&mut cmd);
            let child = cmd.spawn().ctx(|| {
                format!(
                    "spawning {REGISTRY_BIN} (Debian package docker-registry; run scripts/deps.sh)"
                )
            })?;
            let mut reg = Registry {
                child: Some(child),
                port,
                dir: dir.to_path_buf(),
            };
            match reg.wait_ready(Duration::from_secs(15)) {
                Ok(()) => return Ok(reg),
                Err(e) => last = e,
            }
            reg.stop();
        }
        Err(Error::Unexpected(format!(
            "{REGISTRY_BIN} did not come up: {last}\n{}",
            std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
        )))
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// PID of the registry process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn wait_ready(&mut self, timeout: Duration) -> std::result::Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("exited: {status}"));
                }
            }
            match http_get_status(self.port, "/v2/") {
                Ok(200) => return Ok(()),
                Ok(code) => return Err(format!("GET /v2/ answered {code}")),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Pushes an OCI archive as `reference` (an upstream name such as
    /// `registry.k8s.io/pause:3.9`), keeping its digests.
    pub fn push(&self, archive: &Path, reference: &str, tmp: &Path) -> Result<()> {
        let (_, path) = split_reference(reference)
            .ok_or_else(|| Error::Unexpected(format!("{reference:?} names no registry host")))?;
        let dest = format!("docker://{}/{path}", self.address());
        let args = [
            "--insecure-policy".to_string(),
            "copy".into(),
            "--quiet".into(),
            "--preserve-digests".into(),
            "--dest-tls-verify=false".into(),
            format!("oci-archive:{}", archive.display()),
            dest,
        ];
        let mut cmd = Command::new("skopeo");
        cmd.args(&args)
            // skopeo unpacks the archive into TMPDIR first.
            .env("TMPDIR", tmp)
            .stdin(Stdio::null());
        die_with_parent(&mut cmd);
        let out = cmd
            .output()
            .ctx(|| "running skopeo (Debian package skopeo; run scripts/deps.sh)".into())?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("skopeo {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Writes `<dir>/<host>/hosts.toml` sending every pull for `host` to this registry.
    pub fn write_hosts_toml(&self, dir: &Path, host: &str) -> Result<()> {
        let d = dir.join(host);
        std::fs::create_dir_all(&d).ctx(|| format!("creating {}", d.display()))?;
        let url = format!("http://{}", self.address());
        let toml = format!(
            "server = \"{url}\"\n\n[host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
        std::fs::write(d.join("hosts.toml"), toml).ctx(|| format!("writing {}", d.display()))
    }

    /// Kills the registry (SIGKILL by PID: it holds nothing worth a graceful stop) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = child.kill() {
                eprintln!("registry: kill {}: {e}", child.id());
            }
            let _ = child.wait();
        }
    }

    /// The registry's working dir (storage, config, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config_yaml(storage: &Path, port: u16) -> String {
    format!(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\n",
        storage.display()
    )
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ctx(|| "finding a free port".into())?;
    Ok(l.local_addr().ctx(|| "reading a bound port".into())?.port())
}

/// Status code of a plain HTTP/1.0 GET on loopback (enough for a readiness probe).
fn http_get_status(port: u16, path: &str) -> std::result::Result<u16, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&head[..n]);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_at_their_registry_host() {
        assert_eq!(
            split_reference("registry.k8s.io/e2e-test-images/busybox:1.29-2"),
            Some(("registry.k8s.io", "e2e-test-images/busybox:1.29-2"))
        );
        assert_eq!(
            split_reference("gcr.io/k8s-staging-cri-tools/test-image-tag:all"),
            Some(("gcr.io", "k8s-staging-cri-tools/test-image-tag:all"))
        );
        assert_eq!(split_reference("library/busybox:1"), None);
        assert_eq!(split_reference("busybox"), None);
    }
}

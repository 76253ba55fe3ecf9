//! kubectl through a wrapper script that enters the node's network namespace: the same
//! wrapper `scripts/kube-node.sh up` hands to people and other tools.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ctr::{run_command, Output};
use crate::error::{Error, IoContext, Result};

/// How long one kubectl call may take before the harness gives up on it.
pub const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);

/// The wrapper and where applied manifests are kept (for a reader of a failed run).
#[derive(Debug, Clone)]
pub struct Kubectl {
    wrapper: PathBuf,
    manifests: PathBuf,
}

impl Kubectl {
    /// Writes the wrapper `<dir>/kubectl` for `kubectl` with the admin `kubeconfig`, entering
    /// the network namespace `net` (a `/proc/PID/ns/net` file).
    pub fn write(dir: &Path, kubectl: &Path, kubeconfig: &Path, net: &Path) -> Result<Kubectl> {
        let wrapper = dir.join("kubectl");
        let script = format!(
            "#!/bin/sh\n\
             # The API server listens only inside the sturdy test node's network namespace.\n\
             exec nsenter --net='{net}' -- '{kubectl}' --kubeconfig='{kc}' \"$@\"\n",
            net = net.display(),
            kubectl = kubectl.display(),
            kc = kubeconfig.display(),
        );
        std::fs::write(&wrapper, script).ctx(|| format!("writing {}", wrapper.display()))?;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
            .ctx(|| format!("chmod {}", wrapper.display()))?;
        let manifests = dir.join("applied");
        std::fs::create_dir_all(&manifests).ctx(|| format!("creating {}", manifests.display()))?;
        Ok(Kubectl { wrapper, manifests })
    }

    /// The wrapper's path.
    pub fn path(&self) -> &Path {
        &self.wrapper
    }

    /// `kubectl args…`, whatever its exit code.
    pub async fn raw(&self, args: &[&str]) -> Result<Output> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        run_command(&self.wrapper.to_string_lossy(), &args, KUBECTL_TIMEOUT).await
    }

    /// `kubectl args…`; its stdout, or an error naming its stderr.
    pub async fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.raw(args).await?;
        if out.exit_code != 0 {
            return Err(Error::Command {
                command: format!("kubectl {}", args.join(" ")),
                status: format!("exit code {}", out.exit_code),
                stderr: out.stderr,
            });
        }
        Ok(out.stdout)
    }

    /// `kubectl get args… -o json`, parsed.
    pub async fn get_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut full = vec!["get"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["-o", "json"]);
        Ok(serde_json::from_str(&self.run(&full).await?)?)
    }

    /// Saves `manifest` (YAML or JSON) as `applied/<name>.yaml` and `kubectl apply`s it.
    pub async fn apply(&self, name: &str, manifest: &str) -> Result<String> {
        let file = self.manifests.join(format!("{name}.yaml"));
        std::fs::write(&file, manifest).ctx(|| format!("writing {}", file.display()))?;
        self.run(&["apply", "-f", &file.to_string_lossy()]).await
    }
}

impl Kubectl {
    /// `kubectl args…` left running with piped stdin and stdout (for `logs -f`, `attach`);
    /// killed when dropped.
    pub fn spawn(&self, args: &[&str]) -> Result<tokio::process::Child> {
        tokio::process::Command::new(&self.wrapper)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .ctx(|| format!("spawning kubectl {}", args.join(" ")))
    }
}

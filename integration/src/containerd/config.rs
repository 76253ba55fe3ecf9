//! The files a fixture writes before containerd starts: `config.toml` in the schema of its
//! generation (version 2 for 1.x, 3 for 2.x) and the CNI conflist.

use std::path::Path;

use super::{Containerd, Generation};
use crate::Handler;

/// TOML basic string of a value (JSON string syntax is valid TOML for our paths).
pub(super) fn q(s: impl AsRef<str>) -> String {
    serde_json::Value::String(s.as_ref().to_string()).to_string()
}

pub(super) fn qp(p: &Path) -> String {
    q(p.to_string_lossy())
}

/// From 2.2 on, CRI's image plugin reads the host's `/etc/containerd/certs.d` and
/// `/etc/docker/certs.d` when `registry.config_path` is unset, so the fixture always names a
/// dir of its own there.
fn registry_defaults_to_host_dirs(g: Generation) -> bool {
    g >= Generation::V2_2
}

/// 2.3 deprecates `enable_cdi = false` (a warning, which CRI `Status` reports as the
/// condition `ContainerdHasNoDeprecationWarnings` false): there CDI stays on and is given no
/// spec dirs to scan instead.
fn cdi_switch_deprecated(g: Generation) -> bool {
    g >= Generation::V2_3
}

/// Plugins that would touch host state or need host features we never use, per generation
/// (1.6 refuses nothing unknown, but listing only real ids keeps the intent readable).
fn disabled_plugins(g: Generation) -> &'static [&'static str] {
    match g {
        Generation::V1_6 | Generation::V1_7 => &[
            "io.containerd.snapshotter.v1.aufs",
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.zfs",
            "io.containerd.snapshotter.v1.devmapper",
            "io.containerd.tracing.processor.v1.otlp",
            "io.containerd.internal.v1.tracing",
        ],
        // 2.x enables NRI by default, which would listen on /var/run/nri/nri.sock. The ids
        // are the same from 2.1 to 2.4.0-beta.0 (2.2 adds the mount manager and the erofs
        // mount handler, which touch nothing until an erofs snapshot is mounted).
        Generation::V2_1 | Generation::V2_2 | Generation::V2_3 | Generation::V2_4 => &[
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.zfs",
            "io.containerd.snapshotter.v1.devmapper",
            "io.containerd.snapshotter.v1.blockfile",
            "io.containerd.snapshotter.v1.erofs",
            "io.containerd.differ.v1.erofs",
            "io.containerd.tracing.processor.v1.otlp",
            "io.containerd.internal.v1.tracing",
            "io.containerd.nri.v1.nri",
        ],
    }
}

impl Containerd {
    /// The fixture's own, empty, registry hosts dir: CRI's `config_path` when the builder
    /// names none and the generation would otherwise read the host's.
    pub(super) fn certs_dir(&self) -> std::path::PathBuf {
        self.dir.join("certs.d")
    }

    /// The CNI network: our own bridge on our /28, IPAM state kept in the temp dir (plus
    /// `portmap` when the builder asked for port mappings).
    pub fn cni_conflist(&self) -> String {
        let slot = self.subnet();
        let mut plugins = vec![serde_json::json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": slot.cidr(), "gateway": slot.gateway().to_string()}]],
                "dataDir": self.dir.join("cni/ipam"),
            },
        })];
        if self.port_mapping {
            plugins.push(serde_json::json!({
                "type": "portmap",
                "capabilities": {"portMappings": true},
            }));
        }
        serde_json::json!({
            "cniVersion": "0.4.0",
            "name": self.network,
            "plugins": plugins,
        })
        .to_string()
    }

    /// containerd `config.toml` confining everything to the temp dir, in the schema of the
    /// fixture's generation.
    pub fn config_toml(&self) -> String {
        let g = self.generation;
        let d = &self.dir;
        let disabled: Vec<String> = disabled_plugins(g)
            .iter()
            .map(|p| format!("  {},\n", q(p)))
            .collect();
        let head = format!(
            r#"version = {version}
root = {root}
state = {state}
temp = {temp}
disabled_plugins = [
{disabled}]

[grpc]
  address = {sock}

[ttrpc]
  address = {ttrpc}

[debug]
  address = {debug}
  level = "debug"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}
"#,
            version = g.config_version(),
            root = qp(&d.join("root")),
            state = qp(&d.join("state")),
            temp = qp(&d.join("tmp")),
            disabled = disabled.concat(),
            sock = qp(&self.socket),
            ttrpc = qp(&d.join("containerd.sock.ttrpc")),
            debug = qp(&d.join("debug.sock")),
            opt = qp(&d.join("opt")),
        );
        let cri = if g.is_v2() {
            self.cri_v3()
        } else {
            self.cri_v2()
        };
        format!("{head}{cri}")
    }

    /// CRI settings of 1.x: everything under the one `io.containerd.grpc.v1.cri` plugin.
    fn cri_v2(&self) -> String {
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        let mut out = format!(
            r#"
[{cri}]
  sandbox_image = {pause}
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = {cni_conf}
  max_conf_num = 1

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
"#,
            pause = q(&self.sandbox_image),
            cni_conf = qp(&self.dir.join("cni/net.d")),
        );
        if let Some(hosts) = &self.registry_config_path {
            out.push_str(&format!(
                "\n[{cri}.registry]\n  config_path = {}\n",
                qp(hosts)
            ));
        }
        out.push_str(&self.runtimes(&format!("{cri}.containerd.runtimes")));
        out
    }

    /// CRI settings of 2.x: runtime and image halves in their own plugins, the stream server
    /// left in `io.containerd.grpc.v1.cri`.
    fn cri_v3(&self) -> String {
        let images = "plugins.\"io.containerd.cri.v1.images\"";
        let runtime = "plugins.\"io.containerd.cri.v1.runtime\"";
        let mut out = format!(
            r#"
[{images}]
  snapshotter = "overlayfs"

[{images}.pinned_images]
  sandbox = {pause}

[{runtime}]
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
{cdi}  cdi_spec_dirs = []

[{runtime}.cni]
  bin_dirs = ["/usr/lib/cni"]
  conf_dir = {cni_conf}
  max_conf_num = 1

[{runtime}.containerd]
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"#,
            pause = q(&self.sandbox_image),
            cni_conf = qp(&self.dir.join("cni/net.d")),
            cdi = if cdi_switch_deprecated(self.generation) {
                ""
            } else {
                "  enable_cdi = false\n"
            },
        );
        let hosts = match &self.registry_config_path {
            Some(hosts) => Some(hosts.clone()),
            None if registry_defaults_to_host_dirs(self.generation) => Some(self.certs_dir()),
            None => None,
        };
        if let Some(hosts) = hosts {
            out.push_str(&format!(
                "\n[{images}.registry]\n  config_path = {}\n",
                qp(&hosts)
            ));
        }
        out.push_str(&self.runtimes(&format!("{runtime}.containerd.runtimes")));
        out
    }

    /// What `sturdy-runtime.toml` (the sturdy handler's `ConfigPath`) holds: the same
    /// `Root` and `BinaryName` as the handler's options table.
    pub(super) fn sturdy_options_toml(&self) -> String {
        let mut out = format!(
            "Root = {}\nSandboxRecordDir = {}\n",
            qp(&self.runc_root()),
            qp(&self.sandbox_record_dir())
        );
        if let Some(bin) = &self.runc_binary {
            out.push_str(&format!("BinaryName = {}\n", qp(bin)));
        }
        if self.cgroup_driver.systemd_cgroup() {
            out.push_str("SystemdCgroup = true\n");
        }
        out
    }

    /// The `runc` and `sturdy` handlers plus the builder's extra runtimes, under `prefix`.
    fn runtimes(&self, prefix: &str) -> String {
        let mut out = String::new();
        for h in Handler::ALL {
            if h == Handler::Sturdy && !self.sturdy_handler {
                continue;
            }
            let runc_type = h == Handler::Sturdy && self.sturdy_runc_type;
            let (rt, path) = if runc_type {
                let path = format!("  runtime_path = {}\n", qp(&self.shim_on_path()));
                (Handler::Runc.runtime_type(), path)
            } else {
                (h.runtime_type(), String::new())
            };
            out.push_str(&format!(
                "\n[{prefix}.{name}]\n  runtime_type = {rt}\n{path}\
                 [{prefix}.{name}.options]\n  Root = {root}\n",
                name = h.name(),
                rt = q(rt),
                root = qp(&self.runc_root()),
            ));
            if let Some(bin) = &self.runc_binary {
                out.push_str(&format!("  BinaryName = {}\n", qp(bin)));
            }
            if self.cgroup_driver.systemd_cgroup() {
                out.push_str("  SystemdCgroup = true\n");
            }
            if h == Handler::Sturdy && !runc_type {
                // containerd 1.6 passes non-runc runtime types only TypeUrl/ConfigPath
                // (1.7 and 2.x would send the table as ConfigBody without it).
                out.push_str(&format!(
                    "  ConfigPath = {}\n",
                    qp(&self.sturdy_options_path())
                ));
            }
        }
        for extra in &self.extra_runtimes {
            out.push_str(&format!(
                "\n[{prefix}.{name}]\n  runtime_type = {rt}\n",
                name = extra.name,
                rt = q(&extra.runtime_type),
            ));
            if let Some(path) = &extra.runtime_path {
                out.push_str(&format!("  runtime_path = {}\n", qp(path)));
            }
            // No table at all when there are no options: containerd then passes the shim
            // none, which is not the same as an empty table (2.x turns that into
            // runtimeoptions with an empty body).
            if !extra.options.is_empty() {
                out.push_str(&format!(
                    "[{prefix}.{name}.options]\n{opts}\n",
                    name = extra.name,
                    opts = extra.options,
                ));
            }
        }
        out
    }
}

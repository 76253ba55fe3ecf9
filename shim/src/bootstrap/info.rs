//! `-info`: containerd 2.x asks a runtime what it is before it relies on optional runtime
//! features (idmapped mounts, recursive read-only mounts): it runs the shim binary with
//! `-info`, the runtime options `Any` (or nothing) on stdin, and reads a
//! `containerd.types.RuntimeInfo` protobuf from stdout.
//!
//! The answer carries the runtime's name (from the binary's name, so a drop-in
//! `containerd-shim-runc-v2` says `io.containerd.runc.v2`), sturdy's version, the options
//! it was given, and what `<runtime> features` prints, as the Any containerd's typeurl
//! registers for the runtime-spec `features.Features` type (JSON inside). A runtime
//! without a working `features` command (crun before 1.9, or a failing one) still gets an
//! answer: no features, and the reason in the annotation [`FEATURES_ERROR_ANNOTATION`] and
//! on stderr (containerd's Go shim only logs it at debug level).
//!
//! containerd's CRI plugin reports a handler's user-namespace support (CRI `Status`,
//! `RuntimeHandlerFeatures.user_namespaces`) when the features list the `user` namespace
//! and `linux.mountExtensions.idmap.enabled`, and containerd refuses to create a
//! container with idmapped volume mounts unless the latter is set. runc 1.2+ sets it
//! without looking at the kernel; sturdy passes it on only when this kernel can really
//! make idmapped mounts (probed: [`crate::mount::idmap_support`]), otherwise it turns it
//! off and says why in the annotation [`IDMAP_ERROR_ANNOTATION`], so a `hostUsers: false`
//! pod is refused up front instead of failing at its rootfs mount.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};
use runc_client::{Reaper, Runc, RuncConfig};

use crate::options::RuntimeOptions;

/// Type URL of the runtime-spec features document, as containerd's typeurl registers it.
pub const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";
/// Annotation saying why the answer carries no features.
pub const FEATURES_ERROR_ANNOTATION: &str = "io.containerd.sturdy.features-error";
/// Annotation saying why idmapped mounts are reported off although the runtime has them.
pub const IDMAP_ERROR_ANNOTATION: &str = "io.containerd.sturdy.idmap-error";
/// Where the runtime-spec features say idmapped mounts work.
const IDMAP_ENABLED: &str = "/linux/mountExtensions/idmap/enabled";

/// Runs `-info`: reads the options from stdin and prints the RuntimeInfo on stdout.
pub(super) fn info(runtime_name: &str) -> Result<(), String> {
    let input = super::params::read_stdin().map_err(|e| e.to_string())?;
    let options = if input.is_empty() {
        None
    } else {
        Some(Any::parse_from_bytes(&input).map_err(|e| format!("runtime options on stdin: {e}"))?)
    };
    let parsed = RuntimeOptions::from_any(options.as_ref()).map_err(|e| e.to_string())?;
    let mut features = features(parsed.binary());
    if let Err(e) = &features {
        eprintln!("{runtime_name}: no runtime features: {e}");
    }
    let registration = registration_blocks_userns(options.as_ref());
    let idmap_error = features.as_mut().ok().and_then(|f| {
        truthful_idmap(f, || match registration {
            Some(why) => Err(why),
            None => crate::mount::idmap_support(&Reaper::global()).map_err(|e| e.to_string()),
        })
    });
    if let Some(e) = &idmap_error {
        eprintln!("{runtime_name}: idmapped mounts reported off: {e}");
    }
    let features = features
        .and_then(|f| serde_json::to_vec(&f).map_err(|e| format!("{}: {e}", parsed.binary())));
    let bytes = runtime_info(runtime_name, options, features, idmap_error)
        .write_to_bytes()
        .map_err(|e| format!("encode RuntimeInfo: {e}"))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)
        .and_then(|()| out.flush())
        .map_err(|e| format!("write stdout: {e}"))
}

/// The runtime name containerd knows a shim binary by: `containerd-shim-X-vN` serves
/// `io.containerd.X.vN`.
pub(super) fn runtime_name(argv0: &Path) -> String {
    let file = argv0
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default();
    match file
        .strip_prefix("containerd-shim-")
        .and_then(|r| r.rsplit_once('-'))
    {
        Some((name, version)) if !name.is_empty() && version.starts_with('v') => {
            format!("io.containerd.{name}.{version}")
        }
        _ => "io.containerd.sturdy.v2".to_string(),
    }
}

/// Why a handler that hands its shim `runtimeoptions.v1.Options` (an `options` table under a
/// runtime type other than runc's) cannot run `hostUsers: false` pods: containerd 2.2+ sets
/// the IO owner of such a pod's task through runc's options type and fails to convert
/// these ("can't unmarshal type runtimeoptions.v1.Options"), before the shim is asked. So
/// the claim is withdrawn and kubelet refuses the pod up front, naming the handler.
fn registration_blocks_userns(options: Option<&Any>) -> Option<String> {
    let any = options?;
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    (name == crate::options::RUNTIME_OPTIONS_TYPE).then(|| {
        "this handler passes runtimeoptions.v1.Options (an options table under \
         io.containerd.sturdy.v2), which containerd cannot start user-namespaced pods with; \
         register sturdy as io.containerd.runc.v2 with runtime_path, or without an options \
         table (docs/operations.md, \"User namespaces\")"
            .to_string()
    })
}

/// Turns `linux.mountExtensions.idmap.enabled` off when the runtime claims it and `probe`
/// says this kernel cannot idmap; returns why. A runtime that does not claim it is left
/// alone (and the kernel is not probed).
fn truthful_idmap(
    features: &mut serde_json::Value,
    probe: impl FnOnce() -> Result<(), String>,
) -> Option<String> {
    let claimed = features.pointer_mut(IDMAP_ENABLED)?;
    if *claimed != serde_json::Value::Bool(true) {
        return None;
    }
    let why = probe().err()?;
    *claimed = serde_json::Value::Bool(false);
    Some(why)
}

/// The RuntimeInfo for `options` (echoed as given), the runtime's features document, and
/// why idmapped mounts were turned off in it, if they were.
pub(super) fn runtime_info(
    name: &str,
    options: Option<Any>,
    features: Result<Vec<u8>, String>,
    idmap_error: Option<String>,
) -> RuntimeInfo {
    let mut info = RuntimeInfo {
        name: name.to_string(),
        version: MessageField::some(RuntimeVersion {
            version: crate::VERSION.to_string(),
            revision: crate::REVISION.to_string(),
            ..Default::default()
        }),
        options: options.into(),
        annotations: HashMap::new(),
        ..Default::default()
    };
    match features {
        Ok(json) => {
            info.features = MessageField::some(Any {
                type_url: FEATURES_TYPE_URL.to_string(),
                value: json,
                ..Default::default()
            })
        }
        Err(e) => {
            info.annotations
                .insert(FEATURES_ERROR_ANNOTATION.to_string(), e);
        }
    }
    if let Some(e) = idmap_error {
        info.annotations
            .insert(IDMAP_ERROR_ANNOTATION.to_string(), e);
    }
    info
}

/// `<binary> features`, checked to be a JSON object.
fn features(binary: &str) -> Result<serde_json::Value, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let runc = Runc::new(
        RuncConfig {
            // runc-client's query deadline (10 s) bounds it.
            binary: PathBuf::from(binary),
            ..RuncConfig::default()
        },
        Reaper::global(),
    );
    let value = rt
        .block_on(runc.features())
        .map_err(|e| format!("{binary} features: {e}"))?;
    if !value.is_object() {
        return Err(format!("{binary} features: not a JSON object: {value}"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_follows_the_binary() {
        for (argv0, name) in [
            (
                "/usr/bin/containerd-shim-sturdy-v2",
                "io.containerd.sturdy.v2",
            ),
            ("containerd-shim-runc-v2", "io.containerd.runc.v2"),
            ("/x/containerd-shim-my-rt-v3", "io.containerd.my-rt.v3"),
            ("/x/sturdy", "io.containerd.sturdy.v2"),
        ] {
            assert_eq!(runtime_name(Path::new(argv0)), name, "{argv0}");
        }
    }

    #[test]
    fn features_and_options_are_anys() {
        let options = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![1, 2, 3],
            ..Default::default()
        };
        let info = runtime_info(
            "io.containerd.sturdy.v2",
            Some(options.clone()),
            Ok(b"{\"ociVersionMin\":\"1.0.0\"}".to_vec()),
            None,
        );
        let info = RuntimeInfo::parse_from_bytes(&info.write_to_bytes().unwrap()).unwrap();
        assert_eq!(info.name, "io.containerd.sturdy.v2");
        assert_eq!(info.version.version, crate::VERSION);
        assert_eq!(info.options.as_ref(), Some(&options));
        assert_eq!(info.features.type_url, FEATURES_TYPE_URL);
        assert_eq!(info.features.value, b"{\"ociVersionMin\":\"1.0.0\"}");
        assert!(info.annotations.is_empty());
    }

    #[test]
    fn a_runtime_without_features_still_answers() {
        let info = runtime_info(
            "n",
            None,
            Err("crun features: unknown command".into()),
            None,
        );
        assert!(info.features.is_none());
        assert!(info.options.is_none());
        assert_eq!(
            info.annotations
                .get(FEATURES_ERROR_ANNOTATION)
                .map(String::as_str),
            Some("crun features: unknown command")
        );
    }

    /// runc 1.4's answer on a kernel that cannot idmap: off, with the reason; on one that
    /// can, untouched; runc 1.1 (no mountExtensions) is never probed.
    #[test]
    fn idmap_support_is_reported_only_when_the_kernel_has_it() {
        let runc_1_4 = || {
            serde_json::json!({
                "linux": {
                    "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
                    "mountExtensions": {"idmap": {"enabled": true}}
                }
            })
        };
        let mut f = runc_1_4();
        let why = truthful_idmap(&mut f, || Err("the kernel lacks mount_setattr(2)".into()));
        assert_eq!(why.as_deref(), Some("the kernel lacks mount_setattr(2)"));
        assert_eq!(
            f.pointer(IDMAP_ENABLED),
            Some(&serde_json::Value::Bool(false))
        );
        assert_eq!(f["linux"]["namespaces"], runc_1_4()["linux"]["namespaces"]);

        let mut f = runc_1_4();
        assert_eq!(truthful_idmap(&mut f, || Ok(())), None);
        assert_eq!(f, runc_1_4());

        let mut runc_1_1 = serde_json::json!({"linux": {"namespaces": ["user"]}});
        let before = runc_1_1.clone();
        let probed = truthful_idmap(&mut runc_1_1, || {
            panic!("probed for a runtime without idmap")
        });
        assert_eq!((probed, runc_1_1), (None, before));

        let info = runtime_info("n", None, Ok(b"{}".to_vec()), Some("why".into()));
        assert_eq!(
            info.annotations
                .get(IDMAP_ERROR_ANNOTATION)
                .map(String::as_str),
            Some("why")
        );
    }

    /// containerd cannot start a user-namespaced task for a handler with CRI's generic
    /// options type; runc's options type or none leaves the decision to the kernel probe.
    #[test]
    fn a_runtimeoptions_handler_does_not_claim_idmap() {
        let generic = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: vec![],
            ..Default::default()
        };
        let why = registration_blocks_userns(Some(&generic)).expect("refused");
        assert!(why.contains("io.containerd.runc.v2"), "{why}");
        let runc = Any {
            type_url: "containerd.runc.v1.Options".into(),
            ..Default::default()
        };
        assert_eq!(registration_blocks_userns(Some(&runc)), None);
        assert_eq!(registration_blocks_userns(None), None);
    }

    /// This kernel can idmap, so a runtime that claims it keeps the claim.
    #[test]
    fn the_real_probe_keeps_runcs_claim_here() {
        let mut f = serde_json::json!({"linux": {"mountExtensions": {"idmap": {"enabled": true}}}});
        let why = truthful_idmap(&mut f, || {
            crate::mount::idmap_support(&Reaper::global()).map_err(|e| e.to_string())
        });
        if let Some(why) = &why {
            if why.contains("user namespaces") {
                test_skip::skip!("{why}");
            }
        }
        assert_eq!(why, None);
        assert_eq!(
            f.pointer(IDMAP_ENABLED),
            Some(&serde_json::Value::Bool(true))
        );
    }
}

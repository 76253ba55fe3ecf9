//! runc swapped under live pods through the runtime option `BinaryName`, then swapped back,
//! as an operator does: edit the runtime's options in config.toml, restart containerd.
//!
//! Two stand-ins for runc, `runc-a` and `runc-b`, each log every call and exec the real
//! runc, so the test can tell which binary served which container. Containers keep the
//! runc that created them for every later call (exec, kill, delete, and the cleanup after
//! their shim died), new containers get the configured one, and nothing is rebuilt.

mod upgrade_support;

use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sturdy_integration::{parity_tests, Containerd, Cri, Handler, CRI_NAMESPACE};
use upgrade_support::{calls_for, logging_runc, Pod};

/// One configured runc stand-in and its call log.
struct Runc {
    bin: PathBuf,
    log: PathBuf,
}

impl Runc {
    fn new(fx: &Containerd, tag: &str) -> Runc {
        let dir = fx.dir().join("runc-bins");
        std::fs::create_dir_all(&dir).expect("runc-bins dir");
        let r = Runc {
            bin: dir.join(format!("runc-{tag}")),
            log: dir.join(format!("runc-{tag}.log")),
        };
        logging_runc(&r.bin, &r.log, tag, fx.oci_runtime_binary());
        r
    }

    fn calls(&self, id: &str) -> Vec<String> {
        calls_for(&self.log, id)
    }
}

/// Every runc call for the pod's sandbox and containers went to `by`, none to `other`;
/// `by` ran each subcommand of `sandbox` for the sandbox and of `containers` for every
/// container.
fn served_by(
    pod: &Pod,
    by: &Runc,
    other: &Runc,
    sandbox: &[&str],
    containers: &[&str],
    when: &str,
) {
    let ids = std::iter::once(("sandbox", pod.id.as_str(), sandbox)).chain(
        pod.containers
            .iter()
            .map(|c| (c.name.as_str(), c.id.as_str(), containers)),
    );
    for (name, id, want) in ids {
        let p = format!("{} ({}) {name} {when}", pod.name, pod.handler);
        let theirs = other.calls(id);
        assert!(
            theirs.is_empty(),
            "{p}: {} was called: {theirs:?}",
            other.bin.display()
        );
        let ours = by.calls(id);
        for w in want {
            assert!(
                ours.iter().any(|c| c == w),
                "{p}: {} never ran `{w}`: {ours:?}",
                by.bin.display()
            );
        }
    }
}

/// The runtime sturdy recorded for `id` in the bundle's `sturdy.json`, or the Go shim's
/// `options.json` `binary_name`: what a `delete` after a crash will run.
fn recorded_runtime(fx: &Containerd, h: Handler, id: &str) -> String {
    let bundle = fx
        .state_dir()
        .join("io.containerd.runtime.v2.task")
        .join(CRI_NAMESPACE)
        .join(id);
    let (file, key) = match h {
        Handler::Sturdy => ("sturdy.json", "runtime"),
        Handler::Runc => ("options.json", "binary_name"),
    };
    let raw = std::fs::read(bundle.join(file)).unwrap_or_else(|e| panic!("{file} of {id}: {e}"));
    let v: serde_json::Value = serde_json::from_slice(&raw).expect("json");
    v[key].as_str().unwrap_or_default().to_string()
}

async fn swap(fx: &mut Containerd, to: &Path) -> Cri {
    fx.set_runc_binary(Some(to.to_path_buf()))
        .expect("configure BinaryName");
    fx.restart().await.expect("restart containerd");
    fx.wait_cri_ready(upgrade_support::T)
        .await
        .expect("CRI after restart");
    fx.cri().await.expect("cri client")
}

parity_tests! {
    async fn runc_swapped_under_live_pods(h: Handler) {
        let t0 = std::time::Instant::now();
        let mut fx = Containerd::start().await.expect("start containerd");
        let a = Runc::new(&fx, "a");
        let b = Runc::new(&fx, "b");
        let mut cri = swap(&mut fx, &a.bin).await;
        let mut old = Pod::start(&fx, &mut cri, h, "old").await;
        old.add_container(&fx, &mut cri, "doomed").await;
        served_by(&old, &a, &b, &["create", "start"], &["create", "start"], "created with runc-a");
        for c in &old.containers {
            assert_eq!(recorded_runtime(&fx, h, &c.id), a.bin.to_string_lossy(), "{}", c.name);
        }

        // runc-a → runc-b: the old pod runs on, still served by runc-a.
        let mut cri = swap(&mut fx, &b.bin).await;
        old.check(&fx, &mut cri, "swap to runc-b").await;
        served_by(&old, &a, &b, &[], &["exec"], "after the swap to runc-b");
        let doomed = old.container("doomed").id.clone();
        old.remove_container(&fx, &mut cri, "doomed").await;
        assert!(b.calls(&doomed).is_empty(), "doomed: runc-b was called");
        assert!(a.calls(&doomed).iter().any(|c| c == "kill"), "doomed: not stopped by runc-a");
        // A new container in the old pod: containerd's CRI hands it the runtime options
        // stored with its sandbox at RunPodSandbox. The Go shim gets them inline, so the
        // pod keeps runc-a; sturdy's options only name its ConfigPath file, which it reads
        // at every create, so the container gets runc-b, the file's content now.
        let late = old.add_container(&fx, &mut cri, "late").await;
        let (late_by, late_not) = match h {
            Handler::Runc => (&a, &b),
            Handler::Sturdy => (&b, &a),
        };
        assert_eq!(late_by.calls(&late).first().map(String::as_str), Some("create"), "late");
        assert!(late_not.calls(&late).is_empty(), "late: {} was called", late_not.bin.display());
        assert_eq!(recorded_runtime(&fx, h, &late), late_by.bin.to_string_lossy(), "late");
        let fresh = Pod::start(&fx, &mut cri, h, "fresh").await;
        served_by(&fresh, &b, &a, &["create", "start"], &["create", "start"], "created with runc-b");
        fresh.check(&fx, &mut cri, "new pod on runc-b").await;

        // runc-b → runc-a: what runc-b created is still served (and stopped) by runc-b,
        // even the cleanup after its shim was killed, which reads the bundle's record.
        let mut cri = swap(&mut fx, &a.bin).await;
        old.check(&fx, &mut cri, "swap back to runc-a").await;
        fresh.check(&fx, &mut cri, "swap back to runc-a").await;
        old.remove_container(&fx, &mut cri, "late").await;
        assert!(late_not.calls(&late).is_empty(), "late: {} was called", late_not.bin.display());
        assert!(late_by.calls(&late).iter().any(|c| c == "kill"), "late: not stopped by its runc");
        kill(Pid::from_raw(fresh.shim.pid), Signal::SIGKILL).expect("SIGKILL fresh's shim");
        fresh.wait_crashed(&mut cri).await;
        fresh.wait_runc_state_gone(&fx).await;
        served_by(&fresh, &b, &a, &["delete"], &["delete"], "cleaned up after its shim died");
        cri.stop_pod(&fresh.id).await.expect("StopPodSandbox of the crashed pod");
        cri.remove_pod(&fresh.id).await.expect("RemovePodSandbox of the crashed pod");

        let newer = Pod::start(&fx, &mut cri, h, "newer").await;
        served_by(&newer, &a, &b, &["create", "start"], &["create", "start"], "created after the swap back");
        let old_ids: Vec<String> = std::iter::once(old.id.clone())
            .chain(old.containers.iter().map(|c| c.id.clone()))
            .collect();
        old.remove(&fx, &mut cri).await;
        for id in &old_ids {
            assert!(b.calls(id).is_empty(), "old {id}: runc-b was called");
        }
        newer.remove(&fx, &mut cri).await;
        let left = fx.stop();
        assert!(left.is_empty(), "leaked: {left:?}");
        eprintln!("runc_swapped_under_live_pods::{h}: {:.1}s", t0.elapsed().as_secs_f64());
    }
}

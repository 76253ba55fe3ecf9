//! The scene of the live upgrade tests (upgrade_live.rs, upgrade_live_under.rs): a sturdy
//! pod with a container printing a numbered line every 20 ms and one exiting 3 soon after
//! start, under a private containerd, and the checks every upgrade step must pass.
//! Included by path (`#[path = "upgrade_support/live.rs"]`) beside `upgrade_support` and
//! `watchdog_support`, which it builds on.

#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_client::events::TaskExit;
use prost::Message;
use sturdy_integration::k8s_cri::v1::ContainerState;
use sturdy_integration::shim_upgrade::{another_build, sturdyctl};
use sturdy_integration::{Containerd, Cri, Handler, CRI_NAMESPACE};

use crate::upgrade_support::{wait_for, Pod, T};
use crate::watchdog_support::follow_exits;

/// Prints `seq 0`, `seq 1`, … every 20 ms, each line one write.
pub const PRINTER: &str =
    "trap 'exit 0' TERM; i=0; while :; do echo \"seq $i\"; i=$((i+1)); sleep 0.02; done";
/// Exits 3 after about 3 s: started just before the upgrade, it exits around it.
pub const EXITER: &str = "sleep 3; exit 3";
/// An exec printing `e0`, `e1`, … until the test creates /tmp/stop-exec in its container,
/// then `end N` (N lines printed): it runs across the upgrade by construction, its Wait pending all along.
pub const EXEC_PRINTER: &str =
    "i=0; while [ ! -e /tmp/stop-exec ]; do echo e$i; i=$((i+1)); sleep 0.02; done; echo end $i";
/// Lines the printer must have written after a step before its log is judged.
pub const LINES_AFTER: u64 = 50;

/// containerd's task exit events as `follow_exits` collects them: (topic, payload).
pub type Exits = Mutex<Vec<(String, Vec<u8>)>>;

/// A pod with a printing and an exiting container under a sturdy shim, and what it was
/// started on.
pub struct Scene {
    pub fx: Containerd,
    pub cri: Cri,
    pub pod: Pod,
    pub printer: String,
    pub printer_log: PathBuf,
    pub exiter: String,
    pub exits: Arc<Exits>,
    pub old_bin: PathBuf,
    pub old_id: String,
}

impl Scene {
    pub async fn start(name: &str) -> Scene {
        let fx = Containerd::start().await.expect("start containerd");
        let mut cri = fx.cri().await.expect("cri client");
        let exits = follow_exits(&fx).await;
        let mut pod = Pod::start(&fx, &mut cri, Handler::Sturdy, name).await;
        let printer = pod
            .add_container_running(&fx, &mut cri, "printer", PRINTER)
            .await;
        let exiter = pod
            .add_container_running(&fx, &mut cri, "exiter", EXITER)
            .await;
        // Not RUNNING for long: Pod::check must not expect it to be.
        pod.take_container("exiter");
        let printer_log = PathBuf::from(
            cri.container_status(&printer)
                .await
                .expect("ContainerStatus printer")
                .log_path,
        );
        let old_bin = std::fs::canonicalize(fx.shim_bin()).expect("shim binary");
        let old_id = build_id::of_path(&old_bin).unwrap().unwrap().to_string();
        assert_eq!(
            running_build(&pod),
            old_id,
            "the pod's shim runs the fixture's"
        );
        Scene {
            fx,
            cri,
            pod,
            printer,
            printer_log,
            exiter,
            exits,
            old_bin,
            old_id,
        }
    }

    /// A new build installed (content-addressed: a directory of its own, the running
    /// binary never overwritten) where containerd finds the shim; its path and build-id.
    pub fn install_new_build(&mut self, dir: &str) -> (PathBuf, String) {
        let next = self.fx.dir().join(dir);
        std::fs::create_dir_all(&next).unwrap();
        let new_bin = next.join("containerd-shim-sturdy-v2");
        let (_, new_id) = another_build(&self.old_bin, &new_bin);
        self.fx
            .replace_shim_bin(&new_bin)
            .expect("install the new build");
        (new_bin, new_id)
    }

    pub fn sturdyctl(&self, args: &[&str]) -> (bool, serde_json::Value) {
        // Blocking for as long as the upgrade takes, while the exit follower keeps reading.
        tokio::task::block_in_place(|| sturdyctl(&self.fx, args))
    }

    /// `upgrade-shims --json`: whether it exited 0, and this pod's shim's entry.
    pub fn upgrade_shims(&self, extra: &[&str]) -> (bool, serde_json::Value) {
        let mut args = vec!["upgrade-shims", "--json"];
        args.extend_from_slice(extra);
        let (ok, out) = self.sturdyctl(&args);
        eprintln!("upgrade-shims {extra:?}: ok {ok}: {out:#}");
        let entry = the_shim(&out, &self.pod).clone();
        (ok, entry)
    }

    /// The shim is the very process the pod started with, runs build `id`, and `status`
    /// says so and that it is the installed one when `current`.
    pub fn assert_shim_runs(&self, id: &str, current: bool, step: &str) {
        let pod = &self.pod;
        assert!(pod.shim.alive(), "{step}: shim {:?} gone", pod.shim);
        assert_eq!(
            self.fx.shim_pid(CRI_NAMESPACE, &pod.id),
            Some(pod.shim.pid),
            "{step}: another shim serves the pod"
        );
        assert_eq!(running_build(pod), id, "{step}: /proc/PID/exe");
        let (ok, status) = self.sturdyctl(&["status", "--json"]);
        assert!(ok, "{step}: status: {status:#}");
        let s = the_shim(&status, pod);
        assert_eq!(s["pid"], pod.shim.pid, "{step}: {s:#}");
        assert_eq!(s["build"]["running"], id, "{step}: {s:#}");
        assert_eq!(s["build"]["current"], current, "{step}: {s:#}");
    }

    /// The printer's log has at least `LINES_AFTER` lines more than `before`, and all of
    /// them, from the start, are `seq 0`, `seq 1`, … with none missing or repeated.
    pub async fn assert_log_whole(&self, before: u64, step: &str) -> u64 {
        let want = before + LINES_AFTER;
        let log = &self.printer_log;
        wait_for(
            || format!("{step}: {} never reached seq {want}", log.display()),
            || printed(log).len() as u64 > want,
        )
        .await;
        let seqs = printed(log);
        if let Some(i) = seqs.iter().enumerate().position(|(i, n)| *n != i as u64) {
            let around = &seqs[i.saturating_sub(3)..(i + 3).min(seqs.len())];
            panic!(
                "{step}: line {i} of the printer's log is seq {} (lines around it: \
                 {around:?}): a line lost or repeated",
                seqs[i]
            );
        }
        seqs.len() as u64
    }

    /// ExecSync in the printer answers.
    pub async fn assert_exec(&mut self, step: &str) {
        let out = self
            .cri
            .exec_sync(&self.printer, &["echo", step], T)
            .await
            .unwrap_or_else(|e| panic!("{step}: ExecSync: {e}"));
        assert_eq!((out.exit_code, out.stdout.trim()), (0, step), "{step}");
    }

    /// containerd never lost its connection to the pod's shim for the sandbox or a
    /// container still running. (containerd 1.6 logs "shim disconnected" when it closes
    /// its own connection of a task it deleted, as the exiter's: that is no loss.)
    pub fn assert_no_disconnect(&self, step: &str) {
        let log = std::fs::read_to_string(self.fx.log_path()).unwrap_or_default();
        let ids = self.pod.ids();
        let lost: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("shim disconnected"))
            .filter(|l| ids.iter().any(|id| l.contains(&format!("id={id}"))))
            .collect();
        assert!(
            lost.is_empty(),
            "{step}: containerd lost the shim: {lost:#?}"
        );
    }

    /// The exiter is EXITED with code 3, and containerd published its exit exactly once.
    pub async fn assert_exited_once(&mut self, step: &str) {
        self.assert_exited(step).await;
        let id = self.exiter.clone();
        wait_for(
            || format!("{step}: no TaskExit of the exiter published"),
            || !exits_of(&self.exits, &id).is_empty(),
        )
        .await;
        let seen = exits_of(&self.exits, &id);
        assert_eq!(seen.len(), 1, "{step}: exits published: {seen:?}");
        assert_eq!(seen[0].exit_status, 3, "{step}: {seen:?}");
    }

    /// CRI reports the exiter EXITED with code 3 and a finish time.
    pub async fn assert_exited(&mut self, step: &str) {
        let id = self.exiter.clone();
        let mut status = None;
        let end = std::time::Instant::now() + T;
        while std::time::Instant::now() < end {
            let s = self
                .cri
                .container_status(&id)
                .await
                .expect("ContainerStatus");
            if s.state == ContainerState::ContainerExited as i32 {
                status = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let s = status.unwrap_or_else(|| panic!("{step}: the exiter never EXITED"));
        assert_eq!(s.exit_code, 3, "{step}: exit code: {s:?}");
        assert!(s.finished_at > 0, "{step}: no finish time: {s:?}");
    }

    /// Starts [`EXEC_PRINTER`] in the printer through CRI on a client of its own, and
    /// returns once it runs (it touches a marker in its container first).
    pub async fn exec_in_flight(&mut self) -> tokio::task::JoinHandle<(i32, String)> {
        let rootfs = self.rootfs_of(&self.printer);
        let _ = std::fs::remove_file(rootfs.join("tmp/stop-exec"));
        let mut cri = self.fx.cri().await.expect("cri client");
        let id = self.printer.clone();
        let cmd = format!("touch /tmp/exec-began; {EXEC_PRINTER}");
        let handle = tokio::spawn(async move {
            let out = cri
                .exec_sync(&id, &["sh", "-c", &cmd], T)
                .await
                .expect("ExecSync across the upgrade");
            (out.exit_code, out.stdout)
        });
        let began = rootfs.join("tmp/exec-began");
        wait_for(
            || format!("the exec never began ({})", began.display()),
            || began.exists(),
        )
        .await;
        handle
    }

    /// Ends the exec started by [`Scene::exec_in_flight`] and checks all it printed.
    pub async fn assert_exec_in_flight_whole(
        &self,
        exec: tokio::task::JoinHandle<(i32, String)>,
        step: &str,
    ) {
        let rootfs = self.rootfs_of(&self.printer);
        std::fs::write(rootfs.join("tmp/stop-exec"), b"").expect("stop the exec");
        let (code, out) = tokio::time::timeout(T + T, exec)
            .await
            .unwrap_or_else(|_| panic!("{step}: the exec's Wait never returned"))
            .expect("exec task");
        assert_eq!(code, 0, "{step}: exec exit code; output {out:?}");
        let lines: Vec<&str> = out.lines().collect();
        let n = lines.len() - 1;
        assert_eq!(
            lines.last().copied(),
            Some(format!("end {n}").as_str()),
            "{step}: exec output {out:?}"
        );
        assert!(n > 0, "{step}: the exec printed nothing before its end");
        for (i, l) in lines[..n].iter().enumerate() {
            assert_eq!(
                *l,
                format!("e{i}"),
                "{step}: exec output line {i} of {out:?}"
            );
        }
        eprintln!("{step}: the exec in flight printed {n} lines, whole");
    }

    /// The host path of container `id`'s root filesystem (its bundle's rootfs mount).
    pub fn rootfs_of(&self, id: &str) -> PathBuf {
        bundle_of(&self.fx, id).join("rootfs")
    }

    pub async fn finish(mut self) {
        // What the shim said of its handovers (its log goes to containerd's), for a reader
        // of a failure or of the numbers.
        let log = std::fs::read_to_string(self.fx.log_path()).unwrap_or_default();
        for l in log
            .lines()
            .filter(|l| l.contains("handover") || l.contains("upgrade:"))
        {
            eprintln!("shim: {l}");
        }
        self.assert_exec("before removal").await;
        self.assert_no_disconnect("before removal");
        let Scene {
            mut fx,
            mut cri,
            pod,
            ..
        } = self;
        pod.remove(&fx, &mut cri).await;
        let left = fx.stop();
        assert!(left.is_empty(), "leaked: {left:?}");
    }
}

pub fn the_shim<'a>(v: &'a serde_json::Value, pod: &Pod) -> &'a serde_json::Value {
    v["shims"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == pod.id.as_str()))
        .unwrap_or_else(|| panic!("shim of {} not listed: {v:#}", pod.id))
}

/// Build-id of the image the pod's shim process executes, read from the file itself.
pub fn running_build(pod: &Pod) -> String {
    build_id::of_path(Path::new(&format!("/proc/{}/exe", pod.shim.pid)))
        .expect("read the shim's image")
        .expect("the shim's image has a build-id")
        .to_string()
}

/// The numbers of the printer's `seq N` lines in a CRI log, in order. A line split by
/// the logger (`P` tags) is joined first; lines that are not the printer's (a marker
/// written by a test) are left out.
pub fn printed(log: &Path) -> Vec<u64> {
    let mut text = std::fs::read_to_string(log).unwrap_or_default();
    // A line still being written is judged on the next read.
    text.truncate(text.rfind('\n').map_or(0, |i| i + 1));
    let mut out = Vec::new();
    let mut partial = String::new();
    for line in text.lines() {
        // <time> <stream> <tag> <content>
        let mut f = line.splitn(4, ' ');
        let (Some(_), Some(_), Some(tag), content) = (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        partial.push_str(content.unwrap_or(""));
        if tag.starts_with('P') {
            continue;
        }
        let whole = std::mem::take(&mut partial);
        if let Some(n) = whole.strip_prefix("seq ") {
            out.push(n.trim().parse().unwrap_or(u64::MAX));
        }
    }
    out
}

/// The TaskExits containerd published for the init of container `id`.
pub fn exits_of(seen: &Exits, id: &str) -> Vec<TaskExit> {
    seen.lock()
        .unwrap()
        .iter()
        .filter_map(|(_, p)| TaskExit::decode(p.as_slice()).ok())
        .filter(|e| e.container_id == id && e.id == id)
        .collect()
}

/// What every successful move must show: exit 0, `upgraded`, the shim's answer naming
/// this process and both builds, containerd's connection and sturdyctl's handed over.
pub fn assert_upgraded(ok: bool, s: &serde_json::Value, pod: &Pod, from: &str, to: &str) {
    assert_upgraded_with(ok, s, pod, from, to, 2);
}

/// [`assert_upgraded`] with at least `connections` handed over: sturdyctl's alone while
/// containerd is down.
pub fn assert_upgraded_with(
    ok: bool,
    s: &serde_json::Value,
    pod: &Pod,
    from: &str,
    to: &str,
    connections: u64,
) {
    assert!(ok, "upgrade-shims failed: {s:#}");
    assert_eq!(s["result"], "upgraded", "{s:#}");
    assert_eq!(s["pid"], pod.shim.pid, "{s:#}");
    assert_eq!(s["old_build"], from, "{s:#}");
    assert_eq!(s["new_build"], to, "{s:#}");
    assert_eq!(s["running_build"], to, "{s:#}");
    let u = &s["upgrade"];
    assert_eq!(u["pid"], pod.shim.pid, "{s:#}");
    assert_eq!(u["old_build_id"], from, "{s:#}");
    assert_eq!(u["new_build_id"], to, "{s:#}");
    let paused = u["paused_us"].as_u64().expect("paused_us");
    assert!(
        paused > 0 && paused < 12_000_000,
        "pause of {paused} µs: {s:#}"
    );
    assert!(
        u["connections"].as_u64().unwrap() >= connections,
        "at least {connections} connection(s) handed over: {s:#}"
    );
    assert!(s["error"].is_null(), "{s:#}");
}

/// The bundle of task `id` in the fixture's containerd (for a pod's sandbox: the shim's
/// working directory).
pub fn bundle_of(fx: &Containerd, id: &str) -> PathBuf {
    fx.state_dir()
        .join("io.containerd.runtime.v2.task")
        .join(CRI_NAMESPACE)
        .join(id)
}

/// A debug shim's test hook: file `name` holding `content` in the pod's sandbox bundle (the
/// shim's working directory), read by a new image as it resumes. Removed when dropped, so a
/// failed test leaves no hook behind.
pub struct ResumeHook(PathBuf);

impl ResumeHook {
    /// Writes the hook.
    pub fn arm(fx: &Containerd, pod: &Pod, name: &str, content: &str) -> ResumeHook {
        let bundle = bundle_of(fx, &pod.id);
        assert!(bundle.is_dir(), "no bundle {}", bundle.display());
        let path = bundle.join(name);
        std::fs::write(&path, format!("{content}\n")).expect("write the test hook");
        ResumeHook(path)
    }
}

impl Drop for ResumeHook {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("{}: {e}", self.0.display());
            }
        }
    }
}

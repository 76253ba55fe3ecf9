//! A process that only looks like a shim is never taken for one, and nothing of it is ever
//! executed (security review 2026-12, H1): any local user can start a program under a
//! shim's command line (`exec -a /usr/local/bin/containerd-shim-sturdy-v2 ./evil -namespace
//! k8s.io -id <id> -address <containerd's socket>`), and a journal entry is only as good
//! as what it names. No containerd here: its socket does not exist.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sturdyctl::discovery::{Shim, Task};
use sturdyctl::journal::Phase;
use sturdyctl::procfs;
use sturdyctl::watchdog::Config;

mod common;
use common::{
    bundle_runc_still_has, config, journal, journal_started, ran_delete, recording_shim, run_until,
    shim_bundle, trusted_tempdir, until,
};

const NOBODY: u32 = 65534;
/// How long the watchdog may take to get its journal where a test waits for it.
const LIMIT: Duration = Duration::from_secs(15);

/// `evil`: sleeps until killed; run with a `delete` argument it leaves `marker`.
fn build_evil(dir: &Path, marker: &Path) -> PathBuf {
    let src = dir.join("evil.c");
    std::fs::write(
        &src,
        format!(
            r#"#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {{
    for (int i = 1; i < argc; i++) {{
        if (strcmp(argv[i], "delete") == 0) {{
            FILE *f = fopen("{}", "w");
            if (f) fputs("evil ran as root\n", f);
            return 0;
        }}
    }}
    for (;;) pause();
}}
"#,
            marker.display()
        ),
    )
    .unwrap();
    let bin = dir.join("evil");
    let out = Command::new("cc").arg("-o").arg(&bin).arg(&src).output();
    let out = out.expect("cc (gcc) to build the look-alike; scripts/deps.sh installs it");
    assert!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// The look-alike: `evil` under a sturdy shim's command line for task default/c1 of the
/// watchdog's containerd, run as `uid`; killed and reaped on drop.
struct Spoof(Child);

impl Spoof {
    async fn start(evil: &Path, uid: u32, cfg: &Config) -> Spoof {
        let child = Command::new(evil)
            .arg0("/usr/local/bin/containerd-shim-sturdy-v2")
            .args(["-namespace", "default", "-id", "c1"])
            .args(["-address", cfg.address.to_str().unwrap()])
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let exe = || procfs::exe(pid).ok();
        assert!(
            until(Duration::from_secs(10), || exe().as_deref() == Some(evil)).await,
            "the spoof never ran"
        );
        let args = procfs::cmdline(pid);
        assert!(
            sturdyctl::discovery::is_shim_daemon(&args, cfg.address.to_str().unwrap()),
            "the spoof must look like a shim daemon: {args:?}"
        );
        Spoof(child)
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Spoof {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A scratch dir in /tmp owned by `uid`, as a user's home would be.
fn user_dir(uid: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The pod's shim died (its socket refuses, runc still has the container) and a look-alike
/// names its task. `shim_pid_is_spoof`: the bundle's shim.pid names the look-alike (the
/// dead shim's pid was taken), else a pid no process has.
async fn dead_shim_with_spoof(uid: u32, exe_owner: u32, shim_pid_is_spoof: bool) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let home = user_dir(exe_owner);
    let marker = dir.path().join("evil-ran");
    let evil = build_evil(home.path(), &marker);
    std::os::unix::fs::chown(&evil, Some(exe_owner), Some(exe_owner)).unwrap();
    let mut spoof = Spoof::start(&evil, uid, &cfg).await;

    let calls = dir.path().join("delete-calls");
    let bin_dir = trusted_tempdir();
    let shim_bin = recording_shim(bin_dir.path(), &calls);
    let shim_pid = if shim_pid_is_spoof {
        spoof.pid()
    } else {
        999_999
    };
    let socket = dir.path().join("dead.sock");
    shim_bundle(dir.path(), &cfg, &socket, shim_pid, &shim_bin);

    run_until(&cfg, LIMIT, "the journal never got there", ran_delete).await;

    let entries = journal(&cfg);
    assert!(
        !marker.exists(),
        "the look-alike's binary was run: {entries:#?}"
    );
    assert!(
        spoof.alive(),
        "the look-alike was killed for the shim: {entries:#?}"
    );
    let started = entries
        .iter()
        .find_map(|e| match &e.phase {
            Phase::Started { reason, shim } => Some((reason.clone(), shim.clone())),
            _ => None,
        })
        .expect("the dead shim was recovered");
    assert_eq!(started.0, "dead at discovery", "{entries:#?}");
    assert_eq!(
        started.1.process, None,
        "the look-alike was taken for the shim"
    );
    let calls = std::fs::read_to_string(&calls).expect("containerd's shim binary never ran");
    assert!(calls.contains("-id c1 -bundle"), "{calls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_look_alike_run_by_nobody_is_not_the_shim() {
    dead_shim_with_spoof(NOBODY, NOBODY, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_look_alike_holding_the_dead_shims_pid_is_not_the_shim() {
    dead_shim_with_spoof(NOBODY, NOBODY, true).await;
}

/// Root running a binary that a user may replace (it lies in the user's directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_look_alike_run_by_root_from_a_users_binary_is_not_the_shim() {
    dead_shim_with_spoof(0, NOBODY, true).await;
    dead_shim_with_spoof(0, 0, false).await;
}

/// An unfinished incident whose journal entry names what the watchdog would never have
/// taken is not redone: it is ended as refused, with the reason, and nothing of it runs.
async fn refused_on_resume(edit: impl FnOnce(&mut Shim, &Path)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (bundle, runc_root) = bundle_runc_still_has(dir.path(), &cfg);
    let home = user_dir(NOBODY);
    let marker = dir.path().join("evil-ran");
    let evil = build_evil(home.path(), &marker);
    let mut spoof = Spoof::start(&evil, NOBODY, &cfg).await;
    let mut shim = Shim {
        address: format!("unix://{}", dir.path().join("dead.sock").display()),
        namespace: "default".into(),
        id: "c1".into(),
        runtime: "io.containerd.sturdy.v2".into(),
        process: Some(procfs::identity(spoof.pid()).unwrap()),
        containerd_address: cfg.address.display().to_string(),
        tasks: vec![Task {
            namespace: "default".into(),
            id: "c1".into(),
            bundle: bundle.clone(),
            runc_root: Some(runc_root),
            ..Default::default()
        }],
        ..Default::default()
    };
    edit(&mut shim, &evil);
    let incident = journal_started(&cfg, shim);

    run_until(&cfg, LIMIT, "the journal never got there", |entries| {
        entries
            .iter()
            .any(|e| e.incident == incident && matches!(e.phase, Phase::Finished { .. }))
    })
    .await;
    let entries = journal(&cfg);
    assert!(
        !marker.exists(),
        "an untrusted binary was run: {entries:#?}"
    );
    assert!(
        spoof.alive(),
        "the journalled look-alike was killed: {entries:#?}"
    );
    assert!(
        !entries
            .iter()
            .any(|e| e.incident == incident && matches!(e.phase, Phase::Step { .. })),
        "a refused incident took steps: {entries:#?}"
    );
    entries
        .iter()
        .find_map(|e| match &e.phase {
            Phase::Finished {
                ok: false, summary, ..
            } if e.incident == incident => Some(summary.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("not ended as refused: {entries:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_entry_naming_an_untrusted_process_is_refused() {
    let why = refused_on_resume(|_, _| {}).await;
    assert!(why.starts_with("refused on resume"), "{why}");
    assert!(why.contains("untrusted executable"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_entry_naming_an_untrusted_shim_binary_is_refused() {
    let why = refused_on_resume(|shim, evil| {
        shim.process = None;
        shim.tasks[0].shim_binary = Some(evil.to_path_buf());
    })
    .await;
    assert!(why.contains("shim binary"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_entry_naming_a_bundle_elsewhere_is_refused() {
    let why = refused_on_resume(|shim, evil| {
        shim.process = None;
        shim.tasks[0].bundle = evil.parent().unwrap().to_path_buf();
    })
    .await;
    assert!(why.contains("is not containerd's"), "{why}");
}

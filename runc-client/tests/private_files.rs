//! Files the client writes for runc (exec's process spec, a per-call log) may hold secrets:
//! they live in a private directory of their own and are gone once the call is over.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fake::{Fake, KillOnDrop};
use runc_client::{CreateOpts, ExecOpts};

/// Records, for `--process` and `--log`, the file's mode and type and its directory's, the
/// way runc opens its log (append, creating it 0644 under umask 022 when missing).
const RECORD: &str = r#"
P=; L=
while [ $# -gt 0 ]; do
  case "$1" in
    --process) P="$2"; shift ;;
    --log) L="$2"; shift ;;
  esac
  shift
done
[ -n "$L" ] && { umask 022; : >> "$L"; }
rec() {
  [ -n "$2" ] || return 0
  d=$(dirname "$2")
  echo "$1|$(stat -c %a "$2")|$(stat -c %F "$2")|$(stat -c %a "$d")|$(stat -c %F "$d")|$2" >> "$DIR/record"
}
rec spec "$P"
rec log "$L"
[ -n "$P" ] && cat "$P" > "$DIR/spec-copy"
"#;

#[derive(Debug)]
struct Seen {
    mode: String,
    kind: String,
    dir_mode: String,
    dir_kind: String,
    path: PathBuf,
}

fn seen(fake: &Fake, what: &str) -> Seen {
    let record = std::fs::read_to_string(fake.path("record")).unwrap_or_default();
    let line = record
        .lines()
        .find(|l| l.starts_with(&format!("{what}|")))
        .unwrap_or_else(|| panic!("no {what} in the record: {record:?}"));
    let f: Vec<&str> = line.splitn(6, '|').collect();
    Seen {
        mode: f[1].into(),
        kind: f[2].into(),
        dir_mode: f[3].into(),
        dir_kind: f[4].into(),
        path: f[5].into(),
    }
}

/// Private: a 0600 regular file alone in a fresh 0700 directory directly under `parent`.
fn assert_private(s: &Seen, parent: &Path) {
    // stat says "regular empty file" for an empty log.
    assert_eq!(s.mode, "600", "{s:?}");
    assert!(s.kind.starts_with("regular"), "{s:?}");
    assert_eq!(
        (s.dir_mode.as_str(), s.dir_kind.as_str()),
        ("700", "directory"),
        "{s:?}"
    );
    let dir = s.path.parent().unwrap();
    assert_eq!(dir.parent(), Some(parent), "{s:?}");
}

fn assert_gone(s: &Seen) {
    assert!(!s.path.exists(), "{} left behind", s.path.display());
    let dir = s.path.parent().unwrap();
    assert!(!dir.exists(), "{} left behind", dir.display());
}

fn secret_process() -> oci_spec::runtime::Process {
    serde_json::from_value(serde_json::json!({
        "args": ["true"],
        "cwd": "/",
        "env": ["DB_PASSWORD=hunter2"],
        "user": {"uid": 0, "gid": 0}
    }))
    .unwrap()
}

#[tokio::test]
async fn exec_spec_and_log_are_private_and_removed() {
    let fake = Fake::new(&format!("{RECORD}\nexit 0"));
    fake.runc
        .exec("c1", &secret_process(), &ExecOpts::default())
        .await
        .unwrap();
    let spec = seen(&fake, "spec");
    let log = seen(&fake, "log");
    assert_private(&spec, &std::env::temp_dir());
    assert_private(&log, &std::env::temp_dir());
    let copy = std::fs::read_to_string(fake.path("spec-copy")).unwrap();
    assert!(copy.contains("DB_PASSWORD=hunter2"), "{copy}");
    assert_gone(&spec);
    assert_gone(&log);
}

#[tokio::test]
async fn exec_spec_goes_where_the_caller_says() {
    let fake = Fake::new(&format!("{RECORD}\nexit 0"));
    let bundle = fake.path("bundle");
    std::fs::create_dir(&bundle).unwrap();
    let opts = ExecOpts {
        spec_dir: Some(bundle.clone()),
        ..Default::default()
    };
    fake.runc
        .exec("c1", &secret_process(), &opts)
        .await
        .unwrap();
    let spec = seen(&fake, "spec");
    assert_private(&spec, &bundle);
    assert_private(&seen(&fake, "log"), &bundle);
    assert_gone(&spec);
    assert_eq!(std::fs::read_dir(&bundle).unwrap().count(), 0);
}

#[tokio::test]
async fn exec_spec_is_removed_when_runc_fails() {
    let fake = Fake::new(&format!(
        "{RECORD}\necho '{{\"level\":\"error\",\"msg\":\"boom\"}}' >> \"$L\"\nexit 1"
    ));
    let err = fake
        .runc
        .exec("c1", &secret_process(), &ExecOpts::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");
    let spec = seen(&fake, "spec");
    assert_private(&spec, &std::env::temp_dir());
    assert_gone(&spec);
    assert_gone(&seen(&fake, "log"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_spec_is_removed_when_the_call_is_dropped() {
    let fake = Fake::new(&format!(
        "{RECORD}\necho $$ > \"$DIR/pids\"\ntouch \"$DIR/ready\"\nexec sleep 1000"
    ));
    let mut guard = KillOnDrop(Vec::new());
    let opts = ExecOpts::default();
    let process = secret_process();
    let call = fake.runc.exec("c1", &process, &opts);
    let ready = fake.path("ready");
    tokio::select! {
        r = call => panic!("the fake cannot finish: {r:?}"),
        _ = async {
            while !ready.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } => {}
    }
    guard.0 = fake.pids("pids");
    let spec = seen(&fake, "spec");
    assert_private(&spec, &std::env::temp_dir());
    assert_gone(&spec);
    assert_gone(&seen(&fake, "log"));
}

/// create and restore hand their stdio over too, so runc's log goes to a per-call file.
#[tokio::test]
async fn create_log_is_private_and_removed() {
    let fake = Fake::new(&format!("{RECORD}\nexit 0"));
    fake.runc
        .create("c1", Path::new("/bundle"), &CreateOpts::default())
        .await
        .unwrap();
    let log = seen(&fake, "log");
    assert_private(&log, &std::env::temp_dir());
    assert_gone(&log);
}

#!/bin/sh
# A fake runc for the shim's lifecycle tests: real processes, no containers.
# State lives in $root/<id>/ (pid, bundle, started, execs); every call is appended to
# $root/calls.log as "<command> <id>", and its own pid written to $root/<command>-<id>.pid
# (the last call's). A bundle steers it with files:
#   fake-init         shell command init runs once started (default: exec sleep 1000)
#   fake-init-now     run init's command at create, without waiting for start
#   fake-exec         shell command an exec runs (default: exec sleep 1000)
#   fake-<cmd>-sleep  seconds <cmd> takes (create, start, exec, delete)
#   fake-kill-after   seconds kill takes after it signalled
#   fake-start-after  seconds start takes after it let init run
#   fake-<cmd>-fail   <cmd> fails with the file's content as runc's error
#   fake-cgroups      JSON object written as cgroup_paths of $root/<id>/state.json
#   fake-checkpoint-criu-fail  checkpoint fails as CRIU does: an error in <work>/dump.log
#   fake-checkpoint-criu-log   the log path runc's message names instead of <work>/dump.log
# update copies the resources it got (a file, or - for stdin) to $root/<id>/update.json.
# checkpoint and restore keep their arguments in $root/<id>/<cmd>.args; checkpoint writes
# its "images" (init's pid) and kills init unless --leave-running; restore runs fake-init
# at once, like init-now.
root=/run/runc; log=""
while [ $# -gt 0 ]; do
    case "$1" in
        --root) root=$2; shift 2 ;;
        --log) log=$2; shift 2 ;;
        --log-format|--rootless|--criu) shift 2 ;;
        --systemd-cgroup|--debug) shift ;;
        *) break ;;
    esac
done
cmd=$1; shift
given="$*"
bundle=""; pidfile=""; all=""; force=""; args=""; resources=""; image=""; work=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bundle|-b) bundle=$2; shift 2 ;;
        --pid-file) pidfile=$2; shift 2 ;;
        --resources|-r) resources=$2; shift 2 ;;
        --image-path) image=$2; shift 2 ;;
        --work-path) work=$2; shift 2 ;;
        --parent-path|--manage-cgroups-mode|--empty-ns|--page-server|--lsm-profile|--lsm-mount-context) shift 2 ;;
        --leave-running|--tcp-established|--ext-unix-sk|--shell-job|--file-locks|--pre-dump|--auto-dedup|--lazy-pages|--no-subreaper) shift ;;
        --process|-p|--console-socket|--preserve-fds|--format|-f|--interval) shift 2 ;;
        --all|-a) all=1; shift ;;
        --force) force=1; shift ;;
        --detach|-d|--no-pivot|--no-new-keyring|--stats) shift ;;
        --) shift; args="$args $*"; break ;;
        *) args="$args $1"; shift ;;
    esac
done
set -- $args
id=$1; dir="$root/$id"
mkdir -p "$root"
echo "$cmd $id" >> "$root/calls.log"
echo $$ > "$root/$cmd-$id.pid"

fail() {
    if [ -n "$log" ]; then
        printf '{"level":"error","msg":"%s","time":"t"}\n' "$1" >> "$log"
    else
        printf '{"level":"error","msg":"%s","time":"t"}\n' "$1" >&2
    fi
    exit 1
}
steer() { [ -n "$bundle" ] && [ -e "$bundle/fake-$1" ]; }
case "$cmd" in create|restore) new=1 ;; *) new="" ;; esac
[ -n "$new" ] || { [ -d "$dir" ] && bundle=$(cat "$dir/bundle"); }
steer "$cmd-sleep" && sleep "$(cat "$bundle/fake-$cmd-sleep")"
steer "$cmd-fail" && fail "$(cat "$bundle/fake-$cmd-fail")"
[ -n "$new" ] || [ -d "$dir" ] || fail "container does not exist"

case "$cmd" in
create)
    [ -d "$dir" ] && fail "runc create failed: container with given ID already exists"
    mkdir -p "$dir"; echo "$bundle" > "$dir/bundle"
    init="exec sleep 1000"; steer init && init=$(cat "$bundle/fake-init")
    if steer init-now; then
        # Runs at once, but only after this script exited: a child that died while its
        # parent still ran would be reaped by the parent, never seen by the shim.
        sh -c 'while kill -0 "$1" 2>/dev/null; do sleep 0.005; done; exec sh -c "$2"' init "$$" "$init" &
    else
        sh -c 'while [ ! -e "$1/started" ]; do sleep 0.01; done; exec sh -c "$2"' init "$dir" "$init" &
    fi
    echo $! > "$dir/pid"; [ -n "$pidfile" ] && echo $! > "$pidfile"
    steer cgroups && printf '{"id":"%s","init_process_pid":%s,"cgroup_paths":%s}\n' \
        "$id" "$(cat "$dir/pid")" "$(cat "$bundle/fake-cgroups")" > "$dir/state.json"
    ;;
restore)
    [ -d "$dir" ] && fail "container with given ID already exists"
    [ -e "$image/fake-images" ] || fail "criu failed: type RESTORE errno 0"
    mkdir -p "$dir"; echo "$bundle" > "$dir/bundle"; echo "$given" > "$dir/restore.args"
    init="exec sleep 1000"; steer init && init=$(cat "$bundle/fake-init")
    sh -c 'while kill -0 "$1" 2>/dev/null; do sleep 0.005; done; exec sh -c "$2"' init "$$" "$init" &
    echo $! > "$dir/pid"; [ -n "$pidfile" ] && echo $! > "$pidfile"
    touch "$dir/started" ;;
checkpoint)
    echo "$given" > "$dir/checkpoint.args"
    if steer checkpoint-criu-fail; then
        mkdir -p "$work"
        printf '(00.01) Error (criu/fake.c:1): %s\n' "$(cat "$bundle/fake-checkpoint-criu-fail")" > "$work/dump.log"
        named="$work/dump.log"
        steer checkpoint-criu-log && named=$(cat "$bundle/fake-checkpoint-criu-log")
        fail "criu failed: type DUMP errno 0\\nlog file: $named"
    fi
    mkdir -p "$image"; cat "$dir/pid" > "$image/fake-images"
    case " $given " in *" --leave-running "*) ;; *) kill -9 "$(cat "$dir/pid")" ;; esac ;;
start)
    [ -e "$dir/started" ] && fail "cannot start an already running container"
    touch "$dir/started"
    steer start-after && sleep "$(cat "$bundle/fake-start-after")" ;;
exec)
    run="exec sleep 1000"; steer exec && run=$(cat "$bundle/fake-exec")
    # As for init-now: the exec must not die while this script can still reap it.
    sh -c 'while kill -0 "$1" 2>/dev/null; do sleep 0.005; done; exec sh -c "$2"' exec "$$" "$run" &
    echo $! >> "$dir/execs"; [ -n "$pidfile" ] && echo $! > "$pidfile"
    ;;
kill)
    sig=${2:-15}
    # --all reaches the other processes even after init is gone, as with a shared PID
    # namespace in runc.
    if [ -n "$all" ] && [ -e "$dir/execs" ]; then
        for p in $(cat "$dir/execs"); do kill "-$sig" "$p" 2>/dev/null; done
    fi
    if kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
        kill "-$sig" "$(cat "$dir/pid")"
    elif [ -z "$all" ]; then
        fail "container not running"
    fi
    steer kill-after && sleep "$(cat "$bundle/fake-kill-after")" ;;
delete)
    pid=$(cat "$dir/pid")
    if kill -0 "$pid" 2>/dev/null; then
        [ -n "$force" ] || fail "cannot delete container that is not stopped"
        kill -9 "$pid"
    fi
    rm -rf "$dir" ;;
state)
    printf '{"id":"%s","pid":%s,"status":"running","bundle":"%s"}\n' "$id" "$(cat "$dir/pid")" "$bundle" ;;
ps)
    printf '[%s]\n' "$(cat "$dir/pid")" ;;
update) if [ "$resources" = - ]; then cat; else cat "$resources"; fi > "$dir/update.json" ;;
pause) kill -STOP "$(cat "$dir/pid")" ;;
resume) kill -CONT "$(cat "$dir/pid")" ;;
*) fail "fake runc: unknown command $cmd" ;;
esac
exit 0

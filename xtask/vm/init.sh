#!/bin/sh
# /init of the `cargo xtask vm` test VM (busybox ash, runs as PID 1).
#
# Starts the ids daemon, drives a fixed scenario and prints the results on the
# serial console between `===NAME===` and `===END===` markers, which
# xtask/src/vm.rs parses. Keep the markers and the scenario in step with it.

export PATH=/bin:/sbin

mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t securityfs securityfs /sys/kernel/security
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmpfs /tmp
# Keep kernel messages off the console so they cannot split the marked sections.
dmesg -n 1
ip link set lo up
if [ -f /lib/modules/veth.ko ]; then
    if insmod /lib/modules/veth.ko; then echo "vm: veth loaded"; else echo "vm: insmod veth.ko failed"; fi
fi

echo "===KERNEL $(uname -r) LSM $(cat /sys/kernel/security/lsm)==="

mkdir -p /etc /tmp/watched /tmp/unwatched
# The integrity scenario's tree (tmpfs): one directory per churn loop, seeded before the
# daemon starts so that its first scan covers them.
INTEGRITY_DIR=/tmp/integrity
INTEGRITY_LOOPS=4
INTEGRITY_STEPS=120
for w in $(seq 1 "$INTEGRITY_LOOPS"); do
    mkdir -p "$INTEGRITY_DIR/w$w/sub"
    for f in 0 1 2 3 4; do echo "seed $w $f" > "$INTEGRITY_DIR/w$w/f$f"; done
    echo "seed $w sub" > "$INTEGRITY_DIR/w$w/sub/g"
done
cat > /etc/ids.toml <<'EOF'
watch = ["/tmp/watched"]
events_log = "/tmp/events.jsonl"
state_dir = "/tmp/ids-state"
# Only the module tracepoints can make kernel_modules re-run within the scenario.
integrity_interval = 3600

[[collectors]]
kind = "kernel_modules"

[[collectors]]
kind = "file_contents"
paths = ["/tmp/integrity"]
recursive = true

[[collectors]]
kind = "file_metadata"
paths = ["/tmp/integrity"]
recursive = true
EOF

# True while the process exists and is not a zombie (ash reaps background jobs lazily).
alive() {
    [ -r "/proc/$1/status" ] && ! grep -q '^State:.*zombie' "/proc/$1/status"
}

/bin/ids run --config /etc/ids.toml >/tmp/ids.log 2>&1 &
ids_pid=$!

waited=0
ready=0
while [ "$waited" -lt 60 ]; do
    if /bin/ids status --config /etc/ids.toml --json >/dev/null 2>&1; then
        ready=1
        break
    fi
    alive "$ids_pid" || break
    sleep 1
    waited=$((waited + 1))
done
if [ "$ready" = 1 ]; then
    echo "===READY after ${waited}s==="
else
    echo "===NOT READY after ${waited}s==="
fi

# The scenario.
/bin/true vmarg1 vmarg2
for dir in /tmp/watched /tmp/unwatched; do
    cd "$dir"
    echo hello > a
    echo more >> a
    chmod 600 a
    mv a b
    rm b
done
cd /
nc 127.0.0.1 9 </dev/null >/dev/null 2>&1
sleep 2

echo "===STATUS==="
/bin/ids status --config /etc/ids.toml --json 2>&1
echo "===END==="

# The integrity scenario: accept a baseline, churn the tree from several background loops at
# once, wait for them and for the daemon to have rehashed everything (`integrity.dirty` 0),
# then print the daemon's aggregate, a fresh offline `ids hash` of the same config and the
# diff against the baseline. xtask/src/vm.rs compares them.
uptime_s() { cut -d' ' -f1 /proc/uptime; }

# Polls `ids status --json` until its output matches the extended regex $1 on $2 consecutive
# polls 0.25 s apart, for at most 30 s; prints how long it took, or returns 1.
poll_status() {
    polls=0
    hits=0
    while [ "$polls" -lt 120 ]; do
        if /bin/ids status --config /etc/ids.toml --json 2>/dev/null | grep -Eq "$1"; then
            hits=$((hits + 1))
            [ "$hits" -ge "$2" ] && { echo "$((polls / 4)).$((polls % 4 * 25))s"; return 0; }
        else
            hits=0
        fi
        usleep 250000
        polls=$((polls + 1))
    done
    return 1
}

# One churn loop: $INTEGRITY_STEPS random changes in its own directory (and renames into the
# others), seeded with $2 (printed; `IDS_VM_SEED=N cargo xtask vm-test` replays a run, as the
# loops' scheduling allows). Busybox has no way to write
# through a shared mapping, so mmap writes are left to the host tier.
churn() {
    RANDOM=$2
    dir=$INTEGRITY_DIR/w$1
    i=0
    while [ "$i" -lt "$INTEGRITY_STEPS" ]; do
        f=$dir/f$((RANDOM % 5))
        case $((RANDOM % 14)) in
            0) echo "w$1 step $i $RANDOM" > "$f" ;;
            1) echo "w$1 append $i" >> "$f" ;;
            2) : > "$f" ;;
            3) truncate -s $((RANDOM % 100)) "$f" ;;
            4) echo "w$1 new $i" > "$dir/n$i" ;;
            5) mv "$f" "$dir/f$((RANDOM % 5))" 2>/dev/null ;;
            6) mv "$f" "$INTEGRITY_DIR/w$((RANDOM % INTEGRITY_LOOPS + 1))/x$1-$i" 2>/dev/null ;;
            7) rm -f "$f" ;;
            8) case $((RANDOM % 4)) in
                   0) chmod 600 "$f" ;; 1) chmod 640 "$f" ;; 2) chmod 755 "$f" ;; *) chmod 644 "$f" ;;
               esac 2>/dev/null ;;
            9) mkdir "$dir/d$i" && echo "w$1 dir $i" > "$dir/d$i/g" && mv "$dir/d$i" "$dir/sub/d$i" ;;
            10) echo "w$1 sub $i" >> "$dir/sub/g" ;;
            *) usleep $((RANDOM % 250000)) ;; # around the daemon's 200 ms quiet period
        esac
        i=$((i + 1))
    done
    # A fixed last change per loop, whose alerts the host checks by name.
    echo "w$1 done" > "$dir/done"
    chmod 600 "$dir/done"
}

if took=$(poll_status '"ready": true' 1); then
    echo "===INTEGRITY-READY after $took==="
else
    echo "===INTEGRITY-NOT-READY==="
fi
echo "===INTEGRITY-BASELINE==="
/bin/ids baseline --config /etc/ids.toml --json 2>/tmp/integrity-baseline.err
echo "===END==="

start=$(uptime_s)
seed=${IDS_VM_SEED:-$(date +%s)}
loop_pids=""
for w in $(seq 1 "$INTEGRITY_LOOPS"); do
    echo "vm: integrity loop $w seed $((seed + w))"
    churn "$w" $((seed + w)) &
    loop_pids="$loop_pids $!"
done
# shellcheck disable=SC2086
wait $loop_pids
echo "===INTEGRITY-CHURNED uptime $start -> $(uptime_s)==="
if took=$(poll_status '"dirty": 0([^0-9]|$)' 2); then
    echo "===INTEGRITY-CLEAN after $took==="
else
    echo "===INTEGRITY-NOT-CLEAN after 30s==="
fi

echo "===INTEGRITY-STATUS==="
/bin/ids status --config /etc/ids.toml --json 2>/tmp/integrity-status.err
echo "===END==="
echo "===INTEGRITY-HASH==="
/bin/ids hash --config /etc/ids.toml --json 2>/tmp/integrity-hash.err
echo "===END==="
echo "===INTEGRITY-DIFF==="
/bin/ids diff --config /etc/ids.toml --json 2>/tmp/integrity-diff.err
echo "===END==="
echo "===INTEGRITY-STDERR==="
for step in baseline status hash diff; do
    [ -s "/tmp/integrity-$step.err" ] && sed "s/^/$step: /" "/tmp/integrity-$step.err"
done
echo "===END==="
echo "===INTEGRITY-TREE==="
ls -lR "$INTEGRITY_DIR"
echo "===END==="
echo "===INTEGRITY-DONE uptime $(uptime_s)==="

# A module loaded and removed: the kernel_modules collector must report both within the poll.
insmod /lib/modules/dummy.ko || echo "vm: insmod dummy.ko failed"
poll_status '"dirty": 0([^0-9]|$)' 2 >/dev/null
usleep 500000
rmmod dummy || echo "vm: rmmod dummy failed"
usleep 500000
echo "===MODULES-DONE==="

echo "===EVENTS==="
[ -f /tmp/events.jsonl ] && cat /tmp/events.jsonl
echo
echo "===END==="

kill -TERM "$ids_pid" 2>/dev/null
# Watchdog: a daemon that ignores SIGTERM is killed after 30 s (exit 137).
( sleep 30; kill -KILL "$ids_pid" 2>/dev/null ) &
watchdog=$!
wait "$ids_pid"
code=$?
kill "$watchdog" 2>/dev/null
echo "===EXIT $code==="

echo "===DAEMON-LOG==="
cat /tmp/ids.log
echo
echo "===END==="

# Kernel messages since init started (the console shows none of them).
echo "===DMESG==="
dmesg | sed -n '/Run \/init as init process/,$p' | tail -n 60
echo "===END==="

poweroff -f
sleep 10

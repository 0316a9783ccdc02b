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
cat > /etc/ids.toml <<'EOF'
watch = ["/tmp/watched"]
events_log = "/tmp/events.jsonl"
state_dir = "/tmp/ids-state"
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

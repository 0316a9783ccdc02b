#!/bin/sh
# /init of `cargo xtask bench sensor-vm` (busybox ash, PID 1): the sensor bench's workloads on
# Debian's stock kernel, where the sensor runs on its LSM and fentry hooks, without the sensor
# and under `ids run` (the embedded default configuration plus /tmp/watched) in alternating
# rounds of the same boot. Results go to the serial console between `===NAME===` and
# `===END===` markers, which xtask/src/bench/sensor_vm.rs parses.

export PATH=/bin:/sbin

mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t securityfs securityfs /sys/kernel/security
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmpfs /tmp
dmesg -n 1
ip link set lo up

# Rounds and the divisor of the host bench's iterations (emulated syscalls are slow); keep in
# step with ROUNDS and DIVISOR in sensor_vm.rs.
ROUNDS=5
DIVISOR=20

echo "===KERNEL $(uname -r) LSM $(cat /sys/kernel/security/lsm)==="

mkdir -p /etc /tmp/watched /tmp/unwatched /usr/bin /usr/sbin /usr/local/bin /root/.ssh
: > /tmp/watched/file
/bin/ids config default | sed \
    -e 's#^watch = \[\(.*\)\]#watch = [\1, "/tmp/watched"]#' \
    -e 's#^events_log = .*#events_log = "/tmp/events.jsonl"#' \
    -e 's#^state_dir = .*#state_dir = "/tmp/ids-state"#' > /etc/ids.toml

workloads() {
    /bin/xtask guest-workloads --watched /tmp/watched/file --unwatched /tmp/unwatched --divisor "$DIVISOR"
}

round=1
while [ "$round" -le "$ROUNDS" ]; do
    echo "===ROUND $round none==="
    workloads
    echo "===END==="

    /bin/ids run --config /etc/ids.toml >/tmp/ids.log 2>&1 &
    ids_pid=$!
    waited=0
    until /bin/ids status --config /etc/ids.toml --json 2>/dev/null | grep -q '"ready": true'; do
        if [ "$waited" -ge 180 ] || ! kill -0 "$ids_pid" 2>/dev/null; then
            echo "===NOT READY round $round after ${waited}s==="
            echo "===DAEMON-LOG==="
            tail -n 40 /tmp/ids.log
            echo "===END==="
            poweroff -f
        fi
        sleep 1
        waited=$((waited + 1))
    done
    if [ "$round" = 1 ]; then
        echo "===STATUS==="
        /bin/ids status --config /etc/ids.toml --json
        echo "===END==="
    fi
    echo "===ROUND $round ids==="
    workloads
    echo "===END==="
    kill -TERM "$ids_pid"
    wait "$ids_pid"
    echo "===EXIT round $round $?==="
    round=$((round + 1))
done

echo "===DONE==="
poweroff -f

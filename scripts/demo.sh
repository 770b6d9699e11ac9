#!/usr/bin/env bash
# The demo: a virtual NIC (net_tap) owned by dpdk-io-proxy inside a network namespace,
# an unmodified dpdk-testpmd attached to its queue through a unix socket in icmpecho
# mode, and the kernel's ping answering through it. Prints what happened at each step.
#
#   scripts/demo.sh            (as root; installs what is missing first)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\n==> %s\n' "$*"; }

[ "$(id -u)" -eq 0 ] || { echo "demo.sh: run as root (network namespace, tap device, hugepages)" >&2; exit 1; }

say "setup (idempotent) and build"
scripts/setup.sh >/dev/null
cargo build --release --workspace --quiet

work=$(mktemp -d /tmp/dpdk-io-proxy-demo.XXXXXX)
ns="iop-demo-$$"
tap="ioptapdemo"
sock="$work/socket_0_0/sock"
proxy_pid=""
guest_pid=""
cleanup() {
    # Only what this script started, by pid.
    [ -n "$guest_pid" ] && kill -INT "$guest_pid" 2>/dev/null && sleep 1 && kill -KILL "$guest_pid" 2>/dev/null
    [ -n "$proxy_pid" ] && kill -TERM "$proxy_pid" 2>/dev/null && sleep 1 && kill -KILL "$proxy_pid" 2>/dev/null
    ip netns delete "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cpu_proxy=0
cpu_guest=$(( $(nproc) > 1 ? 1 : 0 ))

say "network namespace $ns; the proxy owns net_tap0 (interface $tap) there, on CPU $cpu_proxy"
ip netns add "$ns"
echo "socket $sock port 0 queue 0" > "$work/dpdk-io-proxy.cmds"
cat "$work/dpdk-io-proxy.cmds"
ip netns exec "$ns" timeout 120 target/release/dpdk-io-proxy --lcores "0@$cpu_proxy" \
    --file-prefix "iop-demo-proxy-$$" --no-pci --vdev "net_tap0,iface=$tap" \
    -- --cmds "$work/dpdk-io-proxy.cmds" --stats-period 5 > "$work/proxy.log" 2>&1 < /dev/null &
proxy_pid=$!
for _ in $(seq 100); do grep -qs "IO_PROXY: ready" "$work/proxy.log" && break; sleep 0.1; done
grep "IO_PROXY" "$work/proxy.log" || { cat "$work/proxy.log"; exit 1; }
ip -n "$ns" addr add 10.203.0.1/24 dev "$tap"
ip -n "$ns" link set "$tap" up

say "guest: unmodified /usr/bin/dpdk-testpmd, --no-huge -m 32, no root needed, icmpecho, on CPU $cpu_guest"
LD_LIBRARY_PATH="$repo/target/release" timeout 120 /usr/bin/dpdk-testpmd --lcores "0@$cpu_guest,1@$cpu_guest" \
    --no-huge -m 32 --no-pci --file-prefix "iop-demo-guest-$$" \
    -d librte_bus_shm.so -d librte_mempool_shm.so -d librte_net_shm.so -a "sock:$sock" \
    -- --forward-mode=icmpecho --total-num-mbufs=2048 --stats-period 60 > "$work/guest.log" 2>&1 < /dev/null &
guest_pid=$!
for _ in $(seq 150); do grep -qs "queue started" "$work/proxy.log" && break; sleep 0.1; done
grep -E "shm|mbuf pool" "$work/guest.log" || true
grep "queue started" "$work/proxy.log" || { echo "the guest did not attach"; cat "$work/guest.log"; exit 1; }
sleep 1

say "the kernel pings 10.203.0.2; testpmd (through the proxy, zero copy) answers"
ip netns exec "$ns" ping -c 20 -i 0.05 -W 2 10.203.0.2 | tail -3

say "the proxy's counters for the socket (copies stay 0)"
sleep 5
grep "^socket=" "$work/proxy.log" | tail -1 | tr ' ' '\n' | grep -E "rx_packets|tx_packets|copies|invalid|dropped"

say "stopping the guest and the proxy"
kill -INT "$guest_pid"; wait "$guest_pid" 2>/dev/null || true; guest_pid=""
grep -A3 "Forward statistics for port 0" "$work/guest.log" | tail -3 || true
kill -TERM "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true; proxy_pid=""
grep -E "detached|final" "$work/proxy.log" || true
say "done"

#!/usr/bin/env bash
# A Docker engine for the kind e2e on machines where none runs (no systemd as PID 1, e.g. CI VMs):
#
#   e2e/kind/docker.sh [start]   installs Debian's docker.io if dockerd is missing, starts dockerd
#                                in the background unless `docker info` already answers, waits
#                                for it
#   e2e/kind/docker.sh stop      stops the dockerd that `start` started (nothing else) and removes
#                                what Docker leaves in the host: its iptables chains and rules,
#                                its bridges, its mounts, the FORWARD policy it changed
#
# WPEX_DOCKER_ROOT=DIR starts dockerd with that data root instead of /var/lib/docker.
# When the capability bounding set lacks CAP_SYS_RESOURCE (some VMs), privileged containers fail
# ("unable to apply caps"); dockerd then gets e2e/kind/runc-no-sys-resource as its default
# runtime, which drops that capability from each container's spec before running runc.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

state=/run/wpex-dockerd        # pid file and what the host looked like before dockerd
log=/var/log/wpex-dockerd.log
say() { echo "docker.sh: $*"; }

if [ "$(id -u)" != 0 ]; then
    exec sudo --preserve-env=PATH,WPEX_DOCKER_ROOT "$0" "$@"
fi

start() {
    if docker info >/dev/null 2>&1; then
        say "a Docker engine is already running; leaving it alone"
        return
    fi
    # docker.io, and jq for the runtime wrapper.
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v jq >/dev/null || missing+=(jq)
    if [ ${#missing[@]} -gt 0 ]; then
        say "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # Keep the package's init script from starting dockerd: this script starts it, with
        # the runtime it needs.
        local policy=/usr/sbin/policy-rc.d own_policy=no
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 0755 "$policy"; own_policy=yes
        fi
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        [ "$own_policy" = no ] || rm -f "$policy"
    fi
    mkdir -p "$state"
    # What dockerd changes and `stop` puts back.
    iptables -S FORWARD | sed -n 's/^-P FORWARD //p' >"$state/forward-policy"
    cat /proc/sys/net/ipv4/ip_forward >"$state/ip_forward"
    for f in /proc/sys/net/bridge/bridge-nf-call-ip{,6}tables; do
        if [ -f "$f" ]; then echo "$(basename "$f") $(cat "$f")"; fi
    done >"$state/br_netfilter"

    local args=(--pidfile "$state/dockerd.pid" --host unix:///var/run/docker.sock)
    # The cold rehearsal (e2e/test-all.sh --cold) gives dockerd an empty root: no image of an
    # earlier run.
    if [ -n "${WPEX_DOCKER_ROOT:-}" ]; then
        mkdir -p "$WPEX_DOCKER_ROOT"
        args+=(--data-root "$WPEX_DOCKER_ROOT")
    fi
    echo "${WPEX_DOCKER_ROOT:-/var/lib/docker}" >"$state/data-root"
    # CAP_SYS_RESOURCE is capability 24.
    local bnd; bnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
    if (( (16#$bnd >> 24 & 1) == 0 )); then
        say "the capability bounding set lacks CAP_SYS_RESOURCE: runtime $here/runc-no-sys-resource"
        args+=(--add-runtime "wpex-runc=$here/runc-no-sys-resource" --default-runtime wpex-runc)
    fi
    say "starting dockerd (log: $log)"
    # setsid: dockerd outlives this script and the caller's job control.
    setsid dockerd "${args[@]}" </dev/null >>"$log" 2>&1 &
    echo $! >"$state/started"
    for _ in $(seq 120); do
        docker info >/dev/null 2>&1 && { say "dockerd is up: $(docker info -f '{{.ServerVersion}} {{.Driver}} {{.CgroupDriver}} cgroup v{{.CgroupVersion}}')"; return; }
        kill -0 "$(cat "$state/started")" 2>/dev/null || break
        sleep 0.5
    done
    say "dockerd did not come up; last lines of $log:" >&2
    tail -20 "$log" >&2
    exit 1
}

# Deletes every rule of TABLE's built-in chains that jumps to a DOCKER* chain or names one of
# the bridges in $bridges, then every DOCKER* chain. For iptables and ip6tables ($1).
clean_rules() {
    local ipt=$1 table rule chain
    for table in filter nat mangle raw; do
        "$ipt" -t "$table" -S >/dev/null 2>&1 || continue
        "$ipt" -t "$table" -S | { grep -E '^-A ' || true; } | while read -r rule; do
            chain=$(echo "$rule" | awk '{print $2}')
            case "$chain" in DOCKER*) continue ;; esac
            if echo "$rule" | grep -qE -- "-j DOCKER|$bridge_re"; then
                # shellcheck disable=SC2086  # the rule is iptables-save syntax, split on spaces
                eval "$ipt -t $table ${rule/-A/-D}" || true
            fi
        done
        "$ipt" -t "$table" -S | awk '$1 == "-N" && $2 ~ /^DOCKER/ {print $2}' | while read -r chain; do
            "$ipt" -t "$table" -F "$chain" || true
        done
        "$ipt" -t "$table" -S | awk '$1 == "-N" && $2 ~ /^DOCKER/ {print $2}' | while read -r chain; do
            "$ipt" -t "$table" -X "$chain" || true
        done
    done
}

stop() {
    if [ ! -f "$state/started" ]; then
        say "no dockerd started by this script; nothing to stop"
        return
    fi
    local pid; pid=$(cat "$state/started")
    # Bridges of Docker's networks (docker0 and user-defined ones such as kind's), before the
    # daemon goes away.
    local bridges=(docker0) net
    if docker info >/dev/null 2>&1; then
        # Containers of this dockerd are this script's (kind's nodes): stop them first so their
        # mounts and veths go with them.
        local ids; mapfile -t ids < <(docker ps -aq)
        [ ${#ids[@]} -eq 0 ] || docker rm -f -v "${ids[@]}" >/dev/null || true
        for net in $(docker network ls -q --filter driver=bridge); do
            local name; name=$(docker network inspect -f '{{index .Options "com.docker.network.bridge.name"}}' "$net")
            [ -n "$name" ] || name="br-$net"
            bridges+=("$name")
            case "$name" in docker0) ;; *) docker network rm "$net" >/dev/null 2>&1 || true ;; esac
        done
    fi
    if kill -0 "$pid" 2>/dev/null; then
        # dockerd's own children (its containerd), stopped after it if they outlive it.
        local children; children=$(pgrep -P "$pid" || true)
        say "stopping dockerd ($pid)"
        kill -TERM "$pid"
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then
            say "dockerd ignored SIGTERM; killing it"; kill -KILL "$pid"; sleep 1
        fi
        for child in $children; do kill -TERM "$child" 2>/dev/null || true; done
    fi

    bridge_re=$(IFS='|'; echo "${bridges[*]}")
    clean_rules iptables
    if command -v ip6tables >/dev/null; then clean_rules ip6tables; fi
    for net in "${bridges[@]}"; do
        if ip link show "$net" >/dev/null 2>&1; then ip link delete "$net"; fi
    done
    # Mounts dockerd leaves: its netns files, overlay and shm mounts under its roots.
    local root; root=$(cat "$state/data-root" 2>/dev/null || echo /var/lib/docker)
    findmnt -rn -o TARGET | { grep -E "^($root|/run/docker|/var/run/docker)(/|\$)" || true; } |
        sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done

    if [ -s "$state/forward-policy" ]; then iptables -P FORWARD "$(cat "$state/forward-policy")"; fi
    if [ -s "$state/ip_forward" ]; then cat "$state/ip_forward" >/proc/sys/net/ipv4/ip_forward; fi
    if [ -s "$state/br_netfilter" ]; then
        while read -r key value; do
            echo "$value" >"/proc/sys/net/bridge/$key" || true
        done <"$state/br_netfilter"
    fi
    rm -rf "$state"
    say "stopped dockerd and removed its iptables chains, bridges and mounts"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# netns.sh - a private network of Linux network namespaces (tests/test_cluster.py; also to try a cluster by hand).
#
#   netns.sh check                      exit 0 when this user may create namespaces, else say why
#   netns.sh up PREFIX NET NAME=N ...   a bridge ${PREFIX}br in the root namespace at NET.254/24 (NET is
#                                       three octets, e.g. 10.77.0), and for each NAME a namespace
#                                       ${PREFIX}-NAME with loopback up and eth0 at NET.N/24 on the bridge
#   netns.sh down PREFIX                kill what still runs in the ${PREFIX}- namespaces, delete them and
#                                       the bridge; never fails, so it can always run in a teardown
#
# Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN) and iproute2. Interface names stay under 16 characters:
# keep PREFIX to 8.
set -euo pipefail

cmd=${1:?usage: netns.sh check | up PREFIX NET NAME=N ... | down PREFIX}

case "$cmd" in
  check)
    probe="crmprobe$$"
    if ! out=$(ip netns add "$probe" 2>&1); then
      echo "ip netns add is not permitted here: $out" >&2
      exit 1
    fi
    ip netns del "$probe"
    if ! out=$(ip link add "${probe}b" type bridge 2>&1); then
      echo "creating a bridge is not permitted here: $out" >&2
      exit 1
    fi
    ip link del "${probe}b"
    ;;
  up)
    prefix=${2:?PREFIX}; net=${3:?NET}; shift 3
    ip link add "${prefix}br" type bridge
    ip addr add "$net.254/24" dev "${prefix}br"
    ip link set "${prefix}br" up
    i=0
    for spec in "$@"; do
      name=${spec%%=*}; host=${spec#*=}; ns="$prefix-$name"; i=$((i + 1))
      ip netns add "$ns"
      ip link add "${prefix}v$i" type veth peer name "${prefix}p$i"
      ip link set "${prefix}v$i" master "${prefix}br" up
      ip link set "${prefix}p$i" netns "$ns"
      ip -n "$ns" link set "${prefix}p$i" name eth0
      ip -n "$ns" addr add "$net.$host/24" dev eth0
      ip -n "$ns" link set eth0 up
      ip -n "$ns" link set lo up
    done
    ;;
  down)
    prefix=${2:?PREFIX}
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^$prefix-" || true); do
      # NOTE: only processes inside our own namespaces: the servers a failed test left behind.
      for pid in $(ip netns pids "$ns" 2>/dev/null || true); do kill -9 "$pid" 2>/dev/null || true; done
      ip netns del "$ns" 2>/dev/null || true
    done
    ip link del "${prefix}br" 2>/dev/null || true
    ;;
  *)
    echo "usage: netns.sh check | up PREFIX NET NAME=N ... | down PREFIX" >&2
    exit 2
    ;;
esac

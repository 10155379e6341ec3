#!/bin/sh
# Two test "hosts" as network namespaces joined by a veth pair:
#   lsc-h1 (10.231.0.1/24 on lsc-v1)  <-->  lsc-h2 (10.231.0.2/24 on lsc-v2)
#
#   sh hosts.sh up      # create them (needs root, or CAP_NET_ADMIN + CAP_SYS_ADMIN)
#   sh hosts.sh down    # remove them
# Set LSC_NETNS_PREFIX to use other names (default lsc).
set -eu
p=${LSC_NETNS_PREFIX:-lsc}
case "${1:-}" in
up)
  ip netns add "$p-h1"
  ip netns add "$p-h2"
  ip link add "$p-v1" type veth peer name "$p-v2"
  ip link set "$p-v1" netns "$p-h1"
  ip link set "$p-v2" netns "$p-h2"
  ip -n "$p-h1" addr add 10.231.0.1/24 dev "$p-v1"
  ip -n "$p-h2" addr add 10.231.0.2/24 dev "$p-v2"
  for h in 1 2; do
    ip -n "$p-h$h" link set lo up
    ip -n "$p-h$h" link set "$p-v$h" up
  done
  ;;
down)
  ip netns del "$p-h1" 2>/dev/null || true
  ip netns del "$p-h2" 2>/dev/null || true
  ;;
*)
  echo "usage: $0 up|down" >&2
  exit 2
  ;;
esac

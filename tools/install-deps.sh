#!/usr/bin/env bash
# Installs the Debian packages Flotilla needs, only those missing (apt-get update once).
set -euo pipefail
packages=(
  nats-server openssl tcpdump runc crun containerd
  golang-github-containerd-containerd-dev golang-github-gogo-protobuf-dev golang-google-grpc-dev
  busybox-static docker-registry apache2-utils postgresql criu conmon
  containernetworking-plugins iptables tmux iproute2 psmisc procps gcc libc6-dev
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Debian's packages start their daemons on install where an init system runs; we start our own.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

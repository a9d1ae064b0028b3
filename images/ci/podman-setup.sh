#!/usr/bin/env bash
# Install and configure podman for CI image builds and container tests (idempotent, as root).
# This host's quirks (see ../shared/ENVIRONMENT.md): root lacks CAP_SYS_RESOURCE, so podman's
# default ulimits must stay at or below the hard limits; cgroups are hybrid, which crun refuses.
set -euo pipefail

PACKAGES=(podman buildah mmdebstrap uidmap fuse-overlayfs slirp4netns runc)
CONF_DIR=/etc/containers/containers.conf.d
CONF=$CONF_DIR/50-sail-ci.conf

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "podman-setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
fi

# The limits a container may get are this host's hard limits, whatever they are here; podman
# 4.3 itself lowers its RLIMIT_NPROC to 32768 before it starts a container (seen with strace),
# so nproc may not exceed that either.
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=1048576
{ [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
want=$(cat <<CONF
# Written by images/ci/podman-setup.sh: ulimits at this host's hard limits (root here lacks
# CAP_SYS_RESOURCE, so podman's defaults fail), runc (crun refuses hybrid cgroups).
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]

[engine]
runtime = "runc"
CONF
)
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$want" ]; then
    mkdir -p "$CONF_DIR"
    printf '%s\n' "$want" > "$CONF"
    echo "podman-setup: wrote $CONF"
fi

podman info --format '{{.Host.OCIRuntime.Name}} {{.Version.Version}}' | sed 's/^/podman-setup: runtime, podman: /'

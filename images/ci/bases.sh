#!/usr/bin/env bash
# Build the CI stand-ins for the images' bases, with no registry: a Debian rootfs from
# mmdebstrap (with this host's extra CA certificates: outbound HTTPS may pass a re-signing
# proxy), imported into podman; on it, a pytorch stand-in (CPU torch from pip's local wheel
# folder) and a python:3.11-slim stand-in. Idempotent: an image whose recipe did not change is kept.
# Usage: images/ci/bases.sh [CI_REGISTRY]   (default localhost/sail-ci)
set -euo pipefail
cd "$(dirname "$0")/../.."

CI_REGISTRY=${1:-localhost/sail-ci}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
HERE=images/ci
DEBIAN_IMAGE=$CI_REGISTRY/debian-python:$SUITE
CA_DIR=/usr/local/share/ca-certificates

has_recipe() {  # image $1 exists and carries label sail.ci.recipe=$2
    podman image exists "$1" \
        && [ "$(podman image inspect --format '{{index .Labels "sail.ci.recipe"}}' "$1")" = "$2" ]
}

# 1. Debian with Python 3.11, venv and pip, and the host's extra CA certificates.
certs=$(find "$CA_DIR" -name '*.crt' 2>/dev/null | sort)
PACKAGES=python3,python3-venv,python3-pip,ca-certificates
debian_recipe=$( { echo "v1 $MIRROR $SUITE $PACKAGES"; [ -z "$certs" ] || cat $certs; } \
                 | sha256sum | cut -c1-16)
if has_recipe "$DEBIAN_IMAGE" "$debian_recipe"; then
    echo "bases: $DEBIAN_IMAGE is up to date"
else
    start=$SECONDS
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    mmdebstrap --quiet --variant=minbase --include=$PACKAGES \
        --customize-hook="if [ -n \"\$(ls $CA_DIR/*.crt 2>/dev/null)\" ]; then cp $CA_DIR/*.crt \"\$1$CA_DIR/\"; fi" \
        --customize-hook='chroot "$1" update-ca-certificates >/dev/null 2>&1' \
        "$SUITE" "$tmp/rootfs.tar" "$MIRROR"
    podman import -q --change "LABEL sail.ci.recipe=$debian_recipe" --change 'CMD ["/bin/bash"]' \
        "$tmp/rootfs.tar" "$DEBIAN_IMAGE" >/dev/null
    rm -rf "$tmp"
    trap - EXIT
    echo "bases: built $DEBIAN_IMAGE in $((SECONDS - start)) s"
fi

# The pytorch stand-in: the torch the [ml] extra pins, CPU build, from pip's local wheel folder.
torch_version=$(sed -n 's/^torch==\([0-9.]*\).*/\1/p' requirements/constraints.txt | head -1)
wheel_dirs="${PIP_FIND_LINKS:-} $(pip3 config get global.find-links 2>/dev/null || true) /opt/wheels"
wheel=""
for dir in $wheel_dirs; do
    dir=${dir#file://}
    found=$(ls "$dir"/torch-"$torch_version"+cpu-*.whl 2>/dev/null | head -1 || true)
    if [ -n "$found" ]; then wheel=$found; break; fi
done
if [ -z "$wheel" ]; then
    echo "bases: no torch-$torch_version+cpu wheel in pip's local wheel folders ($wheel_dirs)" >&2
    exit 1
fi
start=$SECONDS
podman build -q --layers -f "$HERE/pytorch-cpu.Containerfile" \
    --build-arg BASE="$DEBIAN_IMAGE" --build-arg TORCH_WHEEL="$(basename "$wheel")" \
    -t "$CI_REGISTRY/pytorch:$torch_version-cpu" "$(dirname "$wheel")" >/dev/null
echo "bases: $CI_REGISTRY/pytorch:$torch_version-cpu ready ($((SECONDS - start)) s)"

start=$SECONDS
podman build -q --layers -f "$HERE/python-slim.Containerfile" --build-arg BASE="$DEBIAN_IMAGE" \
    -t "$CI_REGISTRY/python:3.11-slim" "$HERE" >/dev/null
echo "bases: $CI_REGISTRY/python:3.11-slim ready ($((SECONDS - start)) s)"

#!/usr/bin/env bash
# Make the Debian base image for the CPU-flavour container test without any container registry:
# debootstrap from the Debian mirror apt uses here, plus this machine's apt sources, CA bundle and
# pip settings, then `podman import`. Idempotent: an existing image is kept.
#   usage: container/make-base-image.sh [TAG]     (default: $T2V_BASE_IMAGE or localhost/t2v-debian:bookworm)
# The image is specific to this machine (its CA bundle and package mirrors): never push it.
set -euo pipefail
TAG=${1:-${T2V_BASE_IMAGE:-localhost/t2v-debian:bookworm}}
SUITE=bookworm

if podman image exists "$TAG"; then
  echo "base image $TAG exists"
  exit 0
fi
MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$MIRROR" ] || MIRROR=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list)

WORK=$(mktemp -d /var/tmp/t2v-base.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/rootfs
nice -n 10 debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
  || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }

# apt: the host's Debian sources (no third-party repositories) and its Acquire:: settings (proxy etc.).
if grep -qs '^URIs:.*debian' /etc/apt/sources.list.d/*.sources; then
  rm -f "$ROOT/etc/apt/sources.list"
  for f in /etc/apt/sources.list.d/*.sources; do
    if grep -qs '^URIs:.*debian' "$f"; then cp "$f" "$ROOT/etc/apt/sources.list.d/"; fi
  done
fi
for f in /etc/apt/apt.conf.d/*; do
  if grep -Eqs '^Acquire::' "$f"; then cp "$f" "$ROOT/etc/apt/apt.conf.d/"; fi
done

# TLS: the host's bundle (an egress proxy may re-sign), and its extra CAs so that installing
# ca-certificates in the image keeps them.
mkdir -p "$ROOT/etc/ssl/certs" "$ROOT/usr/local/share/ca-certificates"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/"
cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/" 2>/dev/null || true

# pip: the host's effective settings (config files and PIP_* variables) as /etc/pip.conf, with the small
# files they name (constraints). Local wheel folders are bind-mounted at build time, not copied.
python3 "$(dirname "$0")/pip_settings.py" image-config "$ROOT"

chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/log/*.log "$ROOT"/tmp/* \
       "$ROOT/etc/resolv.conf"
echo localhost >"$ROOT/etc/hostname"
tar --numeric-owner --xattrs -C "$ROOT" -c . | podman import \
  --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --message "debootstrap --variant=minbase $SUITE" - "$TAG" >/dev/null
echo "base image $TAG made"

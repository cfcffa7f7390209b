#!/usr/bin/env bash
# Stages the root file system of the coffer image (deploy/docker/Dockerfile)
# into OUT/rootfs (and the empty data directory into OUT/data): the binary at /usr/local/bin/coffer, every shared library
# `ldd` lists at the path the dynamic loader looks for it, and the files
# that name the non-root user the image runs as. The image is `FROM
# scratch`, so whatever the binary needs at run time must be here.
set -euo pipefail

BIN=${1:?usage: stage.sh BIN OUT}
OUT=${2:?usage: stage.sh BIN OUT}
[ -x "$BIN" ] || { echo "stage.sh: $BIN is not an executable" >&2; exit 2; }

rm -rf "$OUT/rootfs" "$OUT/data"
ROOT=$OUT/rootfs
mkdir -p "$ROOT/usr/local/bin" "$ROOT/etc" "$ROOT/tmp" "$ROOT/var/lib"
# The data directory is copied apart (COPY --chown creates it owned by the
# non-root user; a named volume mounted there inherits that ownership).
mkdir -p "$OUT/data"
touch "$OUT/data/.coffer-data"
cp "$BIN" "$ROOT/usr/local/bin/coffer"

# `ldd` prints "name => /path (addr)" for libraries and "/path (addr)" for
# the loader; the vDSO has no file. Copy each through its symlinks so that
# the loader finds it under the name it was linked against.
ldd "$BIN" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u | while read -r lib; do
  mkdir -p "$ROOT$(dirname "$lib")"
  cp -L "$lib" "$ROOT$lib"
done

# A non-root user and group (65532, as distroless images use), so that
# `USER 65532` has a name and home for tools that look it up.
cat >"$ROOT/etc/passwd" <<'P'
root:x:0:0:root:/root:/sbin/nologin
coffer:x:65532:65532:coffer:/var/lib/coffer:/sbin/nologin
P
cat >"$ROOT/etc/group" <<'G'
root:x:0:
coffer:x:65532:
G
# glibc resolves host names (the peers' DNS names) through NSS: files, then
# DNS, which Docker and Kubernetes serve through /etc/hosts and resolv.conf.
echo 'hosts: files dns' >"$ROOT/etc/nsswitch.conf"
chmod 1777 "$ROOT/tmp"
echo "staged $(du -sh "$ROOT" | cut -f1) into $ROOT"

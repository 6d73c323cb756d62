#!/bin/sh
# Assembles a minimal root filesystem for one program, in a build stage that
# has a Debian userland (the locally made base, or rust:1-bookworm):
#
#   rootfs.sh DEST BINARY NAME UID [DIR...]
#
# DEST gets the program (as /usr/local/bin/NAME), exactly the shared libraries
# `ldd` says it and /bin/sh need, dash as /bin/sh (for the entrypoint), the CA
# bundle, /etc/passwd and /etc/group with root, NAME (UID) and nobody, and each
# DIR owned by NAME. The runtime stage is then `FROM scratch` + COPY of DEST: no
# package manager, no coreutils, nothing the program does not load.
set -eu
dest=$1 binary=$2 name=$3 uid=$4
shift 4

# Debian bookworm is merged-/usr: keep the same links so the paths ldd prints
# (/lib/x86_64-linux-gnu/..., /lib64/ld-linux-x86-64.so.2) resolve.
mkdir -p "$dest/usr/bin" "$dest/usr/lib" "$dest/usr/lib64" "$dest/usr/local/bin" \
    "$dest/etc/ssl/certs" "$dest/tmp" "$dest/proc" "$dest/sys" "$dest/dev"
for d in bin lib lib64; do ln -s "usr/$d" "$dest/$d"; done
chmod 1777 "$dest/tmp"

cp "$binary" "$dest/usr/local/bin/$name"
cp /bin/dash "$dest/usr/bin/dash"
ln -s dash "$dest/usr/bin/sh"

# The loader and every library of the program and of dash, as ldd resolves them.
libs=$( { ldd "$binary"; ldd /bin/dash; } | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
for lib in $libs; do
    mkdir -p "$dest$(dirname "$lib")"
    cp -L "$lib" "$dest$lib"
done
# glibc 2.34+ has the files and dns NSS back ends built in: no libnss_* needed.
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$dest/etc/nsswitch.conf"

cp /etc/ssl/certs/ca-certificates.crt "$dest/etc/ssl/certs/ca-certificates.crt"

cat >"$dest/etc/passwd" <<PASSWD
root:x:0:0:root:/root:/usr/sbin/nologin
$name:x:$uid:$uid:$name:/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
PASSWD
cat >"$dest/etc/group" <<GROUP
root:x:0:
$name:x:$uid:
nogroup:x:65534:
GROUP

for dir in "$@"; do
    mkdir -p "$dest$dir"
    chown "$uid:$uid" "$dest$dir"
    chmod 0750 "$dest$dir"
done
# Fail here, not at `docker run`, if a library is missing.
chroot "$dest" "/usr/local/bin/$name" --version >/dev/null

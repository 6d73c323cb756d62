#!/bin/sh
# The image's entrypoint. `serve` gets `--config /etc/wal-archiver/config.toml`
# when that file is mounted and no --config was given; then the shell replaces
# itself with wal-archiver (exec), so the server is PID 1 and receives SIGTERM
# from `docker stop` and the kubelet directly.
set -eu
config=/etc/wal-archiver/config.toml
if [ "${1:-}" = serve ] && [ -f "$config" ]; then
    for arg in "$@"; do
        case $arg in --config | --config=*) exec /usr/local/bin/wal-archiver "$@" ;; esac
    done
    shift
    set -- serve --config "$config" "$@"
fi
exec /usr/local/bin/wal-archiver "$@"

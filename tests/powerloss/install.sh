#!/usr/bin/env bash
# Install what tests/powerloss/lossyfs.py needs. Idempotent: installs only what
# is missing. Run as root on Debian bookworm (as CI does).
#
#   bash tests/powerloss/install.sh            # for `python3`
#   PYTHON=/usr/bin/python3 bash tests/powerloss/install.sh
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
PYFUSE3_VERSION=3.5.0

# System side: the fuse3 tools (fusermount3), and what building pyfuse3 needs.
need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
[ -e /usr/include/fuse3/fuse_lowlevel.h ] || need+=(libfuse3-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
if ! "$PYTHON" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    need+=(python3-dev)
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "install.sh: apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Python side: pyfuse3 and its pinned dependencies.
if ! "$PYTHON" -c "import sys, pyfuse3, trio; sys.exit(pyfuse3.__version__ != '$PYFUSE3_VERSION')" 2>/dev/null; then
    echo "install.sh: pip install -r requirements.txt (builds pyfuse3, about a minute)"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$PYTHON" -m pip install --quiet --root-user-action=ignore \
        -r requirements.txt
fi

if [ ! -c /dev/fuse ]; then
    echo "install.sh: /dev/fuse is missing: this machine cannot mount FUSE filesystems" >&2
    exit 1
fi
echo "install.sh: lossyfs ready ($("$PYTHON" -c 'import pyfuse3, trio; print("pyfuse3", pyfuse3.__version__, "trio", trio.__version__)'))"

#!/usr/bin/env python3
"""lossyfs: a FUSE filesystem that simulates power loss.

    python3 lossyfs.py BACKING MOUNTPOINT --log FILE
                       [--freeze-before N | --freeze-after N] [--frozen-marker FILE]

The mounted view is the *volatile* state, held only in this process's memory.
The *durable* state lives in BACKING on the real disk. Only durability
operations move data from the first to the second, following the strict POSIX
model (see README.md):

  * fsync/fdatasync of a file persists that inode's content, size and mode,
    never its directory entry;
  * fsync of a directory persists that directory's entries (name -> inode),
    never the content of the files they name.

Stopping the daemon in any way (SIGKILL, SIGTERM, unmount) is a power cut: the
next mount on the same BACKING shows exactly the durable state.

Crash-point steering: every durability operation is numbered (1-based) and
logged to --log. With --freeze-before N / --freeze-after N the filesystem
freezes when op N arrives (op N not applied / applied); from then on nothing is
applied and every request blocks forever, so the process under test cannot
learn that op N returned. --frozen-marker is created when that happens.
"""

import argparse
import errno
import fcntl
import functools
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time

import pyfuse3
import trio

log = logging.getLogger("lossyfs")

ROOT = pyfuse3.ROOT_INODE
FSNAME = "lossyfs"
FORMAT_TAG = "lossyfs durable store v1\n"
# The kernel may cache names and attributes for this long. That is safe:
# every change to the volatile state goes through this kernel mount, which
# keeps its caches coherent, and a remount starts with empty caches.
CACHE_TIMEOUT = 30.0
# Past this many separate dirty ranges, a file is simply treated as wholly
# dirty (a superset of the dirty bytes is always correct: fsync writes the
# volatile bytes, which is what the durable bytes must become).
MAX_DIRTY_RANGES = 4096


def now_ns():
    return time.time_ns()


def escape(text):
    """Keep one log record per line whatever the file names contain."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


class Inode:
    """One inode of the volatile state.

    Files:       data (bytearray, or None while still equal to the durable copy
                 and not yet read), dirty (byte ranges that may differ from the
                 durable copy), links (set of (parent ino, name)).
    Directories: entries (name -> ino), parent (ino, None once removed).
    Symlinks:    target, links.
    """

    __slots__ = (
        "ino", "mode", "uid", "gid", "atime_ns", "mtime_ns", "ctime_ns",
        "data", "unloaded_size", "dirty", "entries", "parent", "target",
        "links", "lookups", "opens", "durable",
    )

    def __init__(self, ino, mode, uid, gid, t_ns=None):
        t_ns = now_ns() if t_ns is None else t_ns
        self.ino = ino
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.atime_ns = self.mtime_ns = self.ctime_ns = t_ns
        self.data = None
        self.unloaded_size = 0
        self.dirty = []
        self.entries = None
        self.parent = None
        self.target = None
        self.links = set()
        self.lookups = 0   # references the kernel holds (lookup/forget)
        self.opens = 0     # open file handles
        self.durable = False  # does BACKING hold this inode?

    @property
    def is_dir(self):
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self):
        return stat.S_ISREG(self.mode)

    @property
    def is_lnk(self):
        return stat.S_ISLNK(self.mode)

    def size(self):
        if self.is_reg:
            return len(self.data) if self.data is not None else self.unloaded_size
        if self.is_lnk:
            return len(self.target)
        return len(self.entries)

    def mark_dirty(self, start, end):
        if start >= end:
            return
        d = self.dirty
        if d and d[-1][0] <= end and start <= d[-1][1]:
            # Overlaps or touches the last range: the common sequential case.
            d[-1][0] = min(d[-1][0], start)
            d[-1][1] = max(d[-1][1], end)
            return
        d.append([start, end])
        if len(d) > MAX_DIRTY_RANGES:
            merged = merge_ranges(d)
            if len(merged) > MAX_DIRTY_RANGES // 2:
                merged = [[0, max(r[1] for r in merged)]]
            self.dirty = merged


def merge_ranges(ranges):
    out = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


class Store:
    """The durable state in BACKING.

    Layout (all names are inode numbers):
      BACKING/FORMAT         format tag; a BACKING without it is refused unless empty
      BACKING/.lock          flock held by the running daemon
      BACKING/ino/N          durable content of file inode N (a regular file; its
                             permission bits, owner and mtime are the durable
                             metadata) or the durable symlink N (a symlink)
      BACKING/dir/N.json     durable directory N: metadata and entries {name: ino}

    Inode numbers are durable identities: a directory entry names an inode, so
    a file's durable content and its durable names are persisted independently,
    exactly as fsync(file) and fsync(dir) are independent.
    """

    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.ino_dir = os.path.join(self.root, "ino")
        self.dir_dir = os.path.join(self.root, "dir")
        self.lock_fd = None

    # -- opening ---------------------------------------------------------

    def open(self, lock_timeout):
        os.makedirs(self.root, exist_ok=True)
        # A previous daemon on this store (killed a moment ago) must be fully
        # gone before the durable state is read; it holds this lock until then.
        self.lock_fd = os.open(os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + lock_timeout
        while True:
            try:
                fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"lossyfs: {self.root} is in use by another lossyfs daemon")
                time.sleep(0.05)
        tag_path = os.path.join(self.root, "FORMAT")
        if os.path.exists(tag_path):
            with open(tag_path) as f:
                if f.read() != FORMAT_TAG:
                    raise SystemExit(f"lossyfs: {self.root} holds an unknown format")
            return
        others = [n for n in os.listdir(self.root) if n != ".lock"]
        if others:
            raise SystemExit(f"lossyfs: {self.root} is neither empty nor a lossyfs store")
        os.mkdir(self.ino_dir)
        os.mkdir(self.dir_dir)
        root = Inode(ROOT, stat.S_IFDIR | 0o755, os.getuid(), os.getgid())
        root.entries = {}
        self.put_dir(root)
        self._write_atomic(tag_path, FORMAT_TAG.encode())

    # -- reading the durable state at mount ------------------------------

    def load(self):
        """Return (inodes, next free inode number): the durable state as the
        new volatile state. Durable inodes that no durable entry reaches
        (fsynced but never linked by a directory fsync, or unlinked and the
        directory fsynced) are deleted: they would be lost on a real disk."""
        dir_nos, file_nos = set(), set()
        for name in os.listdir(self.dir_dir):
            if name.endswith(".json") and name[:-5].isdigit():
                dir_nos.add(int(name[:-5]))
            else:
                os.unlink(os.path.join(self.dir_dir, name))  # leftover temp file
        for name in os.listdir(self.ino_dir):
            if name.isdigit():
                file_nos.add(int(name))
            else:
                os.unlink(os.path.join(self.ino_dir, name))
        next_ino = max(dir_nos | file_nos | {ROOT}) + 1

        inodes = {}
        root = self._read_dir(ROOT)
        inodes[ROOT] = root
        queue = [root]
        while queue:
            d = queue.pop()
            for name, child_no in list(d.entries.items()):
                child = inodes.get(child_no)
                if child is None:
                    if child_no in dir_nos:
                        child = self._read_dir(child_no)
                        child.parent = d.ino
                        queue.append(child)
                    elif child_no in file_nos:
                        child = self._read_file(child_no)
                    else:
                        # Cannot happen: a directory fsync first makes every
                        # inode it names durable. Tolerate a damaged store.
                        log.warning("dropping dangling entry %r -> %d", name, child_no)
                        del d.entries[name]
                        continue
                    inodes[child_no] = child
                elif child.is_dir:
                    # The strict model can leave one directory durably under two
                    # names (renamed to another directory, only the target
                    # fsynced). Directories cannot be hard links: keep the first.
                    log.warning("directory %d reachable twice; dropping %r", child_no, name)
                    del d.entries[name]
                    continue
                if not child.is_dir:
                    child.links.add((d.ino, name))

        for n in dir_nos - inodes.keys():
            os.unlink(self._dir_path(n))
        for n in file_nos - inodes.keys():
            os.unlink(self._ino_path(n))
        return inodes, next_ino

    def _read_dir(self, n):
        with open(self._dir_path(n), "rb") as f:
            rec = json.loads(f.read())
        d = Inode(n, rec["mode"], rec["uid"], rec["gid"], rec["mtime_ns"])
        d.entries = {os.fsencode(k): v for k, v in rec["entries"].items()}
        d.durable = True
        return d

    def _read_file(self, n):
        st = os.lstat(self._ino_path(n))
        i = Inode(n, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
        if stat.S_ISLNK(st.st_mode):
            i.target = os.fsencode(os.readlink(self._ino_path(n)))
        else:
            i.unloaded_size = st.st_size
        i.durable = True
        return i

    def read_content(self, n):
        with open(self._ino_path(n), "rb") as f:
            return bytearray(f.read())

    # -- durability operations -------------------------------------------

    def put_file(self, i):
        """fsync(file): the durable copy of inode i becomes its volatile
        content, size and metadata. Only the dirty ranges are rewritten, so a
        SQLite WAL fsync costs the bytes of one commit, not the whole file."""
        if i.is_lnk:
            self.ensure(i)
            return
        fd = os.open(self._ino_path(i.ino), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if i.data is not None:
                size = len(i.data)
                os.ftruncate(fd, size)
                with memoryview(i.data) as view:
                    for a, b in merge_ranges(i.dirty):
                        b = min(b, size)
                        if a < b:
                            os.pwrite(fd, view[a:b], a)
                i.dirty = []
            os.fchmod(fd, stat.S_IMODE(i.mode))
            os.fchown(fd, i.uid, i.gid)
            os.utime(fd, ns=(i.atime_ns, i.mtime_ns))
        finally:
            os.close(fd)
        i.durable = True

    def put_dir(self, d, inodes=None):
        """fsync(dir): the durable entries of d become its volatile entries.
        Every inode named must exist durably for the entry to mean anything;
        one that does not yet is created as it would be found after a crash:
        a file that was never fsynced comes back empty, a directory that was
        never fsynced comes back with no entries."""
        if inodes is not None:
            for child_no in d.entries.values():
                self.ensure(inodes[child_no])
        rec = {
            "mode": d.mode, "uid": d.uid, "gid": d.gid, "mtime_ns": d.mtime_ns,
            "entries": {os.fsdecode(k): v for k, v in sorted(d.entries.items())},
        }
        # Written atomically so that killing the daemon mid-fsync leaves either
        # the old or the new directory, never a torn one.
        self._write_atomic(self._dir_path(d.ino), json.dumps(rec, indent=0).encode())
        d.durable = True

    def ensure(self, i):
        if i.durable:
            return
        if i.is_dir:
            empty = Inode(i.ino, i.mode, i.uid, i.gid, i.mtime_ns)
            empty.entries = {}
            self.put_dir(empty)
        elif i.is_lnk:
            # A symlink's target is fixed at creation, so it is part of the
            # inode that the directory entry makes durable.
            os.symlink(i.target, self._ino_path(i.ino))
            os.lchown(self._ino_path(i.ino), i.uid, i.gid)
        else:
            fd = os.open(self._ino_path(i.ino), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.fchmod(fd, stat.S_IMODE(i.mode))
                os.fchown(fd, i.uid, i.gid)
            finally:
                os.close(fd)
            # The durable copy is now empty; all volatile bytes differ from it.
            size = i.size()
            i.dirty = [[0, size]] if size else []
        i.durable = True

    # -- helpers ---------------------------------------------------------

    def _ino_path(self, n):
        return os.path.join(self.ino_dir, str(n))

    def _dir_path(self, n):
        return os.path.join(self.dir_dir, f"{n}.json")

    def _write_atomic(self, path, data):
        tmp = os.path.join(os.path.dirname(path), f".tmp-{os.path.basename(path)}")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)


def fuse_op(fn, gated=True):
    """Request handler wrapper: block forever once frozen (so the caller never
    gets an answer), and turn unexpected errors into EIO instead of killing
    the filesystem."""

    @functools.wraps(fn)
    async def wrapper(self, *args):
        if gated and self.frozen:
            await trio.sleep_forever()
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("%s%r failed", fn.__name__, args)
            raise pyfuse3.FUSEError(errno.EIO)

    return wrapper


def durability_op(fn):
    """Like fuse_op, but the handler itself deals with the frozen state (it
    logs the operation as 'blocked' before blocking)."""
    return fuse_op(fn, gated=False)


class LossyFS(pyfuse3.Operations):
    # Without the writeback cache every write() reaches this process before
    # it returns, so no acknowledged byte hides in the kernel, and fsync finds
    # here everything the application wrote. (mmap'ed pages are written back
    # to us by the kernel before it sends an fsync.)
    enable_writeback_cache = False
    supports_dot_lookup = True

    def __init__(self, store, log_path, freeze_mode, freeze_at, marker):
        super().__init__()
        self.store = store
        self.inodes, self.next_ino = store.load()
        self.handles = {}       # fh -> ino (files)
        self.dir_handles = {}   # fh -> [ino, snapshot of entries or None]
        self.next_fh = 1
        self.freeze_mode = freeze_mode
        self.freeze_at = freeze_at
        self.marker = marker
        self.frozen = False
        self.op_count = 0
        self.log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        self.on_ready = None

    def init(self):
        # Called when the kernel's INIT request is processed: from here on the
        # mount answers requests.
        if self.on_ready:
            self.on_ready()

    # -- helpers -----------------------------------------------------------

    def _get(self, ino):
        try:
            return self.inodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT)

    def _dir(self, ino):
        d = self._get(ino)
        if not d.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if d.parent is None and d.ino != ROOT:
            raise pyfuse3.FUSEError(errno.ENOENT)  # removed directory
        return d

    def _data(self, i):
        if i.data is None:
            i.data = self.store.read_content(i.ino) if i.durable else bytearray()
        return i.data

    def _nlink(self, i):
        if i.is_dir:
            if i.parent is None and i.ino != ROOT:
                return 0
            return 2 + sum(1 for c in i.entries.values() if self.inodes[c].is_dir)
        return len(i.links)

    def _attr(self, i):
        e = pyfuse3.EntryAttributes()
        e.st_ino = i.ino
        e.generation = 0
        e.entry_timeout = CACHE_TIMEOUT
        e.attr_timeout = CACHE_TIMEOUT
        e.st_mode = i.mode
        e.st_nlink = self._nlink(i)
        e.st_uid = i.uid
        e.st_gid = i.gid
        e.st_rdev = 0
        size = i.size()
        e.st_size = size
        e.st_blksize = 4096
        e.st_blocks = (size + 511) // 512
        e.st_atime_ns = i.atime_ns
        e.st_mtime_ns = i.mtime_ns
        e.st_ctime_ns = i.ctime_ns
        return e

    def _new_inode(self, mode, ctx):
        i = Inode(self.next_ino, mode, ctx.uid, ctx.gid)
        self.next_ino += 1
        self.inodes[i.ino] = i
        return i

    def _check_new_name(self, d, name):
        if name in d.entries:
            raise pyfuse3.FUSEError(errno.EEXIST)
        if len(name) > 255:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)

    def _link(self, d, name, i):
        d.entries[name] = i.ino
        if i.is_dir:
            i.parent = d.ino
        else:
            i.links.add((d.ino, name))
        d.mtime_ns = d.ctime_ns = now_ns()

    def _unlink(self, d, name):
        i = self.inodes[d.entries.pop(name)]
        if i.is_dir:
            i.parent = None
        else:
            i.links.discard((d.ino, name))
        t = now_ns()
        d.mtime_ns = d.ctime_ns = i.ctime_ns = t
        return i

    def _maybe_free(self, i):
        # The volatile inode goes away once nothing names or uses it. Its
        # durable copy, if any, stays: durable entries may still name it.
        if i.ino != ROOT and i.lookups <= 0 and i.opens <= 0 and self._nlink(i) == 0:
            self.inodes.pop(i.ino, None)

    def _truncate(self, i, size):
        data = self._data(i)
        old = len(data)
        if size < old:
            del data[size:]
            i.mark_dirty(size, old)
        elif size > old:
            data.extend(bytes(size - old))
            i.mark_dirty(old, size)

    def _path(self, i):
        if i.is_dir:
            parts, d = [], i
            while d.ino != ROOT:
                if d.parent is None:
                    parts.append(f"<removed-dir-{d.ino}>")
                    break
                parent = self.inodes[d.parent]
                parts.append(next(os.fsdecode(n) for n, c in parent.entries.items() if c == d.ino))
                d = parent
            return "/".join(reversed(parts)) or "."
        if not i.links:
            return f"<unlinked-{i.ino}>"
        parent_no, name = min(i.links)
        parent = self._path(self.inodes[parent_no])
        name = os.fsdecode(name)
        return name if parent == "." else f"{parent}/{name}"

    # -- durability operations ----------------------------------------------

    async def _persist(self, i, kind, call):
        """Number, log and (unless frozen) apply one durability operation."""
        self.op_count += 1
        n = self.op_count
        if self.frozen:
            status = "blocked"
        elif n == self.freeze_at:
            status = "applied" if self.freeze_mode == "after" else "skipped"
        else:
            status = "applied"
        line = f"{n}\t{kind}\t{escape(self._path(i))}\t{i.size()}\t{call}\t{status}\n"
        os.write(self.log_fd, line.encode())
        try:
            if status == "applied":
                if kind == "file":
                    self.store.put_file(i)
                else:
                    self.store.put_dir(i, self.inodes)
        finally:
            # Freeze even if applying failed (say, BACKING is full): a test
            # waiting for the marker must not wait forever.
            if n == self.freeze_at:
                self._freeze(n, kind, i)
        if self.frozen:
            # Never answer: the caller must not learn whether op N happened.
            await trio.sleep_forever()

    def _freeze(self, n, kind, i):
        self.frozen = True
        msg = f"{n}\t{self.freeze_mode}\t{kind}\t{escape(self._path(i))}\n"
        log.warning("frozen at durability op %d (%s): %s %s", n, self.freeze_mode, kind, self._path(i))
        if self.marker:
            tmp = self.marker + ".tmp"
            with open(tmp, "w") as f:
                f.write(msg)
            os.replace(tmp, self.marker)

    @durability_op
    async def fsync(self, fh, datasync):
        i = self._get(self.handles[fh])
        # Both persist content and size: fdatasync must persist the size too
        # whenever reading the data back depends on it.
        await self._persist(i, "file", "fdatasync" if datasync else "fsync")

    @durability_op
    async def fsyncdir(self, fh, datasync):
        i = self._get(self.dir_handles[fh][0])
        await self._persist(i, "dir", "fsyncdir")

    # -- the volatile filesystem -----------------------------------------------

    @fuse_op
    async def lookup(self, parent_inode, name, ctx):
        d = self._dir(parent_inode)
        if name == b".":
            i = d
        elif name == b"..":
            i = self._get(d.parent if d.ino != ROOT else ROOT)
        else:
            ino = d.entries.get(name)
            if ino is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            i = self.inodes[ino]
        i.lookups += 1
        return self._attr(i)

    async def forget(self, inode_list):
        # Not gated: the kernel sends no reply for it, nobody waits on it.
        for ino, n in inode_list:
            i = self.inodes.get(ino)
            if i is not None:
                i.lookups -= n
                self._maybe_free(i)

    @fuse_op
    async def getattr(self, inode, ctx):
        return self._attr(self._get(inode))

    @fuse_op
    async def setattr(self, inode, attr, fields, fh, ctx):
        i = self._get(inode)
        t = now_ns()
        if fields.update_size:
            if not i.is_reg:
                raise pyfuse3.FUSEError(errno.EINVAL)
            self._truncate(i, attr.st_size)
            i.mtime_ns = t
        if fields.update_mode:
            i.mode = stat.S_IFMT(i.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            i.uid = attr.st_uid
        if fields.update_gid:
            i.gid = attr.st_gid
        if fields.update_atime:
            i.atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            i.mtime_ns = attr.st_mtime_ns
        i.ctime_ns = t
        return self._attr(i)

    @fuse_op
    async def readlink(self, inode, ctx):
        i = self._get(inode)
        if not i.is_lnk:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return i.target

    @fuse_op
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        if not stat.S_ISREG(mode):
            raise pyfuse3.FUSEError(errno.EPERM)  # only regular files here
        d = self._dir(parent_inode)
        self._check_new_name(d, name)
        i = self._new_inode(stat.S_IFREG | stat.S_IMODE(mode), ctx)
        i.data = bytearray()
        self._link(d, name, i)
        i.lookups += 1
        return self._attr(i)

    @fuse_op
    async def mkdir(self, parent_inode, name, mode, ctx):
        d = self._dir(parent_inode)
        self._check_new_name(d, name)
        i = self._new_inode(stat.S_IFDIR | stat.S_IMODE(mode), ctx)
        i.entries = {}
        self._link(d, name, i)
        i.lookups += 1
        return self._attr(i)

    @fuse_op
    async def symlink(self, parent_inode, name, target, ctx):
        d = self._dir(parent_inode)
        self._check_new_name(d, name)
        i = self._new_inode(stat.S_IFLNK | 0o777, ctx)
        i.target = bytes(target)
        self._link(d, name, i)
        i.lookups += 1
        return self._attr(i)

    @fuse_op
    async def link(self, inode, new_parent_inode, new_name, ctx):
        i = self._get(inode)
        if i.is_dir:
            raise pyfuse3.FUSEError(errno.EPERM)
        d = self._dir(new_parent_inode)
        self._check_new_name(d, new_name)
        self._link(d, new_name, i)
        i.ctime_ns = now_ns()
        i.lookups += 1
        return self._attr(i)

    @fuse_op
    async def unlink(self, parent_inode, name, ctx):
        d = self._dir(parent_inode)
        ino = d.entries.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if self.inodes[ino].is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        self._maybe_free(self._unlink(d, name))

    @fuse_op
    async def rmdir(self, parent_inode, name, ctx):
        d = self._dir(parent_inode)
        ino = d.entries.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        i = self.inodes[ino]
        if not i.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if i.entries:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        self._maybe_free(self._unlink(d, name))

    @fuse_op
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        src_dir = self._dir(parent_inode_old)
        dst_dir = self._dir(parent_inode_new)
        src_no = src_dir.entries.get(name_old)
        if src_no is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        src = self.inodes[src_no]
        dst_no = dst_dir.entries.get(name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            if dst_no is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            dst = self.inodes[dst_no]
            self._unlink(src_dir, name_old)
            self._unlink(dst_dir, name_new)
            self._link(src_dir, name_old, dst)
            self._link(dst_dir, name_new, src)
            return
        if dst_no is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            if dst_no == src_no:
                return  # two links to one file: POSIX says do nothing
            dst = self.inodes[dst_no]
            if src.is_dir and not dst.is_dir:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            if not src.is_dir and dst.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            if dst.is_dir and dst.entries:
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            self._unlink(dst_dir, name_new)
            self._maybe_free(dst)
        self._unlink(src_dir, name_old)
        self._link(dst_dir, name_new, src)
        src.ctime_ns = now_ns()

    def _open_handle(self, i):
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = i.ino
        i.opens += 1
        # keep_cache: the page cache of this mount stays valid across opens
        # because every change passes through it. direct_io stays off so that
        # mmap(MAP_SHARED) works.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @fuse_op
    async def open(self, inode, flags, ctx):
        i = self._get(inode)
        if i.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_TRUNC and i.is_reg:
            self._truncate(i, 0)
            i.mtime_ns = i.ctime_ns = now_ns()
        return self._open_handle(i)

    @fuse_op
    async def create(self, parent_inode, name, mode, flags, ctx):
        d = self._dir(parent_inode)
        self._check_new_name(d, name)
        i = self._new_inode(stat.S_IFREG | stat.S_IMODE(mode), ctx)
        i.data = bytearray()
        self._link(d, name, i)
        i.lookups += 1
        return self._open_handle(i), self._attr(i)

    @fuse_op
    async def read(self, fh, off, size):
        data = self._data(self.inodes[self.handles[fh]])
        return data[off:off + size]

    @fuse_op
    async def write(self, fh, off, buf):
        i = self.inodes[self.handles[fh]]
        data = self._data(i)
        old = len(data)
        if off > old:
            data.extend(bytes(off - old))  # a hole reads as zeros
        data[off:off + len(buf)] = buf
        i.mark_dirty(min(off, old), off + len(buf))
        i.mtime_ns = i.ctime_ns = now_ns()
        return len(buf)

    @fuse_op
    async def flush(self, fh):
        pass  # close() makes nothing durable

    async def release(self, fh):
        # Not gated: close() does not wait for it.
        i = self.inodes.get(self.handles.pop(fh))
        if i is not None:
            i.opens -= 1
            self._maybe_free(i)

    @fuse_op
    async def opendir(self, inode, ctx):
        self._dir(inode)
        fh = self.next_fh
        self.next_fh += 1
        self.dir_handles[fh] = [inode, None]
        self.inodes[inode].opens += 1
        return fh

    @fuse_op
    async def readdir(self, fh, start_id, token):
        h = self.dir_handles[fh]
        d = self._get(h[0])
        if start_id == 0 or h[1] is None:
            # Positions index a snapshot taken when the listing (re)starts, so
            # concurrent changes never make an entry show twice or be skipped.
            h[1] = sorted(d.entries.items())
        snapshot = h[1]
        for pos in range(start_id, len(snapshot)):
            name, ino = snapshot[pos]
            if d.entries.get(name) != ino:
                continue  # removed since the snapshot
            i = self.inodes[ino]
            if not pyfuse3.readdir_reply(token, name, self._attr(i), pos + 1):
                break
            i.lookups += 1

    async def releasedir(self, fh):
        ino, _ = self.dir_handles.pop(fh)
        i = self.inodes.get(ino)
        if i is not None:
            i.opens -= 1
            self._maybe_free(i)

    @fuse_op
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = 1 << 28          # 1 TiB
        s.f_bfree = s.f_bavail = 1 << 27
        s.f_files = 1 << 24
        s.f_ffree = s.f_favail = (1 << 24) - len(self.inodes)
        s.f_namemax = 255
        return s

    @fuse_op
    async def access(self, inode, mode, ctx):
        return True  # permissions are checked by the kernel (default_permissions)


# -- mount management ---------------------------------------------------------

def lossyfs_mounts(mountpoint):
    """Mount IDs of lossyfs mounts on mountpoint (from /proc/self/mountinfo)."""
    ids = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            point = fields[4].encode().decode("unicode_escape")  # \040 etc.
            if point == mountpoint and fields[sep + 1] == f"fuse.{FSNAME}":
                ids.append(fields[0])
    return ids


def detach_stale_mounts(mountpoint):
    """A daemon killed with SIGKILL leaves its mount behind ('Transport
    endpoint is not connected'); detach it so the new mount is not stacked
    on a dead one."""
    for _ in lossyfs_mounts(mountpoint):
        if subprocess.run(["fusermount3", "-u", "-z", mountpoint],
                          stderr=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["umount", "-l", mountpoint], stderr=subprocess.DEVNULL)


async def watch_signals(cancel_scope):
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for _ in signals:
            cancel_scope.cancel()
            return


async def watch_mount(mountpoint, mount_id, cancel_scope, status):
    # A lazy unmount while requests are blocked (frozen) would otherwise leave
    # the daemon running forever: exit as soon as our mount is detached.
    while True:
        await trio.sleep(0.2)
        if mount_id not in lossyfs_mounts(mountpoint):
            status["unmounted"] = True
            cancel_scope.cancel()
            return


async def serve(mountpoint, mount_id, status):
    async with trio.open_nursery() as nursery:
        async def fuse_main():
            await pyfuse3.main(min_tasks=1, max_tasks=256)
            status["unmounted"] = True
            nursery.cancel_scope.cancel()
        nursery.start_soon(fuse_main)
        nursery.start_soon(watch_signals, nursery.cancel_scope)
        if mount_id:
            nursery.start_soon(watch_mount, mountpoint, mount_id, nursery.cancel_scope, status)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("backing", help="directory holding the durable state (created if missing)")
    p.add_argument("mountpoint", help="where to mount the volatile view")
    p.add_argument("--log", required=True, help="durability-operation log (truncated at start)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--freeze-before", type=int, metavar="N",
                   help="freeze when durability op N arrives, without applying it")
    g.add_argument("--freeze-after", type=int, metavar="N",
                   help="freeze when durability op N arrives, after applying it")
    p.add_argument("--frozen-marker", metavar="FILE", help="created when the filesystem freezes")
    p.add_argument("--lock-timeout", type=float, default=10.0,
                   help="seconds to wait for a previous daemon on BACKING to exit (default 10)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="lossyfs: %(levelname)s %(message)s", stream=sys.stderr)
    if not args.verbose:
        logging.getLogger("pyfuse3").setLevel(logging.ERROR)

    freeze_mode, freeze_at = None, None
    if args.freeze_before is not None:
        freeze_mode, freeze_at = "before", args.freeze_before
    elif args.freeze_after is not None:
        freeze_mode, freeze_at = "after", args.freeze_after
    if freeze_at is not None and freeze_at < 1:
        p.error("N must be >= 1")

    mountpoint = os.path.abspath(args.mountpoint)
    if args.frozen_marker:
        args.frozen_marker = os.path.abspath(args.frozen_marker)
        if os.path.exists(args.frozen_marker):
            os.unlink(args.frozen_marker)

    store = Store(args.backing)
    store.open(args.lock_timeout)
    detach_stale_mounts(mountpoint)
    os.makedirs(mountpoint, exist_ok=True)
    fs = LossyFS(store, args.log, freeze_mode, freeze_at, args.frozen_marker)

    def ready():
        try:
            sys.stdout.write("ready\n")
            sys.stdout.flush()
        except OSError:
            pass
    fs.on_ready = ready

    options = set(pyfuse3.default_options)  # default_permissions: kernel checks modes
    options |= {f"fsname={FSNAME}", f"subtype={FSNAME}"}
    if os.geteuid() == 0:
        options.add("allow_other")  # the service under test may run as another user
    pyfuse3.init(fs, mountpoint, options)
    ids = lossyfs_mounts(mountpoint)
    status = {"unmounted": False}
    try:
        trio.run(serve, mountpoint, ids[-1] if ids else None, status)
    finally:
        # Lazily detaches the mount if still attached, then closes /dev/fuse,
        # which aborts the connection: blocked callers get ECONNABORTED.
        pyfuse3.close(unmount=not status["unmounted"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Self-test of lossyfs: proves that it loses exactly what a power cut may lose.

    python3 tests/powerloss/selftest.py [-k SUBSTRING] [--keep]

Every check mounts lossyfs on a fresh backing directory, works on the mount
with plain Python file operations or sqlite3, cuts the power (SIGKILL of the
daemon, then `fusermount3 -u -z`), mounts again on the same backing
directory and looks at what survived. Prints one line per check and a closing
'N passed, M failed' line; exits non-zero if anything failed.
"""

import argparse
import mmap
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
LOSSYFS = os.path.join(HERE, "lossyfs.py")
PY = sys.executable


class CheckFailed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise CheckFailed(what)


class Mount:
    """One lossyfs daemon on (backing, mountpoint)."""

    def __init__(self, work, freeze=None):
        self.work = work
        self.backing = os.path.join(work, "backing")
        self.mnt = os.path.join(work, "mnt")
        self.marker = os.path.join(work, "frozen")
        self.runs = 0
        self.proc = None
        self.freeze = freeze

    def start(self, freeze=None):
        self.runs += 1
        self.log = os.path.join(self.work, f"durability-{self.runs}.log")
        cmd = [PY, LOSSYFS, self.backing, self.mnt, "--log", self.log,
               "--frozen-marker", self.marker]
        if freeze:
            mode, n = freeze
            cmd += [f"--freeze-{mode}", str(n)]
        self.err = open(os.path.join(self.work, f"daemon-{self.runs}.err"), "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.err)
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline() if ready else b""
        if line != b"ready\n":
            self.proc.kill()
            self.proc.wait()
            raise CheckFailed(f"daemon did not become ready: {line!r}, stderr: {self.stderr()}")
        return self

    def stderr(self):
        path = os.path.join(self.work, f"daemon-{self.runs}.err")
        with open(path) as f:
            return f.read()

    def crash(self, detach=True):
        """Power cut: SIGKILL the daemon. Its volatile state dies with it."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=20)
        self.proc.stdout.close()
        self.err.close()
        if detach:
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], stderr=subprocess.DEVNULL)

    def stop(self):
        """Polite stop (SIGTERM): still a power cut for the volatile state."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        self.proc.stdout.close()
        self.err.close()

    def remount(self, freeze=None):
        self.crash()
        return self.start(freeze)

    def path(self, *parts):
        return os.path.join(self.mnt, *parts)

    def log_lines(self):
        with open(self.log) as f:
            return [line.rstrip("\n").split("\t") for line in f]


def put(path, data, fsync=True, mode=os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
    fd = os.open(path, mode, 0o644)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def get(path):
    with open(path, "rb") as f:
        return f.read()


def snapshot(root):
    """{relative path: content} for files, {'dir/': None} for directories."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d)) + "/"] = None
        for f in filenames:
            out[os.path.normpath(os.path.join(rel, f))] = get(os.path.join(dirpath, f))
    return out


# ---------------------------------------------------------------------------
# 0: while mounted, lossyfs behaves like an ordinary filesystem


def tree_state(root):
    """Everything observable about a tree, for comparing two filesystems."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[rel] = ("dir", os.lstat(dirpath).st_mode & 0o7777, sorted(dirnames + filenames))
        for f in filenames:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            key = os.path.normpath(os.path.join(rel, f))
            if os.path.islink(p):
                out[key] = ("link", os.readlink(p))
            else:
                out[key] = ("file", st.st_mode & 0o7777, st.st_nlink, st.st_size, get(p))
    return out


def t0_behaves_like_a_filesystem(m):
    """0. random POSIX operations give the same results as on the local disk"""
    import random
    rnd = random.Random(1234)
    local = os.path.join(m.work, "local")
    os.mkdir(local)
    roots = (local, m.mnt)
    names = ["a", "b", "c", "d1", "d2", "d1/a", "d1/b", "d2/c", "d1/e/f", "d1/e"]

    def both(fn, *rel):
        results = []
        for root in roots:
            try:
                results.append(("ok", fn(*[os.path.join(root, r) for r in rel])))
            except OSError as e:
                results.append(("err", e.errno))
        return results

    def write_at(p, off, data, flags=0):
        fd = os.open(p, os.O_RDWR | os.O_CREAT | flags, 0o644)
        try:
            return os.pwrite(fd, data, off) if not flags & os.O_APPEND else os.write(fd, data)
        finally:
            os.close(fd)

    def read_at(p, off, n):
        fd = os.open(p, os.O_RDONLY)
        try:
            return os.pread(fd, n, off)
        finally:
            os.close(fd)

    ops = 0
    for step in range(1500):
        p, q = rnd.choice(names), rnd.choice(names)
        kind = rnd.randrange(12)
        data = rnd.randbytes(rnd.choice([1, 100, 5000, 70000]))
        off = rnd.choice([0, 7, 4096, 100000])
        if kind <= 2:
            r = both(lambda x: write_at(x, off, data), p)
        elif kind == 3:
            r = both(lambda x: write_at(x, 0, data, os.O_APPEND), p)
        elif kind == 4:
            r = both(lambda x: write_at(x, 0, data, os.O_TRUNC), p)
        elif kind == 5:
            size = rnd.choice([0, 3, 5000, 200000])
            r = both(lambda x: os.truncate(x, size), p)
        elif kind == 6:
            r = both(os.rename, p, q)
        elif kind == 7:
            r = both(os.unlink, p)
        elif kind == 8:
            r = both(os.mkdir, p) if rnd.random() < 0.7 else both(os.rmdir, p)
        elif kind == 9:
            r = both(os.link, p, q) if rnd.random() < 0.5 else both(lambda x: os.symlink("target-" + p, x), q)
        elif kind == 10:
            mode = rnd.choice([0o600, 0o644, 0o755])
            r = both(lambda x: os.chmod(x, mode), p)
        else:
            r = both(lambda x: read_at(x, off, 10000), p)
        check(r[0] == r[1], f"step {step} op {kind} {p} {q}: local {r[0]} vs lossyfs {r[1]}")
        ops += r[0][0] == "ok"
        if step % 100 == 99:
            check(tree_state(local) == tree_state(m.mnt), f"trees equal after step {step}")
    check(tree_state(local) == tree_state(m.mnt), "trees equal at the end")
    return f"1500 random ops ({ops} succeeded, the rest failed identically): writes/appends/truncates/renames/links/symlinks/mkdirs/rmdirs/chmods/reads: same results and same tree as ext4"


# ---------------------------------------------------------------------------
# 1-5: files and directories


def t1_fsynced_file_and_dir_survive(m):
    """1. written + fsynced file + fsynced directory: content survives"""
    data = os.urandom(300_000)
    put(m.path("f1"), data)
    os.mkdir(m.path("sub"))
    put(m.path("sub", "f2"), b"in a subdirectory")
    fsync_dir(m.path("sub"))
    fsync_dir(m.mnt)
    # Crash without detaching: the next daemon must detach the dead mount itself.
    m.crash(detach=False)
    m.start()
    check(get(m.path("f1")) == data, "f1 content survives")
    check(get(m.path("sub", "f2")) == b"in a subdirectory", "sub/f2 content survives")
    return "f1 (300 kB) and sub/f2 back intact; dead mount detached by the next daemon"


def t2_unsynced_writes_lost(m):
    """2. written but not fsynced (directory fsynced): back empty or as last fsynced"""
    # (a) never fsynced at all: the entry survives, the bytes do not.
    put(m.path("never"), b"unsynced bytes", fsync=False)
    # (b) fsynced once, then overwritten and extended without fsync.
    put(m.path("old"), b"old-content")
    put(m.path("old"), b"NEW" + b"x" * 100_000, fsync=False,
        mode=os.O_WRONLY)
    # (c) fsynced with 10 bytes, then 1 MiB appended without fsync.
    put(m.path("grow"), b"0123456789")
    put(m.path("grow"), os.urandom(1 << 20), fsync=False, mode=os.O_WRONLY | os.O_APPEND)
    fsync_dir(m.mnt)
    # The volatile view has everything (and the page cache holds it).
    check(get(m.path("never")) == b"unsynced bytes", "volatile view shows unsynced data")
    check(get(m.path("old"))[:4] == b"NEWx", "volatile view shows the overwrite")
    check(os.path.getsize(m.path("grow")) == 10 + (1 << 20), "volatile view shows the append")
    m.remount()
    check(get(m.path("never")) == b"", f"never-fsynced file comes back empty, got {get(m.path('never'))[:20]!r}")
    check(get(m.path("old")) == b"old-content", f"overwritten file comes back as last fsynced, got {get(m.path('old'))[:20]!r}")
    check(get(m.path("grow")) == b"0123456789", "appended file comes back at its fsynced size")
    return "never-fsynced -> 0 bytes; overwrite -> last fsynced content; append -> fsynced size (no stale page cache)"


def t3_file_without_dir_fsync_gone(m):
    """3. file fsynced but its directory not fsynced: the file is gone"""
    os.mkdir(m.path("d"))
    fsync_dir(m.mnt)                       # 'd' now durable, empty
    put(m.path("lonely"), b"fsynced content")  # root not fsynced again
    put(m.path("d", "x"), b"fsynced too")      # d itself never fsynced
    check(get(m.path("lonely")) == b"fsynced content", "volatile view has lonely")
    m.remount()
    check(not os.path.exists(m.path("lonely")), "lonely is gone")
    check(os.path.isdir(m.path("d")), "d exists (its parent was fsynced)")
    check(os.listdir(m.path("d")) == [], "d/x is gone (d was not fsynced)")
    return "root entry and d/x both vanished; d (parent fsynced) is there, empty"


def t4_rename_over(m):
    """4. temp + fsync + rename over final: old without dir fsync, new with it"""
    put(m.path("cfg"), b"v1")
    fsync_dir(m.mnt)
    put(m.path("cfg.tmp"), b"v2")
    os.rename(m.path("cfg.tmp"), m.path("cfg"))
    put(m.path("new.tmp"), b"fresh")
    os.rename(m.path("new.tmp"), m.path("new"))
    check(get(m.path("cfg")) == b"v2", "volatile view shows the rename")
    m.remount()
    check(get(m.path("cfg")) == b"v1", f"without dir fsync: old content, got {get(m.path('cfg'))!r}")
    check(not os.path.exists(m.path("new")), "without dir fsync: a new name is absent")
    check(sorted(os.listdir(m.mnt)) == ["cfg"], f"no temp files left: {os.listdir(m.mnt)}")
    put(m.path("cfg.tmp"), b"v2")
    os.rename(m.path("cfg.tmp"), m.path("cfg"))
    fsync_dir(m.mnt)
    m.remount()
    check(get(m.path("cfg")) == b"v2", "with dir fsync: new content")
    check(sorted(os.listdir(m.mnt)) == ["cfg"], "with dir fsync: temp name gone")
    return "no dir fsync -> cfg=v1 and 'new' absent; dir fsync -> cfg=v2"


def t5_unlink(m):
    """5. unlink without dir fsync: the file is back after the crash"""
    put(m.path("keep"), b"still here")
    put(m.path("gone"), b"bye")
    fsync_dir(m.mnt)
    os.unlink(m.path("keep"))
    m.remount()
    check(get(m.path("keep")) == b"still here", "unlinked file is back")
    os.unlink(m.path("gone"))
    fsync_dir(m.mnt)
    m.remount()
    check(not os.path.exists(m.path("gone")), "unlink + dir fsync: gone for good")
    return "unlink alone is undone by the crash; unlink + dir fsync sticks"


# ---------------------------------------------------------------------------
# 6: SQLite

SQLITE_WRITER = textwrap.dedent("""
    import sqlite3, sys, time
    path, sync, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("pragma journal_mode=wal")
    c.execute("pragma synchronous=" + sync)
    c.execute("create table if not exists t(id integer primary key, v blob)")
    print("setup", flush=True)
    for i in range(1, n + 1):
        c.execute("begin")
        c.execute("insert into t(id, v) values(?, randomblob(200))", (i,))
        c.execute("commit")
        print("acked", i, flush=True)  # commit returned: the service would ack now
    print("done", flush=True)
    time.sleep(3600)  # keep the connection open until the power cut
""")


def run_writer(m, args, out_path):
    out = open(out_path, "w")
    p = subprocess.Popen([PY, "-c", SQLITE_WRITER] + args, stdout=out, stderr=subprocess.STDOUT)
    return p, out


def wait_line(path, pred, timeout, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path) as f:
            lines = f.read().splitlines()
        if any(pred(l) for l in lines):
            return lines
        if proc is not None and proc.poll() is not None:
            raise CheckFailed(f"process ended early: {lines[-5:]}")
        time.sleep(0.02)
    raise CheckFailed(f"timeout waiting in {path}")


def kill_all(m, procs):
    # Order matters: a process blocked inside a FUSE request cannot die until
    # the daemon goes (the kernel waits for the answer), so kill both first.
    for p in procs:
        p.kill()
    m.crash()
    for p in procs:
        p.wait(timeout=20)


def count_rows(path):
    c = sqlite3.connect(path)
    try:
        check(c.execute("pragma integrity_check").fetchone()[0] == "ok", "integrity_check ok")
        return c.execute("select count(*), coalesce(max(id), 0) from t").fetchone()
    finally:
        c.close()


def t6a_sqlite_full_all_committed_survive(m):
    """6a. SQLite WAL synchronous=FULL: every committed transaction survives"""
    out = os.path.join(m.work, "w.out")
    db = m.path("app.db")
    p, f = run_writer(m, [db, "FULL", "300"], out)
    wait_line(out, lambda l: l == "done", 60, p)
    kill_all(m, [p])
    f.close()
    m.start()
    n, top = count_rows(db)
    check((n, top) == (300, 300), f"300 committed rows survive, got {n}")
    return "300 transactions committed by a process that was then killed with the fs: all 300 rows back, integrity ok"


def t6b_sqlite_cut_mid_stream(m):
    """6b. SQLite FULL, power cut while committing: nothing acknowledged is lost"""
    out = os.path.join(m.work, "w.out")
    db = m.path("app.db")
    p, f = run_writer(m, [db, "FULL", "100000"], out)
    wait_line(out, lambda l: l == "acked 150", 60, p)
    m.crash()   # power cut while the writer is mid-transaction
    p.kill()
    p.wait(timeout=20)
    f.close()
    with open(out) as f:
        acked = max(int(l.split()[1]) for l in f if l.startswith("acked "))
    m.start()
    n, top = count_rows(db)
    # A commit whose fsync was applied but whose answer never came back may be
    # there too: at most one more than acknowledged.
    check(acked <= n <= acked + 1 and n == top, f"acked {acked}, found {n} rows")
    return f"cut after {acked} acknowledged commits: {n} rows back (>= acked, <= acked+1)"


def t6c_sqlite_sync_off_loses(m):
    """6c. SQLite synchronous=OFF: rows written without any fsync are lost"""
    out = os.path.join(m.work, "w.out")
    db = m.path("app.db")
    p, f = run_writer(m, [db, "FULL", "0"], out)   # durable setup: empty table
    wait_line(out, lambda l: l == "done", 60, p)
    kill_all(m, [p])
    f.close()
    m.start()
    p, f = run_writer(m, [db, "OFF", "2000"], out)
    wait_line(out, lambda l: l == "done", 120, p)
    visible = count_rows(db)[0]   # another connection sees them before the cut
    ops = [l for l in m.log_lines()]
    kill_all(m, [p])
    f.close()
    m.start()
    n, _ = count_rows(db)
    check(visible == 2000, f"2000 rows visible before the cut, got {visible}")
    check(ops == [], f"no durability op with synchronous=OFF, got {len(ops)}")
    check(n == 0, f"rows lost after the cut, found {n}")
    return f"2000 rows visible before the cut, {n} after (no fsync was issued)"


def t6d_sqlite_two_processes(m):
    """6d/8. SQLite WAL across two processes (shared -shm mmap): reader sees writer"""
    db = m.path("shared.db")
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("pragma journal_mode=wal")
    c.execute("create table t(id integer primary key, v blob)")
    reader = subprocess.Popen([PY, "-c", textwrap.dedent("""
        import sqlite3, sys, time
        c = sqlite3.connect(sys.argv[1], isolation_level=None)
        seen, last = [], -1
        deadline = time.time() + 60
        while last < 200 and time.time() < deadline:
            n = c.execute("select count(*) from t").fetchone()[0]
            if n != last:
                seen.append(n)
                last = n
        print(len(seen), last, int(seen == sorted(seen)))
    """), db], stdout=subprocess.PIPE)
    for i in range(200):
        c.execute("insert into t(v) values(randomblob(100))")
        time.sleep(0.001)
    out = reader.communicate(timeout=90)[0].decode().split()
    c.close()
    distinct, last, monotonic = int(out[0]), int(out[1]), out[2] == "1"
    check(last == 200 and monotonic and distinct > 2, f"reader saw {out}")
    return f"reader process saw {distinct} distinct, increasing counts up to 200 while the writer committed"


# ---------------------------------------------------------------------------
# 7: freezing at a chosen durability operation

FREEZE_WRITER = textwrap.dedent("""
    import os
    def fsync_path(p):
        fd = os.open(p, os.O_RDONLY); os.fsync(fd); os.close(fd)
    def put(p, data):
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data); os.fsync(fd); os.close(fd)
    k = 0
    def ack():
        global k
        k += 1
        print("ack", k, flush=True)
    os.mkdir("w"); fsync_path("."); ack()                         # 1 dir .
    put("w/a", b"A1"); ack()                                      # 2 file w/a
    fsync_path("w"); ack()                                        # 3 dir w
    put("w/a", b"A2"); ack()                                      # 4 file w/a
    put("w/b", b"B1"); ack()                                      # 5 file w/b
    fsync_path("w"); ack()                                        # 6 dir w
    put("w/tmp", b"C1"); ack()                                    # 7 file w/tmp
    os.rename("w/tmp", "w/a"); fsync_path("w"); ack()             # 8 dir w
    os.unlink("w/b"); fsync_path("w"); ack()                      # 9 dir w
    put("w/z", b"Z"); ack()                                       # 10 file w/z
    fsync_path("w"); ack()                                        # 11 dir w
    print("done", flush=True)
""")

# (kind, path) of each durability op the writer issues, and the durable state
# (what a crash leaves) once ops 1..M have been applied, M = 0..11.
FREEZE_OPS = [("dir", "."), ("file", "w/a"), ("dir", "w"), ("file", "w/a"), ("file", "w/b"),
              ("dir", "w"), ("file", "w/tmp"), ("dir", "w"), ("dir", "w"), ("file", "w/z"),
              ("dir", "w")]


def expected_state(m_applied):
    s = {}
    if m_applied >= 1:
        s["w/"] = None
    if m_applied >= 3:
        s["w/a"] = b"A1"
    if m_applied >= 4:
        s["w/a"] = b"A2"
    if m_applied >= 6:
        s["w/b"] = b"B1"
    if m_applied >= 8:
        s["w/a"] = b"C1"
    if m_applied >= 9:
        del s["w/b"]
    if m_applied >= 11:
        s["w/z"] = b"Z"
    return s


def run_freeze_writer(m, out_path):
    out = open(out_path, "w")
    p = subprocess.Popen([PY, "-c", FREEZE_WRITER], cwd=m.mnt, stdout=out, stderr=subprocess.STDOUT)
    return p, out


def t7a_log_without_freeze(m):
    """7. durability log: every op in order with index, kind, path, size"""
    out = os.path.join(m.work, "w.out")
    p, f = run_freeze_writer(m, out)
    check(p.wait(timeout=60) == 0, "writer finished")
    f.close()
    lines = m.log_lines()
    got = [(l[1], l[2]) for l in lines]
    check([l[0] for l in lines] == [str(i) for i in range(1, 12)], "indices 1..11")
    check(got == FREEZE_OPS, f"kinds and paths in order: {got}")
    check(all(l[5] == "applied" for l in lines), "all applied")
    check(lines[1][3] == "2" and lines[0][3] == "1", "sizes (bytes for files, entries for dirs)")
    m.remount()
    check(snapshot(m.mnt) == expected_state(11), "final state")
    return "11 ops logged as " + ", ".join(f"{k}:{p}" for k, p in got[:4]) + ", ..."


def freeze_case(work, mode, n):
    m = Mount(work).start(freeze=(mode, n))
    out = os.path.join(work, "w.out")
    p, f = run_freeze_writer(m, out)
    prober = None
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(m.marker):
            check(time.monotonic() < deadline, f"marker appears for {mode} {n}")
            check(p.poll() is None, f"writer blocks instead of finishing ({mode} {n})")
            time.sleep(0.01)
        with open(m.marker) as mf:
            marker = mf.read().split("\t")
        check(marker[0] == str(n) and marker[1] == mode, f"marker names op {n}: {marker}")
        # Another process touching the mount must block too.
        prober = subprocess.Popen([PY, "-c", "import os,sys; open(os.path.join(sys.argv[1],'probe'),'w'); print('probe returned')",
                                   m.mnt], stdout=subprocess.PIPE)
        time.sleep(0.4)
        check(p.poll() is None, "writer still blocked")
        check(prober.poll() is None, "a new file operation blocks while frozen")
        with open(out) as of:
            acks = [l for l in of.read().splitlines() if l.startswith("ack")]
        check(acks == [f"ack {i}" for i in range(1, n)], f"writer saw ops 1..{n - 1} return, not op {n}: {acks[-2:]}")
        lines = m.log_lines()
        check(len(lines) == n and lines[-1][0] == str(n), f"log ends at op {n}")
        check(lines[-1][5] == ("applied" if mode == "after" else "skipped"), f"op {n} status {lines[-1][5]}")
    finally:
        kill_all(m, [p] + ([prober] if prober else []))
        f.close()
    m.start()
    applied = n if mode == "after" else n - 1
    got = snapshot(m.mnt)
    m.stop()
    check(got == expected_state(applied), f"{mode} {n}: state after op {applied}: {got} != {expected_state(applied)}")


def t7b_freeze_points(m):
    """7. --freeze-before/--freeze-after N for every N: marker, blocking, exact state"""
    m.stop()
    cases = 0
    for n in range(1, len(FREEZE_OPS) + 1):
        for mode in ("before", "after"):
            work = os.path.join(m.work, f"{mode}-{n}")
            os.mkdir(work)
            freeze_case(work, mode, n)
            cases += 1
    m.start()
    return f"{cases} crash points (before/after each of ops 1..11): marker written, writer and a second process blocked, writer saw only ops < N return, durable state exactly as of op N-1 (before) / N (after)"


# ---------------------------------------------------------------------------
# 8: mmap


MMAP_PEER = textwrap.dedent("""
    import mmap, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR)
    mm = mmap.mmap(fd, 1 << 20, mmap.MAP_SHARED)
    ok = mm[4096:4096 + 7] == b"parent!"
    mm[8192:8192 + 6] = b"child!"
    mm.close(); os.close(fd)
    print("ok" if ok else "bad")
""")


def t8_mmap_shared(m):
    """8. mmap MAP_SHARED read/write while mounted (and msync is an fsync)"""
    path = m.path("shm")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, 1 << 20)
    mm = mmap.mmap(fd, 1 << 20, mmap.MAP_SHARED)
    mm[0:5] = b"hello"
    mm[4096:4096 + 7] = b"parent!"
    fd2 = os.open(path, os.O_RDWR)
    check(os.pread(fd2, 5, 0) == b"hello", "read() sees mmap writes")
    os.pwrite(fd2, b"WRITE", 100)
    check(mm[100:105] == b"WRITE", "mmap sees write()")
    out = subprocess.run([PY, "-c", MMAP_PEER, path], capture_output=True, timeout=60).stdout
    check(out == b"ok\n", f"another process's mapping sees ours: {out!r}")
    check(mm[8192:8198] == b"child!", "our mapping sees the other process's writes")
    before = len(m.log_lines())
    mm.flush()  # msync(MS_SYNC)
    check(len(m.log_lines()) == before + 1 and m.log_lines()[-1][1] == "file", "msync arrives as a file fsync")
    fsync_dir(m.mnt)
    mm[0:5] = b"LATER"   # dirty mapped page, never synced
    os.close(fd2)
    m.crash()  # the mapping stays in this process; the fs under it dies
    mm.close()
    try:
        os.close(fd)   # the flush on close fails: the connection is gone
    except OSError:
        pass
    m.start()
    data = get(path)
    check(len(data) == 1 << 20 and data[0:5] == b"hello" and data[100:105] == b"WRITE"
          and data[8192:8198] == b"child!", "msync'ed content survives")
    return "shared mapping coherent with read()/write() and with a second process; msync = fsync; unsynced mmap store lost"


# ---------------------------------------------------------------------------
# extra: other ways the power goes out


def t9_clean_unmount_is_a_crash(m):
    """9. clean unmount / SIGTERM also drop the volatile state"""
    put(m.path("x"), b"durable")
    fsync_dir(m.mnt)
    put(m.path("x"), b"volatile", mode=os.O_WRONLY | os.O_TRUNC, fsync=False)
    put(m.path("y"), b"volatile")
    subprocess.run(["fusermount3", "-u", m.mnt], check=True)
    m.proc.wait(timeout=20)
    m.proc.stdout.close()
    m.err.close()
    m.start()
    check(get(m.path("x")) == b"durable" and not os.path.exists(m.path("y")), "after fusermount3 -u")
    put(m.path("y"), b"volatile")
    m.stop()
    m.start()
    check(not os.path.exists(m.path("y")), "after SIGTERM")
    return "fusermount3 -u and SIGTERM: unsynced data and names gone"


# ---------------------------------------------------------------------------
# timings


def t10_timings(m):
    """timings: 500 small SQLite transactions and 30 x 4 MiB files"""
    def sqlite_500(dirpath):
        db = os.path.join(dirpath, "bench.db")
        c = sqlite3.connect(db, isolation_level=None)
        c.execute("pragma journal_mode=wal")
        c.execute("pragma synchronous=full")
        c.execute("create table t(id integer primary key, v blob)")
        t = time.monotonic()
        for i in range(500):
            c.execute("begin")
            c.execute("insert into t(v) values(randomblob(100))")
            c.execute("commit")
        dt = time.monotonic() - t
        c.close()
        return dt

    def files_30(dirpath):
        data = os.urandom(4 << 20)
        t = time.monotonic()
        for i in range(30):
            put(os.path.join(dirpath, f"seg{i}"), data)
        fsync_dir(dirpath)
        return time.monotonic() - t

    t_sql = sqlite_500(m.mnt)
    ops = len(m.log_lines())
    t_files = files_30(m.mnt)
    m.remount()
    t_read = time.monotonic()
    for i in range(30):
        check(len(get(m.path(f"seg{i}"))) == 4 << 20, "segment back after crash")
    t_read = time.monotonic() - t_read
    check(count_rows(m.path("bench.db"))[0] == 500, "500 rows back after crash")
    local = tempfile.mkdtemp(dir=m.work)
    t_sql_local = sqlite_500(local)
    check(t_sql < 30, f"500 transactions in {t_sql:.2f}s")
    return (f"500 SQLite txns (WAL, FULL): {t_sql:.2f}s on lossyfs ({ops} durability ops) vs {t_sql_local:.2f}s "
            f"on the local disk; 30 x 4 MiB write+fsync: {t_files:.2f}s; read back after remount: {t_read:.2f}s")


TESTS = [
    t0_behaves_like_a_filesystem, t1_fsynced_file_and_dir_survive, t2_unsynced_writes_lost, t3_file_without_dir_fsync_gone,
    t4_rename_over, t5_unlink, t6a_sqlite_full_all_committed_survive, t6b_sqlite_cut_mid_stream,
    t6c_sqlite_sync_off_loses, t6d_sqlite_two_processes, t7a_log_without_freeze, t7b_freeze_points,
    t8_mmap_shared, t9_clean_unmount_is_a_crash, t10_timings,
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", help="run only checks whose name contains this")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    top = tempfile.mkdtemp(prefix="lossyfs-selftest-")
    passed = failed = 0
    start = time.monotonic()
    for test in TESTS:
        if args.k and args.k not in test.__name__:
            continue
        work = os.path.join(top, test.__name__)
        os.mkdir(work)
        m = Mount(work)
        t0 = time.monotonic()
        title = test.__doc__.strip()
        try:
            m.start()
            detail = test(m)
            passed += 1
            print(f"ok   {title}\n       -> {detail} [{time.monotonic() - t0:.1f}s]", flush=True)
        except Exception as e:
            failed += 1
            print(f"FAIL {title}\n       -> {type(e).__name__}: {e}", flush=True)
            if not isinstance(e, CheckFailed):
                traceback.print_exc()
            try:
                print("       daemon stderr: " + m.stderr().strip()[-2000:], flush=True)
            except OSError:
                pass
        finally:
            if m.proc and m.proc.poll() is None:
                m.crash()
            subprocess.run(["fusermount3", "-u", "-z", m.mnt], stderr=subprocess.DEVNULL)
    print(f"total time {time.monotonic() - start:.1f}s")
    if args.keep:
        print(f"work directory kept: {top}")
    else:
        shutil.rmtree(top, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())

//! A real PostgreSQL for tests: clusters in temp dirs, on Unix sockets in
//! those dirs (no TCP port), run as an unprivileged user because PostgreSQL
//! refuses to run as root (the tests themselves run as root in CI). Every
//! cluster is stopped (`pg_ctl stop -m immediate`) when dropped, so a
//! failing test leaves no postmaster behind. Every wait has a generous
//! safety limit and says what it waited for.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long any wait may take before the test fails (a safety net, not a timing assertion).
pub const PATIENCE: Duration = Duration::from_secs(120);

/// The PostgreSQL programs and the user that runs them.
#[derive(Clone, Debug)]
pub struct Pg {
    pub bindir: PathBuf,
    /// uid and gid to switch to; `None` when the tests do not run as root.
    user: Option<(u32, u32)>,
}

impl Pg {
    /// `PG_BINDIR`, else `pg_config --bindir`, else the newest
    /// `/usr/lib/postgresql/*/bin`. As root, the programs run as `postgres`,
    /// created (a system user without a home) if missing.
    pub fn find() -> Pg {
        let bindir = std::env::var_os("PG_BINDIR")
            .map(PathBuf::from)
            .or_else(newest_debian_bindir)
            .or_else(pg_config_bindir)
            .filter(|dir| dir.join("initdb").exists())
            .expect(
                "PostgreSQL not found: install it (Debian: apt-get install -y postgresql-15) \
                 or set PG_BINDIR to the directory holding initdb",
            );
        // SAFETY: geteuid has no preconditions.
        let user = (unsafe { libc::geteuid() } == 0).then(|| unprivileged_user("postgres"));
        Pg { bindir, user }
    }

    /// `program` from the bin dir, run as the unprivileged user.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bindir.join(program));
        self.drop_privileges(&mut command);
        command
    }

    /// `postgres --version`.
    pub fn version(&self) -> String {
        let output = run(self.command("postgres").arg("--version"));
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .nth(2) // postgres (PostgreSQL) 15.18 (Debian …)
            .unwrap_or_default()
            .to_owned()
    }

    /// Any command (a shell, say) as the unprivileged user.
    pub fn drop_privileges(&self, command: &mut Command) {
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        command.env_remove("PGDATA").env("LC_ALL", "C");
    }

    /// A temp dir the unprivileged user owns, with a copy of the
    /// wal-archiver binary it can run (the build dir may not be readable).
    pub fn workdir(&self) -> Workdir {
        let dir = tempfile::Builder::new()
            .prefix("wa-pg-")
            .tempdir()
            .expect("temp dir");
        self.own(dir.path());
        let bin = dir.path().join("wal-archiver");
        if std::fs::hard_link(crate::common::BIN, &bin).is_err() {
            std::fs::copy(crate::common::BIN, &bin).expect("copy the wal-archiver binary");
        }
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Workdir {
            pg: self.clone(),
            bin,
            dir,
        }
    }

    fn own(&self, path: &Path) {
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
        }
    }
}

fn newest_debian_bindir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

fn pg_config_bindir() -> Option<PathBuf> {
    let output = Command::new("pg_config").arg("--bindir").output().ok()?;
    output
        .status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}

fn unprivileged_user(name: &str) -> (u32, u32) {
    let lookup = || {
        let c_name = CString::new(name).expect("user name");
        // SAFETY: getpwnam with a valid C string; the result is read at once.
        let entry = unsafe { libc::getpwnam(c_name.as_ptr()) };
        // SAFETY: checked for null; the fields are plain integers.
        (!entry.is_null()).then(|| unsafe { ((*entry).pw_uid, (*entry).pw_gid) })
    };
    if let Some(ids) = lookup() {
        return ids;
    }
    let status = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/bin/sh",
        ])
        .arg(name)
        .status()
        .expect("run useradd");
    // Another test may have created it meanwhile.
    lookup().unwrap_or_else(|| panic!("useradd {name} failed: {status}"))
}

/// Where a test keeps its clusters and the binary their commands run.
pub struct Workdir {
    pub pg: Pg,
    /// The wal-archiver binary PostgreSQL's commands call.
    pub bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Workdir {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `archive_command` for `shard`; the server URL comes from the environment.
    pub fn archive_command(&self, shard: u32) -> String {
        format!("{} archive-push --shard {shard} %p", self.bin.display())
    }

    pub fn restore_command(&self, shard: u32) -> String {
        format!("{} archive-get --shard {shard} %f %p", self.bin.display())
    }

    /// `initdb` a new cluster named `name` with `wal_segsize_mb` MiB segments.
    pub fn init(&self, name: &str, wal_segsize_mb: u32) -> Cluster {
        let cluster = self.cluster(name);
        run(self
            .pg
            .command("initdb")
            .arg("-D")
            .arg(&cluster.data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .arg(format!("--wal-segsize={wal_segsize_mb}")));
        cluster.configure(&[
            ("listen_addresses", "''".into()),
            (
                "unix_socket_directories",
                quote(cluster.socket_dir.display()),
            ),
            ("port", "5432".into()),
            // WAL content is what is tested; commits need not wait for it.
            ("synchronous_commit", "off".into()),
            ("max_wal_size", "'256MB'".into()),
        ]);
        cluster
    }

    /// A cluster named `name` from the base backup in `backup` (a copy, so
    /// one backup serves several recoveries).
    pub fn restore_base_backup(&self, backup: &Path, name: &str) -> Cluster {
        let cluster = self.cluster(name);
        let mut cp = Command::new("cp");
        cp.arg("-a").arg(backup).arg(&cluster.data);
        self.pg.drop_privileges(&mut cp);
        run(&mut cp);
        cluster.configure(&[
            (
                "unix_socket_directories",
                quote(cluster.socket_dir.display()),
            ),
            ("archive_mode", "off".into()),
        ]);
        cluster
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`), not started.
    pub fn standby_of(&self, primary: &Cluster, name: &str) -> Cluster {
        let cluster = self.cluster(name);
        primary.standby_backup(&cluster.data);
        cluster.configure(&[(
            "unix_socket_directories",
            quote(cluster.socket_dir.display()),
        )]);
        cluster
    }

    fn cluster(&self, name: &str) -> Cluster {
        let socket_dir = self.path().join(format!("{name}.s"));
        std::fs::create_dir(&socket_dir).expect("socket dir");
        self.pg.own(&socket_dir);
        Cluster {
            pg: self.pg.clone(),
            data: self.path().join(name),
            log: self.path().join(format!("{name}.log")),
            socket_dir,
            env: Vec::new(),
            running: false,
        }
    }
}

/// A postgresql.conf string value (the values quoted here hold no quote).
pub fn quote(value: impl std::fmt::Display) -> String {
    format!("'{value}'")
}

/// One PostgreSQL cluster; stopped at once when dropped.
pub struct Cluster {
    pg: Pg,
    pub data: PathBuf,
    pub log: PathBuf,
    socket_dir: PathBuf,
    /// Environment of the postmaster, so of archive_command and restore_command.
    pub env: Vec<(String, String)>,
    running: bool,
}

impl Cluster {
    /// Appends settings to postgresql.conf (later lines win).
    pub fn configure(&self, settings: &[(&str, String)]) {
        use std::io::Write;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        for (key, value) in settings {
            writeln!(conf, "{key} = {value}").expect("write postgresql.conf");
        }
    }

    /// An empty file in the data dir (`recovery.signal`, `standby.signal`).
    pub fn touch(&self, name: &str) {
        let path = self.data.join(name);
        std::fs::write(&path, "").expect("signal file");
        self.pg.own(&path);
    }

    pub fn start(&mut self) {
        let mut command = self.pg.command("pg_ctl");
        command
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", &PATIENCE.as_secs().to_string(), "start"])
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        self.running = true;
        let output = command.output().expect("run pg_ctl start");
        assert!(
            output.status.success(),
            "pg_ctl start failed: {}\nlog:\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log_text()
        );
    }

    pub fn stop(&mut self) {
        run(self.pg.command("pg_ctl").arg("-D").arg(&self.data).args([
            "-w",
            "-t",
            &PATIENCE.as_secs().to_string(),
            "-m",
            "fast",
            "stop",
        ]));
        self.running = false;
    }

    pub fn promote(&self) {
        run(self.pg.command("pg_ctl").arg("-D").arg(&self.data).args([
            "-w",
            "-t",
            &PATIENCE.as_secs().to_string(),
            "promote",
        ]));
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Connection options of the client programs.
    fn connect_args(&self) -> Vec<String> {
        vec![
            "-h".into(),
            self.socket_dir.display().to_string(),
            "-p".into(),
            "5432".into(),
            "-U".into(),
            "postgres".into(),
        ]
    }

    /// One query's result, unaligned, fields separated by `|`.
    pub fn sql(&self, query: &str) -> String {
        let output = run(self.sql_command(query).stderr(Stdio::piped()));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The psql command that runs `query`.
    pub fn sql_command(&self, query: &str) -> Command {
        let mut command = self.pg.command("psql");
        command
            .args(self.connect_args())
            .args(["-d", "postgres", "-X", "-A", "-t", "-q"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", query])
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    /// Polls `query` until `done` accepts its result; returns that result.
    pub fn wait_sql(&self, what: &str, query: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let result = self.try_sql(query);
            if let Some(result) = result.filter(|r| done(r)) {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "waited {PATIENCE:?} for {what} ({query}); log:\n{}",
                tail(&self.log_text(), 4000)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn try_sql(&self, query: &str) -> Option<String> {
        let output = self.sql_command(query).output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// `pgbench` with `args` (`-i -s 1`, `-c 2 -t 500`, …) against `postgres`.
    pub fn pgbench(&self, args: &[&str]) {
        run(&mut self.pgbench_command(args));
    }

    pub fn pgbench_command(&self, args: &[&str]) -> Command {
        let mut command = self.pg.command("pgbench");
        command
            .args(self.connect_args())
            .args(args)
            .arg("postgres")
            .stdout(Stdio::null());
        command
    }

    pub fn spawn_pgbench(&self, args: &[&str]) -> Child {
        self.pgbench_command(args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pgbench")
    }

    /// `pg_basebackup` into `dir` (a new directory). `-X none`: the backup
    /// holds no WAL, so a recovery from it needs every segment from the archive.
    pub fn base_backup(&self, dir: &Path) {
        run(self
            .pg
            .command("pg_basebackup")
            .args(self.connect_args())
            .arg("-D")
            .arg(dir)
            .args(["-X", "none", "-c", "fast", "--no-sync"]));
    }

    /// `pg_basebackup -R` for a streaming standby (WAL included).
    fn standby_backup(&self, dir: &Path) {
        run(self
            .pg
            .command("pg_basebackup")
            .args(self.connect_args())
            .arg("-D")
            .arg(dir)
            .args(["-X", "stream", "-R", "-c", "fast", "--no-sync"]));
    }

    /// What the pgbench tables hold, as one string: identical strings mean identical data.
    pub fn checksum(&self) -> String {
        self.sql(
            "SELECT (SELECT count(*) || ':' || md5(string_agg(a::text, ',' ORDER BY aid)) FROM pgbench_accounts a)
                 || '|' || (SELECT md5(string_agg(b::text, ',' ORDER BY bid)) FROM pgbench_branches b)
                 || '|' || (SELECT md5(string_agg(t::text, ',' ORDER BY tid)) FROM pgbench_tellers t)
                 || '|' || (SELECT count(*) || ':' || coalesce(sum(hashtext(h::text)), 0) FROM pgbench_history h)",
        )
    }

    /// Switches to a new WAL file; the name of the one just completed.
    pub fn switch_wal(&self) -> String {
        self.sql("SELECT pg_walfile_name(pg_switch_wal())")
    }

    /// Waits until the archiver has archived `segment` (and so everything
    /// before it) and nothing is left `.ready`; returns `failed_count`.
    pub fn wait_archived(&self, segment: &str) -> u64 {
        let result = self.wait_sql(
            &format!("{segment} archived"),
            &format!(
                "SELECT coalesce(last_archived_wal, '') >= '{segment}'
                        AND (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') = 0,
                        failed_count
                 FROM pg_stat_archiver"
            ),
            |r| r.starts_with("t|"),
        );
        result[2..].parse().expect("failed_count")
    }

    /// Waits until the server is out of recovery (recovery ended, promoted).
    pub fn wait_promoted(&self) {
        self.wait_sql("the end of recovery", "SELECT pg_is_in_recovery()", |r| {
            r == "f"
        });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .pg
                .command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs a command to success; its output.
pub fn run(command: &mut Command) -> Output {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn tail(text: &str, bytes: usize) -> &str {
    let mut start = text.len().saturating_sub(bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

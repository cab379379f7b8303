//! The cluster harness for integration tests: a real metad and N real chunkd processes on
//! ephemeral loopback ports with temporary data directories, and real FUSE mounts of them.
//!
//! Everything started here is stopped in `Drop`, so a failing test leaves no process or
//! mount behind. Readiness is polled, never slept for.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shardfs_chunk_api::chunk_id::ShardId;
use shardfs_chunk_api::client::ChunkClient;
pub use shardfs_chunkd::store::StoredAt;
use shardfs_meta_api::MetaClient;
use shardfs_rpc::sync::Lock as _;
use shardfs_rpc::{ClientOptions, ClusterKey, TlsClient};
use tempfile::TempDir;

/// How long any daemon or mount may take to become ready, and any awaited condition to
/// come true. Over 30 s: a daemon started while another test's metad is down can wait that
/// long to exec, since exec closes the descriptors the test process has open on that
/// test's mount, and each close flushes there (the mount gives up after 30 s).
pub const READY_TIMEOUT: Duration = Duration::from_secs(45);

/// Clusters started as a group of metad replicas (`Cluster::start_group`) take turns: their
/// tests time failovers, which several groups electing at once on two cores would blur.
static GROUP_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The address a process logged for its metrics endpoint (`--metrics-listen`).
pub fn metrics_endpoint(log: &Path) -> String {
    let mut addr = None;
    eventually("the metrics endpoint to be announced", || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        addr = text.lines().find_map(|line| {
            let rest = line.split("metrics at http://").nth(1)?;
            Some(rest.split('/').next()?.to_string())
        });
        addr.is_some()
    });
    addr.unwrap()
}

/// The OpenMetrics text served at `addr`.
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    body.to_string()
}

/// The value of the unlabelled sample `name` in metrics text.
pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `done` until it holds; fails the test after [`READY_TIMEOUT`].
pub fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
/// Heartbeat interval given to test chunkds.
const HEARTBEAT_SECS: &str = "0.3";
/// Seconds of silence after which metad counts a test chunkd as down.
const DOWN_AFTER_SECS: &str = "2";

/// `n` loopback addresses with ports free now, all different: bound together and let go at
/// once, they stay free for daemons started moments later. (Bound one after another, the
/// kernel may hand out a port again once it is let go: a group was once given one port for
/// two of its replicas.)
fn free_ports(n: usize) -> Vec<String> {
    let bind = |_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let listeners: Vec<_> = (0..n).map(bind).collect();
    listeners.iter().map(|l| l.local_addr().expect("its address").to_string()).collect()
}

/// Path of a workspace binary, built next to the test executable's directory, and built
/// from the source as it is: a binary older than a source file of the crates it is built
/// from would test code that is not there any more.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target profile directory");
    let path = dir.join(name);
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap_or_else(|_| {
        panic!("{} is missing: run `cargo build --workspace --bins` first", path.display())
    });
    // The crates each binary is built from, its own last (a binary is relinked only when
    // one changes; of the others, only the library counts).
    let crates: &[&str] = match name {
        "shardfs-chunkd" => &["rpc", "chunk-api", "chunkd"],
        "shardfs-metad" => &["rpc", "chunk-api", "meta-api", "metad"],
        _ => &["rpc", "chunk-api", "meta-api", "chunkd", "metad", "fs", "cli"],
    };
    if let Some((changed, source)) = newest_source(crates)
        && built < changed
    {
        panic!(
            "{} is older than {}: run `cargo build --workspace --bins` first",
            path.display(),
            source.display()
        );
    }
    path
}

/// The most recently modified source file of `crates`, the binary's own crate last (the
/// `src/bin/` programs of the others are not part of it).
fn newest_source(crates: &[&str]) -> Option<(std::time::SystemTime, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let mut newest = None;
    for (i, name) in crates.iter().enumerate() {
        let own = i + 1 == crates.len();
        newest_in(&root.join(name).join("src"), own, &mut newest);
    }
    newest
}

fn newest_in(dir: &Path, own: bool, newest: &mut Option<(std::time::SystemTime, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        // Unit tests (`tests.rs`, `tests/`) are not in the binary: changing them relinks
        // nothing.
        let unit_tests = path.file_stem().is_some_and(|stem| stem == "tests");
        let other_programs = !own && path.ends_with("src/bin");
        if unit_tests || other_programs {
            continue;
        } else if path.is_dir() {
            newest_in(&path, own, newest);
        } else if let Ok(modified) = entry.metadata().and_then(|m| m.modified())
            && newest.as_ref().is_none_or(|(time, _)| modified > *time)
        {
            *newest = Some((modified, path));
        }
    }
}

/// A child process killed and reaped on drop.
pub struct Process {
    child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` and waits for the process to exit.
    pub fn stop(mut self, signal: nix::sys::signal::Signal) {
        self.signal_and_wait(signal);
    }

    fn signal_and_wait(&mut self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.exited() {
            // A process a failed test left frozen must be thawed to handle SIGTERM.
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
            self.signal_and_wait(nix::sys::signal::Signal::SIGTERM);
        }
    }
}

impl Drop for Cluster {
    /// A failed test shows what its daemons and mounts warned of, before their logs go
    /// with the temporary directory.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // SHARDFS_KEEP_LOGS=DIR keeps every log of a failed test there.
        let keep = std::env::var_os("SHARDFS_KEEP_LOGS").map(PathBuf::from);
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "log") {
                continue;
            }
            if let Some(keep) = &keep
                && std::fs::create_dir_all(keep).is_ok()
            {
                let _ = std::fs::copy(&path, keep.join(entry.file_name()));
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let warnings: Vec<&str> =
                text.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
            if !warnings.is_empty() {
                eprintln!("--- {} (last warnings) ---", path.display());
                for line in &warnings[warnings.len().saturating_sub(30)..] {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Starts `command` (stderr to `log`) and waits for its "listening on ADDR" stdout line.
fn start_daemon(mut command: Command, log: &Path) -> (Process, String) {
    // Appended to: a daemon restarted in a test keeps the log of its earlier runs.
    let log_file = File::options().create(true).append(true).open(log).expect("open daemon log");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .expect("spawn daemon");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let mut process = Process { child, log: log.to_owned() };
    let line = rx.recv_timeout(READY_TIMEOUT).unwrap_or_default();
    let Some((_, addr)) = line.trim().split_once(" listening on ") else {
        panic!(
            "daemon did not announce its address within {READY_TIMEOUT:?} (exit status: {:?}); \
             log:\n{}",
            process.child.try_wait(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
    };
    (process, addr.to_string())
}

pub struct Chunkd {
    pub process: Process,
    pub addr: String,
    pub id: String,
}

/// One replica of a metad group (`Cluster::start_group`).
pub struct MetadReplica {
    /// `None` while stopped.
    pub process: Option<Process>,
    pub addr: String,
    /// Added to the group after it was set up (`Cluster::add_replica`): it is started with
    /// the founding replicas' list, which does not name it.
    pub joined: bool,
}

/// metad plus chunkds, with their data in one temporary directory.
pub struct Cluster {
    pub metad: Option<Process>,
    /// The address of metad, or of its replicas separated by commas: what chunkds, mounts
    /// and tools are given.
    pub metad_addr: String,
    /// The replicas, when metad runs as a group of them (then `metad` stays `None`).
    pub replicas: Vec<MetadReplica>,
    /// `None` while stopped.
    pub chunkds: Vec<Option<Chunkd>>,
    /// Extra arguments for chunkds started from now on.
    pub chunkd_args: Vec<String>,
    /// Extra arguments for metad, kept across restarts.
    metad_args: Vec<String>,
    /// The CA of a cluster run with TLS, and the client side loaded from it.
    tls: Option<(PathBuf, &'static TlsClient)>,
    runtime: tokio::runtime::Runtime,
    /// Last, because fields drop in order: the daemons stop before their directory goes
    /// (a daemon still writing into it left it half removed).
    pub dir: TempDir,
    /// A group's turn (`GROUP_TURN`), let go once everything else has stopped.
    _turn: Option<std::sync::MutexGuard<'static, ()>>,
}

/// Storage class `rs(k,m)`, as metad's `--class` takes it.
fn rs(k: u8, m: u8) -> String {
    format!("rs({k},{m})")
}

impl Cluster {
    /// Starts metad with encoding `k`+`m` and `n` chunkds, and waits until all are up.
    pub fn start(n: usize, k: u8, m: u8) -> Cluster {
        Cluster::start_with(n, k, m, &[])
    }

    /// [`start`](Self::start) with extra metad arguments.
    pub fn start_with(n: usize, k: u8, m: u8, metad_args: &[&str]) -> Cluster {
        Cluster::start_inner(n, &["--class", &rs(k, m)], metad_args, false)
    }

    /// [`start_with`](Self::start_with) for all data in storage class `class`, as
    /// `replicas(3)` or `lrc(6,2,2)`.
    pub fn start_class(n: usize, class: &str, metad_args: &[&str]) -> Cluster {
        Cluster::start_inner(n, &["--class", class], metad_args, false)
    }

    /// [`start_with`](Self::start_with) for new data in class `hot`, moved to `cold` by
    /// the lifecycle.
    pub fn start_hot_cold(n: usize, hot: &str, cold: &str, metad_args: &[&str]) -> Cluster {
        let classes = ["--hot-class", hot, "--cold-class", cold];
        Cluster::start_inner(n, &classes, metad_args, false)
    }

    /// [`start`](Self::start) with TLS on every connection: a CA made for the test, and a
    /// certificate for 127.0.0.1 that metad and every chunkd serve with. Mounts, tools and
    /// [`query`](Self::query) use TLS too.
    pub fn start_tls(n: usize, k: u8, m: u8, metad_args: &[&str]) -> Cluster {
        Cluster::start_inner(n, &["--class", &rs(k, m)], metad_args, true)
    }

    /// [`start`](Self::start) with a lone metad even when `SHARDFS_TEST_METADS` asks for a
    /// group: for tests of what only a lone metad has (one data directory, whose database
    /// a backup is restored into, or whose disk fills up).
    pub fn start_alone(n: usize, k: u8, m: u8) -> Cluster {
        Cluster::start_inner_with(n, &["--class", &rs(k, m)], &[], false, 0)
    }

    /// [`start`](Self::start) with metad as a group of `replicas` replicas, each its own
    /// process on its own loopback port.
    pub fn start_group(replicas: usize, n: usize, k: u8, m: u8) -> Cluster {
        Cluster::start_group_with(replicas, n, k, m, &[])
    }

    /// [`start_group`](Self::start_group) with extra arguments for every replica.
    pub fn start_group_with(
        replicas: usize,
        n: usize,
        k: u8,
        m: u8,
        metad_args: &[&str],
    ) -> Cluster {
        let turn = GROUP_TURN.locked();
        let classes = ["--class", &rs(k, m)];
        let mut cluster = Cluster::start_inner_with(n, &classes, metad_args, false, replicas);
        cluster._turn = Some(turn);
        cluster
    }

    /// A lone metad, or with `SHARDFS_TEST_METADS=N` a group of N replicas (1: a group of
    /// one, on the replicated log): the whole suite can run against a group.
    fn start_inner(n: usize, classes: &[&str], metad_args: &[&str], tls: bool) -> Cluster {
        let replicas = std::env::var("SHARDFS_TEST_METADS").ok().and_then(|n| n.parse().ok());
        let replicas = replicas.unwrap_or(0);
        Cluster::start_inner_with(n, classes, metad_args, tls, replicas)
    }

    fn start_inner_with(
        n: usize,
        classes: &[&str],
        metad_args: &[&str],
        tls: bool,
        replicas: usize,
    ) -> Cluster {
        let dir = tempfile::Builder::new().prefix("shardfs-test-").tempdir().expect("tempdir");
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let mut cluster = Cluster {
            dir,
            metad: None,
            metad_addr: String::new(),
            replicas: free_ports(replicas)
                .into_iter()
                .map(|addr| MetadReplica { process: None, addr, joined: false })
                .collect(),
            chunkds: (0..n).map(|_| None).collect(),
            chunkd_args: Vec::new(),
            metad_args: metad_args.iter().map(|a| a.to_string()).collect(),
            tls: None,
            runtime,
            _turn: None,
        };
        if tls {
            let [ca, cert, key] =
                shardfs_rpc::testing::tls_files(cluster.dir.path(), &["127.0.0.1"]);
            let mut args = Vec::new();
            for (flag, file) in [("--tls-cert", &cert), ("--tls-key", &key), ("--tls-ca", &ca)] {
                args.extend([flag.to_string(), file.display().to_string()]);
            }
            cluster.metad_args.extend(args.iter().cloned());
            cluster.chunkd_args.extend(args);
            cluster.tls = Some((ca.clone(), TlsClient::load(&ca).expect("load the test CA")));
        }
        ClusterKey::create(&cluster.secret_file()).expect("create the cluster secret");
        cluster.start_metad("127.0.0.1:0", classes);
        for i in 0..n {
            cluster.start_chunkd(i);
        }
        cluster.wait_chunkds_up();
        cluster
    }

    /// The default test cluster: rs(4,2) over 6 chunkds.
    pub fn standard() -> Cluster {
        Cluster::start(6, 4, 2)
    }

    fn start_metad(&mut self, listen: &str, extra: &[&str]) {
        if !self.replicas.is_empty() {
            for i in 0..self.replicas.len() {
                self.start_replica_with(i, extra);
            }
            return;
        }
        let data = self.metad_dir();
        let mut command = Command::new(binary("shardfs-metad"));
        command
            .arg("--data")
            .arg(&data)
            .arg("--secret-file")
            .arg(self.secret_file())
            .args(["--listen", listen, "--down-after", DOWN_AFTER_SECS])
            .args(&self.metad_args)
            .args(extra);
        let (process, addr) = start_daemon(command, &self.dir.path().join("metad.log"));
        self.metad = Some(process);
        self.metad_addr = addr;
    }

    /// Starts replica `i` of the metad group on its address and data.
    pub fn start_replica(&mut self, i: usize) {
        self.start_replica_with(i, &[]);
    }

    fn start_replica_with(&mut self, i: usize, extra: &[&str]) {
        let founders: Vec<&str> =
            self.replicas.iter().filter(|r| !r.joined).map(|r| r.addr.as_str()).collect();
        let founders = founders.join(",");
        let all: Vec<&str> = self.replicas.iter().map(|r| r.addr.as_str()).collect();
        let (all, addr) = (all.join(","), self.replicas[i].addr.clone());
        let mut command = Command::new(binary("shardfs-metad"));
        command
            .arg("--data")
            .arg(self.replica_dir(i))
            .arg("--secret-file")
            .arg(self.secret_file())
            .args(["--listen", &addr, "--replicas", &founders, "--down-after", DOWN_AFTER_SECS])
            .args(&self.metad_args)
            .args(extra);
        let log = self.dir.path().join(format!("metad-{i}.log"));
        let (process, announced) = start_daemon(command, &log);
        assert_eq!(announced, addr, "replica {i} listens where the group expects it");
        self.replicas[i].process = Some(process);
        self.metad_addr = all;
    }

    /// Starts a new replica with an empty data directory and adds it to the group with
    /// `shardfs metad add` (as a learner if `learner`); returns its index. Chunkds and
    /// mounts started from now on are given its address too.
    pub fn add_replica(&mut self, learner: bool) -> usize {
        let i = self.replicas.len();
        let taken = |addr: &String| self.replicas.iter().any(|r| &r.addr == addr);
        let addr = std::iter::repeat_with(|| free_ports(1).remove(0))
            .find(|addr| !taken(addr))
            .expect("a free port");
        self.replicas.push(MetadReplica { process: None, addr: addr.clone(), joined: true });
        self.start_replica(i);
        let mut add = self.command("shardfs");
        add.args(["metad", "add", &addr, "--metad", &self.metad_addr]);
        if learner {
            add.arg("--learner");
        }
        let out = add.output().expect("run shardfs metad add");
        assert!(
            out.status.success(),
            "shardfs metad add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        i
    }

    /// Sends `signal` to replica `i` of the metad group, which stays counted as running
    /// (SIGSTOP freezes it, SIGCONT thaws it).
    pub fn signal_replica(&self, i: usize, signal: nix::sys::signal::Signal) {
        let process = self.replicas[i].process.as_ref().expect("replica running");
        let pid = nix::unistd::Pid::from_raw(process.pid() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal the replica");
        if signal == nix::sys::signal::Signal::SIGSTOP {
            // kill(2) returns before every thread has stopped: one may still answer a
            // request sent after this returns.
            eventually("the replica to stop", || all_threads_stopped(process.pid()));
        }
    }

    /// Stops replica `i` of the metad group with `signal`.
    pub fn stop_replica(&mut self, i: usize, signal: nix::sys::signal::Signal) {
        if let Some(process) = self.replicas[i].process.take() {
            process.stop(signal);
        }
    }

    /// The data directory of replica `i`.
    pub fn replica_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("metad-{i}"))
    }

    /// The replica that leads the group now: the one that answers (the others answer that
    /// they do not lead). Waits for the group to have one.
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for (i, replica) in self.replicas.iter().enumerate() {
                if replica.process.is_none() {
                    continue;
                }
                // A frozen replica answers nothing: asked briefly.
                let options =
                    ClientOptions { request_timeout: Duration::from_secs(1), ..self.rpc_options() };
                let client = MetaClient::new(&replica.addr, options);
                if self.runtime.block_on(client.volume()).is_ok() {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no replica leads; see {:?}", self.dir.path());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn chunkd_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("chunkd-{i}"))
    }

    pub fn start_chunkd(&mut self, i: usize) {
        self.start_chunkd_at(i, &self.chunkd_dir(i), "127.0.0.1:0");
    }

    /// Starts a chunkd in slot `i` on data directory `data`, listening on `listen`.
    pub fn start_chunkd_at(&mut self, i: usize, data: &Path, listen: &str) {
        let mut command = Command::new(binary("shardfs-chunkd"));
        command
            .arg("--data")
            .arg(data)
            .arg("--secret-file")
            .arg(self.secret_file())
            .args(["--listen", listen, "--metad", &self.metad_addr])
            .args(["--heartbeat-interval", HEARTBEAT_SECS])
            .args(&self.chunkd_args);
        let log = self.dir.path().join(format!("chunkd-{i}.log"));
        let (process, addr) = start_daemon(command, &log);
        let id = shardfs_chunkd::store::read_id(data)
            .expect("read the chunkd id")
            .expect("a started chunkd has an id");
        self.chunkds[i] = Some(Chunkd { process, addr, id });
    }

    /// Stops chunkd `i` with `signal`.
    pub fn stop_chunkd(&mut self, i: usize, signal: nix::sys::signal::Signal) {
        if let Some(chunkd) = self.chunkds[i].take() {
            chunkd.process.stop(signal);
        }
    }

    /// Kills the chunkds in `down` (SIGKILL), hands `check` a fresh mount (nothing cached),
    /// then unmounts and starts them again.
    pub fn with_chunkds_down(&mut self, down: &[usize], check: impl FnOnce(&Mount)) {
        for &i in down {
            self.stop_chunkd(i, nix::sys::signal::Signal::SIGKILL);
        }
        let mount = self.mount();
        check(&mount);
        mount.unmount();
        for &i in down {
            self.start_chunkd(i);
        }
    }

    /// Stops metad with `signal` and starts it again on the same address and data, so
    /// chunkds and mounts reconnect by themselves.
    pub fn restart_metad(&mut self, signal: nix::sys::signal::Signal) {
        self.stop_metad(signal);
        self.resume_metad();
    }

    /// Stops metad with `signal`.
    pub fn stop_metad(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(metad) = self.metad.take() {
            metad.stop(signal);
        }
        for i in 0..self.replicas.len() {
            self.stop_replica(i, signal);
        }
    }

    /// Starts metad again on its address and data.
    pub fn resume_metad(&mut self) {
        if !self.replicas.is_empty() {
            return self.start_metad("", &[]);
        }
        let addr = self.metad_addr.clone();
        self.start_metad(&addr, &[]);
        assert_eq!(self.metad_addr, addr, "metad came back on another address");
    }

    /// Whether `shardfs fsck --verify-data` finds nothing wrong; its report goes to the
    /// test's output.
    pub fn fsck_clean(&self) -> bool {
        let out = self
            .command("shardfs")
            .args(["fsck", &self.metad_addr, "--verify-data"])
            .output()
            .expect("run shardfs fsck");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        out.status.success()
    }

    /// metad's data directory.
    pub fn metad_dir(&self) -> PathBuf {
        self.dir.path().join("metad")
    }

    /// The address of the lone metad, or of the group's leader: for a test that talks to
    /// one metad.
    pub fn one_metad(&self) -> String {
        match self.replicas.is_empty() {
            true => self.metad_addr.clone(),
            false => self.replicas[self.leader()].addr.clone(),
        }
    }

    /// The process id of the lone metad, or of the group's leader.
    pub fn one_metad_pid(&self) -> u32 {
        match &self.metad {
            Some(metad) => metad.pid(),
            None => self.replicas[self.leader()].process.as_ref().expect("leader running").pid(),
        }
    }

    /// The log of the lone metad, or of the group's leader.
    pub fn one_metad_log(&self) -> PathBuf {
        match self.replicas.is_empty() {
            true => self.dir.path().join("metad.log"),
            false => self.dir.path().join(format!("metad-{}.log", self.leader())),
        }
    }

    /// Everything metad logged: the lone metad's log, or every replica's.
    pub fn metad_logs(&self) -> String {
        let mut logs =
            std::fs::read_to_string(self.dir.path().join("metad.log")).unwrap_or_default();
        for i in 0..self.replicas.len() {
            let log = self.dir.path().join(format!("metad-{i}.log"));
            logs.push_str(&std::fs::read_to_string(log).unwrap_or_default());
        }
        logs
    }

    /// Stops every daemon, then starts them again on the same data directories.
    pub fn restart_all(&mut self) {
        let n = self.chunkds.len();
        for i in 0..n {
            self.stop_chunkd(i, nix::sys::signal::Signal::SIGTERM);
        }
        self.stop_metad(nix::sys::signal::Signal::SIGTERM);
        self.start_metad("127.0.0.1:0", &[]);
        for i in 0..n {
            self.start_chunkd(i);
        }
        self.wait_chunkds_up();
    }

    /// The cluster secret every daemon, mount and tool of this cluster is given.
    pub fn secret_file(&self) -> PathBuf {
        self.dir.path().join("cluster.key")
    }

    /// Connection options holding this cluster's key.
    pub fn rpc_options(&self) -> ClientOptions {
        let key = ClusterKey::load(&self.secret_file()).expect("the cluster secret");
        ClientOptions {
            tls: self.tls.as_ref().map(|(_, tls)| *tls),
            ..ClientOptions::with_key(key)
        }
    }

    /// A command running binary `name` with this cluster's secret in its environment.
    pub fn command(&self, name: &str) -> Command {
        let mut command = Command::new(binary(name));
        command.env("SHARDFS_SECRET_FILE", self.secret_file());
        if let Some((ca, _)) = &self.tls {
            command.env("SHARDFS_TLS_CA", ca);
        }
        command
    }

    /// Runs `f` with a metad client.
    pub fn query<T>(&self, f: impl AsyncFnOnce(&MetaClient) -> T) -> T {
        let client = MetaClient::new(&self.metad_addr, self.rpc_options());
        self.runtime.block_on(f(&client))
    }

    /// How many requests mounts have sent metad so far (`Workers`).
    pub fn mount_requests(&self) -> u64 {
        self.query(async |c| c.workers().await).unwrap().mount_requests
    }

    /// Waits until metad reports every running chunkd up at its current address.
    pub fn wait_chunkds_up(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let running: Vec<&str> = self.chunkds.iter().flatten().map(|c| c.addr.as_str()).collect();
        loop {
            // Up at the address it listens on now: a chunkd killed moments ago still counts
            // as up at its old address until metad notices.
            let registered = self
                .query(async |c| c.chunkds().await)
                .map(|all| {
                    let up: Vec<&str> =
                        all.iter().filter(|c| c.up).map(|c| c.addr.as_str()).collect();
                    running.iter().filter(|a| up.contains(a)).count()
                })
                .unwrap_or(0);
            if registered == running.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {registered} of {} running chunkds registered as up; see {:?}",
                running.len(),
                self.dir.path()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Mounts the cluster on a new directory.
    pub fn mount(&self) -> Mount {
        self.mount_with(&[])
    }

    /// Mounts the cluster on a new directory with extra `shardfs mount` arguments.
    pub fn mount_with(&self, args: &[&str]) -> Mount {
        self.mount_via(&self.metad_addr, args)
    }

    /// Mounts the cluster through metad address `metad` (a proxy in front of metad).
    pub fn mount_via(&self, metad: &str, args: &[&str]) -> Mount {
        let path = self.dir.path().join(format!("mnt-{}", unique()));
        std::fs::create_dir(&path).expect("create mountpoint");
        self.mount_at(&path, metad, args)
    }

    /// Mounts the cluster through metad address `metad` on directory `path`.
    pub fn mount_at(&self, path: &Path, metad: &str, args: &[&str]) -> Mount {
        let log = self.dir.path().join(format!("mount-{}.log", unique()));
        let mut command = self.command("shardfs");
        command.arg("mount").args(args).arg(metad).arg(path);
        Mount::start(command, path.to_owned(), &log)
    }

    /// Every shard record chunkd `i` holds on disk (running or not).
    pub fn stored_shards(&self, i: usize) -> Vec<StoredAt> {
        shardfs_chunkd::store::inventory(&self.chunkd_dir(i)).expect("read a chunkd's store")
    }

    /// Flips bits in byte `offset` of a shard's record on disk (`offset` counts from the
    /// start of its header), as a failing disk would.
    pub fn damage_shard(&self, at: &StoredAt, offset: u64) {
        use std::os::unix::fs::FileExt;
        assert!(offset < at.len, "byte {offset} of a {}-byte record", at.len);
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&at.path).unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, at.offset + offset).unwrap();
        file.write_all_at(&[byte[0] ^ 0x10], at.offset + offset).unwrap();
    }

    /// Deletes a shard from running chunkd `i`, as if it had been lost.
    pub fn lose_shard(&self, i: usize, shard: ShardId) {
        let chunkd = self.chunkds[i].as_ref().expect("a running chunkd");
        let client = ChunkClient::new(chunkd.addr.clone(), &chunkd.id, self.rpc_options());
        let deleted = self.runtime.block_on(client.delete(shard)).expect("delete the shard");
        assert!(deleted, "chunkd {i} did not hold {shard}");
    }
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// How long an unmount waits for the client to exit cleanly before killing it.
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(90);

/// A live FUSE mount served by a `shardfs mount` process; unmounted on drop.
pub struct Mount {
    pub path: PathBuf,
    process: Option<Process>,
}

impl Mount {
    fn start(mut command: Command, path: PathBuf, log: &Path) -> Mount {
        let log_file = File::create(log).expect("create mount log");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn shardfs mount");
        let mut process = Process { child, log: log.to_owned() };
        let deadline = Instant::now() + READY_TIMEOUT;
        while !is_mounted(&path) {
            if process.exited() || Instant::now() > deadline {
                panic!(
                    "mount at {} did not come up; log:\n{}",
                    path.display(),
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Mount { path, process: Some(process) }
    }

    pub fn join(&self, relative: &str) -> PathBuf {
        self.path.join(relative)
    }

    /// The serving process's id.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// Where the mount process's stderr goes.
    pub fn log(&self) -> Option<&Path> {
        self.process.as_ref().map(|p| p.log.as_path())
    }

    /// Unmounts and waits for the serving process to exit.
    pub fn unmount(mut self) {
        self.teardown();
    }

    /// Kills the serving process with SIGKILL (a client crash), then detaches the dead mount.
    pub fn crash(mut self) {
        if let Some(process) = self.process.take() {
            process.stop(nix::sys::signal::Signal::SIGKILL);
        }
        let _ = Command::new("fusermount3").arg("-uz").arg(&self.path).status();
    }

    fn teardown(&mut self) {
        let Some(mut process) = self.process.take() else {
            return;
        };
        if is_mounted(&self.path) {
            let clean = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.path)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !clean {
                let _ = Command::new("fusermount3").arg("-uz").arg(&self.path).status();
            }
        }
        // The client commits what closes left to the background before it exits (up to
        // 60 s); on a loaded machine that takes a while, and killing it sooner loses data.
        let deadline = Instant::now() + UNMOUNT_TIMEOUT;
        while !process.exited() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A mount that exits removes its record (`fs/src/mount_record.rs`, which names it the
    /// same way); one the test killed leaves it.
    fn remove_record(&self) {
        if !is_mounted(&self.path) {
            let name = self.path.to_string_lossy().trim_matches('/').replace('/', "-");
            let _ = std::fs::remove_file(format!("/run/shardfs/mount-{name}.json"));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.teardown();
        self.remove_record();
    }
}

/// Whether `path` is a mount point right now.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    mountinfo.lines().any(|line| line.split(' ').nth(4) == Some(wanted.as_ref()))
}

/// The command prefix that runs what follows as root (`uid` 0) or as user `uid` (its
/// group the same number, no supplementary groups).
pub fn as_user(uid: u32) -> String {
    match uid {
        0 => String::new(),
        uid => format!("setpriv --reuid={uid} --regid={uid} --clear-groups "),
    }
}

/// Runs a shell command line, panicking with its output if it fails.
pub fn sh(script: &str) -> String {
    let output = Command::new("bash").arg("-c").arg(script).output().expect("run bash");
    assert!(
        output.status.success(),
        "`{script}` failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Writes `len` pseudo-random bytes (deterministic per `seed`) to `path`.
pub fn write_random(path: &Path, len: usize, seed: u64) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(File::create(path).expect("create file"));
    let mut bytes = PseudoRandom::new(seed);
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len());
        bytes.fill(&mut block[..n]);
        file.write_all(&block[..n]).expect("write");
        left -= n;
    }
    file.flush().expect("flush");
}

/// `len` pseudo-random bytes, deterministic per `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    PseudoRandom::new(seed).fill(&mut bytes);
    bytes
}

/// A xorshift generator: fast, and the same bytes for the same seed on every run.
struct PseudoRandom(u64);

impl PseudoRandom {
    fn new(seed: u64) -> PseudoRandom {
        PseudoRandom(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let state = &mut self.0;
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// SHA-256 of a file, as sha256sum prints it.
pub fn sha256(path: &Path) -> String {
    let out = sh(&format!("sha256sum '{}'", path.display()));
    out.split_whitespace().next().unwrap_or_default().to_string()
}

/// A raw TCP connection to daemon `addr` that has sent this build's hello for `service`
/// (its one-byte code) and read the accepting answer; returns it with the server's nonce.
pub fn raw_hello(addr: &str, service: u8) -> (std::net::TcpStream, [u8; 32]) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(15))).expect("read timeout");
    let mut hello = *b"SHFS\0\0\0\0";
    hello[4..6].copy_from_slice(&shardfs_rpc::PROTOCOL_VERSION.to_be_bytes());
    hello[6] = service;
    stream.write_all(&hello).expect("send hello");
    let mut answer = [0u8; 8 + 32];
    stream.read_exact(&mut answer).expect("read the answer");
    assert_eq!((&answer[..4], answer[6]), (&b"SHFS"[..], 0), "hello accepted");
    (stream, answer[8..].try_into().expect("nonce"))
}

/// Whether the peer closed the connection without answering (rather than waiting).
pub fn closed_by_peer(stream: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    matches!(stream.read(&mut [0u8; 64]), Ok(0) | Err(_))
}

/// A process stopped with SIGSTOP, every thread of it, and continued when dropped: a test
/// that fails on the way must not leave it stopped (a mount's unmount would wait for it).
pub struct Stopped(u32);

impl Stopped {
    pub fn stop(pid: u32) -> Stopped {
        let target = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGSTOP).expect("stop");
        let stopped = Stopped(pid);
        // kill(2) returns before every thread has stopped: one may still answer a request
        // sent after this returns.
        eventually("the process to stop", || all_threads_stopped(pid));
        stopped
    }

    pub fn pid(&self) -> u32 {
        self.0
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let target = nix::unistd::Pid::from_raw(self.0 as i32);
        let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGCONT);
    }
}

/// Whether every thread of process `pid` is stopped (state `T` in `/proc`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
    })
}

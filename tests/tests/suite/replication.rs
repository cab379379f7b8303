//! metad as a group of three replicas, each its own process: mounts go on through the loss
//! of the leader, and every acknowledged operation is there afterwards, once.

use std::fs::OpenOptions;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use shardfs_tests::{Cluster, Mount};

/// The longest one operation may wait for the group to fail over, as the issue asks.
const FAILOVER_BOUND: Duration = Duration::from_secs(5);

/// What one workload did, as its application saw it.
#[derive(Default)]
struct Done {
    /// Files created (with their content), by final path.
    files: Vec<(PathBuf, Vec<u8>)>,
    /// Directories made.
    dirs: Vec<PathBuf>,
    /// Files unlinked.
    unlinked: Vec<PathBuf>,
    /// Lines appended to the workload's journal.
    appended: usize,
    /// Increments of the shared counter, each under an fcntl lock.
    counted: usize,
    /// The longest any one operation took.
    slowest: Duration,
}

/// A metadata-heavy workload in `dir` of one mount: creates with fsync, mkdirs, renames,
/// unlinks, appends, and increments of `counter` under an fcntl write lock. Runs until
/// `stop` after at least `min_rounds` rounds; an error fails the test with what it was.
fn workload(
    dir: PathBuf,
    counter: PathBuf,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
) -> std::io::Result<Done> {
    let mut done = Done::default();
    std::fs::create_dir(&dir)?;
    let mut journal = OpenOptions::new().create(true).append(true).open(dir.join("journal"))?;
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let timed = Instant::now();
        let name = dir.join(format!("f{i}"));
        let content = format!("file {i}\n").into_bytes();
        let mut file = OpenOptions::new().create_new(true).write(true).open(&name)?;
        file.write_all(&content)?;
        file.sync_all()?;
        drop(file);
        let sub = dir.join(format!("d{i}"));
        std::fs::create_dir(&sub)?;
        done.dirs.push(sub.clone());
        let moved = sub.join("moved");
        std::fs::rename(&name, &moved)?;
        done.files.push((moved, content));
        if i % 3 == 2 {
            let (gone, _) = done.files.remove(done.files.len() - 2);
            std::fs::remove_file(&gone)?;
            done.unlinked.push(gone);
        }
        writeln!(journal, "line {i}")?;
        journal.sync_data()?;
        done.appended += 1;
        increment_locked(&counter)?;
        done.counted += 1;
        done.slowest = done.slowest.max(timed.elapsed());
        i += 1;
        rounds.fetch_add(1, Ordering::SeqCst);
    }
    Ok(done)
}

/// Adds one to the number in `path` under an fcntl write lock on the whole file.
fn increment_locked(path: &Path) -> std::io::Result<()> {
    let mut file = OpenOptions::new().read(true).write(true).custom_flags(0).open(path)?;
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as i16;
    lock.l_whence = libc::SEEK_SET as i16;
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLKW, &mut lock) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let n: u64 = text.trim().parse().unwrap_or(0);
    file.rewind()?;
    file.set_len(0)?;
    file.write_all(format!("{}\n", n + 1).as_bytes())?;
    file.sync_all()?;
    lock.l_type = libc::F_UNLCK as i16;
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &mut lock) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Checks that everything `done` says was acknowledged is there through `mount`, once.
fn check(mount: &Mount, dir: &str, done: &Done) {
    for (path, content) in &done.files {
        assert_eq!(&std::fs::read(path).unwrap(), content, "{path:?}");
    }
    for path in &done.dirs {
        assert!(path.is_dir(), "{path:?} is gone");
    }
    for path in &done.unlinked {
        assert!(!path.exists(), "{path:?} is back");
    }
    let journal = std::fs::read_to_string(mount.join(&format!("{dir}/journal"))).unwrap();
    let lines: Vec<&str> = journal.lines().collect();
    let expected: Vec<String> = (0..done.appended).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, expected, "each acknowledged append once, in order");
}

#[test]
fn mounts_go_on_through_the_loss_of_each_leader_in_turn() {
    let mut cluster = Cluster::start_group(3, 6, 4, 2);
    let (a, b) = (cluster.mount(), cluster.mount());
    let counter = a.join("counter");
    std::fs::write(&counter, "0\n").unwrap();
    let mut counted = 0;
    let mut killed = Vec::new();
    for round in 0..3 {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let dir = format!("r{round}");
        let workers: Vec<_> = [(&a, "a"), (&b, "b")]
            .into_iter()
            .map(|(mount, side)| {
                let dir = mount.join(&format!("{dir}{side}"));
                let counter = mount.join("counter");
                let (stop, rounds) = (stop.clone(), rounds.clone());
                std::thread::spawn(move || workload(dir, counter, stop, rounds))
            })
            .collect();
        shardfs_tests::eventually("the workload to get going", || {
            rounds.load(Ordering::SeqCst) >= 10
        });
        let leader = cluster.leader();
        cluster.stop_replica(leader, nix::sys::signal::Signal::SIGKILL);
        killed.push(leader);
        let before = rounds.load(Ordering::SeqCst);
        shardfs_tests::eventually("the workload to go on after the leader died", || {
            rounds.load(Ordering::SeqCst) >= before + 10
        });
        stop.store(true, Ordering::SeqCst);
        for (worker, side) in workers.into_iter().zip(["a", "b"]) {
            let done = worker.join().unwrap().unwrap_or_else(|e| {
                panic!("round {round}: the workload on mount {side} failed: {e}")
            });
            assert!(
                done.slowest <= FAILOVER_BOUND,
                "round {round}: an operation on mount {side} took {:?}",
                done.slowest
            );
            let mount = if side == "a" { &a } else { &b };
            check(mount, &format!("{dir}{side}"), &done);
            counted += done.counted;
        }
        // The killed replica comes back as a follower, and the next round kills another.
        cluster.start_replica(leader);
        assert_ne!(cluster.leader(), leader, "a restarted replica does not take over");
    }
    println!("leaders killed in turn: {killed:?}");
    let total: usize = std::fs::read_to_string(&counter).unwrap().trim().parse().unwrap();
    assert_eq!(total, counted, "every increment under the lock counted once");
    // Every replica is back, one leads, and each has applied all the leader has.
    shardfs_tests::eventually("status to show three replicas caught up", || caught_up(&cluster));
    drop((a, b));
    // Files unlinked while open go once their mount's session has ended and they lingered.
    shardfs_tests::eventually("fsck --verify-data to find nothing wrong", || cluster.fsck_clean());
}

/// Whether `shardfs status` shows the group's three replicas, one leading, two following,
/// each having applied all the leader has.
fn caught_up(cluster: &Cluster) -> bool {
    let out = cluster.command("shardfs").args(["status", "--json", &cluster.metad_addr]).output();
    let Ok(out) = out else { return false };
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let Some(replicas) = status["replicas"].as_array() else { return false };
    let roles: Vec<&str> = replicas.iter().filter_map(|r| r["state"]["role"].as_str()).collect();
    let lags: Vec<u64> = replicas.iter().filter_map(|r| r["lag"].as_u64()).collect();
    replicas.len() == 3
        && roles.iter().filter(|r| **r == "leader").count() == 1
        && roles.iter().filter(|r| **r == "follower").count() == 2
        && lags == [0, 0, 0]
}

/// A leader frozen with SIGSTOP (as a host that hangs, or one cut off) is replaced, and the
/// mount goes on through the new one. When the old leader thaws it answers nothing from its
/// old state: a client that still talks to it alone, with a read of what changed meanwhile
/// and a change both waiting there, gets "not the leader" or an error, never a stale
/// answer or a success, and the change is not made. Then it rejoins as a follower.
#[test]
fn a_frozen_leader_is_replaced_and_answers_nothing_stale_when_it_thaws() {
    use nix::sys::signal::Signal::{SIGCONT, SIGSTOP};
    use shardfs_meta_api::client::{MetaClient, MetaClientError};
    use shardfs_meta_api::proto::{Cred, MetaError, ROOT_INO};

    // "Not the leader", however it comes: never an answer from the old state.
    fn refused<T>(answer: &Result<T, MetaClientError>) -> bool {
        matches!(
            answer,
            Err(MetaClientError::Rpc(shardfs_rpc::Error::NotLeader { .. })
                | MetaClientError::Meta(MetaError::NotLeader(_) | MetaError::Unavailable(_)))
        )
    }

    let cluster = Cluster::start_group(3, 6, 4, 2);
    let mount = cluster.mount();
    std::fs::write(mount.join("before"), "before").unwrap();
    let old = cluster.leader();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Connected to the old leader alone while it still leads.
    let client = Arc::new(MetaClient::new(&cluster.replicas[old].addr, cluster.rpc_options()));
    let before = runtime.block_on(client.lookup(ROOT_INO, b"before", &Cred::ROOT));
    before.expect("the leader answers");
    cluster.signal_replica(old, SIGSTOP);
    let asked = runtime.spawn({
        let client = client.clone();
        async move { client.lookup(ROOT_INO, b"during", &Cred::ROOT).await }
    });
    let made = runtime.spawn({
        let client = client.clone();
        async move { client.make_dir(ROOT_INO, b"stale", 0o755, Cred::ROOT).await }
    });
    let new = cluster.leader();
    assert_ne!(new, old, "a frozen replica still leads");
    std::fs::write(mount.join("during"), "during").unwrap();
    cluster.signal_replica(old, SIGCONT);
    let asked = runtime.block_on(asked).unwrap();
    assert!(refused(&asked), "the thawed leader answered a read from its old state: {asked:?}");
    let made = runtime.block_on(made).unwrap();
    assert!(refused(&made), "the thawed leader answered a change: {made:?}");
    assert!(!mount.join("stale").exists(), "a change sent to the deposed leader was made");
    assert_eq!(std::fs::read_to_string(mount.join("during")).unwrap(), "during");
    shardfs_tests::eventually("the thawed replica to follow, caught up", || caught_up(&cluster));
    assert_eq!(cluster.leader(), new, "the thawed replica took the lead back");
}

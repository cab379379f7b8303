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

use shardfs_tests::{Cluster, Mount, eventually};

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
    std::fs::create_dir(&dir).map_err(failed("mkdir", &dir))?;
    let journal_path = dir.join("journal");
    let mut journal = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&journal_path)
        .map_err(failed("open", &journal_path))?;
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let timed = Instant::now();
        let name = dir.join(format!("f{i}"));
        let content = format!("file {i}\n").into_bytes();
        let mut file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&name)
            .map_err(failed("create", &name))?;
        file.write_all(&content).map_err(failed("write", &name))?;
        file.sync_all().map_err(failed("fsync", &name))?;
        drop(file);
        let sub = dir.join(format!("d{i}"));
        std::fs::create_dir(&sub).map_err(failed("mkdir", &sub))?;
        done.dirs.push(sub.clone());
        let moved = sub.join("moved");
        std::fs::rename(&name, &moved).map_err(failed("rename", &name))?;
        done.files.push((moved, content));
        if i % 3 == 2 {
            let (gone, _) = done.files.remove(done.files.len() - 2);
            std::fs::remove_file(&gone).map_err(failed("unlink", &gone))?;
            done.unlinked.push(gone);
        }
        writeln!(journal, "line {i}").map_err(failed("append", &journal_path))?;
        journal.sync_data().map_err(failed("fdatasync", &journal_path))?;
        done.appended += 1;
        increment_locked(&counter)?;
        done.counted += 1;
        done.slowest = done.slowest.max(timed.elapsed());
        i += 1;
        rounds.fetch_add(1, Ordering::SeqCst);
    }
    Ok(done)
}

/// Names the operation and path an error came from.
fn failed(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> std::io::Error {
    let path = path.to_owned();
    move |e| std::io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
}

/// Adds one to the number in `path` under an fcntl write lock on the whole file.
fn increment_locked(path: &Path) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(0)
        .open(path)
        .map_err(failed("open", path))?;
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as i16;
    lock.l_whence = libc::SEEK_SET as i16;
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLKW, &mut lock) } == -1 {
        return Err(failed("F_SETLKW", path)(std::io::Error::last_os_error()));
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(failed("read", path))?;
    let n: u64 = text.trim().parse().unwrap_or(0);
    file.rewind().map_err(failed("seek", path))?;
    file.set_len(0).map_err(failed("truncate", path))?;
    file.write_all(format!("{}\n", n + 1).as_bytes()).map_err(failed("write", path))?;
    file.sync_all().map_err(failed("fsync", path))?;
    lock.l_type = libc::F_UNLCK as i16;
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &mut lock) } == -1 {
        return Err(failed("F_UNLCK", path)(std::io::Error::last_os_error()));
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

/// The workload running on two mounts at once, each in its own directory.
struct Load<'a> {
    mounts: [&'a Mount; 2],
    dir: String,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    workers: Vec<std::thread::JoinHandle<std::io::Result<Done>>>,
}

impl<'a> Load<'a> {
    /// Starts the workload in `dir` plus `a` or `b` on each mount, and waits until it got
    /// going.
    fn start(mounts: [&'a Mount; 2], dir: &str) -> Load<'a> {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let workers = mounts
            .iter()
            .zip(["a", "b"])
            .map(|(mount, side)| {
                let dir = mount.join(&format!("{dir}{side}"));
                let counter = mount.join("counter");
                let (stop, rounds) = (stop.clone(), rounds.clone());
                std::thread::spawn(move || workload(dir, counter, stop, rounds))
            })
            .collect();
        let load = Load { mounts, dir: dir.to_string(), stop, rounds, workers };
        load.goes_on("the workload to get going");
        load
    }

    /// Waits for 10 more rounds of the workload (`what` names why, if they never come).
    fn goes_on(&self, what: &str) {
        let before = self.rounds.load(Ordering::SeqCst);
        eventually(what, || self.rounds.load(Ordering::SeqCst) >= before + 10);
    }

    /// Stops the workload: no operation failed or took longer than `bound`, and all it
    /// did is there, once. Returns how many increments of the counter it made.
    fn finish(self, bound: Duration) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let mut counted = 0;
        for ((worker, side), mount) in self.workers.into_iter().zip(["a", "b"]).zip(self.mounts) {
            let dir = &self.dir;
            let done = worker
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("{dir}: the workload on mount {side} failed: {e}"));
            assert!(
                done.slowest <= bound,
                "{dir}: an operation on mount {side} took {:?}",
                done.slowest
            );
            check(mount, &format!("{dir}{side}"), &done);
            counted += done.counted;
        }
        counted
    }
}

/// The shared counter the workloads increment under a lock, starting at 0.
fn start_counter(mount: &Mount) -> PathBuf {
    let counter = mount.join("counter");
    std::fs::write(&counter, "0\n").unwrap();
    counter
}

/// The counter's value: every increment made under the lock, once.
fn counter_value(counter: &Path) -> usize {
    std::fs::read_to_string(counter).unwrap().trim().parse().unwrap()
}

#[test]
fn mounts_go_on_through_the_loss_of_each_leader_in_turn() {
    let mut cluster = Cluster::start_group(3, 6, 4, 2);
    let (a, b) = (cluster.mount(), cluster.mount());
    let counter = start_counter(&a);
    let mut counted = 0;
    let mut killed = Vec::new();
    for round in 0..3 {
        let load = Load::start([&a, &b], &format!("r{round}"));
        let leader = cluster.leader();
        cluster.stop_replica(leader, nix::sys::signal::Signal::SIGKILL);
        killed.push(leader);
        load.goes_on("the workload to go on after the leader died");
        counted += load.finish(FAILOVER_BOUND);
        // The killed replica comes back as a follower, and the next round kills another.
        cluster.start_replica(leader);
        assert_ne!(cluster.leader(), leader, "a restarted replica does not take over");
    }
    println!("leaders killed in turn: {killed:?}");
    assert_eq!(counter_value(&counter), counted, "every increment under the lock counted once");
    // Every replica is back, one leads, and each has applied all the leader has.
    eventually("status to show three replicas caught up", || caught_up(&cluster));
    drop((a, b));
    // Files unlinked while open go once their mount's session has ended and they lingered.
    eventually("fsck --verify-data to find nothing wrong", || cluster.fsck_clean());
}

/// How far behind the leader a follower may be and count as caught up while a workload
/// runs: entries the leader appended a moment ago are still on their way.
const IN_FLIGHT: u64 = 64;

/// Whether `shardfs status` shows the group's three replicas, one leading, two following,
/// each having applied all the leader has (with no workload running).
fn caught_up(cluster: &Cluster) -> bool {
    caught_up_within(cluster, 0)
}

/// [`caught_up`], each within `lag` entries of the leader.
fn caught_up_within(cluster: &Cluster, lag: u64) -> bool {
    let out = cluster.command("shardfs").args(["status", "--json", &cluster.metad_addr]).output();
    let Ok(out) = out else { return false };
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let Some(replicas) = status["replicas"].as_array() else { return false };
    let roles: Vec<&str> = replicas.iter().filter_map(|r| r["state"]["role"].as_str()).collect();
    let lags: Vec<u64> = replicas.iter().filter_map(|r| r["lag"].as_u64()).collect();
    replicas.len() == 3
        && roles.iter().filter(|r| **r == "leader").count() == 1
        && roles.iter().filter(|r| **r == "follower").count() == 2
        && lags.len() == 3
        && lags.iter().all(|&l| l <= lag)
}

/// What replica `i` reports of itself in `shardfs status --json`.
fn replica_state(cluster: &Cluster, i: usize) -> serde_json::Value {
    let out = cluster.command("shardfs").args(["status", "--json", &cluster.metad_addr]).output();
    let status: serde_json::Value = serde_json::from_slice(&out.unwrap().stdout).unwrap();
    let addr = cluster.replicas[i].addr.as_str();
    let replicas = status["replicas"].as_array().expect("a replica table");
    let replica = replicas.iter().find(|r| r["addr"] == addr).expect("the replica listed");
    replica["state"].clone()
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
    eventually("the thawed replica to follow, caught up", || caught_up(&cluster));
    assert_eq!(cluster.leader(), new, "the thawed replica took the lead back");
}

/// Each replica restarted in turn (SIGTERM, as an upgrade does), the next only once the
/// group is whole again, while both mounts run the workload: no operation fails.
#[test]
fn a_rolling_restart_under_load_fails_no_operation() {
    let mut cluster = Cluster::start_group(3, 6, 4, 2);
    let (a, b) = (cluster.mount(), cluster.mount());
    let counter = start_counter(&a);
    let load = Load::start([&a, &b], "rolling");
    for replica in 0..3 {
        cluster.stop_replica(replica, nix::sys::signal::Signal::SIGTERM);
        cluster.start_replica(replica);
        let restarted = || caught_up_within(&cluster, IN_FLIGHT);
        eventually("the restarted replica to catch up", restarted);
        load.goes_on("the workload to go on after a restart");
    }
    // Bounded only by the clients' failover time: nothing may fail.
    let counted = load.finish(Duration::from_secs(30));
    assert_eq!(counter_value(&counter), counted, "every increment under the lock counted once");
    drop((a, b));
    eventually("fsck --verify-data to find nothing wrong", || cluster.fsck_clean());
}

/// A replica whose data directory is lost comes back empty; the leader's log was cut behind
/// a snapshot meanwhile, so the leader sends it the snapshot, and it is caught up.
#[test]
fn a_wiped_replica_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::start_group_with(3, 3, 2, 1, &["--snapshot-every", "50"]);
    let mount = cluster.mount();
    let leader = cluster.leader();
    let wiped = (0..3).find(|&i| i != leader).unwrap();
    cluster.stop_replica(wiped, nix::sys::signal::Signal::SIGKILL);
    std::fs::remove_dir_all(cluster.replica_dir(wiped)).unwrap();
    for i in 0..100 {
        std::fs::write(mount.join(&format!("f{i}")), i.to_string()).unwrap();
    }
    eventually("the leader's log to be cut behind a snapshot", || {
        replica_state(&cluster, leader)["purged_index"].as_u64().is_some_and(|p| p > 0)
    });
    cluster.start_replica(wiped);
    eventually("the wiped replica to catch up", || caught_up(&cluster));
    let wiped_state = replica_state(&cluster, wiped);
    assert!(
        wiped_state["snapshot_index"].as_u64().is_some_and(|s| s > 0),
        "the wiped replica caught up without a snapshot: {wiped_state}"
    );
    for i in 0..100 {
        assert_eq!(std::fs::read_to_string(mount.join(&format!("f{i}"))).unwrap(), i.to_string());
    }
}

/// A mount whose leader is cut off (frozen) stops serving what its leases cached before a
/// new leader can let another mount change it: mount A has read a file (its kernel caches
/// the content under A's read lease), the leader freezes, mount B (given only the other
/// replicas) rewrites the file through the new leader, and A then reads the new content.
#[test]
fn a_mount_cut_off_with_its_leader_serves_nothing_stale() {
    use nix::sys::signal::Signal::{SIGCONT, SIGSTOP};

    let cluster = Cluster::start_group(3, 3, 2, 1);
    let a = cluster.mount();
    std::fs::write(a.join("shared"), "old").unwrap();
    assert_eq!(std::fs::read_to_string(a.join("shared")).unwrap(), "old");
    let old = cluster.leader();
    cluster.signal_replica(old, SIGSTOP);
    let others: Vec<&str> =
        (0..3).filter(|&i| i != old).map(|i| cluster.replicas[i].addr.as_str()).collect();
    let b = cluster.mount_via(&others.join(","), &[]);
    std::fs::write(b.join("shared"), "new!").unwrap();
    let seen = std::fs::read_to_string(a.join("shared")).unwrap();
    cluster.signal_replica(old, SIGCONT);
    assert_eq!(seen, "new!", "mount A served its cache after the leader was cut off");
}

/// `shardfs metad members --json` asked of `addrs`: every replica the group knows.
fn members(cluster: &Cluster, addrs: &str) -> Vec<serde_json::Value> {
    let mut command = cluster.command("shardfs");
    command.args(["metad", "members", "--json", "--metad", addrs]);
    let out = command.output().expect("run shardfs metad members");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Whether `members` lists `voters` voters and `learners` learners, one leading, each
/// within `lag` entries of the leader.
fn settled(members: &[serde_json::Value], voters: usize, learners: usize, lag: u64) -> bool {
    let listed = |voter: bool| members.iter().filter(|m| m["voter"] == voter).count();
    let leaders = members.iter().filter(|m| m["state"]["role"] == "leader").count();
    let within = |m: &&serde_json::Value| m["lag"].as_u64().is_some_and(|l| l <= lag);
    listed(true) == voters
        && listed(false) == learners
        && leaders == 1
        && members.iter().filter(|m| !m["voter"].is_null()).all(|m| within(&m))
}

/// A replica added while a mount works joins as a learner, catches up and votes; removing
/// the leader itself then hands the lead to another. The workload sees no error, and the
/// group ends with the three replicas it was left with.
#[test]
fn replicas_are_added_and_removed_while_mounts_work() {
    let mut cluster = Cluster::start_group(3, 3, 2, 1);
    let (a, b) = (cluster.mount(), cluster.mount());
    let counter = start_counter(&a);
    let load = Load::start([&a, &b], "members");
    let added = cluster.add_replica(false);
    let all = cluster.metad_addr.clone();
    eventually("four voters, caught up", || settled(&members(&cluster, &all), 4, 0, IN_FLIGHT));
    load.goes_on("the workload to go on after a replica was added");
    let leader = cluster.leader();
    let leader_addr = cluster.replicas[leader].addr.clone();
    let mut remove = cluster.command("shardfs");
    remove.args(["metad", "remove", &leader_addr, "--metad", &all]);
    let removed = remove.output().unwrap();
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    eventually("three voters without the old leader, one leading", || {
        let now = members(&cluster, &all);
        settled(&now, 3, 0, IN_FLIGHT)
            && !now.iter().any(|m| m["addr"] == leader_addr && !m["voter"].is_null())
    });
    cluster.stop_replica(leader, nix::sys::signal::Signal::SIGTERM);
    assert_ne!(cluster.leader(), leader);
    load.goes_on("the workload to go on after the leader was removed");
    let counted = load.finish(FAILOVER_BOUND);
    assert_eq!(counter_value(&counter), counted, "every increment under the lock counted once");
    println!("added replica {added}, removed replica {leader} (the leader)");
    // A replica that is not there is not added: one line says why.
    let mut add = cluster.command("shardfs");
    add.args(["metad", "add", "127.0.0.1:1", "--metad", &all]);
    let absent = add.output().unwrap();
    let stderr = String::from_utf8_lossy(&absent.stderr);
    assert!(!absent.status.success() && stderr.contains("cannot reach 127.0.0.1:1"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    drop((a, b));
    eventually("fsck --verify-data to find nothing wrong", || cluster.fsck_clean());
}

/// Disaster recovery: a learner (the copy in another zone) follows the group; once every
/// voter is lost, `shardfs metad promote` makes it a group of one with all it had
/// applied, which mounts serve from and fsck finds whole. Promotion is refused while a
/// voter answers.
#[test]
fn a_learner_promoted_after_every_voter_is_lost_has_what_it_applied() {
    let mut cluster = Cluster::start_group(3, 6, 4, 2);
    let learner = cluster.add_replica(true);
    let learner_addr = cluster.replicas[learner].addr.clone();
    // The chunkds are told of the learner too, as a DR zone's would be.
    for i in 0..6 {
        cluster.stop_chunkd(i, nix::sys::signal::Signal::SIGTERM);
        cluster.start_chunkd(i);
    }
    cluster.wait_chunkds_up();
    let mount = cluster.mount();
    let mut written = Vec::new();
    for i in 0..40 {
        let path = mount.join(&format!("d{}/f{i}", i % 4));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let content = shardfs_tests::random_bytes(1000 + i * 3000, i as u64);
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(&content).unwrap();
        file.sync_all().unwrap();
        written.push((format!("d{}/f{i}", i % 4), content));
    }
    let all = cluster.metad_addr.clone();
    eventually("the learner to have applied everything", || {
        settled(&members(&cluster, &all), 3, 1, 0)
    });
    let refused = cluster.command("shardfs").args(["metad", "promote", &learner_addr]).output();
    let refused = refused.unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("still answers"), "{stderr}");
    drop(mount);
    for voter in 0..3 {
        cluster.stop_replica(voter, nix::sys::signal::Signal::SIGKILL);
    }
    let promoted = cluster.command("shardfs").args(["metad", "promote", &learner_addr]).output();
    let promoted = promoted.unwrap();
    assert!(promoted.status.success(), "{}", String::from_utf8_lossy(&promoted.stderr));
    let now = members(&cluster, &learner_addr);
    assert!(settled(&now, 1, 0, 0), "the learner leads a group of one: {now:?}");
    cluster.wait_chunkds_up();
    let mount = cluster.mount_via(&learner_addr, &[]);
    for (path, content) in &written {
        assert_eq!(&std::fs::read(mount.join(path)).unwrap(), content, "{path} after promotion");
    }
    std::fs::write(mount.join("after"), "written to the promoted group").unwrap();
    drop(mount);
    let fsck = cluster.command("shardfs").args(["fsck", &learner_addr, "--verify-data"]).output();
    let fsck = fsck.unwrap();
    assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stdout));
}

//! One client holding or asking for too much cannot stop metad from serving the others:
//! opens are capped per session, leases past a session's limit are recalled, and a flood of
//! requests on many connections only slows the others down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shardfs_chunk_api::ChunkId;
use shardfs_meta_api::proto::{ChunkToWrite, Cred, MetaError, MetaPush, ROOT_INO};
use shardfs_meta_api::{MetaClient, MetaClientError, SessionEvents};
use shardfs_tests::{Cluster, READY_TIMEOUT, eventually};

/// A session's events from a client that ignores every recall.
struct Deaf;

impl SessionEvents for Deaf {
    fn pushed(&self, _: MetaPush) {}
    fn session_started(&self, _: u64) {}
    fn connection_lost(&self) {}
}

/// What a mount does to show it is being served: create, write, list, read back, delete.
fn ordinary_work(dir: &std::path::Path, round: usize) {
    let path = dir.join(format!("work-{round}"));
    std::fs::write(&path, format!("round {round}\n")).unwrap();
    assert!(std::fs::read_dir(dir).unwrap().count() > 0);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("round {round}\n"));
    std::fs::remove_file(&path).unwrap();
}

/// Runs `ordinary_work` in `dir` on another thread until the returned flag is set; the
/// thread returns how many rounds it did.
fn keep_working(dir: std::path::PathBuf) -> (Arc<AtomicBool>, std::thread::JoinHandle<usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let worker = std::thread::spawn(move || {
        let mut rounds = 0;
        while !flag.load(Ordering::Relaxed) {
            ordinary_work(&dir, rounds);
            rounds += 1;
        }
        rounds
    });
    (stop, worker)
}

#[test]
fn a_session_holding_100k_opens_is_refused_more_while_others_are_served() {
    let limits = ["--max-open-files-per-session", "100000", "--max-leases-per-session", "500"];
    let cluster = Cluster::start_with(3, 2, 1, &limits);
    let mount = cluster.mount();
    let work = mount.join("work");
    std::fs::create_dir(&work).unwrap();
    let hostile = Arc::new(MetaClient::with_session(
        &cluster.metad_addr,
        cluster.rpc_options(),
        "hostile".into(),
        Arc::new(Deaf),
    ));
    let (stop, worker) = keep_working(work.clone());
    // 1,000 files, each opened 100 times, 64 requests at a time; recalls go unanswered.
    let files = cluster.query(async |_| {
        let mut files = Vec::new();
        for i in 0..1000 {
            let name = format!("held-{i}");
            let mode = libc::S_IFREG | 0o644;
            let attr = hostile.make_node(ROOT_INO, name.as_bytes(), mode, 0, Cred::ROOT).await;
            files.push(attr.unwrap().attr.ino);
        }
        let mut opens = tokio::task::JoinSet::<Result<(), MetaClientError>>::new();
        for &ino in files.iter().cycle().take(100_000) {
            if opens.len() >= 64 {
                opens.join_next().await.unwrap().unwrap().unwrap();
            }
            let hostile = hostile.clone();
            opens.spawn(async move { hostile.open_file(ino).await.map(drop) });
        }
        while let Some(open) = opens.join_next().await {
            open.unwrap().unwrap();
        }
        files
    });
    stop.store(true, Ordering::Relaxed);
    let rounds = worker.join().expect("the mount was served throughout");
    assert!(rounds > 0);
    cluster.query(async |c| {
        // One open more is refused, with ENFILE's error; after a close there is room again.
        match hostile.open_file(files[0]).await {
            Err(MetaClientError::Meta(MetaError::TooManyOpenFiles(100_000))) => {}
            other => panic!("open past the limit: {other:?}"),
        }
        hostile.release_file(files[0]).await.unwrap();
        hostile.open_file(files[1]).await.unwrap();
        // Past 500 leases, the session was asked to give back its oldest ones.
        let status = c.workers().await.unwrap();
        assert!(status.leases_recalled >= 500, "{status:?}");
    });
    // Other sessions are not held to the hostile one's count.
    std::fs::write(work.join("mine"), "mine\n").unwrap();
    let held: Vec<std::fs::File> =
        (0..100).map(|_| std::fs::File::open(work.join("mine")).unwrap()).collect();
    drop(held);
    ordinary_work(&work, usize::MAX);
}

#[test]
fn a_session_preparing_writes_it_never_commits_is_refused_past_its_limit() {
    let cluster = Cluster::start_with(3, 2, 1, &["--max-prepared-chunks-per-session", "1000"]);
    let mount = cluster.mount();
    let hostile = MetaClient::with_session(
        &cluster.metad_addr,
        cluster.rpc_options(),
        "hostile".into(),
        Arc::new(Deaf),
    );
    let chunk = |i: u32| ChunkToWrite { chunk: ChunkId::of(&i.to_be_bytes()), len: 4 };
    cluster.query(async |_| {
        for batch in 0..10 {
            let chunks = (batch * 100..(batch + 1) * 100).map(chunk).collect();
            hostile.prepare_write(ROOT_INO, chunks, Vec::new()).await.unwrap();
        }
        // The same chunks again take no more room; one chunk more is refused, clearly.
        hostile.prepare_write(ROOT_INO, (0..100).map(chunk).collect(), Vec::new()).await.unwrap();
        match hostile.prepare_write(ROOT_INO, vec![chunk(1000)], Vec::new()).await {
            Err(MetaClientError::Meta(MetaError::Unavailable(why))) => {
                assert!(why.contains("1000 chunks prepared and not committed"), "{why}")
            }
            other => panic!("a prepare past the limit: {other:?}"),
        }
    });
    // Others are not held to its count: the mount writes and reads on.
    ordinary_work(&mount.path, 0);
    std::fs::write(mount.join("big"), vec![7u8; 3 << 20]).unwrap();
    assert_eq!(std::fs::read(mount.join("big")).unwrap().len(), 3 << 20);
}

#[test]
fn a_mount_walking_a_big_tree_gives_back_leases_past_its_limit() {
    let cluster = Cluster::start_with(3, 2, 1, &["--max-leases-per-session", "200"]);
    let mount = cluster.mount();
    let tree = mount.join("tree");
    std::fs::create_dir(&tree).unwrap();
    for i in 0..1000 {
        std::fs::write(tree.join(format!("f{i}")), format!("{i}\n")).unwrap();
    }
    for i in 0..1000 {
        assert_eq!(std::fs::read_to_string(tree.join(format!("f{i}"))).unwrap(), format!("{i}\n"));
    }
    let held = || cluster.query(async |c| c.workers().await.unwrap().leases_held);
    eventually("the mount to hold at most 200 leases", || held() <= 200);
    // What it gave back it no longer caches: another mount's change is seen.
    let other = cluster.mount();
    std::fs::write(other.join("tree/f0"), "changed\n").unwrap();
    assert_eq!(std::fs::read_to_string(tree.join("f0")).unwrap(), "changed\n");
    assert_eq!(std::fs::read_dir(&tree).unwrap().count(), 1000);
}

#[test]
fn a_flood_of_requests_on_many_connections_waits_its_turns() {
    let cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount();
    let work = mount.join("work");
    std::fs::create_dir(&work).unwrap();
    for i in 0..100 {
        std::fs::write(mount.join(&format!("listed-{i}")), "x").unwrap();
    }
    let flooding = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // 32 connections, each keeping 128 listings of a 100-entry directory in flight.
    let flood = {
        let (addr, rpc) = (cluster.metad_addr.clone(), cluster.rpc_options());
        let (flooding, sent) = (flooding.clone(), sent.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let mut tasks = tokio::task::JoinSet::new();
                for _ in 0..32 {
                    let client = Arc::new(MetaClient::new(&addr, rpc));
                    for _ in 0..128 {
                        let (client, flooding, sent) =
                            (client.clone(), flooding.clone(), sent.clone());
                        tasks.spawn(async move {
                            while flooding.load(Ordering::Relaxed) {
                                client.read_dir(ROOT_INO, 0, 1000, &Cred::ROOT).await.unwrap();
                                sent.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    }
                }
                while let Some(task) = tasks.join_next().await {
                    task.unwrap();
                }
            })
        })
    };
    eventually("the flood to get going", || sent.load(Ordering::Relaxed) > 1000);
    let (started, before) = (Instant::now(), sent.load(Ordering::Relaxed));
    for round in 0..10 {
        ordinary_work(&work, round);
    }
    let (took, during) = (started.elapsed(), sent.load(Ordering::Relaxed) - before);
    flooding.store(false, Ordering::Relaxed);
    flood.join().expect("every flooding request was answered");
    println!("10 rounds of work took {took:?} while {during} flooding listings were answered");
    // Connections take turns at metad, so each of the mount's requests waits behind about
    // one request per flooding connection (some 6,000 for its ~60 requests), not behind
    // everything the flood has in flight (4,096 at a time, over 200,000 in all before turns).
    assert!(during < 60_000, "the mount waited behind {during} flooding requests");
}

/// Waiting lock requests do not hold turns at metad: more waiters than metad runs requests
/// at once still leave room for the unlock they wait for.
#[test]
fn a_thousand_waiting_locks_hold_no_threads_and_up_no_one() {
    use shardfs_meta_api::proto::{HeldLock, LockKind};
    let cluster = Cluster::start(3, 2, 1);
    let pid = cluster.one_metad_pid();
    let metad_threads = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("Threads:")).unwrap().to_owned();
        line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap()
    };
    cluster.query(async |c| {
        let ino = c
            .make_node(ROOT_INO, b"locked", libc::S_IFREG | 0o644, 0, Cred::ROOT)
            .await
            .unwrap()
            .attr
            .ino;
        let whole = HeldLock { start: 0, end: u64::MAX, kind: LockKind::Write, pid: 1 };
        c.set_lock(ino, 0, whole, false).await.unwrap();
        let before = metad_threads();
        // 1,000 F_SETLKW waiters, over 10 connections (each carries up to 128 at once).
        let connections: Vec<_> = (0..10)
            .map(|_| Arc::new(MetaClient::new(&cluster.metad_addr, cluster.rpc_options())))
            .collect();
        let mut waiters = tokio::task::JoinSet::new();
        for owner in 1..=1000u64 {
            let others = connections[owner as usize % connections.len()].clone();
            waiters.spawn(async move {
                others.set_lock(ino, owner, whole, true).await.unwrap();
                others.unlock(ino, owner, (0, u64::MAX)).await.unwrap();
            });
        }
        // Time for all of them to queue up behind the lock (there is nothing to poll for:
        // a waiter shows nowhere). They wait as tasks: metad's threads stay few, and
        // another client is served at once meanwhile.
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A thread parked per waiter would use up metad's blocking threads (64, see
        // `daemon::MAX_BLOCKING_THREADS`): the request below and the unlock would never be
        // served. Requests that come and go leave some idle threads (up to that bound).
        let threads = metad_threads();
        assert!(threads < before + 256, "{threads} threads for 1,000 waiters, {before} before");
        let started = Instant::now();
        c.get_attr(ROOT_INO).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        c.unlock(ino, 0, (0, u64::MAX)).await.unwrap();
        let all = async {
            while let Some(waiter) = waiters.join_next().await {
                waiter.unwrap();
            }
        };
        tokio::time::timeout(READY_TIMEOUT, all).await.expect("every waiter got the lock in turn");
    });
}

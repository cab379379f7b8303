//! Client sessions: what a mount holds in metad (locks, open files) outlives its
//! connection until the session expires, and no longer.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use shardfs_tests::Cluster;

fn write_lock(fd: i32) -> i32 {
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as i16;
    lock.l_whence = libc::SEEK_SET as i16;
    if unsafe { libc::fcntl(fd, libc::F_SETLK, &mut lock) } == -1 {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    } else {
        0
    }
}

#[test]
fn a_dead_mounts_locks_and_open_files_last_until_its_session_expires() {
    let timeout = Duration::from_secs(2);
    let cluster = Cluster::start_with(3, 2, 1, &["--session-timeout", "2"]);
    let (a, b) = (cluster.mount(), cluster.mount());
    // Written through B: a write lease A died with would hold up every read of the file
    // until A's session expired, which is not what this test is about.
    std::fs::write(b.join("locked"), b"x").unwrap();
    std::fs::write(b.join("doomed"), b"y").unwrap();
    let open = |path| OpenOptions::new().read(true).write(true).open(path).unwrap();
    // Mount A holds a lock, and an unlinked file open.
    let held = open(a.join("locked"));
    assert_eq!(write_lock(held.as_raw_fd()), 0);
    let doomed = open(a.join("doomed"));
    let doomed_ino = doomed.metadata().unwrap().ino();
    std::fs::remove_file(a.join("doomed")).unwrap();
    // A's client dies without a word.
    let died = Instant::now();
    a.crash();
    let on_b = open(b.join("locked"));
    assert_eq!(write_lock(on_b.as_raw_fd()), libc::EAGAIN, "the lock outlives the connection");
    assert!(cluster.query(async |c| c.get_attr(doomed_ino).await).is_ok(), "still open");
    // Once the session expires, both are released.
    let deadline = died + timeout + Duration::from_secs(10);
    while write_lock(on_b.as_raw_fd()) != 0 {
        assert!(Instant::now() < deadline, "the lock was never released");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(died.elapsed() >= timeout, "released before the session expired");
    while cluster.query(async |c| c.get_attr(doomed_ino).await).is_ok() {
        assert!(Instant::now() < deadline, "the unlinked file was never released");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop((held, doomed));
}

#[test]
fn an_idle_mount_keeps_its_session_with_heartbeats() {
    let cluster = Cluster::start_with(3, 2, 1, &["--session-timeout", "1"]);
    let (a, b) = (cluster.mount(), cluster.mount());
    std::fs::write(a.join("locked"), b"x").unwrap();
    let held = OpenOptions::new().write(true).open(a.join("locked")).unwrap();
    assert_eq!(write_lock(held.as_raw_fd()), 0);
    // Well past the timeout with no request from A: heartbeats keep its lock.
    std::thread::sleep(Duration::from_secs(3));
    let on_b = OpenOptions::new().write(true).open(b.join("locked")).unwrap();
    assert_eq!(write_lock(on_b.as_raw_fd()), libc::EAGAIN);
}

//! fcntl and flock locks live in metad: they hold across mounts and die with their owner.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use shardfs_tests::{Cluster, eventually};

fn fcntl_lock(fd: i32, cmd: i32, typ: i32, start: i64, len: i64) -> (i32, libc::flock) {
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = typ as i16;
    lock.l_whence = libc::SEEK_SET as i16;
    lock.l_start = start;
    lock.l_len = len;
    let result = unsafe { libc::fcntl(fd, cmd, &mut lock) };
    let errno =
        if result == -1 { std::io::Error::last_os_error().raw_os_error().unwrap() } else { 0 };
    (errno, lock)
}

#[test]
fn fcntl_locks_hold_across_mounts_and_go_with_close() {
    let cluster = Cluster::start(3, 2, 1);
    let (a, b) = (cluster.mount(), cluster.mount());
    std::fs::write(a.join("f"), b"0123456789").unwrap();
    let on_a = OpenOptions::new().read(true).write(true).open(a.join("f")).unwrap();
    let on_b = OpenOptions::new().read(true).write(true).open(b.join("f")).unwrap();
    // A write-locks bytes [0, 5).
    assert_eq!(fcntl_lock(on_a.as_raw_fd(), libc::F_SETLK, libc::F_WRLCK, 0, 5).0, 0);
    // B cannot lock them, and F_GETLK names the holder's range and kind.
    let (errno, _) = fcntl_lock(on_b.as_raw_fd(), libc::F_SETLK, libc::F_RDLCK, 4, 1);
    assert_eq!(errno, libc::EAGAIN);
    let (errno, seen) = fcntl_lock(on_b.as_raw_fd(), libc::F_GETLK, libc::F_WRLCK, 0, 0);
    assert_eq!(errno, 0);
    assert_eq!((seen.l_type as i32, seen.l_start, seen.l_len), (libc::F_WRLCK, 0, 5));
    assert_eq!(seen.l_pid as u32, std::process::id());
    // Bytes after the locked range are free.
    assert_eq!(fcntl_lock(on_b.as_raw_fd(), libc::F_SETLK, libc::F_WRLCK, 5, 5).0, 0);
    // Closing A's descriptor releases A's locks.
    drop(on_a);
    assert_eq!(fcntl_lock(on_b.as_raw_fd(), libc::F_SETLK, libc::F_WRLCK, 0, 5).0, 0);
    let (_, seen) = fcntl_lock(on_b.as_raw_fd(), libc::F_GETLK, libc::F_WRLCK, 0, 0);
    assert_eq!(seen.l_type as i32, libc::F_UNLCK, "own locks never conflict");
}

#[test]
fn an_fcntl_lock_on_one_mount_blocks_another_until_its_process_exits() {
    let cluster = Cluster::start(3, 2, 1);
    let (a, b) = (cluster.mount(), cluster.mount());
    std::fs::write(a.join("f"), b"0123456789").unwrap();
    let path = std::ffi::CString::new(a.join("f").into_os_string().into_encoded_bytes()).unwrap();
    let (ready_read, ready_write) = nix::unistd::pipe().unwrap();
    // A child process locks the file through mount A and then waits to be killed. It only
    // makes system calls, which is all a forked child of a threaded process may do.
    let child = match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDWR);
            let locked = fcntl_lock(fd, libc::F_SETLK, libc::F_WRLCK, 0, 0).0 == 0;
            libc::write(ready_write.as_raw_fd(), [u8::from(locked)].as_ptr().cast(), 1);
            loop {
                libc::pause();
            }
        },
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(ready_write);
    let mut locked = [0u8];
    nix::unistd::read(&ready_read, &mut locked).unwrap();
    assert_eq!(locked, [1], "the child took the lock");
    let on_b = OpenOptions::new().read(true).write(true).open(b.join("f")).unwrap();
    assert_eq!(fcntl_lock(on_b.as_raw_fd(), libc::F_SETLK, libc::F_RDLCK, 3, 1).0, libc::EAGAIN);
    nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL).unwrap();
    nix::sys::wait::waitpid(child, None).unwrap();
    // The holder's exit closed its descriptor, which released its lock on every mount.
    eventually("the lock to go with its process", || {
        fcntl_lock(on_b.as_raw_fd(), libc::F_SETLK, libc::F_WRLCK, 0, 0).0 == 0
    });
}

/// A command in its own process group, killed with its children on drop.
struct Group(std::process::Child);

impl Group {
    fn spawn(command: &mut Command) -> Group {
        use std::os::unix::process::CommandExt;
        Group(command.process_group(0).spawn().unwrap())
    }

    fn kill(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn flock_across_mounts_blocks_waiters_and_dies_with_its_process() {
    let cluster = Cluster::start(3, 2, 1);
    let (a, b) = (cluster.mount(), cluster.mount());
    std::fs::write(a.join("f"), b"").unwrap();
    let (on_a, on_b) = (a.join("f"), b.join("f"));
    // A process on mount A holds an exclusive flock (shared with its child, the shell).
    let mut holder = Group::spawn(
        Command::new("flock")
            .arg("-x")
            .arg(&on_a)
            .args(["-c", "echo locked; exec sleep 600"])
            .stdout(Stdio::piped()),
    );
    let mut line = String::new();
    let stdout = holder.0.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    assert_eq!(line, "locked\n");
    // A non-blocking attempt on mount B fails; a blocking one waits.
    let try_b = Command::new("flock").arg("-n").arg(&on_b).arg("true").status().unwrap();
    assert!(!try_b.success());
    let mut waiter = Group::spawn(Command::new("flock").arg("-x").arg(&on_b).arg("true"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(waiter.0.try_wait().unwrap().is_none(), "waiter must block while A holds the lock");
    // Killing the holder (the last process with the file open) releases the lock: the
    // waiter gets it and finishes.
    holder.kill();
    let mut status = None;
    eventually("the waiting flock to get the lock", || {
        status = waiter.0.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success());
}

#[test]
fn ofd_locks_belong_to_the_open_file_and_go_with_its_last_close() {
    let cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount();
    std::fs::write(mount.join("f"), b"0123456789").unwrap();
    let open = || OpenOptions::new().read(true).write(true).open(mount.join("f")).unwrap();
    let (first, second) = (open(), open());
    assert_eq!(fcntl_lock(first.as_raw_fd(), libc::F_OFD_SETLK, libc::F_WRLCK, 0, 0).0, 0);
    // Two open files of one process conflict, unlike classic fcntl locks.
    let (errno, _) = fcntl_lock(second.as_raw_fd(), libc::F_OFD_SETLK, libc::F_RDLCK, 3, 1);
    assert_eq!(errno, libc::EAGAIN);
    // Closing a duplicate descriptor keeps the lock: the open file is still open.
    drop(first.try_clone().unwrap());
    let (errno, _) = fcntl_lock(second.as_raw_fd(), libc::F_OFD_SETLK, libc::F_RDLCK, 3, 1);
    assert_eq!(errno, libc::EAGAIN);
    // The last close releases it.
    drop(first);
    eventually("the OFD lock to go with its open file", || {
        fcntl_lock(second.as_raw_fd(), libc::F_OFD_SETLK, libc::F_WRLCK, 0, 0).0 == 0
    });
}

#[test]
fn locks_and_files_open_after_unlink_outlive_a_metad_restart() {
    outlive(Cluster::start(3, 2, 1), |cluster, signal| cluster.restart_metad(signal));
}

/// The same across a change of leader in a group of three metad replicas: the leader is
/// stopped, another takes over, and the old one comes back as a follower.
#[test]
fn locks_and_files_open_after_unlink_outlive_a_change_of_leader() {
    outlive(Cluster::start_group(3, 3, 2, 1), |cluster, signal| {
        let leader = cluster.leader();
        cluster.stop_replica(leader, signal);
        cluster.start_replica(leader);
    });
}

/// Locks taken and a file unlinked while open on mount A hold through `metad_goes`, which
/// stops metad with the signal it is given (SIGTERM, then SIGKILL) and brings it back.
fn outlive(mut cluster: Cluster, metad_goes: impl Fn(&mut Cluster, nix::sys::signal::Signal)) {
    let (a, b) = (cluster.mount(), cluster.mount());
    for name in ["locked", "flocked"] {
        std::fs::write(a.join(name), b"0123456789").unwrap();
    }
    std::fs::write(a.join("doomed"), b"still here").unwrap();
    let open = |mount: &shardfs_tests::Mount, name: &str| {
        OpenOptions::new().read(true).write(true).open(mount.join(name)).unwrap()
    };
    let (on_a, on_b) = (open(&a, "locked"), open(&b, "locked"));
    let (flock_a, flock_b) = (open(&a, "flocked"), open(&b, "flocked"));
    assert_eq!(fcntl_lock(on_a.as_raw_fd(), libc::F_SETLK, libc::F_WRLCK, 0, 5).0, 0);
    assert_eq!(unsafe { libc::flock(flock_a.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) }, 0);
    let mut doomed = std::fs::File::open(a.join("doomed")).unwrap();
    std::fs::remove_file(b.join("doomed")).unwrap();
    for signal in [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGKILL] {
        metad_goes(&mut cluster, signal);
        // A's locks hold: B is refused, once its mount is back in touch with metad.
        let refused = |what: &str, errno: i32| assert_eq!(errno, libc::EAGAIN, "{what}");
        eventually("B to be served again", || std::fs::metadata(b.join("locked")).is_ok());
        refused("fcntl", fcntl_lock(on_b.as_raw_fd(), libc::F_SETLK, libc::F_RDLCK, 4, 1).0);
        let flock = unsafe { libc::flock(flock_b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        refused("flock", if flock == 0 { 0 } else { libc::EAGAIN });
        // The file unlinked while A has it open is still A's to read.
        let mut text = String::new();
        std::io::Seek::rewind(&mut doomed).unwrap();
        std::io::Read::read_to_string(&mut doomed, &mut text).unwrap();
        assert_eq!(text, "still here");
    }
    // Once A lets go, B gets them: the fcntl lock at once (it goes at close), the flock once
    // A's kernel has told its mount of the last close (after close(2) returned).
    drop((on_a, flock_a));
    assert_eq!(fcntl_lock(on_b.as_raw_fd(), libc::F_SETLK, libc::F_WRLCK, 0, 10).0, 0);
    eventually("A's flock to go with its last close", || unsafe {
        libc::flock(flock_b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0
    });
    drop(doomed);
}

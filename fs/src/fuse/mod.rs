//! The FUSE adapter: converts kernel requests into calls on [`Fs`] and results into replies.
//!
//! Each request is answered from a tokio task, so a slow chunkd never stalls the threads
//! reading from /dev/fuse. Every path replies exactly once: a reply object that is dropped
//! unanswered would itself answer EIO.
//!
//! - [`filesystem`]: the `Filesystem` implementation: one method per kernel request, each a
//!   call into the core and its reply.
//! - [`convert`]: kernel types to the core's and back.
//! - [`ioctls`]: the ioctls answered, decoded.

mod convert;
mod filesystem;
mod ioctls;

use std::future::Future;
use std::sync::Arc;

use fuser::{
    Errno, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyIoctl, ReplyLock, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
};
use tokio::runtime::Handle;
use tracing::{debug, warn};

/// Logs of requests answered EIO, one per interval.
static EIO_LOG: shardfs_rpc::throttle::Throttle =
    shardfs_rpc::throttle::Throttle::new(std::time::Duration::from_secs(5));

use crate::core::Fs;
use crate::error::FsResult;

/// Largest write the kernel may send in one request.
const MAX_WRITE: u32 = 1024 * 1024;
/// `st_blksize`: the I/O size tools like cp and dd prefer.
const PREFERRED_IO_SIZE: u32 = 128 * 1024;
/// Directory entries fetched from metad per readdir request.
const READDIR_BATCH: u32 = 512;

pub struct FuseAdapter {
    fs: Arc<Fs>,
    runtime: Handle,
    /// Mounted read-only (`ro`): FITRIM is refused, as on a local disk.
    read_only: bool,
}

impl FuseAdapter {
    pub fn new(fs: Arc<Fs>, runtime: Handle, read_only: bool) -> FuseAdapter {
        FuseAdapter { fs, runtime, read_only }
    }

    /// Runs `op` and answers with `ok` or the error's errno (EIO once the mount is shut
    /// down): right here on the thread that
    /// read the request if `op` completes without waiting (a getattr from the lease cache,
    /// a buffered write), else on a task, so nothing that waits holds this thread.
    fn spawn<T, R, F>(
        &self,
        name: &'static str,
        reply: R,
        op: impl FnOnce(Arc<Fs>) -> F + Send + 'static,
        ok: impl FnOnce(R, T) + Send + 'static,
    ) where
        T: Send + 'static,
        R: ErrorReply + Send + 'static,
        F: Future<Output = FsResult<T>> + Send + 'static,
    {
        let fs = self.fs.clone();
        // A mount shut down answers nothing (but the shutdown that finds it so).
        if fs.is_shut_down() && name != "shutdown" {
            return reply.error(Errno::EIO);
        }
        let started = std::time::Instant::now();
        let mut answer = Box::pin(async move {
            let result = op(fs.clone()).await;
            fs.metrics().fuse_ops.record(name, result.is_ok(), started.elapsed());
            match result {
                Ok(value) => ok(reply, value),
                Err(e) => {
                    let errno = Errno::from(&e);
                    // An I/O error is a failure the application sees: say why, at most
                    // every few seconds.
                    match errno == Errno::EIO {
                        true => {
                            if let Some(held_back) = EIO_LOG.admit() {
                                warn!(op = name, held_back, "answered EIO: {e}");
                            }
                        }
                        false => debug!(op = name, "{e}"),
                    }
                    reply.error(errno);
                }
            }
        });
        // Handing every request to a task cost a thread wake-up per request (see
        // docs/performance.md). A first poll that finds the answer waiting skips it. Its
        // waker is a no-op: a future left pending is polled again by its task, which then
        // registers the task's own waker, so no wake-up is lost.
        let _runtime = self.runtime.enter();
        let mut first = std::task::Context::from_waker(std::task::Waker::noop());
        // A panic answers EIO (the reply is dropped unanswered), as it would on a task,
        // and leaves this thread serving.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            answer.as_mut().poll(&mut first)
        })) {
            Ok(std::task::Poll::Pending) => drop(self.runtime.spawn(answer)),
            Ok(std::task::Poll::Ready(())) => {}
            Err(_) => tracing::error!(op = name, "request handler panicked"),
        }
    }
}

/// The error half shared by every reply type.
trait ErrorReply {
    fn error(self, errno: Errno);
}

macro_rules! error_reply {
    ($($t:ty),*) => {
        $(impl ErrorReply for $t {
            fn error(self, errno: Errno) {
                <$t>::error(self, errno)
            }
        })*
    };
}
error_reply!(
    ReplyAttr,
    ReplyEntry,
    ReplyEmpty,
    ReplyData,
    ReplyOpen,
    ReplyCreate,
    ReplyWrite,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyStatfs,
    ReplyXattr,
    ReplyLseek,
    ReplyLock,
    ReplyIoctl
);

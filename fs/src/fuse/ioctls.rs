//! The ioctls shardfs answers, decoded from what the kernel passes through FUSE.
//!
//! The kernel turns `FS_IOC_GETFLAGS`/`SETFLAGS` and `FS_IOC_FSGETXATTR`/`FSSETXATTR` into
//! these same requests after its own checks (owner, `CAP_LINUX_IMMUTABLE` against the
//! flags it read first), on a handle it opens for them. Any other ioctl reaches the mount
//! only with the argument bytes its number declares: none for `FS_IOC_SHUTDOWN`, which
//! XFS numbered as if it returned its flag (`_IOR`) though it takes it, so that flag is
//! read from the calling thread's memory ([`caller_flag`]).

use std::io;
use std::os::unix::fs::FileExt;

use fuser::Errno;
use shardfs_meta_api::file_flags::FlagChange;
use shardfs_meta_api::proto::Attr;

/// `_IOWR('X', 121, struct fstrim_range)`.
const FITRIM: u32 = 0xc018_5879;
/// `_IOR('f', 1, long)` and `_IOW('f', 2, long)`; the kernel passes an `unsigned int`.
const FS_IOC_GETFLAGS: u32 = 0x8008_6601;
const FS_IOC_SETFLAGS: u32 = 0x4008_6602;
/// `_IOR('X', 31, struct fsxattr)` and `_IOW('X', 32, struct fsxattr)`.
const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
const FS_IOC_FSSETXATTR: u32 = 0x401c_5820;

/// `_IOR('X', 125, __u32)`: `FS_IOC_SHUTDOWN`, also `XFS_IOC_GOINGDOWN`.
pub(super) const FS_IOC_SHUTDOWN: u32 = 0x8004_587d;

/// `struct fsxattr`: xflags, extsize, nextents, projid, cowextsize, 8 bytes of padding.
const FSXATTR_LEN: usize = 28;

/// An ioctl this mount answers.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ioctl {
    /// FITRIM with its `struct fstrim_range`.
    Trim(Vec<u8>),
    GetFlags,
    FsGetXattr,
    SetFlags(FlagChange),
    Shutdown,
}

/// The ioctl `cmd` with argument bytes `input`: ENOTTY for one shardfs does not know (what
/// tools probing a file expect), EINVAL for one whose argument is short.
pub(super) fn decode(cmd: u32, input: &[u8]) -> Result<Ioctl, Errno> {
    let word = |at: usize| -> Result<u32, Errno> {
        let bytes = input.get(at..at + 4).ok_or(Errno::EINVAL)?;
        Ok(u32::from_ne_bytes(bytes.try_into().expect("four bytes")))
    };
    Ok(match cmd {
        FITRIM => Ioctl::Trim(input.get(..24).ok_or(Errno::EINVAL)?.to_vec()),
        FS_IOC_GETFLAGS => Ioctl::GetFlags,
        FS_IOC_FSGETXATTR => Ioctl::FsGetXattr,
        FS_IOC_SHUTDOWN => Ioctl::Shutdown,
        FS_IOC_SETFLAGS => Ioctl::SetFlags(FlagChange::Flags(word(0)?)),
        FS_IOC_FSSETXATTR => {
            let (xflags, extsize, projid) = (word(0)?, word(4)?, word(12)?);
            Ioctl::SetFlags(FlagChange::Fsx { xflags, extsize, projid })
        }
        _ => return Err(Errno::ENOTTY),
    })
}

/// The answer to FS_IOC_GETFLAGS.
pub(super) fn flags_bytes(attr: &Attr) -> Vec<u8> {
    attr.flags.bits.to_ne_bytes().to_vec()
}

/// The answer to FS_IOC_FSGETXATTR (no extent count: shardfs's extents are not the disk's).
pub(super) fn fsxattr_bytes(attr: &Attr) -> Vec<u8> {
    let mut bytes = vec![0; FSXATTR_LEN];
    let flags = attr.flags;
    for (at, value) in [(0, flags.xflags(attr.kind)), (4, flags.extsize), (12, flags.projid)] {
        bytes[at..at + 4].copy_from_slice(&value.to_ne_bytes());
    }
    bytes
}

/// The `u32` that thread `tid`'s ioctl(2) `cmd`, under way, points at: its arguments from
/// `/proc/<tid>/syscall`, the word from `/proc/<tid>/mem` (the mount runs as root). Fails if
/// the thread is not in that ioctl.
pub(super) fn caller_flag(tid: u32, cmd: u32) -> io::Result<u32> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let syscall = std::fs::read_to_string(format!("/proc/{tid}/syscall"))?;
    let mut fields = syscall.split_whitespace();
    let number: i64 = fields.next().and_then(|f| f.parse().ok()).ok_or_else(|| bad("syscall"))?;
    let hex = |field: Option<&str>| {
        let digits = field.and_then(|f| f.strip_prefix("0x")).ok_or_else(|| bad("argument"))?;
        u64::from_str_radix(digits, 16).map_err(|_| bad("argument"))
    };
    let (_fd, called, pointer) = (hex(fields.next())?, hex(fields.next())?, hex(fields.next())?);
    if number != libc::SYS_ioctl || called as u32 != cmd {
        return Err(bad("the caller is not in this ioctl"));
    }
    let mut word = [0; 4];
    std::fs::File::open(format!("/proc/{tid}/mem"))?.read_exact_at(&mut word, pointer)?;
    Ok(u32::from_ne_bytes(word))
}

/// The answer to FITRIM on a filesystem of `size` bytes, given its `struct fstrim_range`
/// (`start`, `len`, `minlen`): the range with `len` the bytes discarded, 0, as shardfs
/// holds no block device to discard on. The range is checked as ext4 checks it: a start at
/// or past the end, a length below a block, or a minimum extent longer than the
/// filesystem is EINVAL.
pub(super) fn trimmed(range: &[u8], size: u64) -> Result<Vec<u8>, Errno> {
    let field = |at: usize| u64::from_ne_bytes(range[at..at + 8].try_into().expect("8 bytes"));
    let (start, len, minlen) = (field(0), field(8), field(16));
    if start >= size || len < TRIM_BLOCK || minlen > size {
        return Err(Errno::EINVAL);
    }
    let mut trimmed = range.to_vec();
    trimmed[8..16].fill(0);
    Ok(trimmed)
}

/// The block size FITRIM ranges are checked against (`st_blksize` of a block filesystem).
const TRIM_BLOCK: u64 = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread not in the ioctl (this one, running) is refused, not read.
    #[test]
    fn reads_nothing_from_a_thread_not_in_the_ioctl() {
        let tid = nix::unistd::gettid().as_raw() as u32;
        let refused = caller_flag(tid, FS_IOC_SHUTDOWN).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData, "{refused}");
    }

    #[test]
    fn decodes_what_the_kernel_passes() {
        assert_eq!(decode(FS_IOC_GETFLAGS, &[]), Ok(Ioctl::GetFlags));
        let set = decode(FS_IOC_SETFLAGS, &0x10u32.to_ne_bytes());
        assert_eq!(set, Ok(Ioctl::SetFlags(FlagChange::Flags(0x10))));
        assert_eq!(decode(FS_IOC_SETFLAGS, &[1, 2]), Err(Errno::EINVAL));
        let mut fsx = vec![0u8; FSXATTR_LEN];
        fsx[0..4].copy_from_slice(&0x800u32.to_ne_bytes());
        fsx[4..8].copy_from_slice(&65536u32.to_ne_bytes());
        fsx[12..16].copy_from_slice(&7u32.to_ne_bytes());
        let change = FlagChange::Fsx { xflags: 0x800, extsize: 65536, projid: 7 };
        assert_eq!(decode(FS_IOC_FSSETXATTR, &fsx), Ok(Ioctl::SetFlags(change)));
        assert_eq!(decode(0x5401, &[]), Err(Errno::ENOTTY), "TCGETS");
        assert_eq!(decode(FS_IOC_SHUTDOWN, &[]), Ok(Ioctl::Shutdown));
        assert_eq!(decode(FITRIM, &[0; 8]), Err(Errno::EINVAL));
    }

    #[test]
    fn trims_nothing_of_a_range_checked_as_ext4_checks_it() {
        let range = |start: u64, len: u64, minlen: u64| {
            [start, len, minlen].iter().flat_map(|v| v.to_ne_bytes()).collect::<Vec<u8>>()
        };
        let size = 1 << 30;
        assert_eq!(trimmed(&range(0, u64::MAX, 0), size), Ok(range(0, 0, 0)));
        assert_eq!(trimmed(&range(4096, 1 << 40, 512), size), Ok(range(4096, 0, 512)));
        assert_eq!(trimmed(&range(size, 1 << 20, 0), size), Err(Errno::EINVAL), "past the end");
        assert_eq!(trimmed(&range(u64::MAX, 1 << 20, 0), size), Err(Errno::EINVAL));
        assert_eq!(trimmed(&range(0, 0, 0), size), Err(Errno::EINVAL), "no length");
        assert_eq!(trimmed(&range(0, 100, 0), size), Err(Errno::EINVAL), "below a block");
        assert_eq!(trimmed(&range(0, 1 << 20, size + 1), size), Err(Errno::EINVAL));
    }
}

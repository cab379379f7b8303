//! File attribute flags (`chattr`, `lsattr`): the bits `FS_IOC_GETFLAGS` numbers, the
//! project id and the extent size hint `FS_IOC_FSGETXATTR` adds, and the rules for changing
//! them. metad keeps them with the inode and enforces them on every change, whichever mount
//! asks (`metad/src/requests/flags.rs`); mounts read them from the attributes.

use serde::{Deserialize, Serialize};

use crate::proto::{Cred, FileKind, MetaError};

/// Every write is synchronous (`S`).
pub const SYNC: u32 = 0x0000_0008;
/// No change of content, attributes, names or links, by anyone (`i`).
pub const IMMUTABLE: u32 = 0x0000_0010;
/// Writes only at the end; no truncation, removal, rename or link (`a`).
pub const APPEND: u32 = 0x0000_0020;
/// Left out by `dump` (`d`): kept and shown, nothing else.
pub const NODUMP: u32 = 0x0000_0040;
/// Reads do not update the access time (`A`).
pub const NOATIME: u32 = 0x0000_0080;
/// A directory's name changes are synchronous (`D`).
pub const DIRSYNC: u32 = 0x0001_0000;
/// A directory passes its project id on to what is made in it (`P`).
pub const PROJINHERIT: u32 = 0x2000_0000;

/// The flags shardfs keeps; setting any other is refused (`EOPNOTSUPP`), as ext4 refuses
/// the flags it lacks.
pub const KEPT: u32 = SYNC | IMMUTABLE | APPEND | NODUMP | NOATIME | DIRSYNC | PROJINHERIT;

/// What a new inode takes from its directory's flags (as ext4 does).
const INHERITED: u32 = SYNC | NODUMP | NOATIME | DIRSYNC | PROJINHERIT;

/// Flags that only mean something on a directory.
const DIR_ONLY: u32 = DIRSYNC | PROJINHERIT;

/// Setting or clearing these needs `CAP_LINUX_IMMUTABLE` (root).
const PRIVILEGED: u32 = IMMUTABLE | APPEND;

/// The `FS_IOC_FSGETXATTR` names (`FS_XFLAG_*`) of the flags both interfaces know.
const XFLAGS: [(u32, u32); 6] = [
    (0x0000_0008, IMMUTABLE),
    (0x0000_0010, APPEND),
    (0x0000_0020, SYNC),
    (0x0000_0040, NOATIME),
    (0x0000_0080, NODUMP),
    (0x0000_0200, PROJINHERIT),
];
/// `FS_XFLAG_EXTSIZE`: a file's extent size hint is set.
const XFLAG_EXTSIZE: u32 = 0x0000_0800;
/// `FS_XFLAG_EXTSZINHERIT`: a directory's hint, passed to what is made in it.
const XFLAG_EXTSZINHERIT: u32 = 0x0000_1000;

/// Extent size hints are whole multiples of this (shardfs's block size) and at most
/// [`MAX_EXTSIZE`], as XFS bounds them.
pub const EXTSIZE_UNIT: u32 = 4096;
pub const MAX_EXTSIZE: u32 = 1 << 30;

/// An inode's flags, project id and extent size hint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileFlags {
    /// `FS_*_FL` bits, within [`KEPT`].
    pub bits: u32,
    pub projid: u32,
    /// Bytes; 0 for none.
    pub extsize: u32,
}

/// A change asked for through one of the two interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlagChange {
    /// `FS_IOC_SETFLAGS`: the new `FS_*_FL` bits; project id and hint stay.
    Flags(u32),
    /// `FS_IOC_FSSETXATTR`: the new `FS_XFLAG_*` bits, hint and project id; flags only
    /// `FS_IOC_SETFLAGS` names (`D`) stay.
    Fsx { xflags: u32, extsize: u32, projid: u32 },
}

impl FileFlags {
    pub fn immutable(&self) -> bool {
        self.bits & IMMUTABLE != 0
    }

    pub fn append_only(&self) -> bool {
        self.bits & APPEND != 0
    }

    pub fn noatime(&self) -> bool {
        self.bits & NOATIME != 0
    }

    /// Whether writes to the file are synchronous.
    pub fn sync(&self) -> bool {
        self.bits & SYNC != 0
    }

    /// Whether name changes in the directory are synchronous.
    pub fn dir_sync(&self) -> bool {
        self.bits & (SYNC | DIRSYNC) != 0
    }

    /// Whether the inode refuses some changes (immutable or append-only): mounts leave every
    /// change to it to metad, which knows the rules.
    pub fn guarded(&self) -> bool {
        self.bits & PRIVILEGED != 0
    }

    /// What an inode made in a directory with these flags starts with.
    pub fn inherited(&self, kind: FileKind) -> FileFlags {
        let mut bits = self.bits & INHERITED;
        if kind != FileKind::Dir {
            bits &= !DIR_ONLY;
        }
        FileFlags {
            bits,
            projid: if self.bits & PROJINHERIT != 0 { self.projid } else { 0 },
            extsize: if kind == FileKind::File || kind == FileKind::Dir { self.extsize } else { 0 },
        }
    }

    /// The `FS_XFLAG_*` bits of a `kind` inode with these flags.
    pub fn xflags(&self, kind: FileKind) -> u32 {
        let mut xflags =
            XFLAGS.iter().filter(|(_, fl)| self.bits & fl != 0).fold(0, |x, (xf, _)| x | xf);
        if self.extsize != 0 {
            xflags |= if kind == FileKind::Dir { XFLAG_EXTSZINHERIT } else { XFLAG_EXTSIZE };
        }
        xflags
    }

    /// The flags after `change` to a `kind` inode, if the change is valid; directory-only
    /// flags asked for anything else are left out.
    pub fn changed(&self, kind: FileKind, change: FlagChange) -> Result<FileFlags, MetaError> {
        let new = match change {
            FlagChange::Flags(bits) => FileFlags { bits, ..*self },
            FlagChange::Fsx { xflags, extsize, projid } => {
                let hint = if kind == FileKind::Dir { XFLAG_EXTSZINHERIT } else { XFLAG_EXTSIZE };
                let known = XFLAGS.iter().fold(hint, |x, (xf, _)| x | xf);
                if xflags & !known != 0 {
                    let unknown = xflags & !known;
                    return Err(MetaError::Unsupported(format!("attribute flags {unknown:#x}")));
                }
                if extsize != 0 && xflags & hint == 0 {
                    return Err(MetaError::Invalid("an extent size hint without its flag".into()));
                }
                let named = XFLAGS.iter().fold(0, |b, (_, fl)| b | fl);
                let bits =
                    XFLAGS.iter().filter(|(xf, _)| xflags & xf != 0).fold(0, |b, (_, fl)| b | fl);
                FileFlags { bits: (self.bits & !named) | bits, projid, extsize }
            }
        };
        if new.bits & !KEPT != 0 {
            let unknown = new.bits & !KEPT;
            return Err(MetaError::Unsupported(format!("attribute flags {unknown:#x}")));
        }
        let mut new = new;
        // Dropped from anything else, as ext4 drops them.
        if kind != FileKind::Dir {
            new.bits &= !DIR_ONLY;
        }
        if new.extsize != 0 {
            if !matches!(kind, FileKind::File | FileKind::Dir) {
                return Err(MetaError::Invalid("an extent size hint on a special file".into()));
            }
            if new.extsize % EXTSIZE_UNIT != 0 || new.extsize > MAX_EXTSIZE {
                return Err(MetaError::Invalid(format!(
                    "extent size hint {} is not a multiple of {EXTSIZE_UNIT} up to {MAX_EXTSIZE}",
                    new.extsize
                )));
            }
        }
        Ok(new)
    }

    /// Whether `cred`, who asks to replace these flags of an inode owned by `owner` with
    /// `new`, may: the owner or root; immutable and append-only set or cleared by root
    /// only; and while the inode stays immutable, nothing else changes (as ext4).
    pub fn may_become(&self, new: &FileFlags, owner: u32, cred: &Cred) -> Result<(), MetaError> {
        if cred.uid != 0 && cred.uid != owner {
            return Err(MetaError::NotPermitted);
        }
        if (self.bits ^ new.bits) & PRIVILEGED != 0 && cred.uid != 0 {
            return Err(MetaError::NotPermitted);
        }
        if self.immutable() && new.immutable() && self != new {
            return Err(MetaError::NotPermitted);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: Cred = Cred { uid: 1000, gid: 1000, umask: 0o022, groups: Vec::new() };

    #[test]
    fn both_interfaces_name_the_same_flags() {
        let flags = FileFlags { bits: IMMUTABLE | NOATIME | DIRSYNC, projid: 7, extsize: 0 };
        assert_eq!(flags.xflags(FileKind::Dir), 0x8 | 0x40);
        // FSSETXATTR keeps D, which it cannot name, and replaces the rest.
        let fsx = FlagChange::Fsx { xflags: 0x80 | XFLAG_EXTSZINHERIT, extsize: 8192, projid: 9 };
        let changed = flags.changed(FileKind::Dir, fsx).unwrap();
        assert_eq!(changed, FileFlags { bits: NODUMP | DIRSYNC, projid: 9, extsize: 8192 });
        assert_eq!(changed.xflags(FileKind::Dir), 0x80 | XFLAG_EXTSZINHERIT);
        let set = FileFlags::default().changed(FileKind::File, FlagChange::Flags(APPEND | SYNC));
        assert_eq!(set.unwrap(), FileFlags { bits: APPEND | SYNC, projid: 0, extsize: 0 });
    }

    #[test]
    fn refuses_what_it_does_not_keep() {
        let none = FileFlags::default();
        // `c` (compress) is ext4's.
        assert!(matches!(
            none.changed(FileKind::File, FlagChange::Flags(0x4)),
            Err(MetaError::Unsupported(_))
        ));
        // Directory-only flags are dropped from a file, as ext4 drops them.
        let dir_only = none.changed(FileKind::File, FlagChange::Flags(DIRSYNC | NODUMP));
        assert_eq!(dir_only.unwrap().bits, NODUMP);
        let odd = FlagChange::Fsx { xflags: XFLAG_EXTSIZE, extsize: 1000, projid: 0 };
        assert!(matches!(none.changed(FileKind::File, odd), Err(MetaError::Invalid(_))));
        let unflagged = FlagChange::Fsx { xflags: 0, extsize: 4096, projid: 0 };
        assert!(matches!(none.changed(FileKind::File, unflagged), Err(MetaError::Invalid(_))));
        let on_dir = FlagChange::Fsx { xflags: XFLAG_EXTSIZE, extsize: 4096, projid: 0 };
        assert!(matches!(none.changed(FileKind::Dir, on_dir), Err(MetaError::Unsupported(_))));
    }

    #[test]
    fn who_may_change_what() {
        let none = FileFlags::default();
        let immutable = FileFlags { bits: IMMUTABLE, ..none };
        let nodump = FileFlags { bits: NODUMP, ..none };
        assert_eq!(none.may_become(&nodump, 1000, &USER), Ok(()));
        assert_eq!(none.may_become(&nodump, 0, &USER), Err(MetaError::NotPermitted));
        assert_eq!(none.may_become(&immutable, 1000, &USER), Err(MetaError::NotPermitted));
        assert_eq!(none.may_become(&immutable, 1000, &Cred::ROOT), Ok(()));
        assert_eq!(immutable.may_become(&none, 1000, &USER), Err(MetaError::NotPermitted));
        let immutable_nodump = FileFlags { bits: IMMUTABLE | NODUMP, ..none };
        assert_eq!(
            immutable.may_become(&immutable_nodump, 0, &Cred::ROOT),
            Err(MetaError::NotPermitted)
        );
        assert_eq!(immutable.may_become(&none, 0, &Cred::ROOT), Ok(()));
    }

    #[test]
    fn new_inodes_inherit_as_on_ext4() {
        let dir = FileFlags {
            bits: NOATIME | PROJINHERIT | DIRSYNC | IMMUTABLE,
            projid: 42,
            extsize: 8192,
        };
        assert_eq!(
            dir.inherited(FileKind::File),
            FileFlags { bits: NOATIME, projid: 42, extsize: 8192 }
        );
        assert_eq!(dir.inherited(FileKind::Dir).bits, NOATIME | PROJINHERIT | DIRSYNC);
        assert_eq!(dir.inherited(FileKind::Symlink).extsize, 0);
        let plain = FileFlags { bits: NOATIME, projid: 42, extsize: 0 };
        assert_eq!(plain.inherited(FileKind::File).projid, 0);
    }
}

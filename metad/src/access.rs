//! Permission checks metad makes itself, as the calling user, behind the kernel's
//! `default_permissions`: a client that skipped or got them wrong still cannot act beyond
//! the caller's rights. The caller is who its client says it is (as with NFS AUTH_SYS);
//! what keeps strangers out is the cluster's authentication, not this.
//!
//! Deliberately left to the kernel: opening (metad sees one open per client and inode, not
//! the access mode) and truncation and writes through an open file (allowed by how the file
//! was opened, even after a chmod).

use crate::acl::{self, Acl};
use crate::proto::{
    Attr, Cred, FileKind, Ino, MetaError, MetaRequest, RenameMode, SetAttr, SetTime,
};
use crate::store::Store;

pub const READ: u16 = 4;
pub const WRITE: u16 = 2;
pub const EXEC: u16 = 1;

const SETID: u16 = (libc::S_ISUID | libc::S_ISGID) as u16;
const STICKY: u16 = libc::S_ISVTX as u16;

/// Whether `cred` may have `want` (rwx bits) on `attr`, whose access ACL is `acl`.
pub fn permits(attr: &Attr, acl: Option<&Acl>, cred: &Cred, want: u16) -> bool {
    if cred.uid == 0 {
        // Root may read, write and search anything; execute a file only if anyone may.
        return want & EXEC == 0 || attr.kind == FileKind::Dir || attr.perm & 0o111 != 0;
    }
    if let Some(acl) = acl.filter(|acl| !acl.is_plain()) {
        return acl.permits(attr.uid, attr.gid, cred, want);
    }
    let bits = if cred.uid == attr.uid {
        attr.perm >> 6
    } else if cred.in_group(attr.gid) {
        attr.perm >> 3
    } else {
        attr.perm
    };
    bits & 7 & want == want
}

/// Fails with `AccessDenied` (EACCES) unless `cred` may have `want` on `ino`.
fn need(store: &Store, ino: Ino, cred: &Cred, want: u16) -> Result<Attr, MetaError> {
    let attr = store.get_attr(ino)?;
    // Only a non-owner's check can depend on named ACL entries.
    let acl = if cred.uid != 0 && cred.uid != attr.uid {
        store.get_xattr(ino, acl::ACCESS).ok().and_then(|value| Acl::parse(&value))
    } else {
        None
    };
    if permits(&attr, acl.as_ref(), cred, want) { Ok(attr) } else { Err(MetaError::AccessDenied) }
}

fn owns(attr: &Attr, cred: &Cred) -> bool {
    cred.uid == 0 || cred.uid == attr.uid
}

/// Removing (or replacing) `name` in `parent`: write and search on the directory, and in a
/// sticky directory only the owner of the entry or of the directory (EPERM otherwise).
fn removable(store: &Store, parent: Ino, name: &[u8], cred: &Cred) -> Result<(), MetaError> {
    let dir = need(store, parent, cred, WRITE | EXEC)?;
    if dir.perm & STICKY != 0 && !owns(&dir, cred) {
        // A missing entry is the operation's own error to report.
        if let Ok(victim) = store.lookup(parent, name)
            && !owns(&victim, cred)
        {
            return Err(MetaError::NotPermitted);
        }
    }
    Ok(())
}

/// chmod, chown, utimes (truncation is left to the kernel: see the module comment).
fn set_attr(store: &Store, ino: Ino, cred: &Cred, changes: &SetAttr) -> Result<(), MetaError> {
    let attr = store.get_attr(ino)?;
    let owner = owns(&attr, cred);
    if let Some(mode) = changes.mode {
        // A non-owner's write makes the kernel clear the set-id bits through a chmod of its
        // own, sent as the writer: dropping set-id bits and nothing else is allowed.
        let new = (mode & 0o7777) as u16;
        let only_drops_setid = new & !attr.perm == 0 && (attr.perm & !new) & !SETID == 0;
        if !owner && !only_drops_setid {
            return Err(MetaError::NotPermitted);
        }
    }
    if let Some(uid) = changes.uid
        && cred.uid != 0
        && (cred.uid != attr.uid || uid != attr.uid)
    {
        return Err(MetaError::NotPermitted);
    }
    if let Some(gid) = changes.gid
        && cred.uid != 0
        && (cred.uid != attr.uid || (gid != attr.gid && !cred.in_group(gid)))
    {
        return Err(MetaError::NotPermitted);
    }
    let times = [changes.atime, changes.mtime];
    if times.iter().any(|t| matches!(t, Some(SetTime::At(_)))) && !owner {
        return Err(MetaError::NotPermitted);
    }
    if times.iter().any(|t| matches!(t, Some(SetTime::Now))) && !owner {
        need(store, ino, cred, WRITE)?;
    }
    Ok(())
}

/// File capabilities (setcap).
const CAPABILITY: &[u8] = b"security.capability";

/// Which namespace an attribute name is in, and so who may touch it.
fn xattr(store: &Store, ino: Ino, name: &[u8], cred: &Cred, write: bool) -> Result<(), MetaError> {
    if name.starts_with(b"trusted.") && cred.uid != 0 {
        // As Linux: invisible to others, and not theirs to set.
        return Err(if write { MetaError::NotPermitted } else { MetaError::NoData });
    }
    if name.starts_with(b"security.") && write && cred.uid != 0 {
        return Err(MetaError::NotPermitted);
    }
    if (name == acl::ACCESS || name == acl::DEFAULT) && write {
        return if owns(&store.get_attr(ino)?, cred) {
            Ok(())
        } else {
            Err(MetaError::NotPermitted)
        };
    }
    if name.starts_with(b"user.") {
        let attr = store.get_attr(ino)?;
        if !matches!(attr.kind, FileKind::File | FileKind::Dir) {
            return Err(if write { MetaError::NotPermitted } else { MetaError::NoData });
        }
        if write && attr.kind == FileKind::Dir && attr.perm & STICKY != 0 && !owns(&attr, cred) {
            return Err(MetaError::NotPermitted);
        }
        need(store, ino, cred, if write { WRITE } else { READ })?;
    }
    Ok(())
}

/// Fails unless the caller of `request` may make it. Requests without a caller are not
/// namespace operations and pass.
pub fn check(store: &Store, request: &MetaRequest) -> Result<(), MetaError> {
    match request {
        // "." and ".." come from the kernel turning a file handle back into an inode.
        MetaRequest::Lookup { parent, name, cred } if name != b"." && name != b".." => {
            need(store, *parent, cred, EXEC).map(drop)
        }
        // Checked when listing starts, not for each batch of an open directory.
        MetaRequest::ReadDir { ino, after: 0, cred, .. } => need(store, *ino, cred, READ).map(drop),
        MetaRequest::MakeNode { parent, cred, .. }
        | MetaRequest::MakeDir { parent, cred, .. }
        | MetaRequest::Symlink { parent, cred, .. }
        | MetaRequest::Link { new_parent: parent, cred, .. } => {
            need(store, *parent, cred, WRITE | EXEC).map(drop)
        }
        MetaRequest::Unlink { parent, name, cred }
        | MetaRequest::RemoveDir { parent, name, cred } => removable(store, *parent, name, cred),
        MetaRequest::Rename { parent, name, new_parent, new_name, mode, cred } => {
            removable(store, *parent, name, cred)?;
            // Whatever the destination holds is replaced (or swapped), so it is removed too.
            removable(store, *new_parent, new_name, cred)?;
            // A directory moving elsewhere has its ".." rewritten: it must be writable. A
            // directory replaced stays where it is (as Linux's vfs_rename: only an exchange
            // moves the target).
            let mut moving = vec![(parent, name)];
            if *mode == RenameMode::Exchange {
                moving.push((new_parent, new_name));
            }
            if parent != new_parent {
                for (dir, entry) in moving {
                    if let Ok(moving) = store.lookup(*dir, entry)
                        && moving.kind == FileKind::Dir
                    {
                        need(store, moving.ino, cred, WRITE)?;
                    }
                }
            }
            Ok(())
        }
        MetaRequest::SetAttr { ino, cred, changes } => set_attr(store, *ino, cred, changes),
        MetaRequest::RemoveXattr { ino, name, cred } if name == CAPABILITY => {
            // The kernel drops a file's capabilities when anyone who may write it changes
            // it (killpriv, as the writer); its own check already kept unprivileged users
            // from removing them explicitly.
            need(store, *ino, cred, WRITE).map(drop)
        }
        MetaRequest::SetXattr { ino, name, cred, .. }
        | MetaRequest::RemoveXattr { ino, name, cred } => xattr(store, *ino, name, cred, true),
        MetaRequest::GetXattr { ino, name, cred } => xattr(store, *ino, name, cred, false),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Timestamp;

    fn attr(kind: FileKind, perm: u16, uid: u32, gid: u32) -> Attr {
        let t = Timestamp::default();
        Attr {
            ino: 2,
            generation: 1,
            kind,
            perm,
            uid,
            gid,
            size: 0,
            allocated: 0,
            nlink: 1,
            atime: t,
            mtime: t,
            ctime: t,
            rdev: 0,
        }
    }

    fn user(uid: u32, gid: u32, groups: &[u32]) -> Cred {
        Cred { uid, gid, umask: 0, groups: groups.to_vec() }
    }

    #[test]
    fn mode_bits_pick_one_class() {
        let file = attr(FileKind::File, 0o640, 1000, 100);
        assert!(permits(&file, None, &user(1000, 1000, &[]), READ | WRITE));
        assert!(permits(&file, None, &user(1001, 100, &[]), READ));
        assert!(!permits(&file, None, &user(1001, 100, &[]), WRITE));
        assert!(permits(&file, None, &user(1002, 1002, &[100]), READ), "supplementary group");
        assert!(!permits(&file, None, &user(1003, 1003, &[]), READ));
        // The owner class applies even when it grants less than the others.
        let odd = attr(FileKind::File, 0o077, 1000, 100);
        assert!(!permits(&odd, None, &user(1000, 100, &[]), READ));
        // Root: everything but executing a file nobody may execute.
        assert!(permits(&file, None, &Cred::ROOT, READ | WRITE));
        assert!(!permits(&file, None, &Cred::ROOT, EXEC));
        assert!(permits(&attr(FileKind::Dir, 0, 1, 1), None, &Cred::ROOT, EXEC));
    }

    #[test]
    fn acl_entries_are_masked_and_groups_combine() {
        // user::rw- user:2000:rwx group::r-- group:3000:-w- mask::r-x other::---
        let mut value = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (0x01u16, 6u16, u32::MAX),
            (0x02, 7, 2000),
            (0x04, 4, u32::MAX),
            (0x08, 2, 3000),
            (0x10, 5, u32::MAX),
            (0x20, 0, u32::MAX),
        ] {
            value.extend_from_slice(&tag.to_le_bytes());
            value.extend_from_slice(&perm.to_le_bytes());
            value.extend_from_slice(&id.to_le_bytes());
        }
        let acl = Acl::parse(&value).unwrap();
        let file = attr(FileKind::File, 0o650, 1000, 100);
        let named = user(2000, 2000, &[]);
        assert!(permits(&file, Some(&acl), &named, READ | EXEC));
        assert!(!permits(&file, Some(&acl), &named, WRITE), "masked");
        assert!(permits(&file, Some(&acl), &user(5, 100, &[]), READ));
        // In group 3000 (-w- masked to ---) and the owning group (r--): read only.
        let both = user(6, 100, &[3000]);
        assert!(permits(&file, Some(&acl), &both, READ));
        assert!(!permits(&file, Some(&acl), &both, WRITE));
        // Matching a group entry that denies means "other" is not consulted.
        assert!(!permits(&file, Some(&acl), &user(7, 3000, &[]), READ));
        assert!(!permits(&file, Some(&acl), &user(8, 8, &[]), READ));
    }
}

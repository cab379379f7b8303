//! Permission checks metad makes itself, as the calling user, behind the kernel's
//! `default_permissions`: a client that skipped or got them wrong still cannot act beyond
//! the caller's rights. The caller is who its client says it is (as with NFS AUTH_SYS);
//! what keeps strangers out is the cluster's authentication, not this.
//!
//! Here: what the mode bits and ACLs permit. Each operation's own rule is in its family's
//! module (`crate::requests`).
//!
//! Deliberately left to the kernel: opening (metad sees one open per client and inode, not
//! the access mode) and truncation and writes through an open file (allowed by how the file
//! was opened, even after a chmod).

use crate::acl::{self, Acl};
use crate::store::View;
use shardfs_meta_api::proto::{Attr, Cred, FileKind, Ino, MetaError};

pub const READ: u16 = 4;
pub const WRITE: u16 = 2;
pub const EXEC: u16 = 1;

pub const STICKY: u16 = libc::S_ISVTX as u16;

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
pub fn need(view: &dyn View, ino: Ino, cred: &Cred, want: u16) -> Result<Attr, MetaError> {
    let attr = view.get_attr(ino)?;
    // Only a non-owner's check can depend on named ACL entries.
    let acl = if cred.uid != 0 && cred.uid != attr.uid {
        view.get_xattr(ino, acl::ACCESS).ok().and_then(|value| Acl::parse(&value))
    } else {
        None
    };
    if permits(&attr, acl.as_ref(), cred, want) { Ok(attr) } else { Err(MetaError::AccessDenied) }
}

/// Whether `cred` owns `attr`, or is root.
pub fn owns(attr: &Attr, cred: &Cred) -> bool {
    cred.uid == 0 || cred.uid == attr.uid
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardfs_meta_api::proto::Timestamp;

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
            flags: Default::default(),
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

//! The set-user-id and set-group-id bits an unprivileged change of a file's contents must
//! clear. The kernel does this itself for write(2) and truncate, but leaves fallocate(2) to
//! the filesystem.

use shardfs_meta_api::proto::Cred;

/// `perm` with the bits Linux drops when `caller` modifies a file owned by group `file_gid`:
/// set-user-id always; set-group-id when group-executable, or when the caller is outside the
/// file's group. Unchanged for root, treated as holding CAP_FSETID.
pub fn cleared(perm: u16, file_gid: u32, caller: &Cred) -> u16 {
    let (suid, sgid, group_exec) =
        (libc::S_ISUID as u16, libc::S_ISGID as u16, libc::S_IXGRP as u16);
    if caller.uid == 0 || perm & (suid | sgid) == 0 {
        return perm;
    }
    let mut perm = perm & !suid;
    if perm & sgid != 0 && (perm & group_exec != 0 || !caller.in_group(file_gid)) {
        perm &= !sgid;
    }
    perm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_as_linux_does() {
        let user = Cred { uid: 1000, gid: 1000, umask: 0, groups: vec![50] };
        assert_eq!(cleared(0o6666, 0, &user), 0o666);
        assert_eq!(cleared(0o6676, 0, &user), 0o676);
        assert_eq!(cleared(0o2666, 1000, &user), 0o2666, "non-exec sgid, caller in group");
        assert_eq!(cleared(0o2666, 50, &user), 0o2666, "supplementary group");
        assert_eq!(cleared(0o2676, 1000, &user), 0o676);
        assert_eq!(cleared(0o6777, 0, &Cred::ROOT), 0o6777);
        assert_eq!(cleared(0o755, 0, &user), 0o755);
    }
}

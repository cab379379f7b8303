//! The set-user-id and set-group-id bits an unprivileged change of a file's contents must
//! clear. The kernel does this itself for write(2) and truncate, but leaves fallocate(2) to
//! the filesystem.

use std::collections::HashSet;

/// Who changes the file.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Caller {
    /// Root is treated as holding CAP_FSETID and keeps the bits.
    fn privileged(&self) -> bool {
        self.uid == 0
    }

    /// Whether the caller belongs to group `gid`: its primary group or, as /proc reports
    /// them, its supplementary groups.
    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || supplementary_groups(self.pid).contains(&gid)
    }
}

fn supplementary_groups(pid: u32) -> HashSet<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|groups| groups.split_whitespace().filter_map(|g| g.parse().ok()).collect())
        .unwrap_or_default()
}

/// `perm` with the bits Linux drops when `caller` modifies a file owned by group `file_gid`:
/// set-user-id always; set-group-id when group-executable, or when the caller is outside the
/// file's group. Unchanged for a privileged caller.
pub fn cleared(perm: u16, file_gid: u32, caller: &Caller) -> u16 {
    let (suid, sgid, group_exec) =
        (libc::S_ISUID as u16, libc::S_ISGID as u16, libc::S_IXGRP as u16);
    if caller.privileged() || perm & (suid | sgid) == 0 {
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
        // No process 0 in /proc: no supplementary groups.
        let user = Caller { uid: 1000, gid: 1000, pid: 0 };
        let root = Caller { uid: 0, gid: 0, pid: 0 };
        assert_eq!(cleared(0o6666, 0, &user), 0o666);
        assert_eq!(cleared(0o6676, 0, &user), 0o676);
        assert_eq!(cleared(0o2666, 1000, &user), 0o2666, "non-exec sgid, caller in group");
        assert_eq!(cleared(0o2676, 1000, &user), 0o676);
        assert_eq!(cleared(0o6777, 0, &root), 0o6777);
        assert_eq!(cleared(0o755, 0, &user), 0o755);
    }
}

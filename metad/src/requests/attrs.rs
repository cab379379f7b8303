//! Attributes: reading them, chmod/chown/utimes/truncate, chattr, and the atime a read
//! updates. Changes are the `SetAttr`, `SetFlags`, `Accessed` and `AccessedAt` mutations.

use super::{Caller, Family, Grant, Leasing, Target, flags, valid_times};
use crate::access::{WRITE, need, owns};
use crate::leases::Need;
use crate::server::{MetadServer, Outcome};
use crate::store::{Store, View};
use shardfs_meta_api::proto::{
    AttrRequest, Cred, Ino, MetaError, MetaReply, MetaResponse, SetAttr, SetTime,
};

impl Family for AttrRequest {
    fn permitted(&self, view: &dyn View) -> Result<(), MetaError> {
        match self {
            AttrRequest::SetAttr { ino, cred, changes } => {
                valid_times(&[changes.atime, changes.mtime])?;
                set_attr(view, *ino, cred, changes)
            }
            AttrRequest::SetFlags { ino, cred, change } => {
                let attr = view.get_attr(*ino)?;
                let new = attr.flags.changed(attr.kind, *change)?;
                attr.flags.may_become(&new, attr.uid, cred)
            }
            AttrRequest::AccessedAt { accesses, .. } => {
                valid_times(&accesses.iter().map(|a| Some(SetTime::At(a.at))).collect::<Vec<_>>())
            }
            AttrRequest::GetAttr { .. } | AttrRequest::Accessed { .. } => Ok(()),
        }
    }

    fn leasing(&self) -> Leasing<'_> {
        let (needs, grant) = match self {
            AttrRequest::GetAttr { ino } => (vec![(Target::Inode(*ino), Need::Read)], Grant::Read),
            AttrRequest::SetAttr { ino, .. } | AttrRequest::SetFlags { ino, .. } => {
                (vec![(Target::Inode(*ino), Need::Write)], Grant::Read)
            }
            // Recalls nothing: other mounts may show an older atime until their lease ends
            // (docs/SEMANTICS.md).
            AttrRequest::Accessed { .. } | AttrRequest::AccessedAt { .. } => {
                return Leasing::Uncovered;
            }
        };
        Leasing::Covered { needs, grant }
    }

    fn answer(self, server: &MetadServer, _: Caller) -> Outcome {
        Outcome::Answered(reply(self, &server.store))
    }
}

fn reply(request: AttrRequest, store: &Store) -> MetaResponse {
    Ok(MetaReply::Attr(match request {
        AttrRequest::GetAttr { ino } => store.get_attr(ino)?,
        AttrRequest::SetAttr { ino, cred: _, changes } => store.set_attr(ino, &changes)?,
        AttrRequest::SetFlags { ino, cred: _, change } => store.set_flags(ino, change)?,
        AttrRequest::Accessed { ino, strict } => store.accessed(ino, strict)?,
        AttrRequest::AccessedAt { accesses, strict } => {
            store.accessed_at(accesses, strict)?;
            return Ok(MetaReply::Done);
        }
    }))
}

const SETID: u16 = (libc::S_ISUID | libc::S_ISGID) as u16;

/// chmod, chown, utimes (truncation is left to the kernel: see `access.rs`).
fn set_attr(view: &dyn View, ino: Ino, cred: &Cred, changes: &SetAttr) -> Result<(), MetaError> {
    let attr = view.get_attr(ino)?;
    flags::may_set_attr(&attr, changes)?;
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
        need(view, ino, cred, WRITE)?;
    }
    Ok(())
}

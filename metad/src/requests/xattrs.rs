//! Extended attributes, POSIX ACLs among them. Changes are the `SetXattr` and
//! `RemoveXattr` mutations.

use super::{Caller, Family, Grant, Leasing, Target, flags};
use crate::access::{READ, STICKY, WRITE, need, owns};
use crate::acl;
use crate::leases::Need;
use crate::server::{MetadServer, Outcome};
use crate::store::{Store, View};
use shardfs_meta_api::proto::{
    Cred, FileKind, Ino, MetaError, MetaReply, MetaResponse, XattrRequest,
};

/// File capabilities (setcap).
const CAPABILITY: &[u8] = b"security.capability";

impl Family for XattrRequest {
    fn permitted(&self, view: &dyn View) -> Result<(), MetaError> {
        match self {
            // The kernel drops a file's capabilities when anyone who may write it changes
            // it (killpriv, as the writer); its own check already kept unprivileged users
            // from removing them explicitly.
            // So it may on an append-only file, which takes writes at its end (as Linux's
            // killpriv, which no flag stops), not on an immutable one, which takes none.
            XattrRequest::RemoveXattr { ino, name, cred } if name == CAPABILITY => {
                flags::may_write(view, *ino, std::iter::empty())?;
                need(view, *ino, cred, WRITE).map(drop)
            }
            XattrRequest::SetXattr { ino, name, cred, .. }
            | XattrRequest::RemoveXattr { ino, name, cred } => {
                flags::changeable(view, *ino)?;
                namespace_rule(view, *ino, name, cred, true)
            }
            XattrRequest::GetXattr { ino, name, cred } => {
                namespace_rule(view, *ino, name, cred, false)
            }
            // Names the caller may not see are left out of the answer.
            XattrRequest::ListXattr { .. } => Ok(()),
        }
    }

    fn leasing(&self) -> Leasing<'_> {
        match self {
            // The answer is the inode's attributes after the change, leased.
            XattrRequest::SetXattr { ino, .. } | XattrRequest::RemoveXattr { ino, .. } => {
                let needs = vec![(Target::Inode(*ino), Need::Write)];
                Leasing::Covered { needs, grant: Grant::Read }
            }
            // Answered from the database each time: a mount keeps only a file's lack of
            // `security.capability`, under its read lease, which a change here recalls.
            XattrRequest::GetXattr { .. } | XattrRequest::ListXattr { .. } => Leasing::Uncovered,
        }
    }

    fn answer(self, server: &MetadServer, _: Caller) -> Outcome {
        Outcome::Answered(reply(self, &server.store))
    }
}

fn reply(request: XattrRequest, store: &Store) -> MetaResponse {
    Ok(match request {
        XattrRequest::SetXattr { ino, name, value, mode, cred } => {
            MetaReply::Attr(store.set_xattr(ino, &name, &value, mode, &cred)?)
        }
        XattrRequest::GetXattr { ino, name, .. } => MetaReply::Xattr(store.get_xattr(ino, &name)?),
        XattrRequest::ListXattr { ino, cred } => {
            let mut names = store.list_xattr(ino)?;
            if cred.uid != 0 {
                names.retain(|name| !name.starts_with(b"trusted."));
            }
            MetaReply::XattrNames(names)
        }
        XattrRequest::RemoveXattr { ino, name, .. } => {
            MetaReply::Attr(store.remove_xattr(ino, &name)?)
        }
    })
}

/// Which namespace an attribute name is in, and so who may read or `write` it.
fn namespace_rule(
    view: &dyn View,
    ino: Ino,
    name: &[u8],
    cred: &Cred,
    write: bool,
) -> Result<(), MetaError> {
    if name.starts_with(b"trusted.") && cred.uid != 0 {
        // As Linux: invisible to others, and not theirs to set.
        return Err(if write { MetaError::NotPermitted } else { MetaError::NoData });
    }
    if name.starts_with(b"security.") && write && cred.uid != 0 {
        return Err(MetaError::NotPermitted);
    }
    if (name == acl::ACCESS || name == acl::DEFAULT) && write {
        return match owns(&view.get_attr(ino)?, cred) {
            true => Ok(()),
            false => Err(MetaError::NotPermitted),
        };
    }
    if name.starts_with(b"user.") {
        let attr = view.get_attr(ino)?;
        if !matches!(attr.kind, FileKind::File | FileKind::Dir) {
            return Err(if write { MetaError::NotPermitted } else { MetaError::NoData });
        }
        if write && attr.kind == FileKind::Dir && attr.perm & STICKY != 0 && !owns(&attr, cred) {
            return Err(MetaError::NotPermitted);
        }
        need(view, ino, cred, if write { WRITE } else { READ })?;
    }
    Ok(())
}

//! What the immutable (`i`) and append-only (`a`) flags refuse, by anyone, root included,
//! as Linux refuses it on a local filesystem (EPERM): each family's permission check asks
//! here, so a change is refused whichever mount sends it, and in a batch as alone.
//!
//! - Immutable: no change of content, size, attributes, extended attributes or links, no
//!   name added to or removed from it (a directory), and it cannot be removed or renamed.
//! - Append-only: content only added at the end; no truncation, no mode, owner or explicit
//!   time change (a touch to now is allowed, and a change that only drops set-id bits, as a
//!   write by a non-owner makes); no extended attribute change; it cannot be removed,
//!   renamed or linked; a directory takes new names but loses none.

use crate::store::View;
use shardfs_meta_api::proto::{Attr, Ino, MetaError, SetAttr, SetTime, SpaceOp};

const SETID: u16 = (libc::S_ISUID | libc::S_ISGID) as u16;

/// The inode's attributes, if its flags allow changing its attributes, extended attributes
/// and links.
pub(super) fn changeable(view: &dyn View, ino: Ino) -> Result<Attr, MetaError> {
    let attr = view.get_attr(ino)?;
    match attr.flags.guarded() {
        true => Err(MetaError::NotPermitted),
        false => Ok(attr),
    }
}

/// Whether names may be added to directory `dir`.
pub(super) fn may_add_name(view: &dyn View, dir: Ino) -> Result<(), MetaError> {
    match view.get_attr(dir)?.flags.immutable() {
        true => Err(MetaError::NotPermitted),
        false => Ok(()),
    }
}

/// Whether `name` may be removed from (or replaced in) directory `dir`: the directory
/// neither immutable nor append-only, and no more is what the name names. A missing name is
/// the operation's own error to report.
pub(super) fn may_remove_name(view: &dyn View, dir: Ino, name: &[u8]) -> Result<(), MetaError> {
    match view.lookup(dir, name) {
        Ok(victim) if victim.flags.guarded() => Err(MetaError::NotPermitted),
        Ok(_) => changeable(view, dir).map(drop),
        Err(_) => Ok(()),
    }
}

/// Whether the attribute changes `changes` may be made to `attr`.
pub(super) fn may_set_attr(attr: &Attr, changes: &SetAttr) -> Result<(), MetaError> {
    let flags = attr.flags;
    if flags.immutable() {
        return Err(MetaError::NotPermitted);
    }
    if flags.append_only() {
        let explicit_time =
            [changes.atime, changes.mtime].iter().any(|t| matches!(t, Some(SetTime::At(_))));
        let mode = changes.mode.is_some_and(|mode| {
            let new = (mode & 0o7777) as u16;
            // Anything but dropping set-id bits.
            new & !attr.perm != 0 || (attr.perm & !new) & !SETID != 0
        });
        let owner = changes.uid.is_some() || changes.gid.is_some();
        if changes.size.is_some() || explicit_time || mode || owner {
            return Err(MetaError::NotPermitted);
        }
    }
    Ok(())
}

/// Whether content may be written to `ino` at `offsets` (all at or past the end, for an
/// append-only file).
pub(super) fn may_write(
    view: &dyn View,
    ino: Ino,
    mut offsets: impl Iterator<Item = u64>,
) -> Result<(), MetaError> {
    let attr = view.get_attr(ino)?;
    if attr.flags.immutable() || (attr.flags.append_only() && offsets.any(|at| at < attr.size)) {
        return Err(MetaError::NotPermitted);
    }
    Ok(())
}

/// Whether fallocate `op` may be made to `ino`: none on an immutable file; on an
/// append-only one only allocation, which changes no content (Linux allows mode 0 and
/// `KEEP_SIZE` alone).
pub(super) fn may_allocate(view: &dyn View, ino: Ino, op: &SpaceOp) -> Result<(), MetaError> {
    let attr = view.get_attr(ino)?;
    let keeps = matches!(op, SpaceOp::Allocate { .. });
    if attr.flags.immutable() || (attr.flags.append_only() && !keeps) {
        return Err(MetaError::NotPermitted);
    }
    Ok(())
}

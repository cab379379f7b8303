//! Names: looking up, listing, creating, linking, removing and renaming directory entries.
//! Each change is one [`Mutation`](crate::store::Mutation) (`Create`, `Link`, `Unlink`,
//! `RemoveDir`, `Rename`), made by the store call its answer names.

use super::{Caller, Family, Grant, Leasing, Target, flags};
use crate::access::{EXEC, READ, STICKY, WRITE, need, owns};
use crate::leases::Need::Write;
use crate::server::{MetadServer, Outcome};
use crate::store::{Store, View};
use shardfs_meta_api::proto::{
    Cred, FileKind, Ino, MetaError, MetaReply, MetaResponse, NameRequest, RenameMode,
    names_an_entry,
};

impl Family for NameRequest {
    fn permitted(&self, view: &dyn View) -> Result<(), MetaError> {
        match self {
            // "." and ".." come from the kernel turning a file handle back into an inode.
            NameRequest::Lookup { parent, name, cred } => match names_an_entry(name) {
                true => need(view, *parent, cred, EXEC).map(drop),
                false => Ok(()),
            },
            // Checked when listing starts, not for each batch of an open directory.
            NameRequest::ReadDir { ino, after, cred, .. } => match after {
                0 => need(view, *ino, cred, READ).map(drop),
                _ => Ok(()),
            },
            NameRequest::MakeNode { parent, cred, .. }
            | NameRequest::MakeDir { parent, cred, .. }
            | NameRequest::Symlink { parent, cred, .. } => {
                need(view, *parent, cred, WRITE | EXEC)?;
                flags::may_add_name(view, *parent)
            }
            NameRequest::Link { ino, new_parent, cred, .. } => {
                need(view, *new_parent, cred, WRITE | EXEC)?;
                flags::may_add_name(view, *new_parent)?;
                flags::changeable(view, *ino).map(drop)
            }
            NameRequest::Unlink { parent, name, cred }
            | NameRequest::RemoveDir { parent, name, cred } => removable(view, *parent, name, cred),
            NameRequest::Rename { parent, name, new_parent, new_name, mode, cred } => {
                removable(view, *parent, name, cred)?;
                // Whatever the destination holds is replaced (or swapped), so it is removed.
                removable(view, *new_parent, new_name, cred)?;
                flags::may_add_name(view, *new_parent)?;
                // A directory moving elsewhere has its ".." rewritten: it must be writable.
                // A directory replaced stays where it is (as Linux's vfs_rename: only an
                // exchange moves the target).
                let mut moving = vec![(parent, name)];
                if *mode == RenameMode::Exchange {
                    moving.push((new_parent, new_name));
                }
                if parent != new_parent {
                    for (dir, entry) in moving {
                        if let Ok(moving) = view.lookup(*dir, entry)
                            && moving.kind == FileKind::Dir
                        {
                            need(view, moving.ino, cred, WRITE)?;
                        }
                    }
                }
                Ok(())
            }
            NameRequest::ReadLink { .. } => Ok(()),
        }
    }

    fn leasing(&self) -> Leasing<'_> {
        use Target::{Entry, Inode};
        let (needs, grant) = match self {
            NameRequest::Lookup { parent, name, .. } => {
                (vec![], Grant::Found { dir: names_an_entry(name).then_some(*parent) })
            }
            NameRequest::ReadDir { ino, .. } => (vec![], Grant::Found { dir: Some(*ino) }),
            NameRequest::MakeNode { parent, .. } | NameRequest::MakeDir { parent, .. } => {
                (vec![(Inode(*parent), Write)], Grant::Created)
            }
            NameRequest::Symlink { parent, .. } => (vec![(Inode(*parent), Write)], Grant::Read),
            NameRequest::Link { ino, new_parent, .. } => {
                (vec![(Inode(*ino), Write), (Inode(*new_parent), Write)], Grant::Read)
            }
            NameRequest::Unlink { parent, name, .. }
            | NameRequest::RemoveDir { parent, name, .. } => {
                (vec![(Inode(*parent), Write), (Entry(*parent, name), Write)], Grant::Nothing)
            }
            NameRequest::Rename { parent, name, new_parent, new_name, .. } => {
                let needs = vec![
                    (Inode(*parent), Write),
                    (Inode(*new_parent), Write),
                    (Entry(*parent, name), Write),
                    (Entry(*new_parent, new_name), Write),
                ];
                (needs, Grant::Nothing)
            }
            NameRequest::ReadLink { .. } => return Leasing::Uncovered,
        };
        Leasing::Covered { needs, grant }
    }

    fn answer(self, server: &MetadServer, _: Caller) -> Outcome {
        Outcome::Answered(reply(self, &server.store))
    }
}

fn reply(request: NameRequest, store: &Store) -> MetaResponse {
    Ok(match request {
        NameRequest::Lookup { parent, name, .. } => MetaReply::Attr(store.lookup(parent, &name)?),
        NameRequest::MakeNode { parent, name, mode, rdev, cred } => {
            MetaReply::Made(store.make_node(parent, &name, mode, rdev, cred)?)
        }
        NameRequest::MakeDir { parent, name, mode, cred } => {
            MetaReply::Made(store.make_dir(parent, &name, mode, cred)?)
        }
        NameRequest::Symlink { parent, name, target, cred } => {
            MetaReply::Made(store.symlink(parent, &name, &target, cred)?)
        }
        NameRequest::ReadLink { ino } => MetaReply::Target(store.read_link(ino)?),
        NameRequest::Unlink { parent, name, .. } => {
            MetaReply::Unlinked(store.unlink(parent, &name)?)
        }
        NameRequest::RemoveDir { parent, name, .. } => {
            store.remove_dir(parent, &name)?;
            MetaReply::Done
        }
        NameRequest::Rename { parent, name, new_parent, new_name, mode, cred } => {
            let replaced = store.rename(parent, &name, new_parent, &new_name, mode, &cred)?;
            MetaReply::Renamed { replaced }
        }
        NameRequest::Link { ino, new_parent, new_name, .. } => {
            MetaReply::Made(store.link(ino, new_parent, &new_name)?)
        }
        NameRequest::ReadDir { ino, after, limit, .. } => {
            let (parent, entries) = store.read_dir(ino, after, limit.min(4096))?;
            MetaReply::Entries { parent, entries }
        }
    })
}

/// Removing (or replacing) `name` in `parent`: write and search on the directory, neither
/// it nor the entry immutable or append-only, and in a sticky directory only the owner of
/// the entry or of the directory (EPERM otherwise).
fn removable(view: &dyn View, parent: Ino, name: &[u8], cred: &Cred) -> Result<(), MetaError> {
    let dir = need(view, parent, cred, WRITE | EXEC)?;
    flags::may_remove_name(view, parent, name)?;
    if dir.perm & STICKY != 0 && !owns(&dir, cred) {
        // A missing entry is the operation's own error to report.
        if let Ok(victim) = view.lookup(parent, name)
            && !owns(&victim, cred)
        {
            return Err(MetaError::NotPermitted);
        }
    }
    Ok(())
}

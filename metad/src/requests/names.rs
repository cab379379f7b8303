//! Names: looking up, listing, creating, linking, removing and renaming directory entries.
//! Each change is one [`Mutation`](crate::store::Mutation) (`Create`, `Link`, `Unlink`,
//! `RemoveDir`, `Rename`), made by the store call its answer names.

use serde::{Deserialize, Serialize};

use super::{Caller, Family, Grant, Leasing, Target};
use crate::access::{EXEC, READ, STICKY, WRITE, need, owns};
use crate::leases::Need::Write;
use crate::proto::{Cred, FileKind, Ino, MetaError, MetaReply, MetaResponse, RenameMode};
use crate::server::{MetadServer, Outcome};
use crate::store::Store;

#[derive(Clone, Debug, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum NameRequest {
    Lookup {
        parent: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        cred: Cred,
    },
    /// Creates a regular file, fifo, socket or device node; `mode` includes the type bits.
    MakeNode {
        parent: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        mode: u32,
        rdev: u32,
        cred: Cred,
    },
    MakeDir {
        parent: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        mode: u32,
        cred: Cred,
    },
    Symlink {
        parent: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
        cred: Cred,
    },
    ReadLink {
        ino: Ino,
    },
    Unlink {
        parent: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        cred: Cred,
    },
    RemoveDir {
        parent: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        cred: Cred,
    },
    Rename {
        parent: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        new_parent: Ino,
        #[serde(with = "serde_bytes")]
        new_name: Vec<u8>,
        mode: RenameMode,
        cred: Cred,
    },
    Link {
        ino: Ino,
        new_parent: Ino,
        #[serde(with = "serde_bytes")]
        new_name: Vec<u8>,
        cred: Cred,
    },
    /// Entries after `after` (0 = from the start), at most `limit`.
    ReadDir {
        ino: Ino,
        after: u64,
        limit: u32,
        cred: Cred,
    },
}

/// Whether a lookup of `name` reads an entry of its parent directory: not "." or "..",
/// which find an inode, or a directory's parent, by number (for file handles). Only a
/// lookup of an entry is covered by, and grants, a lease on the directory.
pub fn names_an_entry(name: &[u8]) -> bool {
    name != b"." && name != b".."
}

impl Family for NameRequest {
    fn permitted(&self, store: &Store) -> Result<(), MetaError> {
        match self {
            // "." and ".." come from the kernel turning a file handle back into an inode.
            NameRequest::Lookup { parent, name, cred } => match names_an_entry(name) {
                true => need(store, *parent, cred, EXEC).map(drop),
                false => Ok(()),
            },
            // Checked when listing starts, not for each batch of an open directory.
            NameRequest::ReadDir { ino, after, cred, .. } => match after {
                0 => need(store, *ino, cred, READ).map(drop),
                _ => Ok(()),
            },
            NameRequest::MakeNode { parent, cred, .. }
            | NameRequest::MakeDir { parent, cred, .. }
            | NameRequest::Symlink { parent, cred, .. }
            | NameRequest::Link { new_parent: parent, cred, .. } => {
                need(store, *parent, cred, WRITE | EXEC).map(drop)
            }
            NameRequest::Unlink { parent, name, cred }
            | NameRequest::RemoveDir { parent, name, cred } => {
                removable(store, *parent, name, cred)
            }
            NameRequest::Rename { parent, name, new_parent, new_name, mode, cred } => {
                removable(store, *parent, name, cred)?;
                // Whatever the destination holds is replaced (or swapped), so it is removed.
                removable(store, *new_parent, new_name, cred)?;
                // A directory moving elsewhere has its ".." rewritten: it must be writable.
                // A directory replaced stays where it is (as Linux's vfs_rename: only an
                // exchange moves the target).
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
            NameRequest::MakeNode { parent, .. } => (vec![(Inode(*parent), Write)], Grant::Created),
            NameRequest::MakeDir { parent, .. } | NameRequest::Symlink { parent, .. } => {
                (vec![(Inode(*parent), Write)], Grant::Read)
            }
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
        Outcome::Answered(self.reply(&server.store))
    }
}

impl NameRequest {
    fn reply(self, store: &Store) -> MetaResponse {
        Ok(match self {
            NameRequest::Lookup { parent, name, .. } => {
                MetaReply::Attr(store.lookup(parent, &name)?)
            }
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

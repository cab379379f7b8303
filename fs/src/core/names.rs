//! The namespace: lookups and attributes (from the lease cache when it has them), and the
//! changes to names (create, link, rename, remove) with what they do to the cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use shardfs_meta_api::proto::{
    Attr, AttrRequest, Cred, DirEntry, FileKind, Ino, MAX_NAME_LEN, MAX_SYMLINK_LEN, MetaError,
    NameRequest, Queued, RenameMode, SetAttr, SetTime, Timestamp, Unlinked, names_an_entry,
};
use tracing::debug;

use super::Fs;
use super::open_files::OpenFile;
use super::read_path::update_atime;
use crate::error::{FsError, FsResult};
use crate::leases::NewHere;
use shardfs_rpc::sync::Lock as _;

/// A removal of a name under way (see [`Fs::removing`]); ends when dropped.
struct Removing<'a>(&'a AtomicUsize);

impl Drop for Removing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Fs {
    /// An answer's attributes, or for a file open here (whose buffer and commits the answer
    /// may not reflect) its attributes as [`Fs::get_attr`] gives them.
    pub(super) async fn with_dirty(&self, attr: Attr) -> FsResult<Attr> {
        match self.open_file(attr.ino) {
            Some(_) => self.get_attr(attr.ino).await,
            None => Ok(attr),
        }
    }

    pub async fn lookup(&self, parent: Ino, name: &[u8], cred: &Cred) -> FsResult<Attr> {
        // A name no directory can hold is refused before the listing kept here is asked,
        // as metad would refuse it.
        if name.len() > MAX_NAME_LEN {
            return Err(MetaError::NameTooLong.into());
        }
        // The kernel looks up every name before creating it, and again after it dropped its
        // caches: in a directory this mount made, that costs no round trip.
        if self.leases.known_absent(parent, name) {
            return Err(MetaError::NotFound.into());
        }
        if let Some(attr) = self.leases.known_entry(parent, name) {
            return self.with_dirty(attr).await;
        }
        let dir = names_an_entry(name).then_some(parent);
        let attr = self.granting_attr(self.meta.lookup(parent, name, cred), dir, false);
        self.with_dirty(attr.await?).await
    }

    /// Answered from the attributes kept under the inode's lease, if any. For a file open
    /// here, under its data lock: a commit under way changes both the buffer and the kept
    /// attributes, and must not be seen half done.
    pub async fn get_attr(&self, ino: Ino) -> FsResult<Attr> {
        let file = self.open_file(ino);
        let data = match &file {
            Some(file) => Some(file.data.lock().await),
            None => None,
        };
        let attr = match self.leases.cached_attr(ino) {
            Some(attr) => attr,
            None => self
                .granting_attr(self.meta.get_attr(ino), None, false)
                .await
                .map_err(FsError::stale_if_gone)?,
        };
        Ok(match data {
            Some(data) => data.with_dirty(attr),
            None => attr,
        })
    }

    pub async fn set_attr(&self, ino: Ino, cred: Cred, changes: SetAttr) -> FsResult<Attr> {
        // An atime set here replaces that of the reads before it.
        if changes.atime.is_some() {
            self.send_accesses(Some(ino)).await;
        }
        if let Some(attr) = self.set_attr_here(ino, &cred, &changes).await {
            return Ok(attr);
        }
        let Some(file) = self.open_file(ino) else {
            let set = self.granting_attr(self.meta.set_attr(ino, cred, changes), None, false);
            return set.await.map_err(FsError::stale_if_gone);
        };
        let mut data = file.data.lock().await;
        if let Some(size) = changes.size {
            // Buffered bytes past the new end vanish.
            data.dirty.truncate(size);
        }
        let times_only = changes.size.is_none()
            && changes.mode.is_none()
            && changes.uid.is_none()
            && changes.gid.is_none();
        if times_only && data.has_buffered() {
            // Times only (the kernel writing back the times it keeps, or cp -p setting
            // mtime): buffered writes stay buffered, since committing them here would cut a
            // chunk wherever the writes had got to, and their commit takes this mtime, so it
            // does not replace it.
            match changes.mtime {
                Some(SetTime::At(mtime)) => data.dirty_mtime = Some(mtime),
                Some(SetTime::Now) => data.dirty_mtime = Some(Timestamp::now()),
                None => {}
            }
            let set = self.granting_attr(self.meta.set_attr(ino, cred, changes), None, false);
            let attr = set.await?;
            return Ok(data.with_dirty(attr));
        }
        // Buffered writes land first: their commit must not undo a truncate.
        self.flush_locked(&file, &mut data, true).await?;
        let attr = self.granting_attr(self.meta.set_attr(ino, cred, changes), None, false).await?;
        data.layout = None;
        data.committed = Some(attr.clone());
        Ok(attr)
    }

    /// A mode, owner or times change (no size) of a file or directory this mount made,
    /// answered here and queued for metad (`Leases::set_attr_here`), if it can be. What an
    /// open file buffered stays buffered; its commit takes a new mtime set here.
    async fn set_attr_here(&self, ino: Ino, cred: &Cred, changes: &SetAttr) -> Option<Attr> {
        let journal = self.journal.as_ref()?;
        let file = self.open_file(ino);
        let mut data = match &file {
            Some(file) => Some(file.data.lock().await),
            None => None,
        };
        let request = AttrRequest::SetAttr { ino, cred: cred.clone(), changes: changes.clone() };
        let queued = |now| journal.push(Queued { request: request.into(), ino: 0, now }, &[ino]);
        let attr = self.leases.set_attr_here(ino, changes, queued)?;
        Some(match data.as_mut() {
            Some(data) => {
                if changes.mtime.is_some() && data.has_buffered() {
                    data.dirty_mtime = Some(attr.mtime);
                }
                data.with_dirty(attr)
            }
            None => attr,
        })
    }

    pub async fn make_node(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
        cred: Cred,
    ) -> FsResult<Attr> {
        // metad gives the creator of a regular file its write lease too.
        let is_file = matches!(mode & libc::S_IFMT, 0 | libc::S_IFREG);
        let file = (FileKind::File, &[][..]);
        if is_file && let Some(attr) = self.make_here(parent, name, file, mode, &cred) {
            return Ok(attr);
        }
        let epoch = self.leases.epoch();
        let made = self.meta.make_node(parent, name, mode, rdev, cred);
        let attr = self.granting_made(made, parent, name, is_file).await;
        if let Ok(attr) = &attr {
            // A new file has no capability; its first write need not ask metad.
            self.leases.lacks_capability_since(epoch, attr.ino);
        }
        attr
    }

    pub async fn make_dir(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        cred: Cred,
    ) -> FsResult<Attr> {
        if let Some(attr) = self.make_here(parent, name, (FileKind::Dir, &[]), mode, &cred) {
            return Ok(attr);
        }
        // metad gives the creator of a directory its write lease too.
        let made = self.meta.make_dir(parent, name, mode & 0o7777, cred);
        self.granting_made(made, parent, name, true).await
    }

    /// Makes a regular file, a directory or a symlink to `target` here, queued for metad, if
    /// this mount may (see `leases/here.rs`).
    fn make_here(
        &self,
        parent: Ino,
        name: &[u8],
        (kind, target): (FileKind, &[u8]),
        mode: u32,
        cred: &Cred,
    ) -> Option<Attr> {
        let journal = self.journal.as_ref()?;
        if name.len() > MAX_NAME_LEN {
            return None;
        }
        let perm = if kind == FileKind::Symlink { 0o777 } else { mode & 0o7777 };
        let new = NewHere { kind, perm, cred: cred.clone(), target: target.to_vec() };
        self.leases.make_here(parent, name, &new, |now| {
            journal.push_made(parent, |ino| {
                let (name, mode, cred) = (name.to_vec(), mode & 0o7777, cred.clone());
                let request = match kind {
                    FileKind::Dir => NameRequest::MakeDir { parent, name, mode, cred },
                    FileKind::Symlink => {
                        NameRequest::Symlink { parent, name, target: target.to_vec(), cred }
                    }
                    _ => NameRequest::MakeNode {
                        parent,
                        name,
                        mode: mode | libc::S_IFREG,
                        rdev: 0,
                        cred,
                    },
                };
                Queued { request: request.into(), ino, now }
            })
        })
    }

    /// Removes `name` from `parent` here, queued for metad, if this mount may (see
    /// `leases/here.rs`): answers whether it did.
    async fn remove_here(&self, parent: Ino, name: &[u8], cred: &Cred, dir: bool) -> bool {
        let Some(journal) = &self.journal else { return false };
        // Counted as a removal, as one sent to metad is: an open of the file starting now
        // registers itself (and so finds it gone), and one already started is seen below.
        self.removals.fetch_add(1, Ordering::SeqCst);
        let _removing = Removing(&self.removals);
        let open = |ino| self.open_file(ino).is_some();
        let removed = self.leases.remove_here(parent, name, cred, dir, open, |now, target| {
            let (name, cred) = (name.to_vec(), cred.clone());
            let request = match dir {
                true => NameRequest::RemoveDir { parent, name, cred },
                false => NameRequest::Unlink { parent, name, cred },
            };
            journal.push(Queued { request: request.into(), ino: 0, now }, &[parent, target])
        });
        removed.is_some()
    }

    pub async fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        cred: Cred,
    ) -> FsResult<Attr> {
        // A target metad refuses (empty, too long) is left to it to refuse.
        let valid = !target.is_empty() && target.len() <= MAX_SYMLINK_LEN;
        let symlink = (FileKind::Symlink, target);
        if valid && let Some(attr) = self.make_here(parent, name, symlink, 0o777, &cred) {
            return Ok(attr);
        }
        let made = self.meta.symlink(parent, name, target, cred);
        self.granting_made(made, parent, name, false).await
    }

    pub async fn read_link(&self, ino: Ino) -> FsResult<Vec<u8>> {
        if let Some(target) = self.leases.known_target(ino) {
            return Ok(target);
        }
        let target = self.meta.read_link(ino).await;
        target.map_err(|e| FsError::stale_if_gone(e.into()))
    }

    pub async fn unlink(&self, parent: Ino, name: &[u8], cred: &Cred) -> FsResult<()> {
        if self.remove_here(parent, name, cred, false).await {
            return Ok(());
        }
        let _removing = self.removing().await?;
        let epoch = self.leases.epoch();
        match self.meta.unlink(parent, name, cred).await {
            Ok(Unlinked { parent: dir, ino, target }) => {
                let attrs = Vec::from_iter([Some(&dir), target.as_ref()].into_iter().flatten());
                self.leases.update_attrs(epoch, &attrs);
                self.leases.listing_removed(parent, name);
                if target.is_none_or(|attr| attr.nlink == 0) {
                    self.leases.name_removed(ino);
                }
                Ok(())
            }
            Err(e) => {
                // It may have happened all the same, to an inode this mount cannot name.
                self.leases.forget_attrs(None);
                self.leases.forget_listing(parent);
                Err(e.into())
            }
        }
    }

    pub async fn remove_dir(&self, parent: Ino, name: &[u8], cred: &Cred) -> FsResult<()> {
        if self.remove_here(parent, name, cred, true).await {
            return Ok(());
        }
        let _removing = self.removing().await?;
        let removed = self.meta.remove_dir(parent, name, cred).await;
        self.leases.forget_attrs(None);
        match removed {
            Ok(()) => self.leases.listing_removed(parent, name),
            Err(_) => self.leases.forget_listing(parent),
        }
        Ok(removed?)
    }

    /// Before this mount removes a name: registers the opens it kept to itself under leases,
    /// since the inode may be losing its last name and metad recalls no lease from the mount
    /// making the change. Opens that start while the removal is under way register
    /// themselves (see [`Fs::open`]). Held until the removal is done.
    async fn removing(&self) -> FsResult<Removing<'_>> {
        // Counted before the open files are listed: an open either is listed or sees the
        // count (both sides use sequentially consistent order).
        self.removals.fetch_add(1, Ordering::SeqCst);
        let removing = Removing(&self.removals);
        self.register_opens().await?;
        Ok(removing)
    }

    /// Registers every open file of the mount with metad. The list includes other
    /// processes' files, so a file in it may have been closed and removed meanwhile: that is
    /// no reason to fail.
    async fn register_opens(&self) -> FsResult<()> {
        let open: Vec<Arc<OpenFile>> = (self.files.locked().values())
            .filter(|(_, handles)| *handles > 0)
            .map(|(f, _)| f.clone())
            .collect();
        for file in open {
            match self.register_open(&file).await {
                // Gone from metad already: nothing left to keep alive.
                Err(FsError::Meta(MetaError::NotFound)) => {}
                result => result?,
            }
        }
        Ok(())
    }

    pub async fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        mode: RenameMode,
        cred: &Cred,
    ) -> FsResult<()> {
        let _removing = self.removing().await?;
        let renamed = self.meta.rename(parent, name, new_parent, new_name, mode, cred).await;
        self.leases.forget_attrs(None);
        // Exchanges, replacements and whiteouts: simpler to learn the names again.
        self.leases.forget_listing(parent);
        self.leases.forget_listing(new_parent);
        // Whatever moved (both ways, in an exchange) has a new "..".
        self.leases.moved_from(parent);
        self.leases.moved_from(new_parent);
        if let Some(replaced) = renamed? {
            self.leases.name_removed(replaced);
        }
        Ok(())
    }

    pub async fn link(
        &self,
        ino: Ino,
        new_parent: Ino,
        new_name: &[u8],
        cred: &Cred,
    ) -> FsResult<Attr> {
        let linked = self.meta.link(ino, new_parent, new_name, cred);
        let linked = self.granting_made(linked, new_parent, new_name, false).await;
        self.with_dirty(linked?).await
    }

    /// `(parent of the directory, entries after cookie `after`)`.
    pub async fn read_dir(
        &self,
        ino: Ino,
        after: u64,
        limit: u32,
        cred: &Cred,
    ) -> FsResult<(Ino, Vec<DirEntry>)> {
        // A directory this mount knows whole is listed here, with metad's cookies.
        let (parent, mut entries) = match self.leases.listed(ino, after, limit as usize) {
            Some(listed) => listed,
            None => {
                let listed = self.meta.read_dir(ino, after, limit, cred);
                self.granting(listed, |(_, entries): &(Ino, Vec<DirEntry>)| {
                    std::iter::once(ino).chain(entries.iter().map(|e| e.attr.ino)).collect()
                })
                .await?
            }
        };
        if after == 0 && self.options.dir_atime {
            match self.leases.cached_attr(ino) {
                Some(attr) => {
                    self.note_read(ino, &attr);
                }
                // In the background: without the directory's attributes at hand, metad
                // decides whether the atime moves.
                None => {
                    if let Some(strict) = self.atime_update(None) {
                        let (meta, leases) = (self.meta.clone(), self.leases.clone());
                        tokio::spawn(async move {
                            if let Err(e) = update_atime(&meta, &leases, ino, strict).await {
                                debug!(ino, "atime update failed: {e}");
                            }
                        });
                    }
                }
            }
        }
        for entry in &mut entries {
            if entry.attr.kind == FileKind::File {
                entry.attr = self.with_dirty(entry.attr.clone()).await?;
            }
        }
        Ok((parent, entries))
    }
}

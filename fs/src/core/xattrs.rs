//! Extended attributes.

use shardfs_meta_api::MetaClientError;
use shardfs_meta_api::acl;
use shardfs_meta_api::proto::{Attr, Cred, Ino, MetaError, Queued, XattrMode, XattrRequest};

use super::Fs;
use crate::error::FsResult;

/// The extended attribute holding file capabilities, which the kernel reads before writes.
const CAPABILITY_XATTR: &[u8] = b"security.capability";

impl Fs {
    pub async fn set_xattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
        cred: &Cred,
    ) -> FsResult<()> {
        if let Some(journal) = &self.journal {
            let request = XattrRequest::SetXattr {
                ino,
                name: name.to_vec(),
                value: value.to_vec(),
                mode,
                cred: cred.clone(),
            };
            let queued =
                |now| journal.push(Queued { request: request.into(), ino: 0, now }, &[ino]);
            if self.leases.set_acl_here(ino, (name, value), cred, queued).is_some() {
                return Ok(());
            }
        }
        let set = self.meta.set_xattr(ino, name, value, mode, cred).await;
        if name == acl::ACCESS || name == acl::DEFAULT {
            self.leases.acl_changed(ino, name == acl::DEFAULT);
        }
        self.xattr_changed(ino, set)
    }

    /// After a change of `ino`'s attributes (its change time, and for an ACL its mode): the
    /// attributes metad answered are kept in place of those kept before, which go (with
    /// what they said of `security.capability`) whatever the change came to.
    fn xattr_changed(&self, ino: Ino, changed: Result<Attr, MetaClientError>) -> FsResult<()> {
        self.leases.forget_attrs(Some(ino));
        let attr = changed?;
        self.leases.granted_attr(self.leases.epoch(), &attr, false);
        Ok(())
    }

    pub async fn get_xattr(&self, ino: Ino, name: &[u8], cred: &Cred) -> FsResult<Vec<u8>> {
        let capability = name == CAPABILITY_XATTR;
        if capability && self.leases.lacks_capability(ino) {
            return Err(MetaError::NoData.into());
        }
        let epoch = self.leases.epoch();
        let value = self.meta.get_xattr(ino, name, cred).await;
        if capability && matches!(value, Err(MetaClientError::Meta(MetaError::NoData))) {
            self.leases.lacks_capability_since(epoch, ino);
        }
        Ok(value?)
    }

    /// Drops `ino`'s file capabilities, if it has any, as the kernel does before a write
    /// by anyone (root included) on the page cache path, which O_APPEND writes bypass.
    pub(super) async fn drop_capability(&self, ino: Ino, writer: &Cred) -> FsResult<()> {
        if self.leases.lacks_capability(ino) {
            return Ok(());
        }
        let epoch = self.leases.epoch();
        match self.meta.remove_xattr(ino, CAPABILITY_XATTR, writer).await {
            Err(MetaClientError::Meta(MetaError::NoData)) => {
                self.leases.lacks_capability_since(epoch, ino);
                Ok(())
            }
            removed => {
                self.xattr_changed(ino, removed)?;
                self.leases.forget_kernel_attrs(ino);
                Ok(())
            }
        }
    }

    pub async fn list_xattr(&self, ino: Ino, cred: &Cred) -> FsResult<Vec<Vec<u8>>> {
        Ok(self.meta.list_xattr(ino, cred).await?)
    }

    pub async fn remove_xattr(&self, ino: Ino, name: &[u8], cred: &Cred) -> FsResult<()> {
        // `cp -a` removes the default ACL of every directory it copies that had none.
        if (name == acl::ACCESS || name == acl::DEFAULT) && self.leases.known_without_acl(ino) {
            return Err(MetaError::NoData.into());
        }
        let removed = self.meta.remove_xattr(ino, name, cred).await;
        self.xattr_changed(ino, removed)
    }
}

//! Extended attributes.

use shardfs_meta_api::MetaClientError;
use shardfs_meta_api::proto::{Cred, Ino, MetaError, XattrMode};

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
        let set = self.meta.set_xattr(ino, name, value, mode, cred).await;
        // The change time, and for an ACL the mode; for a default ACL, what is made in the
        // directory from now on.
        self.leases.forget_attrs(Some(ino));
        self.leases.forget_plain(ino);
        Ok(set?)
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

    pub async fn list_xattr(&self, ino: Ino, cred: &Cred) -> FsResult<Vec<Vec<u8>>> {
        Ok(self.meta.list_xattr(ino, cred).await?)
    }

    pub async fn remove_xattr(&self, ino: Ino, name: &[u8], cred: &Cred) -> FsResult<()> {
        let removed = self.meta.remove_xattr(ino, name, cred).await;
        self.leases.forget_attrs(Some(ino));
        Ok(removed?)
    }
}

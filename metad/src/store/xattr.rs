//! Extended attributes.

use rusqlite::{Connection, OptionalExtension, params};

use super::classes;
use super::mutation::Mutation;
use super::{Store, get_attr, set_ctime};
use crate::acl::{self, Acl};
use crate::store::Sql as _;
use shardfs_meta_api::class_policy::CLASS_XATTR;
use shardfs_meta_api::proto::{
    Attr, Cred, FileKind, Ino, MAX_XATTR_NAME_LEN, MAX_XATTR_VALUE_LEN, MetaError, Timestamp,
    XattrMode,
};

impl Store {
    pub fn set_xattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
        cred: &Cred,
    ) -> Result<Attr, MetaError> {
        let (name, value, cred) = (name.to_vec(), value.to_vec(), cred.clone());
        let now = Timestamp::now();
        self.apply(Mutation::SetXattr { ino, name, value, mode, cred, now })?.0.into_attr()
    }

    pub fn get_xattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>, MetaError> {
        self.read(|tx| get(tx, ino, name))
    }

    pub fn list_xattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>, MetaError> {
        self.read(|tx| {
            get_attr(tx, ino)?;
            tx.prepare_cached("SELECT name FROM xattrs WHERE ino = ?1 ORDER BY name")
                .sql()?
                .query_map([ino], |r| r.get(0))
                .sql()?
                .collect::<Result<Vec<_>, _>>()
                .sql()
        })
    }

    pub fn remove_xattr(&self, ino: Ino, name: &[u8]) -> Result<Attr, MetaError> {
        let now = Timestamp::now();
        self.apply(Mutation::RemoveXattr { ino, name: name.to_vec(), now })?.0.into_attr()
    }
}

/// See [`Store::get_xattr`].
pub(super) fn get(tx: &Connection, ino: Ino, name: &[u8]) -> Result<Vec<u8>, MetaError> {
    get_attr(tx, ino)?;
    xattr_value(tx, ino, name)?.ok_or(MetaError::NoData)
}

pub(super) fn set(
    tx: &Connection,
    ino: Ino,
    name: &[u8],
    value: &[u8],
    mode: XattrMode,
    cred: &Cred,
    now: Timestamp,
) -> Result<(), MetaError> {
    if name.is_empty() || name.len() > MAX_XATTR_NAME_LEN {
        return Err(MetaError::Invalid("xattr name empty or too long".into()));
    }
    if value.len() > MAX_XATTR_VALUE_LEN {
        return Err(MetaError::TooBig);
    }
    if name == CLASS_XATTR {
        classes::validate_policy(value)?;
    }
    let acl = match name {
        acl::ACCESS | acl::DEFAULT => {
            Some(Acl::parse(value).ok_or_else(|| MetaError::Invalid("malformed ACL".into()))?)
        }
        _ => None,
    };
    let attr = get_attr(tx, ino)?;
    if name == acl::DEFAULT && attr.kind != FileKind::Dir {
        return Err(MetaError::AccessDenied);
    }
    if let (acl::ACCESS, Some(acl)) = (name, &acl) {
        // The ACL decides the permission bits; a plain one is nothing but those bits.
        let perm = acl.access_perm(attr.perm, attr.gid, cred);
        tx.prepare_cached("UPDATE inodes SET perm = ?2 WHERE ino = ?1")
            .sql()?
            .execute(params![ino, perm])
            .sql()?;
        if acl.is_plain() {
            tx.prepare_cached("DELETE FROM xattrs WHERE ino = ?1 AND name = ?2")
                .sql()?
                .execute(params![ino, name])
                .sql()?;
            return set_ctime(tx, ino, now);
        }
    }
    let exists = tx
        .prepare_cached("SELECT 1 FROM xattrs WHERE ino = ?1 AND name = ?2")
        .sql()?
        .query_row(params![ino, name], |_| Ok(()))
        .optional()
        .sql()?
        .is_some();
    match (mode, exists) {
        (XattrMode::Create, true) => return Err(MetaError::Exists),
        (XattrMode::Replace, false) => return Err(MetaError::NoData),
        _ => {}
    }
    put_xattr(tx, ino, name, value)?;
    set_ctime(tx, ino, now)
}

pub(super) fn remove(
    tx: &Connection,
    ino: Ino,
    name: &[u8],
    now: Timestamp,
) -> Result<(), MetaError> {
    get_attr(tx, ino)?;
    let removed = tx
        .prepare_cached("DELETE FROM xattrs WHERE ino = ?1 AND name = ?2")
        .sql()?
        .execute(params![ino, name])
        .sql()?;
    if removed == 0 {
        return Err(MetaError::NoData);
    }
    set_ctime(tx, ino, now)
}

/// The value of one extended attribute, if set.
pub(super) fn xattr_value(
    tx: &Connection,
    ino: Ino,
    name: &[u8],
) -> Result<Option<Vec<u8>>, MetaError> {
    tx.prepare_cached("SELECT value FROM xattrs WHERE ino = ?1 AND name = ?2")
        .sql()?
        .query_row(params![ino, name], |r| r.get(0))
        .optional()
        .sql()
}

pub(super) fn put_xattr(
    tx: &Connection,
    ino: Ino,
    name: &[u8],
    value: &[u8],
) -> Result<(), MetaError> {
    tx.prepare_cached(
        "INSERT INTO xattrs (ino, name, value) VALUES (?1, ?2, ?3)
         ON CONFLICT (ino, name) DO UPDATE SET value = excluded.value",
    )
    .sql()?
    .execute(params![ino, name, value])
    .sql()?;
    Ok(())
}

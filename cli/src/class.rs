//! `shardfs class get|set PATH`: a file's or directory's storage class policy, kept in its
//! `user.shardfs.class` xattr (see `shardfs_meta_api::class_policy`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, bail};
use shardfs_meta_api::class_policy::{CLASS_XATTR, ClassPolicy};

/// What `shardfs class get` prints for `path`.
pub fn get(path: &Path) -> anyhow::Result<String> {
    let policy = read(path)?;
    Ok(match policy {
        Some(policy) => policy.to_string(),
        None => "default (the volume's hot class, then its cold class)".to_string(),
    })
}

/// Sets `path`'s policy to `policy` (`default` removes it).
pub fn set(path: &Path, policy: &str) -> anyhow::Result<()> {
    let target = c_path(path)?;
    let name = CString::new(CLASS_XATTR).expect("no NUL in the name");
    if policy.trim() == "default" {
        // SAFETY: both pointers are NUL-terminated strings that outlive the call.
        let removed = unsafe { libc::removexattr(target.as_ptr(), name.as_ptr()) };
        if removed != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::ENODATA) {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot clear the class of {}", path.display()));
        }
        return Ok(());
    }
    let policy: ClassPolicy = policy.parse()?;
    let value = policy.to_string();
    // SAFETY: the path and name are NUL-terminated, the value is `value.len()` bytes, and
    // all outlive the call.
    let set = unsafe {
        libc::setxattr(target.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0)
    };
    if set != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot set the class of {}", path.display()));
    }
    Ok(())
}

/// The policy `path` states, if any.
fn read(path: &Path) -> anyhow::Result<Option<ClassPolicy>> {
    let target = c_path(path)?;
    let name = CString::new(CLASS_XATTR).expect("no NUL in the name");
    let mut value = [0u8; 64];
    // SAFETY: the path and name are NUL-terminated and the buffer is `value.len()` bytes,
    // all outliving the call.
    let len = unsafe {
        libc::getxattr(target.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), value.len())
    };
    if len < 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ENODATA) {
            return Ok(None);
        }
        return Err(error).with_context(|| format!("cannot read the class of {}", path.display()));
    }
    match ClassPolicy::from_xattr(&value[..len as usize]) {
        Some(policy) => Ok(Some(policy)),
        None => bail!("{} has a damaged class policy; set it again", path.display()),
    }
}

fn c_path(path: &Path) -> anyhow::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} holds a NUL byte", path.display()))
}

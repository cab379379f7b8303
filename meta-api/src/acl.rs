//! POSIX ACLs in their extended-attribute form (`system.posix_acl_access` and
//! `system.posix_acl_default`), and the rules that tie them to mode bits.
//!
//! The xattr value is a little-endian `u32` version (2) followed by entries of
//! `tag: u16, perm: u16, id: u32`. With FUSE_POSIX_ACL the kernel enforces ACLs, but the file
//! system keeps them consistent with the mode: a chmod rewrites the ACL's base entries, an
//! access ACL sets the mode's permission bits, and new inodes inherit their directory's
//! default ACL.

/// Name of the access ACL attribute.
pub const ACCESS: &[u8] = b"system.posix_acl_access";
/// Name of the default (inherited) ACL attribute, on directories.
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

use crate::proto::Cred;

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// The rwx bits of `mode` that the entry tagged `tag` stands for: the owner's, the group's
/// (for the mask, or the owning group when there is no mask) or others'; `None` for the
/// entries the mode says nothing of (named users and groups, the owning group under a mask).
fn base_bits(tag: u16, mode: u32, has_mask: bool) -> Option<u16> {
    let bits = match tag {
        USER_OBJ => mode >> 6,
        MASK => mode >> 3,
        GROUP_OBJ if !has_mask => mode >> 3,
        OTHER => mode,
        _ => return None,
    };
    Some((bits & 7) as u16)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// A parsed, validated ACL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<Entry>,
}

impl Acl {
    /// Parses and validates an ACL xattr value: one owner, owning-group and other entry, a
    /// mask whenever named entries exist, permissions within rwx.
    pub fn parse(value: &[u8]) -> Option<Acl> {
        let (version, rest) = value.split_first_chunk::<4>()?;
        if u32::from_le_bytes(*version) != VERSION || rest.len() % 8 != 0 {
            return None;
        }
        let entries: Vec<Entry> = rest
            .chunks_exact(8)
            .map(|e| Entry {
                tag: u16::from_le_bytes([e[0], e[1]]),
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
            .collect();
        let count = |tag| entries.iter().filter(|e| e.tag == tag).count();
        let named = count(USER) + count(GROUP);
        let valid = entries.iter().all(|e| {
            e.perm <= 7 && matches!(e.tag, USER_OBJ | USER | GROUP_OBJ | GROUP | MASK | OTHER)
        }) && count(USER_OBJ) == 1
            && count(GROUP_OBJ) == 1
            && count(OTHER) == 1
            && count(MASK) <= 1
            && (named == 0 || count(MASK) == 1);
        valid.then_some(Acl { entries })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = VERSION.to_le_bytes().to_vec();
        for e in &self.entries {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    fn perm(&self, tag: u16) -> Option<u16> {
        self.entries.iter().find(|e| e.tag == tag).map(|e| e.perm)
    }

    /// The rwxrwxrwx bits this ACL implies: owner, mask (or owning group), other.
    pub fn mode_bits(&self) -> u32 {
        let group = self.perm(MASK).or(self.perm(GROUP_OBJ)).unwrap_or(0);
        let owner = self.perm(USER_OBJ).unwrap_or(0);
        let other = self.perm(OTHER).unwrap_or(0);
        (u32::from(owner) << 6) | (u32::from(group) << 3) | u32::from(other)
    }

    /// Whether `cred` may have `want` (rwx bits) on an inode owned by `owner`:`group` with
    /// this access ACL, by the POSIX.1e algorithm: owner entry, else a named user entry
    /// (masked), else any matching group entry that grants all of `want` (masked), else
    /// other. Root is not special here.
    pub fn permits(&self, owner: u32, group: u32, cred: &Cred, want: u16) -> bool {
        let mask = self.perm(MASK).unwrap_or(7);
        if cred.uid == owner {
            return self.perm(USER_OBJ).unwrap_or(0) & want == want;
        }
        if let Some(e) = self.entries.iter().find(|e| e.tag == USER && e.id == cred.uid) {
            return e.perm & mask & want == want;
        }
        let mut in_some_group = false;
        for e in &self.entries {
            let matches = match e.tag {
                GROUP_OBJ => cred.in_group(group),
                GROUP => cred.in_group(e.id),
                _ => false,
            };
            if matches {
                if e.perm & mask & want == want {
                    return true;
                }
                in_some_group = true;
            }
        }
        !in_some_group && self.perm(OTHER).unwrap_or(0) & want == want
    }

    /// The permission bits of a file with mode bits `perm` and group `gid` once `cred`
    /// sets this as its access ACL: the ACL's rwx bits; and, as with chmod, a caller
    /// outside the file's group loses its set-group-id.
    pub fn access_perm(&self, perm: u16, gid: u32, cred: &Cred) -> u16 {
        let mut perm = (u32::from(perm) & !0o777) | self.mode_bits();
        if cred.uid != 0 && !cred.in_group(gid) {
            perm &= !libc::S_ISGID;
        }
        perm as u16
    }

    /// Whether the mode bits alone say everything this ACL says.
    pub fn is_plain(&self) -> bool {
        self.entries.iter().all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER))
    }

    /// chmod: the base entries take the new mode's bits.
    pub fn chmod(&mut self, mode: u32) {
        let has_mask = self.perm(MASK).is_some();
        for e in &mut self.entries {
            if let Some(bits) = base_bits(e.tag, mode, has_mask) {
                e.perm = bits;
            }
        }
    }

    /// The ACL and permission bits of a new inode created with `mode` in a directory with
    /// this default ACL (umask does not apply when a default ACL exists).
    pub fn inherit(&self, mode: u32) -> (Acl, u32) {
        let mut acl = self.clone();
        let has_mask = acl.perm(MASK).is_some();
        for e in &mut acl.entries {
            if let Some(allowed) = base_bits(e.tag, mode, has_mask) {
                e.perm &= allowed;
            }
        }
        let bits = acl.mode_bits();
        (acl, (mode & !0o777) | bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_ID: u32 = u32::MAX;

    fn from_mode(mode: u32) -> Acl {
        let entry = |tag, shift: u32| Entry { tag, perm: ((mode >> shift) & 7) as u16, id: NO_ID };
        Acl { entries: vec![entry(USER_OBJ, 6), entry(GROUP_OBJ, 3), entry(OTHER, 0)] }
    }

    fn with_named_user(mode: u32, user_perm: u16, mask: u16) -> Acl {
        let mut acl = from_mode(mode);
        acl.entries.insert(1, Entry { tag: USER, perm: user_perm, id: 1000 });
        acl.entries.push(Entry { tag: MASK, perm: mask, id: NO_ID });
        acl
    }

    #[test]
    fn round_trip_and_validation() {
        let acl = with_named_user(0o640, 6, 6);
        assert_eq!(Acl::parse(&acl.to_bytes()), Some(acl.clone()));
        assert!(!acl.is_plain());
        assert!(from_mode(0o755).is_plain());
        // A named entry without a mask, a second owner entry, garbage.
        let mut no_mask = acl.clone();
        no_mask.entries.retain(|e| e.tag != MASK);
        assert_eq!(Acl::parse(&no_mask.to_bytes()), None);
        let mut two_owners = from_mode(0o700);
        two_owners.entries.push(Entry { tag: USER_OBJ, perm: 7, id: NO_ID });
        assert_eq!(Acl::parse(&two_owners.to_bytes()), None);
        assert_eq!(Acl::parse(b"\x02\0\0\0\x01"), None);
        assert_eq!(Acl::parse(b""), None);
    }

    #[test]
    fn mode_follows_the_mask_and_chmod_rewrites_it() {
        let mut acl = with_named_user(0o640, 7, 5);
        assert_eq!(acl.mode_bits(), 0o650);
        acl.chmod(0o704);
        assert_eq!(acl.mode_bits(), 0o704);
        // The owning group's entry is kept: with a mask, chmod changes the mask instead.
        assert_eq!(acl.perm(GROUP_OBJ), Some(4));
    }

    #[test]
    fn inheritance_masks_with_the_requested_mode() {
        let default = with_named_user(0o770, 7, 7);
        let (acl, mode) = default.inherit(libc::S_IFREG | 0o644);
        assert_eq!(mode, libc::S_IFREG | 0o640);
        assert_eq!(acl.perm(USER), Some(7), "named entries are limited by the mask only");
        assert_eq!(acl.perm(MASK), Some(4));
    }
}

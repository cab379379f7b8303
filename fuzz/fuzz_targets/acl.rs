//! POSIX ACL xattr values, which clients set and metad stores in SQLite and parses again
//! for every permission check. A value that parses re-encodes to one that parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardfs_metad::acl::Acl;
use shardfs_meta_api::proto::Cred;

fuzz_target!(|data: &[u8]| {
    if let Some(acl) = Acl::parse(data) {
        assert_eq!(Acl::parse(&acl.to_bytes()), Some(acl.clone()));
        let _ = acl.mode_bits();
        let cred = Cred { uid: 1000, gid: 1000, umask: 0o022, groups: vec![100] };
        let _ = acl.permits(0, 0, &cred, 0o4);
        let (inherited, _) = acl.inherit(0o666);
        assert!(Acl::parse(&inherited.to_bytes()).is_some());
    }
});

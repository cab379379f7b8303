//! Mount option lists, as fstab lines and `mount -o` hand them to the mount helper.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardfs_fs::options::MountFlags;

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = std::str::from_utf8(data) {
        let _ = MountFlags::parse(list);
    }
});

//! A directory of 100,000 entries lists completely, and a listing in progress survives
//! changes to the directory.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use shardfs_tests::Cluster;

const ENTRIES: usize = 100_000;

#[test]
fn hundred_thousand_entries_with_stable_cookies() {
    let cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount();
    let dir = mount.join("big");
    std::fs::create_dir(&dir).unwrap();
    let started = std::time::Instant::now();
    for i in 0..ENTRIES {
        let path = CString::new(dir.join(format!("entry-{i:06}")).as_os_str().as_bytes()).unwrap();
        // mknod makes a regular file without an open/close pair: one metad transaction each.
        assert_eq!(unsafe { libc::mknod(path.as_ptr(), libc::S_IFREG | 0o644, 0) }, 0, "entry {i}");
    }
    eprintln!("created {ENTRIES} entries in {:?}", started.elapsed());

    // Read half the listing, then change the directory: remove entries already listed, add
    // new ones. Every entry not touched must still be listed exactly once.
    let mut listing = std::fs::read_dir(&dir).unwrap();
    let mut seen = Vec::new();
    for entry in listing.by_ref().take(ENTRIES / 2) {
        seen.push(entry.unwrap().file_name().to_string_lossy().into_owned());
    }
    for name in seen.iter().take(1000) {
        std::fs::remove_file(dir.join(name)).unwrap();
    }
    for i in 0..1000 {
        std::fs::write(dir.join(format!("added-{i}")), b"").unwrap();
    }
    for entry in listing {
        seen.push(entry.unwrap().file_name().to_string_lossy().into_owned());
    }
    let original: Vec<_> = seen.iter().filter(|n| n.starts_with("entry-")).collect();
    let unique: HashSet<_> = original.iter().collect();
    assert_eq!(unique.len(), original.len(), "an entry was listed twice");
    assert_eq!(unique.len(), ENTRIES, "an untouched entry was lost");
    // A fresh listing sees exactly the directory's current content.
    let now: HashSet<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(now.len(), ENTRIES);
    assert!(now.contains("added-999") && !now.contains(&seen[0]));
}

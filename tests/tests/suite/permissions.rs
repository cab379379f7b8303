//! metad checks permissions itself, as the calling user, behind the kernel's
//! default_permissions: requests that skip the kernel (a raw client) are still refused, and
//! mounts agree with metad on supplementary groups.

use shardfs_meta_api::MetaClientError;
use shardfs_meta_api::proto::{Cred, MetaError, ROOT_INO, RenameMode, SetAttr, XattrMode};
use shardfs_tests::{Cluster, sh};

fn user(uid: u32, groups: &[u32]) -> Cred {
    Cred { uid, gid: uid, umask: 0o022, groups: groups.to_vec() }
}

/// The metad error of a failed call.
fn refused<T: std::fmt::Debug>(result: Result<T, MetaClientError>) -> MetaError {
    match result {
        Err(MetaClientError::Meta(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn metad_refuses_what_the_caller_may_not_do() {
    let cluster = Cluster::start(3, 2, 1);
    let alice = user(1000, &[]);
    let bob = user(1001, &[]);
    cluster.query(async |c| {
        let root = Cred::ROOT;
        c.set_attr(ROOT_INO, root.clone(), SetAttr { mode: Some(0o755), ..Default::default() })
            .await
            .unwrap();
        // A private directory of root's, a shared sticky one, and a file of alice's.
        let private = c.make_dir(ROOT_INO, b"private", 0o700, root.clone()).await.unwrap().attr;
        c.make_node(private.ino, b"secret", libc::S_IFREG | 0o644, 0, root.clone()).await.unwrap();
        let tmp = c.make_dir(ROOT_INO, b"tmp", 0o1777, root.clone()).await.unwrap().attr;
        let mine = c
            .make_node(tmp.ino, b"alice", libc::S_IFREG | 0o644, 0, alice.clone())
            .await
            .unwrap()
            .attr;
        assert_eq!(mine.uid, 1000);

        // Searching, listing and creating need x, r and wx on the directory.
        let e = refused(c.lookup(private.ino, b"secret", &alice).await);
        assert_eq!(e, MetaError::AccessDenied);
        assert_eq!(refused(c.read_dir(private.ino, 0, 10, &alice).await), MetaError::AccessDenied);
        let e = refused(c.make_node(ROOT_INO, b"x", libc::S_IFREG | 0o644, 0, alice.clone()).await);
        assert_eq!(e, MetaError::AccessDenied);
        assert_eq!(
            refused(c.unlink(private.ino, b"secret", &alice).await),
            MetaError::AccessDenied
        );
        // In a sticky directory only the owner removes or renames an entry away.
        assert_eq!(refused(c.unlink(tmp.ino, b"alice", &bob).await), MetaError::NotPermitted);
        let moved = c.rename(tmp.ino, b"alice", tmp.ino, b"bob", RenameMode::Replace, &bob).await;
        assert_eq!(refused(moved), MetaError::NotPermitted);
        // Only the owner changes the mode; only root gives a file away.
        let chmod = SetAttr { mode: Some(0o777), ..Default::default() };
        let e = refused(c.set_attr(mine.ino, bob.clone(), chmod.clone()).await);
        assert_eq!(e, MetaError::NotPermitted);
        c.set_attr(mine.ino, alice.clone(), chmod).await.unwrap();
        let chown = SetAttr { uid: Some(1001), ..Default::default() };
        assert_eq!(
            refused(c.set_attr(mine.ino, alice.clone(), chown).await),
            MetaError::NotPermitted
        );
        // trusted.* is root's: invisible to others and not theirs to set.
        c.set_xattr(mine.ino, b"trusted.t", b"v", XattrMode::Any, &root).await.unwrap();
        assert_eq!(refused(c.get_xattr(mine.ino, b"trusted.t", &alice).await), MetaError::NoData);
        let names = c.list_xattr(mine.ino, &alice).await.unwrap();
        assert!(!names.iter().any(|n| n.starts_with(b"trusted.")), "{names:?}");
        let e = refused(c.set_xattr(mine.ino, b"trusted.t", b"w", XattrMode::Any, &alice).await);
        assert_eq!(e, MetaError::NotPermitted);
        // user.* needs write permission on the file to set.
        let chmod = SetAttr { mode: Some(0o644), ..Default::default() };
        c.set_attr(mine.ino, alice.clone(), chmod).await.unwrap();
        let e = refused(c.set_xattr(mine.ino, b"user.u", b"v", XattrMode::Any, &bob).await);
        assert_eq!(e, MetaError::AccessDenied);
        c.set_xattr(mine.ino, b"user.u", b"v", XattrMode::Any, &alice).await.unwrap();
        // File capabilities are root's to set; whoever may write the file drops them (the
        // kernel does, as the writer, when it changes the file).
        let caps: &[u8] = b"security.capability";
        c.set_xattr(mine.ino, caps, b"\x01", XattrMode::Any, &root).await.unwrap();
        let e = refused(c.set_xattr(mine.ino, caps, b"\x02", XattrMode::Any, &alice).await);
        assert_eq!(e, MetaError::NotPermitted);
        assert_eq!(refused(c.remove_xattr(mine.ino, caps, &bob).await), MetaError::AccessDenied);
        c.remove_xattr(mine.ino, caps, &alice).await.unwrap();
        // Everything refused above is allowed to root.
        c.lookup(private.ino, b"secret", &root).await.unwrap();
        c.unlink(tmp.ino, b"alice", &root).await.unwrap();
    });
}

#[test]
fn supplementary_groups_count_on_a_mount() {
    let cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount_with(&["--allow-other"]);
    let m = mount.path.display();
    sh(&format!("chmod 755 {m} && mkdir -m 2770 {m}/team && chgrp 4242 {m}/team"));
    let as_user = |groups: &str, script: &str| {
        std::process::Command::new("setpriv")
            .args(["--reuid=1000", "--regid=1000", &format!("--groups={groups}")])
            .args(["bash", "-c", script])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    // A member through a supplementary group may work in the directory; others may not.
    assert!(as_user("4242", &format!("echo hi > {m}/team/note && ls {m}/team")));
    assert!(!as_user("77", &format!("ls {m}/team")));
    assert_eq!(sh(&format!("stat -c %g {m}/team/note")).trim(), "4242", "setgid directory");
}

/// Names the kernel never sends, from a client that skips it: refused with the errno a
/// local filesystem would give, and nothing is created.
#[test]
fn metad_refuses_hostile_names() {
    let cluster = Cluster::start(3, 2, 1);
    let root = Cred::ROOT;
    cluster.query(async |c| {
        let file = c.make_node(ROOT_INO, b"file", libc::S_IFREG | 0o644, 0, root.clone());
        let file = file.await.unwrap().attr;
        let long = vec![b'x'; 256];
        let bad: [&[u8]; 6] = [b"a/b", b"/", b"a\0b", b".", b"..", b""];
        for name in bad.into_iter().chain([&long[..]]) {
            let expected_long = name.len() > 255;
            let check = |e: MetaError| match e {
                MetaError::NameTooLong => assert!(expected_long, "{name:?}"),
                MetaError::Invalid(_) => assert!(!expected_long, "{name:?}"),
                other => panic!("{name:?}: {other:?}"),
            };
            let mode = libc::S_IFREG | 0o644;
            check(refused(c.make_node(ROOT_INO, name, mode, 0, root.clone()).await));
            check(refused(c.make_dir(ROOT_INO, name, 0o755, root.clone()).await));
            check(refused(c.symlink(ROOT_INO, name, b"target", root.clone()).await));
            check(refused(c.link(file.ino, ROOT_INO, name, &root).await));
            let rename = c.rename(ROOT_INO, b"file", ROOT_INO, name, RenameMode::Replace, &root);
            check(refused(rename.await));
        }
        let (_, entries) = c.read_dir(ROOT_INO, 0, 100, &root).await.unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(names, [b"file".as_slice()], "nothing else was created");
    });
}

/// Appending to a file drops its capabilities, whoever writes (root too), as a write through
/// the page cache does: O_APPEND writes bypass it (xfstests generic/093).
#[test]
fn an_append_drops_file_capabilities() {
    let cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount_with(&["--allow-other"]);
    let m = mount.path.display();
    sh(&format!("chmod 777 {m}"));
    // cap_chown+ep, as setcap writes it (revision 2).
    let cap_chown = "0sAQAAAgEAAAAAAAAAAAAAAAAAAAA=";
    for (name, writer) in [("root", "".to_string()), ("user", shardfs_tests::as_user(1000))] {
        let file = format!("{m}/{name}");
        sh(&format!("touch {file} && chmod 666 {file}"));
        sh(&format!("setfattr -n security.capability -v {cap_chown} {file}"));
        assert!(sh(&format!("getfattr -n security.capability {file}")).contains("capability"));
        sh(&format!("{writer}bash -c 'echo data >> {file}'"));
        let left = sh(&format!("getfattr -n security.capability {file} 2>&1 || true"));
        assert!(left.contains("No such attribute"), "{name}: {left}");
        assert_eq!(std::fs::read(&file).unwrap(), b"data\n");
    }
}

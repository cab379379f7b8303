//! Requests run through the server as a client's would, against a real store: what runs
//! beside what, and what waits for what.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shardfs_chunk_api::Encoding;
use shardfs_rpc::{ClusterKey, DaemonAuth};

use super::Caller;
use crate::members::Members;
use crate::server::{MetadServer, Outcome};
use crate::sessions::SessionLimits;
use crate::store::{Store, VolumeOverrides, VolumeSettings};
use shardfs_meta_api::proto::*;

fn server(dir: &tempfile::TempDir) -> Arc<MetadServer> {
    let settings = VolumeSettings {
        hot: Encoding::Rs { k: 2, m: 1 },
        cold: Encoding::Rs { k: 2, m: 1 },
        chunk_size: 1 << 20,
    };
    let path = dir.path().join("meta.db");
    let store = Arc::new(Store::open(&path, VolumeOverrides::default(), settings).unwrap());
    let members = Members::load(store.clone(), Duration::from_secs(60)).unwrap();
    let holdings = store.holdings().unwrap();
    let auth = DaemonAuth::new(ClusterKey::from_secret(b"requests tests"));
    Arc::new(MetadServer::new(store, members, (SessionLimits::default(), holdings), auth))
}

/// A tool's caller on connection `n`.
fn caller(n: u16) -> Caller {
    Caller { holder: 1_000 + u64::from(n), peer: SocketAddr::from(([127, 0, 0, 1], n)) }
}

fn ask(server: &MetadServer, request: impl Into<MetaRequest>, n: u16) -> Outcome {
    server.answer_leased(request.into(), caller(n))
}

fn answered(outcome: Outcome) -> MetaReply {
    match outcome {
        Outcome::Answered(response) => response.unwrap(),
        _ => panic!("the request was not answered at once"),
    }
}

fn mkdir(server: &MetadServer, name: &str) -> Ino {
    let request =
        NameRequest::MakeDir { parent: ROOT_INO, name: name.into(), mode: 0o755, cred: Cred::ROOT };
    match answered(ask(server, request, 1)) {
        MetaReply::Made(made) => made.attr.ino,
        other => panic!("{other:?}"),
    }
}

fn lookup(parent: Ino, name: &str) -> NameRequest {
    NameRequest::Lookup { parent, name: name.into(), cred: Cred::ROOT }
}

#[test]
fn a_change_waiting_for_the_writer_holds_up_only_what_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir);
    let (busy_dir, quiet_dir) = (mkdir(&server, "busy"), mkdir(&server, "quiet"));
    // A long change holds the writer (as a big commit or fsck's repair would), and a create
    // in `busy` queues behind it.
    let writer = server.store.hold_writer();
    let creating = {
        let server = server.clone();
        std::thread::spawn(move || {
            let create = NameRequest::MakeNode {
                parent: busy_dir,
                name: "new".into(),
                mode: libc::S_IFREG | 0o644,
                rdev: 0,
                cred: Cred::ROOT,
            };
            answered(ask(&server, create, 2))
        })
    };
    while !server.leases.lock().is_changing(&[busy_dir]) {
        std::thread::yield_now();
    }
    // Other clients' reads are answered meanwhile, from what is committed, as is a check
    // of the whole store.
    let (done, answers) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let found = answered(ask(&server, lookup(ROOT_INO, "quiet"), 3));
            assert!(matches!(found, MetaReply::Attr(a) if a.ino == quiet_dir));
            let missing = ask(&server, lookup(quiet_dir, "nothing"), 3);
            assert!(matches!(missing, Outcome::Answered(Err(MetaError::NotFound))));
            let listing =
                NameRequest::ReadDir { ino: quiet_dir, after: 0, limit: 10, cred: Cred::ROOT };
            assert!(matches!(answered(ask(&server, listing, 3)), MetaReply::Entries { .. }));
            // A listing of the root would lease `busy` too, which the create is changing.
            let root =
                NameRequest::ReadDir { ino: ROOT_INO, after: 0, limit: 10, cred: Cred::ROOT };
            assert!(matches!(ask(&server, root, 3), Outcome::Stale(..)));
            let fsck = answered(ask(&server, VolumeRequest::Fsck { repair: false }, 4));
            assert!(matches!(fsck, MetaReply::Fsck(report) if report.problems.is_empty()));
            // What the change changes waits for it: a read of it would be out of date,
            // another change to it would race it. What it makes is not there yet.
            assert!(matches!(ask(&server, lookup(ROOT_INO, "busy"), 3), Outcome::Stale(..)));
            let stat = AttrRequest::GetAttr { ino: busy_dir };
            assert!(matches!(ask(&server, stat, 3), Outcome::Stale(..)));
            let missing = ask(&server, lookup(busy_dir, "new"), 3);
            assert!(matches!(missing, Outcome::Answered(Err(MetaError::NotFound))));
            let other = NameRequest::MakeDir {
                parent: busy_dir,
                name: "other".into(),
                mode: 0o755,
                cred: Cred::ROOT,
            };
            assert!(matches!(ask(&server, other, 3), Outcome::WaitChanges(..)));
            done.send(()).unwrap();
        });
        let answer = answers.recv_timeout(Duration::from_secs(10));
        drop(writer);
        answer.expect("reads and checks waited for a change holding the writer");
    });
    let made = creating.join().unwrap();
    assert!(matches!(made, MetaReply::Made(_)), "{made:?}");
    // Once it is made, it is read at once.
    assert!(matches!(answered(ask(&server, lookup(busy_dir, "new"), 3)), MetaReply::Attr(_)));
}

/// A mount's caller on connection `n`, with its session open.
fn mount(server: &MetadServer, n: u16) -> Caller {
    let peer = SocketAddr::from(([127, 0, 0, 1], n));
    let (holder, _) = server.sessions.open(peer, format!("host-{n}"), None);
    Caller { holder, peer }
}

fn holders(conflicts: &[crate::leases::Conflict]) -> Vec<(u64, Ino)> {
    let mut holders: Vec<_> = conflicts.iter().map(|c| (c.holder, c.ino)).collect();
    holders.sort();
    holders.dedup();
    holders
}

#[test]
fn a_batch_recalls_what_its_changes_need_and_grants_its_mount_what_they_made() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir);
    let (a, b) = (mount(&server, 10), mount(&server, 11));
    let d = mkdir(&server, "d");
    let make = |name: &str| NameRequest::MakeNode {
        parent: d,
        name: name.into(),
        mode: libc::S_IFREG | 0o644,
        rdev: 0,
        cred: Cred::ROOT,
    };
    answered(ask(&server, make("f"), 1));
    // Mount b looks at d/f: it holds read leases on both.
    let f = match answered(server.answer_leased(lookup(d, "f").into(), b)) {
        MetaReply::Attr(attr) => attr.ino,
        other => panic!("{other:?}"),
    };
    let reserve = SessionRequest::ReserveInos { count: 8 };
    let MetaReply::Inos { first, count: 8, .. } = answered(server.answer_leased(reserve.into(), a))
    else {
        panic!("no inode numbers");
    };
    let now = Timestamp::now();
    let unlink = NameRequest::Unlink { parent: d, name: "f".into(), cred: Cred::ROOT };
    let batch: MetaRequest = BatchRequest::Batch {
        changes: vec![
            Queued { request: make("new").into(), ino: first, now },
            Queued { request: unlink.into(), ino: 0, now },
        ],
        leases_of: server.grace.incarnation(),
    }
    .into();
    // Made under another metad's leases, with no grace period to send them in: refused.
    let stale = match batch.clone() {
        MetaRequest::Batches(BatchRequest::Batch { changes, .. }) => {
            BatchRequest::Batch { changes, leases_of: server.grace.incarnation() + 2 }
        }
        other => panic!("{other:?}"),
    };
    server.leases.release_holder(b.holder);
    let refused = server.answer_leased(stale.into(), a);
    assert!(matches!(refused, Outcome::Answered(Err(MetaError::LeasesLost))));
    let f_again = answered(server.answer_leased(lookup(d, "f").into(), b));
    assert!(matches!(f_again, MetaReply::Attr(attr) if attr.ino == f), "nothing was applied");
    // What b caches of d and f gives way first.
    match server.answer_leased(batch.clone(), a) {
        Outcome::Recall(_, conflicts) => {
            assert_eq!(holders(&conflicts), vec![(b.holder, d), (b.holder, f)])
        }
        _ => panic!("the batch did not recall b's leases"),
    }
    server.leases.release_holder(b.holder);
    let reply = answered(server.answer_leased(batch, a));
    let MetaReply::Batched { applied: 2, failed: None, made } = reply else { panic!("{reply:?}") };
    assert_eq!(made, vec![first]);
    // Mount a holds the write lease on what it made: b's look at it recalls it.
    match server.answer_leased(AttrRequest::GetAttr { ino: first }.into(), b) {
        Outcome::Recall(_, conflicts) => assert_eq!(holders(&conflicts), vec![(a.holder, first)]),
        _ => panic!("a holds no write lease on the file its batch made"),
    }
    // A tool's session cannot batch.
    let refused = ask(&server, SessionRequest::ReserveInos { count: 1 }, 5);
    assert!(matches!(refused, Outcome::Answered(Err(MetaError::Invalid(_)))));
}

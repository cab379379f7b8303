//! The store's test suite: every namespace and layout operation against a real SQLite file.

use shardfs_chunk_api::{ChunkId, Encoding, ShardId};

use super::{ChunkdRecord, LINGER, Mutation, Store, VolumeOverrides, VolumeSettings};
use shardfs_meta_api::proto::Problem;
use shardfs_meta_api::proto::*;
use shardfs_rpc::sync::Lock as _;

const ROOT: Cred = Cred::ROOT;
const SETTINGS: VolumeSettings = VolumeSettings {
    hot: Encoding::Rs { k: 2, m: 1 },
    cold: Encoding::Rs { k: 2, m: 1 },
    chunk_size: 1 << 20,
};

pub(super) fn open(dir: &tempfile::TempDir) -> Store {
    let store =
        Store::open(&dir.path().join("meta.db"), VolumeOverrides::default(), SETTINGS).unwrap();
    for id in ["c0", "c1", "c2", "new0", "new1", "new2"] {
        let record = ChunkdRecord {
            id: id.into(),
            addr: format!("{id}:1"),
            capacity_bytes: 1 << 40,
            free_bytes: 1 << 40,
            ..ChunkdRecord::default()
        };
        store.register_chunkd(&record).unwrap();
    }
    store
}

fn file(store: &Store, parent: Ino, name: &str) -> Attr {
    store.make_node(parent, name.as_bytes(), libc::S_IFREG | 0o644, 0, ROOT).unwrap().attr
}

/// Lets the files that lost their last name finish lingering, and go.
fn linger_over(store: &Store) {
    let lingered = store.lingered(std::time::Instant::now() + LINGER);
    store.reclaim_unless_open(lingered).unwrap();
}

fn names(store: &Store, dir: Ino) -> Vec<String> {
    let (_, entries) = store.read_dir(dir, 0, 1000).unwrap();
    entries.into_iter().map(|e| String::from_utf8(e.name).unwrap()).collect()
}

fn stored(chunk: ChunkId, len: u64) -> StoredChunk {
    let shards = (0..3)
        .map(|i| ShardPlace { index: i, chunkd: format!("c{i}"), addr: String::new() })
        .collect();
    StoredChunk { chunk, len, encoding: SETTINGS.hot, shards }
}

fn extent(offset: u64, len: u64, chunk: ChunkId, chunk_offset: u64) -> Extent {
    Extent { offset, len, chunk, chunk_offset }
}

fn refcount(store: &Store, chunk: ChunkId) -> u64 {
    store.chunk_status(chunk).unwrap().unwrap().refcount
}

#[test]
fn create_lookup_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let root = store.get_attr(ROOT_INO).unwrap();
    assert_eq!((root.kind, root.nlink), (FileKind::Dir, 2));
    let a = file(&store, ROOT_INO, "a");
    assert_eq!(store.lookup(ROOT_INO, b"a").unwrap().ino, a.ino);
    assert_eq!(store.make_node(ROOT_INO, b"a", libc::S_IFREG, 0, ROOT), Err(MetaError::Exists));
    assert_eq!(store.lookup(ROOT_INO, b"zz"), Err(MetaError::NotFound));
    assert_eq!(store.lookup(a.ino, b"x"), Err(MetaError::NotDir));
    let long = vec![b'x'; 256];
    assert_eq!(store.make_dir(ROOT_INO, &long, 0o755, ROOT), Err(MetaError::NameTooLong));
    assert!(matches!(store.make_dir(ROOT_INO, b"a/b", 0o755, ROOT), Err(MetaError::Invalid(_))));
    let d = store.make_dir(ROOT_INO, b"d", 0o755, ROOT).unwrap().attr;
    assert_eq!(store.get_attr(ROOT_INO).unwrap().nlink, 3);
    assert_eq!(d.nlink, 2);
    let fifo = store.make_node(d.ino, b"p", libc::S_IFIFO | 0o600, 0, ROOT).unwrap().attr;
    assert_eq!(fifo.kind, FileKind::Fifo);
    let dev = store.make_node(d.ino, b"c", libc::S_IFCHR | 0o600, 0x0103, ROOT).unwrap().attr;
    assert_eq!((dev.kind, dev.rdev), (FileKind::CharDevice, 0x0103));
    let link = store.symlink(d.ino, b"l", b"../a", ROOT).unwrap().attr;
    assert_eq!((link.kind, link.size), (FileKind::Symlink, 4));
    assert_eq!(store.read_link(link.ino).unwrap(), b"../a");
    assert_eq!(store.remove_dir(ROOT_INO, b"d"), Err(MetaError::NotEmpty));
    assert_eq!(store.unlink(ROOT_INO, b"d"), Err(MetaError::IsDir));
    assert_eq!(store.remove_dir(ROOT_INO, b"a"), Err(MetaError::NotDir));
}

#[test]
fn hard_links_and_unlink() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let a = file(&store, ROOT_INO, "a");
    let linked = store.link(a.ino, ROOT_INO, b"b").unwrap();
    assert_eq!(linked.attr.nlink, 2);
    // Each change answers the directory's attributes as it left them, and an unlink the
    // inode's while it has a name left.
    assert_eq!(linked.parent, store.get_attr(ROOT_INO).unwrap());
    let unlinked = store.unlink(ROOT_INO, b"a").unwrap();
    assert_eq!(unlinked.parent, store.get_attr(ROOT_INO).unwrap());
    assert_eq!(unlinked.target, Some(store.get_attr(a.ino).unwrap()));
    assert_eq!(store.get_attr(a.ino).unwrap().nlink, 1);
    // The last name gone, the inode lingers a moment for opens on their way, then goes.
    assert_eq!(store.unlink(ROOT_INO, b"b").unwrap().target.map(|t| t.nlink), Some(0));
    assert_eq!(store.get_attr(a.ino).unwrap().nlink, 0);
    linger_over(&store);
    assert_eq!(store.get_attr(a.ino), Err(MetaError::NotFound));
    let made = store.make_dir(ROOT_INO, b"m", 0o755, ROOT).unwrap();
    assert_eq!((made.parent.ino, made.parent.nlink), (ROOT_INO, 3));
    assert_eq!(made.parent, store.get_attr(ROOT_INO).unwrap());
    store.remove_dir(ROOT_INO, b"m").unwrap();
    let d = store.make_dir(ROOT_INO, b"d", 0o755, ROOT).unwrap().attr;
    assert_eq!(store.link(d.ino, ROOT_INO, b"e"), Err(MetaError::NotPermitted));
    // Inode numbers are never reused.
    let c = file(&store, ROOT_INO, "c");
    assert!(c.ino > d.ino && d.ino > a.ino);
}

/// An open is recorded in the database in the change that checks the file exists, and the
/// deletion of a nameless file checks the database: whatever order they come in, an open
/// file is never deleted and a deleted file is never opened.
#[test]
fn an_open_file_outlives_its_names_and_a_deleted_one_cannot_be_opened() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let a = file(&store, ROOT_INO, "a");
    assert_eq!(store.open_file(a.ino, 7, 10).unwrap().ino, a.ino);
    store.unlink(ROOT_INO, b"a").unwrap();
    linger_over(&store);
    // A deletion decided elsewhere, straight to the database: the open row keeps the file.
    let (_, effects) =
        store.apply(Mutation::Reclaim { inos: vec![a.ino], now: Timestamp::now() }).unwrap();
    assert!(effects.deleted.is_empty(), "an open file was deleted");
    assert_eq!(store.get_attr(a.ino).unwrap().nlink, 0);
    // Its last close lets it go.
    store.release_file(a.ino, 7, false).unwrap();
    assert_eq!(store.get_attr(a.ino), Err(MetaError::NotFound));
    // And a file already gone cannot be opened, nor counted as open.
    assert_eq!(store.open_file(a.ino, 7, 10), Err(MetaError::NotFound));
    let b = file(&store, ROOT_INO, "b");
    assert_eq!(store.open_file(b.ino, 7, 1).unwrap().ino, b.ino);
    assert_eq!(store.open_file(b.ino, 7, 1), Err(MetaError::TooManyOpenFiles(1)));
}

#[test]
fn rename_cases() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let d1 = store.make_dir(ROOT_INO, b"d1", 0o755, ROOT).unwrap().attr;
    let d2 = store.make_dir(ROOT_INO, b"d2", 0o755, ROOT).unwrap().attr;
    let f = file(&store, d1.ino, "f");
    let g = file(&store, d2.ino, "g");
    // Across directories, over an existing file.
    store.rename(d1.ino, b"f", d2.ino, b"g", RenameMode::Replace, &Cred::ROOT).unwrap();
    assert_eq!(store.lookup(d2.ino, b"g").unwrap().ino, f.ino);
    linger_over(&store);
    assert_eq!(store.get_attr(g.ino), Err(MetaError::NotFound));
    assert!(names(&store, d1.ino).is_empty());
    // NOREPLACE and EXCHANGE.
    let h = file(&store, d1.ino, "h");
    assert_eq!(
        store.rename(d1.ino, b"h", d2.ino, b"g", RenameMode::NoReplace, &Cred::ROOT),
        Err(MetaError::Exists)
    );
    store.rename(d1.ino, b"h", d2.ino, b"g", RenameMode::Exchange, &Cred::ROOT).unwrap();
    assert_eq!(store.lookup(d1.ino, b"h").unwrap().ino, f.ino);
    assert_eq!(store.lookup(d2.ino, b"g").unwrap().ino, h.ino);
    // A directory into its own subtree.
    let sub = store.make_dir(d1.ino, b"sub", 0o755, ROOT).unwrap().attr;
    assert!(matches!(
        store.rename(ROOT_INO, b"d1", sub.ino, b"x", RenameMode::Replace, &Cred::ROOT),
        Err(MetaError::Invalid(_))
    ));
    // Directory moves fix ".." and link counts; over an empty directory is allowed.
    let empty = store.make_dir(d2.ino, b"empty", 0o755, ROOT).unwrap().attr;
    store.rename(d1.ino, b"sub", d2.ino, b"empty", RenameMode::Replace, &Cred::ROOT).unwrap();
    assert_eq!(store.get_attr(empty.ino), Err(MetaError::NotFound));
    assert_eq!(store.get_attr(d1.ino).unwrap().nlink, 2);
    assert_eq!(store.get_attr(d2.ino).unwrap().nlink, 3);
    assert_eq!(store.read_dir(sub.ino, 0, 10).unwrap().0, d2.ino);
    // Directory over a non-empty directory, over a file, and a file over a directory.
    file(&store, sub.ino, "x");
    store.make_dir(ROOT_INO, b"d3", 0o755, ROOT).unwrap();
    assert_eq!(
        store.rename(ROOT_INO, b"d3", d2.ino, b"empty", RenameMode::Replace, &Cred::ROOT),
        Err(MetaError::NotEmpty)
    );
    assert_eq!(
        store.rename(ROOT_INO, b"d3", d2.ino, b"g", RenameMode::Replace, &Cred::ROOT),
        Err(MetaError::NotDir)
    );
    assert_eq!(
        store.rename(d2.ino, b"g", ROOT_INO, b"d3", RenameMode::Replace, &Cred::ROOT),
        Err(MetaError::IsDir)
    );
}

#[test]
fn readdir_cookies_survive_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for i in 0..10 {
        file(&store, ROOT_INO, &format!("f{i}"));
    }
    let (_, first) = store.read_dir(ROOT_INO, 0, 4).unwrap();
    assert_eq!(first.len(), 4);
    // Entries before the cursor go away, new ones appear: nothing untouched is lost.
    store.unlink(ROOT_INO, b"f0").unwrap();
    store.unlink(ROOT_INO, b"f1").unwrap();
    file(&store, ROOT_INO, "new");
    let (_, rest) = store.read_dir(ROOT_INO, first.last().unwrap().cookie, 100).unwrap();
    let rest: Vec<_> = rest.iter().map(|e| String::from_utf8(e.name.clone()).unwrap()).collect();
    assert_eq!(rest, ["f4", "f5", "f6", "f7", "f8", "f9", "new"]);
}

#[test]
fn writes_split_extents_and_move_refcounts() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let f = file(&store, ROOT_INO, "f");
    let big = ChunkId::of(b"big");
    let small = ChunkId::of(b"small");
    let t = Timestamp::now();
    store.commit_write(f.ino, &[stored(big, 1000)], &[], &[extent(0, 1000, big, 0)], t).unwrap();
    assert_eq!(refcount(&store, big), 1);
    let attr = store
        .commit_write(f.ino, &[stored(small, 10)], &[], &[extent(100, 10, small, 0)], t)
        .unwrap();
    assert_eq!((attr.size, attr.allocated), (1000, 1000));
    let layout = store.layout(f.ino).unwrap();
    assert_eq!(
        layout.extents,
        vec![extent(0, 100, big, 0), extent(100, 10, small, 0), extent(110, 890, big, 110)]
    );
    assert_eq!(layout.chunks.len(), 2);
    assert_eq!(layout.chunks[0].shards.len(), 3);
    assert_eq!(refcount(&store, big), 2);
    // Truncate down drops and trims; truncate up leaves a hole.
    store.set_attr(f.ino, &SetAttr { size: Some(50), ..Default::default() }).unwrap();
    assert_eq!(store.layout(f.ino).unwrap().extents, vec![extent(0, 50, big, 0)]);
    assert_eq!(refcount(&store, small), 0);
    let grown = store.set_attr(f.ino, &SetAttr { size: Some(5000), ..Default::default() });
    assert_eq!((grown.as_ref().unwrap().size, grown.unwrap().allocated), (5000, 50));
    // Unlinking the last name releases every reference.
    store.unlink(ROOT_INO, b"f").unwrap();
    linger_over(&store);
    assert_eq!(refcount(&store, big), 0);
    // An extent must lie inside its chunk, and the chunk must exist.
    let g = file(&store, ROOT_INO, "g");
    assert!(matches!(
        store.commit_write(g.ino, &[], &[], &[extent(0, 2000, big, 0)], t),
        Err(MetaError::Invalid(_))
    ));
    assert!(matches!(
        store.commit_write(g.ino, &[], &[], &[extent(0, 1, ChunkId::of(b"nope"), 0)], t),
        Err(MetaError::ChunkGone(_))
    ));
}

#[test]
fn prepare_dedups_only_fully_redundant_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let f = file(&store, ROOT_INO, "f");
    let known = ChunkId::of(b"known");
    let t = Timestamp::now();
    store.commit_write(f.ino, &[stored(known, 5)], &[], &[extent(0, 5, known, 0)], t).unwrap();
    let fresh = ChunkId::of(b"fresh");
    let place = |_: &ChunkToWrite| Ok(ChunkPlan::Place { encoding: SETTINGS.hot, targets: vec![] });
    let both = [ChunkToWrite { chunk: known, len: 5 }, ChunkToWrite { chunk: fresh, len: 5 }];
    let plans = store.prepare_write(&both, place).unwrap();
    assert!(matches!(&plans[0], ChunkPlan::Stored(at) if at.chunk == known), "{plans:?}");
    assert!(matches!(plans[1], ChunkPlan::Place { .. }));
    // One shard reported bad: the chunk is readable but under-protected, so a new write
    // stores it again rather than referencing it.
    let bad = ShardId { chunk: known, index: 1 };
    assert!(store.mark_shard_unhealthy(bad, "c1").unwrap());
    assert_eq!(store.catalogue_stats(&Default::default()).unwrap().unhealthy_shards, 1);
    let plans = store.prepare_write(&both[..1], place).unwrap();
    assert!(matches!(plans[0], ChunkPlan::Place { .. }));
    // Committing the new copy replaces the bad shard and keeps the healthy ones.
    let mut again = stored(known, 5);
    for shard in &mut again.shards {
        shard.chunkd = format!("new{}", shard.index);
    }
    let g = file(&store, ROOT_INO, "g");
    store.commit_write(g.ino, &[again], &[], &[extent(0, 5, known, 0)], t).unwrap();
    let status = store.chunk_status(known).unwrap().unwrap();
    let places: Vec<_> = status.shards.iter().map(|s| (s.chunkd.as_str(), s.healthy)).collect();
    assert_eq!(places, [("c0", true), ("new1", true), ("c2", true)]);
    assert_eq!(status.refcount, 2);
}

#[test]
fn xattrs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let f = file(&store, ROOT_INO, "f");
    assert_eq!(store.get_xattr(f.ino, b"user.a"), Err(MetaError::NoData));
    assert_eq!(
        store.set_xattr(f.ino, b"user.a", b"1", XattrMode::Replace, &ROOT),
        Err(MetaError::NoData)
    );
    store.set_xattr(f.ino, b"user.a", b"1", XattrMode::Create, &ROOT).unwrap();
    assert_eq!(
        store.set_xattr(f.ino, b"user.a", b"2", XattrMode::Create, &ROOT),
        Err(MetaError::Exists)
    );
    store.set_xattr(f.ino, b"user.a", b"2", XattrMode::Any, &ROOT).unwrap();
    store.set_xattr(f.ino, b"user.b", b"", XattrMode::Any, &ROOT).unwrap();
    assert_eq!(store.get_xattr(f.ino, b"user.a").unwrap(), b"2");
    assert_eq!(store.list_xattr(f.ino).unwrap(), vec![b"user.a".to_vec(), b"user.b".to_vec()]);
    store.remove_xattr(f.ino, b"user.a").unwrap();
    assert_eq!(store.remove_xattr(f.ino, b"user.a"), Err(MetaError::NoData));
    let big = vec![0u8; MAX_XATTR_VALUE_LEN + 1];
    assert_eq!(
        store.set_xattr(f.ino, b"user.c", &big, XattrMode::Any, &ROOT),
        Err(MetaError::TooBig)
    );
}

#[test]
fn setattr_times_mode_owner() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let f = file(&store, ROOT_INO, "f");
    let at = Timestamp { sec: 1_000_000_000, nsec: 123_456_789 };
    let changes = SetAttr {
        mode: Some(0o4755),
        mtime: Some(SetTime::At(at)),
        atime: Some(SetTime::At(at)),
        ..Default::default()
    };
    let attr = store.set_attr(f.ino, &changes).unwrap();
    assert_eq!((attr.perm, attr.mtime, attr.atime), (0o4755, at, at));
    assert!(attr.ctime > at);
    let attr = store.set_attr(f.ino, &SetAttr { uid: Some(1000), ..Default::default() }).unwrap();
    assert_eq!((attr.uid, attr.perm), (1000, 0o755), "chown clears set-user-id");
}

#[test]
fn reopen_keeps_everything_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    let ino = {
        let store = open(&dir);
        store.make_dir(ROOT_INO, b"kept", 0o700, ROOT).unwrap().attr.ino
    };
    let store = open(&dir);
    assert_eq!(store.lookup(ROOT_INO, b"kept").unwrap().ino, ino);
    assert_eq!(store.settings(), SETTINGS);
    drop(store);
    // Overriding one setting keeps the other.
    let path = dir.path().join("meta.db");
    let chunk_only = VolumeOverrides { chunk_size: Some(8 << 20), ..Default::default() };
    let store = Store::open(&path, chunk_only, SETTINGS).unwrap();
    assert_eq!(store.settings(), VolumeSettings { chunk_size: 8 << 20, ..SETTINGS });
    drop(store);
    let cold = Encoding::Rs { k: 4, m: 2 };
    let cold_only = VolumeOverrides { cold: Some(cold), ..Default::default() };
    let store = Store::open(&path, cold_only, SETTINGS).unwrap();
    let hot = SETTINGS.hot;
    assert_eq!(store.settings(), VolumeSettings { hot, cold, chunk_size: 8 << 20 });
}

#[test]
fn clone_range_shares_chunks_and_allocate_punches() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let src = file(&store, ROOT_INO, "src");
    let dst = file(&store, ROOT_INO, "dst");
    let chunk = ChunkId::of(b"c");
    let t = Timestamp::now();
    store
        .commit_write(src.ino, &[stored(chunk, 100)], &[], &[extent(10, 100, chunk, 0)], t)
        .unwrap();
    // [0, 10) of src is a hole; it copies as a hole.
    let (attr, len) = store.clone_range(src.ino, 0, dst.ino, 1000, 500).unwrap();
    assert_eq!((len, attr.size), (110, 1110));
    assert_eq!(store.layout(dst.ino).unwrap().extents, vec![extent(1010, 100, chunk, 0)]);
    assert_eq!(refcount(&store, chunk), 2);
    assert!(matches!(store.clone_range(src.ino, 0, src.ino, 50, 100), Err(MetaError::Invalid(_))));
    // Punching the middle of the copy splits its extent; the size stays.
    let attr = store.allocate(dst.ino, 1050, 10, SpaceOp::PunchHole).unwrap();
    assert_eq!(attr.size, 1110);
    assert_eq!(
        store.layout(dst.ino).unwrap().extents,
        vec![extent(1010, 40, chunk, 0), extent(1060, 50, chunk, 50)]
    );
    assert_eq!(refcount(&store, chunk), 3);
    let grown = store.allocate(dst.ino, 5000, 10, SpaceOp::Allocate { keep_size: false }).unwrap();
    assert_eq!(grown.size, 5010);
    // Allocating over data and holes turns only the holes into unwritten extents, counted in
    // the allocated bytes; KEEP_SIZE stops at the end of the file.
    let allocated = store.allocate(dst.ino, 1000, 100, SpaceOp::Allocate { keep_size: true });
    assert_eq!(allocated.unwrap().allocated, 90 + 10 + 10 + 10);
    let unwritten = |offset, len| extent(offset, len, Extent::UNWRITTEN, 0);
    assert_eq!(
        store.layout(dst.ino).unwrap().extents,
        vec![
            unwritten(1000, 10),
            extent(1010, 40, chunk, 0),
            unwritten(1050, 10),
            extent(1060, 50, chunk, 50),
            unwritten(5000, 10),
        ]
    );
    assert_eq!(store.layout(dst.ino).unwrap().chunks.len(), 1);
    assert!(store.fsck(false).unwrap().problems.is_empty());
    assert_eq!(
        store.allocate(dst.ino, u64::MAX - 5, 10, SpaceOp::PunchHole),
        Err(MetaError::FileTooBig)
    );
}

#[test]
fn fsck_finds_and_repairs_broken_invariants() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let d = store.make_dir(ROOT_INO, b"d", 0o755, ROOT).unwrap().attr;
    let f = file(&store, d.ino, "f");
    let chunk = ChunkId::of(b"x");
    let t = Timestamp::now();
    store.commit_write(f.ino, &[stored(chunk, 10)], &[], &[extent(0, 10, chunk, 0)], t).unwrap();
    let clean = store.fsck(false).unwrap();
    assert_eq!(clean.problems, vec![], "a fresh namespace is clean");
    assert_eq!((clean.inodes, clean.entries, clean.chunks), (3, 2, 1));
    {
        // Break things behind the store's back.
        let conn = store.conn.locked();
        conn.execute("UPDATE inodes SET nlink = 5 WHERE ino = ?1", [f.ino]).unwrap();
        conn.execute("UPDATE inodes SET size = 4 WHERE ino = ?1", [f.ino]).unwrap();
        conn.execute("UPDATE chunks SET refcount = 9", []).unwrap();
        conn.execute(
            "INSERT INTO dentries (parent, name, ino) VALUES (?1, x'67686f7374', 999)",
            [d.ino],
        )
        .unwrap();
    }
    let found = store.fsck(false).unwrap();
    assert!(found.problems.contains(&Problem::WrongLinkCount { ino: f.ino, stored: 5, actual: 1 }));
    assert!(found.problems.iter().any(|p| matches!(p, Problem::ExtentPastEof { .. })));
    assert!(found.problems.iter().any(|p| matches!(p, Problem::DanglingEntry { ino: 999, .. })));
    assert!(found.problems.iter().any(|p| matches!(p, Problem::WrongRefcount { stored: 9, .. })));
    assert_eq!(found.repaired, 0);
    let repaired = store.fsck(true).unwrap();
    assert_eq!(repaired.repaired, repaired.problems.len() as u64);
    assert_eq!(store.fsck(false).unwrap().problems, vec![]);
    assert_eq!(store.layout(f.ino).unwrap().extents, vec![extent(0, 4, chunk, 0)]);
}

#[test]
fn dot_and_dot_dot_lookups_resolve_file_handles() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let sub = store.make_dir(ROOT_INO, b"sub", 0o755, ROOT).unwrap().attr;
    let f = file(&store, sub.ino, "f");
    // "." is the inode itself, of any kind; ".." is a directory's parent.
    assert_eq!(store.lookup(f.ino, b".").unwrap().ino, f.ino);
    assert_eq!(store.lookup(sub.ino, b"..").unwrap().ino, ROOT_INO);
    assert_eq!(store.lookup(ROOT_INO, b"..").unwrap().ino, ROOT_INO);
    assert!(matches!(store.lookup(f.ino, b".."), Err(MetaError::NotDir)));
    // A renamed directory's ".." follows it.
    let other = store.make_dir(ROOT_INO, b"other", 0o755, ROOT).unwrap().attr;
    store.rename(ROOT_INO, b"sub", other.ino, b"sub", RenameMode::Replace, &Cred::ROOT).unwrap();
    assert_eq!(store.lookup(sub.ino, b"..").unwrap().ino, other.ino);
    // A removed inode is gone: the kernel turns this into ESTALE.
    store.unlink(sub.ino, b"f").unwrap();
    linger_over(&store);
    assert!(matches!(store.lookup(f.ino, b"."), Err(MetaError::NotFound)));
}

#[test]
fn small_chunks_are_kept_inline_verified_and_collected() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let t = Timestamp::now();
    let data = b"small file content".to_vec();
    let chunk = ChunkId::of(&data);
    let inline = InlineChunk { chunk, data: data.clone() };
    let len = data.len() as u64;
    // Content that does not hash to the id, or over the limit, is refused.
    let f = file(&store, ROOT_INO, "f");
    let forged = InlineChunk { chunk, data: b"other content, same id".to_vec() };
    assert!(matches!(
        store.commit_write(f.ino, &[], &[forged], &[extent(0, len, chunk, 0)], t),
        Err(MetaError::Invalid(_))
    ));
    let big = vec![7u8; INLINE_MAX as usize + 1];
    let too_big = InlineChunk { chunk: ChunkId::of(&big), data: big };
    assert!(matches!(
        store.commit_write(f.ino, &[], &[too_big], &[], t),
        Err(MetaError::Invalid(_))
    ));
    // Committed: the layout carries the content; a second file dedups against it.
    store
        .commit_write(f.ino, &[], std::slice::from_ref(&inline), &[extent(0, len, chunk, 0)], t)
        .unwrap();
    let g = file(&store, ROOT_INO, "g");
    store.commit_write(g.ino, &[], &[inline], &[extent(0, len, chunk, 0)], t).unwrap();
    let layout = store.layout(f.ino).unwrap();
    assert_eq!(layout.attr.size, len);
    assert_eq!(layout.chunks.len(), 1);
    assert!(layout.chunks[0].is_inline() && layout.chunks[0].shards.is_empty());
    assert_eq!(layout.chunks[0].inline.as_deref(), Some(&data[..]));
    assert_eq!(store.read_inline(chunk).unwrap(), data);
    assert_eq!(refcount(&store, chunk), 2);
    // A prepare of the same content needs nothing stored.
    let plans = store
        .prepare_write(&[ChunkToWrite { chunk, len }], |_| panic!("placed an inline chunk"))
        .unwrap();
    assert!(matches!(plans[..], [ChunkPlan::Stored(_)]), "{plans:?}");
    let report = store.fsck(false).unwrap();
    assert_eq!(report.problems, vec![]);
    assert_eq!(store.catalogue_stats(&Default::default()).unwrap().unhealthy_shards, 0);
    // Unreferenced, it is collected with its content, and nothing is left for chunkds.
    store.unlink(ROOT_INO, b"f").unwrap();
    store.unlink(ROOT_INO, b"g").unwrap();
    linger_over(&store);
    let removed = store.remove_unreferenced_chunks(std::time::Duration::ZERO, &|_| false).unwrap();
    assert_eq!(removed, vec![]);
    assert!(matches!(store.read_inline(chunk), Err(MetaError::ChunkGone(_))));
    assert_eq!(store.fsck(false).unwrap().problems, vec![]);
    // Content damaged behind the store's back is reported.
    let h = file(&store, ROOT_INO, "h");
    let other = b"more".to_vec();
    let id = ChunkId::of(&other);
    let inline = InlineChunk { chunk: id, data: other };
    store.commit_write(h.ino, &[], &[inline], &[extent(0, 4, id, 0)], t).unwrap();
    store.conn.locked().execute("UPDATE inline_chunks SET data = x'00'", []).unwrap();
    assert_eq!(
        store.fsck(false).unwrap().problems,
        vec![Problem::BadInlineChunk { chunk: id.to_hex() }]
    );
}

#[test]
fn reads_and_checks_go_on_while_a_change_holds_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let f = file(&store, ROOT_INO, "f");
    // A long change holds the writer (as a big commit or fsck's repair would).
    let busy = store.conn.locked();
    let (done, answered) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let started = std::time::Instant::now();
            assert_eq!(store.lookup(ROOT_INO, b"f").unwrap().ino, f.ino);
            assert_eq!(store.get_attr(f.ino).unwrap().ino, f.ino);
            assert_eq!(store.read_dir(ROOT_INO, 0, 10).unwrap().1.len(), 1);
            assert_eq!(store.layout(f.ino).unwrap().attr.ino, f.ino);
            let report = store.fsck(false).unwrap();
            done.send((report, started.elapsed())).unwrap();
        });
        let answer = answered.recv_timeout(std::time::Duration::from_secs(10));
        drop(busy);
        let (report, took) = answer.expect("reads waited for the writer");
        assert_eq!((report.problems, report.inodes), (vec![], 2));
        assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    });
}

#[test]
fn a_long_scan_holds_up_neither_reads_nor_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = &open(&dir);
    let f = file(store, ROOT_INO, "f");
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (started, scanning) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        // A scan (as fsck's check) keeps its read transaction open until released.
        let scan = scope.spawn(move || {
            store.scan(|_| {
                started.send(()).unwrap();
                held.recv().ok();
                Ok(())
            })
        });
        scanning.recv().unwrap();
        let (done, answered) = std::sync::mpsc::channel();
        scope.spawn(move || {
            assert_eq!(store.lookup(ROOT_INO, b"f").unwrap().ino, f.ino);
            file(store, ROOT_INO, "g");
            assert_eq!(store.read_dir(ROOT_INO, 0, 10).unwrap().1.len(), 2);
            done.send(()).unwrap();
        });
        let answer = answered.recv_timeout(std::time::Duration::from_secs(10));
        release.send(()).unwrap();
        answer.expect("a read or a change waited for a scan");
        scan.join().unwrap().unwrap();
    });
}

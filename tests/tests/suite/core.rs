//! The client core (`shardfs_fs::core::Fs`) driven directly, without a kernel mount: an
//! in-process metad and chunkds (`shardfs local`'s cluster) on loopback, and one or two
//! `Fs` clients calling the operations FUSE would. Each test takes a second or two.

use std::sync::Arc;

use shardfs::local::{LocalCluster, LocalSettings};
use shardfs_chunk_api::Encoding;
use shardfs_fs::core::{Fs, FsOptions};
use shardfs_fs::error::FsError;
use shardfs_meta_api::proto::{Cred, Ino, MetaError, ROOT_INO, RenameMode, SetAttr};
use shardfs_metad::store::VolumeOverrides;
use shardfs_rpc::ClientOptions;
use shardfs_tests::random_bytes;
use tempfile::TempDir;

/// Chunks of 256 KiB: above the 64 KiB kept inline in metad, so content goes to chunkds.
const CHUNK: u64 = 256 * 1024;

/// A cluster of metad and three chunkds (2+1) in this process, for one test.
struct Cluster {
    runtime: tokio::runtime::Runtime,
    cluster: Option<LocalCluster>,
    _dir: TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = TempDir::new().expect("temporary directory");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let encoding = Encoding::rs(2, 1).expect("2+1");
        let volume =
            VolumeOverrides { hot: Some(encoding), cold: Some(encoding), chunk_size: Some(CHUNK) };
        let settings = LocalSettings::new(dir.path(), 3, volume);
        let cluster = runtime.block_on(LocalCluster::start(dir.path(), settings));
        Cluster { runtime, cluster: Some(cluster.expect("local cluster")), _dir: dir }
    }

    /// A new client of the cluster: its own metad session, as a second mount would have.
    fn client(&self) -> Arc<Fs> {
        let cluster = self.cluster.as_ref().expect("running");
        let rpc = ClientOptions::with_key(cluster.key);
        let options = FsOptions { rpc, ..FsOptions::default() };
        self.run(Fs::connect(&cluster.metad_addr, options)).expect("connect")
    }

    fn run<T>(&self, work: impl Future<Output = T>) -> T {
        self.runtime.block_on(work)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(cluster) = self.cluster.take() {
            self.runtime.block_on(cluster.shutdown());
        }
    }
}

/// Creates `name` in the root with `content`, and closes it.
async fn create(fs: &Fs, name: &str, content: &[u8]) -> Ino {
    let (attr, fh) = fs.create(ROOT_INO, name.as_bytes(), 0o644, Cred::ROOT).await.unwrap();
    // In pieces, as the kernel sends them.
    for (i, piece) in content.chunks(100_000).enumerate() {
        let written = fs.write(fh, (i * 100_000) as u64, piece, None).await.unwrap();
        assert_eq!(written.0 as usize, piece.len());
    }
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    attr.ino
}

/// The whole content of `ino`, read through a new handle.
async fn read_all(fs: &Fs, ino: Ino) -> Vec<u8> {
    let fh = fs.open(ino, true).await.unwrap();
    let size = fs.get_attr(ino).await.unwrap().size;
    let mut content = Vec::new();
    while (content.len() as u64) < size {
        let piece = fs.read(fh, content.len() as u64, 128 * 1024).await.unwrap();
        assert!(!piece.is_empty(), "a read short of the size ({size})");
        content.extend(piece);
    }
    fs.release(fh).await.unwrap();
    content
}

#[test]
fn what_is_written_reads_back_after_close() {
    let cluster = Cluster::start();
    let fs = cluster.client();
    // Two whole chunks and a partial one.
    let content = random_bytes(2 * CHUNK as usize + 90_000, 1);
    let ino = cluster.run(create(&fs, "file", &content));
    assert_eq!(cluster.run(fs.get_attr(ino)).unwrap().size, content.len() as u64);
    assert!(cluster.run(read_all(&fs, ino)) == content, "content read back differs");
    // A read across a chunk boundary, from a handle that jumps there.
    let fh = cluster.run(fs.open(ino, true)).unwrap();
    let from = CHUNK as usize - 1000;
    let part = cluster.run(fs.read(fh, from as u64, 5000)).unwrap();
    assert!(part == content[from..from + 5000], "a read across chunks differs");
    cluster.run(fs.release(fh)).unwrap();
    // Another client, with a cache of its own, reads the same bytes.
    let other = cluster.client();
    assert!(cluster.run(read_all(&other, ino)) == content, "another client reads otherwise");
    cluster.run(async { tokio::join!(fs.close(), other.close()) });
}

/// Early write-back stores whole chunks in the background while later writes are buffered:
/// reads see the newest bytes throughout, a rewrite of a range still being stored wins over
/// it, and what is committed in the end is the newest content.
#[test]
fn writes_over_chunks_being_stored_read_back_newest_first() {
    let cluster = Cluster::start();
    let client = cluster.cluster.as_ref().expect("running");
    let rpc = ClientOptions::with_key(client.key);
    // Early write-back after two chunks, so several stores are under way at once.
    let options = FsOptions { rpc, dirty_flush_bytes: 2 * CHUNK as usize, ..FsOptions::default() };
    let fs = cluster.run(Fs::connect(&client.metad_addr, options)).expect("connect");
    let mut model = random_bytes(24 * CHUNK as usize, 7);
    let other = cluster.client();
    cluster.run(async {
        let (attr, fh) = fs.create(ROOT_INO, b"file", 0o644, Cred::ROOT).await.unwrap();
        let content = model.clone();
        for (i, piece) in content.chunks(64 * 1024).enumerate() {
            let offset = (i * 64 * 1024) as u64;
            fs.write(fh, offset, piece, None).await.unwrap();
            // Every two chunks, go back over a range that is most likely still being stored
            // and read it and the end back at once.
            if i % 8 == 7 {
                let back = offset.saturating_sub(CHUNK + 1000) as usize;
                let newer = random_bytes(5000, i as u64);
                model[back..back + 5000].copy_from_slice(&newer);
                fs.write(fh, back as u64, &newer, None).await.unwrap();
                let read = fs.read(fh, back as u64, 8000).await.unwrap();
                assert!(read == model[back..back + 8000], "read at {back} while storing");
            }
        }
        let end = model.len() as u64;
        assert_eq!(fs.get_attr(attr.ino).await.unwrap().size, end);
        let all = read_all(&fs, attr.ino).await;
        assert!(all == model, "content read back before the close differs");
        fs.flush(fh).await.unwrap();
        fs.release(fh).await.unwrap();
        assert!(read_all(&other, attr.ino).await == model, "committed content differs");
        tokio::join!(fs.close(), other.close());
    });
}

#[test]
fn truncate_shortens_and_extends_with_zeros() {
    let cluster = Cluster::start();
    let fs = cluster.client();
    let content = random_bytes(CHUNK as usize + 10_000, 2);
    let ino = cluster.run(create(&fs, "file", &content));
    let size = |size| SetAttr { size: Some(size), ..SetAttr::default() };
    let attr = cluster.run(fs.set_attr(ino, Cred::ROOT, size(1000))).unwrap();
    assert_eq!(attr.size, 1000);
    assert!(cluster.run(read_all(&fs, ino)) == content[..1000]);
    cluster.run(fs.set_attr(ino, Cred::ROOT, size(5000))).unwrap();
    let read = cluster.run(read_all(&fs, ino));
    assert!(read[..1000] == content[..1000] && read[1000..] == [0; 4000], "no zeros past 1000");
    // Buffered bytes past a new end vanish with it.
    let fh = cluster.run(fs.open(ino, false)).unwrap();
    cluster.run(fs.write(fh, 4000, &[7; 2000], None)).unwrap();
    cluster.run(fs.set_attr(ino, Cred::ROOT, size(4500))).unwrap();
    cluster.run(fs.release(fh)).unwrap();
    let read = cluster.run(read_all(&fs, ino));
    assert_eq!((read.len(), &read[4000..]), (4500, &[7; 500][..]));
    cluster.run(fs.close());
}

#[test]
fn rename_moves_the_name_and_keeps_the_content() {
    let cluster = Cluster::start();
    let fs = cluster.client();
    let content = random_bytes(100_000, 3);
    let ino = cluster.run(create(&fs, "old", &content));
    let replaced = cluster.run(create(&fs, "new", b"replaced"));
    assert_ne!(ino, replaced);
    let (root, cred) = (ROOT_INO, Cred::ROOT);
    cluster.run(fs.rename(root, b"old", root, b"new", RenameMode::Replace, &cred)).unwrap();
    let gone = cluster.run(fs.lookup(root, b"old", &cred));
    assert!(matches!(gone, Err(FsError::Meta(MetaError::NotFound))), "old name: {gone:?}");
    assert_eq!(cluster.run(fs.lookup(root, b"new", &cred)).unwrap().ino, ino);
    assert!(cluster.run(read_all(&fs, ino)) == content);
    // No replacing with RENAME_NOREPLACE.
    cluster.run(create(&fs, "third", b"x"));
    let refused =
        cluster.run(fs.rename(root, b"third", root, b"new", RenameMode::NoReplace, &cred));
    assert!(matches!(refused, Err(FsError::Meta(MetaError::Exists))), "{refused:?}");
    cluster.run(fs.close());
}

/// A client's writes wait in its buffer under its write lease; another client's read of the
/// file recalls the lease, the writer commits, and the reader sees every byte.
#[test]
fn a_read_elsewhere_recalls_buffered_writes() {
    let cluster = Cluster::start();
    let (writer, reader) = (cluster.client(), cluster.client());
    let ino = cluster.run(create(&writer, "file", b""));
    let content = random_bytes(CHUNK as usize + 3000, 4);
    let fh = cluster.run(writer.open(ino, false)).unwrap();
    cluster.run(writer.write(fh, 0, &content, None)).unwrap();
    // The last partial chunk at least is still buffered, under the write lease.
    assert!(writer.leases().holds_write(ino), "the writer holds no write lease");
    assert!(cluster.run(read_all(&reader, ino)) == content, "the reader missed buffered writes");
    assert!(!writer.leases().holds_write(ino), "the write lease was not recalled");
    cluster.run(writer.release(fh)).unwrap();
    cluster.run(async { tokio::join!(writer.close(), reader.close()) });
}

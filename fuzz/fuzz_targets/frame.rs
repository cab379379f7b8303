//! Frames as they arrive on a connection: any bytes, read frame after frame until the
//! stream ends or a frame is refused. Nothing may panic or allocate past the frame limit.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use shardfs_rpc::frame;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread().build().expect("runtime")
});

fuzz_target!(|data: &[u8]| {
    RUNTIME.block_on(async {
        let mut stream = data;
        while let Ok(Some(frame)) = frame::read(&mut stream).await {
            assert!(frame.body.len() <= frame::MAX_FRAME_LEN);
        }
    });
});

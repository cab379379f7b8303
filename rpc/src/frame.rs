//! Frame layout, written down once.
//!
//! ```text
//! length: u32 BE   number of bytes that follow (kind + id + body), at most MAX_FRAME_LEN
//! kind:   u8       0 = request, 1 = response, 2 = server push (reserved for lease recalls)
//! id:     u64 BE   chosen by the requester, echoed by the response
//! body:   [u8]     postcard-encoded message
//! ```
//! A clean EOF between frames ends a connection normally; EOF inside a frame is a truncated
//! frame; a length above the limit or an unknown kind is a bad frame. Both bad cases drop
//! the connection.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Error;

/// Largest frame accepted: a 64 MiB shard (a whole maximum-size chunk with k = 1) plus room
/// for its message envelope.
pub const MAX_FRAME_LEN: usize = 64 * 1024 * 1024 + 64 * 1024;

pub(crate) const HEADER_LEN: usize = 1 + 8;

/// Bytes set aside for a frame before its body arrives: a 1 MiB shard (a 4 MiB chunk at
/// k = 4) and its envelope. Larger frames grow as they are read.
const PREALLOCATED: usize = 1024 * 1024 + 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request,
    Response,
    Push,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Request => 0,
            Kind::Response => 1,
            Kind::Push => 2,
        }
    }
}

#[derive(Debug)]
pub struct Frame {
    pub kind: Kind,
    pub id: u64,
    pub body: Bytes,
}

/// Reads one frame. `Ok(None)` is a clean end of stream at a frame boundary.
pub async fn read<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Frame>, Error> {
    match read_len(reader).await? {
        Some(len) => read_rest(reader, len).await.map(Some),
        None => Ok(None),
    }
}

/// Reads the length that starts a frame, checked against the limits (see [`read_rest`]).
/// `Ok(None)` is a clean end of stream at a frame boundary.
pub async fn read_len<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<usize>, Error> {
    let mut len_bytes = [0u8; 4];
    let mut filled = 0;
    while filled < len_bytes.len() {
        let n = match reader.read(&mut len_bytes[filled..]).await {
            Ok(n) => n,
            // A TLS peer that hangs up without close_notify, between frames: just a hang-up,
            // since frames carry their lengths and a cut one is caught below.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(Error::BadFrame("stream ended inside a frame header".into()));
        }
        filled += n;
    }
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len > MAX_FRAME_LEN {
        return Err(Error::FrameTooLarge { len, max: MAX_FRAME_LEN });
    }
    if len < HEADER_LEN {
        return Err(Error::BadFrame(format!("frame of {len} bytes is shorter than its header")));
    }
    Ok(Some(len))
}

/// Reads the rest of a frame whose length [`read_len`] read.
pub async fn read_rest<R: AsyncRead + Unpin>(reader: &mut R, len: usize) -> Result<Frame, Error> {
    // Memory grows with the bytes that arrive, beyond what a shard of a default chunk
    // needs: a length alone does not make the reader set aside 64 MiB.
    let mut buf = Vec::with_capacity(len.min(PREALLOCATED));
    (&mut *reader).take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() < len {
        return Err(Error::BadFrame("stream ended inside a frame".into()));
    }
    let kind = match buf[0] {
        0 => Kind::Request,
        1 => Kind::Response,
        2 => Kind::Push,
        other => return Err(Error::BadFrame(format!("unknown frame kind {other}"))),
    };
    let id = u64::from_be_bytes(buf[1..9].try_into().expect("8 bytes"));
    let body = Bytes::from(buf).slice(HEADER_LEN..);
    Ok(Frame { kind, id, body })
}

/// Writes one frame (not flushed).
pub async fn write<W: AsyncWrite + Unpin>(
    writer: &mut W,
    kind: Kind,
    id: u64,
    body: &[u8],
) -> Result<(), Error> {
    let len = HEADER_LEN + body.len();
    if len > MAX_FRAME_LEN {
        return Err(Error::FrameTooLarge { len, max: MAX_FRAME_LEN });
    }
    let mut header = [0u8; 4 + HEADER_LEN];
    header[..4].copy_from_slice(&(len as u32).to_be_bytes());
    header[4] = kind.code();
    header[5..].copy_from_slice(&id.to_be_bytes());
    writer.write_all(&header).await?;
    writer.write_all(body).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_clean_eof() {
        let mut buf = Vec::new();
        write(&mut buf, Kind::Request, 7, b"hello").await.unwrap();
        write(&mut buf, Kind::Response, 8, b"").await.unwrap();
        let mut reader = &buf[..];
        let a = read(&mut reader).await.unwrap().unwrap();
        assert_eq!((a.kind, a.id, &a.body[..]), (Kind::Request, 7, &b"hello"[..]));
        let b = read(&mut reader).await.unwrap().unwrap();
        assert_eq!((b.kind, b.id, b.body.len()), (Kind::Response, 8, 0));
        assert!(read(&mut reader).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn truncated_oversized_and_unknown_kind_are_errors() {
        let mut buf = Vec::new();
        write(&mut buf, Kind::Request, 1, b"abcdef").await.unwrap();
        for cut in [2, 5, buf.len() - 1] {
            let mut reader = &buf[..cut];
            assert!(matches!(read(&mut reader).await, Err(Error::BadFrame(_))), "cut {cut}");
        }
        let huge = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert!(matches!(read(&mut &huge[..]).await, Err(Error::FrameTooLarge { .. })));
        let mut bad = buf.clone();
        bad[4] = 9;
        assert!(matches!(read(&mut &bad[..]).await, Err(Error::BadFrame(_))));
        let short = 3u32.to_be_bytes();
        assert!(matches!(read(&mut &short[..]).await, Err(Error::BadFrame(_))));
    }
}

//! Frames on the pair link: a 4-byte big-endian length, then that many
//! bytes of JSON. A frame longer than the limit ends the connection: the
//! peer is authenticated, but a bug or a damaged stream must not make this
//! server allocate without bound.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame of the control channel (heartbeats, handshakes,
/// configuration changes).
pub const MAX_FRAME_BYTES: u32 = 16 << 20;

/// Encodes one frame.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let body = serde_json::to_vec(value).expect("pair messages serialise");
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Writes one frame and flushes it.
pub async fn write<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    value: &T,
) -> std::io::Result<()> {
    w.write_all(&encode(value)).await?;
    w.flush().await
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a pair frame of {len} bytes is over the limit of {MAX_FRAME_BYTES}"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_or_damaged_frames_are_refused() {
        let mut buf = Vec::new();
        write(&mut buf, &serde_json::json!({"a": 1})).await.unwrap();
        write(&mut buf, &"two").await.unwrap();
        let mut r = buf.as_slice();
        let a: serde_json::Value = read(&mut r).await.unwrap().unwrap();
        assert_eq!(a["a"], 1);
        let b: String = read(&mut r).await.unwrap().unwrap();
        assert_eq!(b, "two");
        assert!(read::<_, String>(&mut r).await.unwrap().is_none());

        let huge = (MAX_FRAME_BYTES + 1).to_be_bytes();
        let err = read::<_, String>(&mut huge.as_slice()).await.unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
        let mut damaged = 3u32.to_be_bytes().to_vec();
        damaged.extend_from_slice(b"{{{");
        assert!(read::<_, String>(&mut damaged.as_slice()).await.is_err());
    }
}

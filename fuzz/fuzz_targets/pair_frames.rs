//! Fuzz target: what the pair link reads off the wire (`pair::frame::read`):
//! length-prefixed JSON frames decoded into the link's messages. The first
//! byte chooses the stream: the connection's frames (`Wire`, read until the
//! end or the first error, as the connection reader does), or the pairing
//! handshake's request (`JoinRequest`) or answer (`JoinAnswer`). A frame
//! that decodes must encode to a frame that decodes to the same encoding.

#![no_main]

use std::sync::LazyLock;

use gateway::pair::frame;
use gateway::pair::pairing::{JoinAnswer, JoinRequest};
use gateway::pair::wire::Wire;
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
});

/// Reads frames of `T` until the end or an error; each one must survive
/// an encode and decode unchanged.
async fn frames<T: Serialize + DeserializeOwned>(mut stream: &[u8], at_most: usize) {
    for _ in 0..at_most {
        match frame::read::<_, T>(&mut stream).await {
            Ok(Some(value)) => {
                let encoded = frame::encode(&value);
                let again: T = frame::read(&mut encoded.as_slice())
                    .await
                    .expect("an encoded frame reads back")
                    .expect("an encoded frame is not empty");
                // Compared as JSON values: map order is not part of a frame.
                assert_eq!(json(&frame::encode(&again)), json(&encoded));
            }
            Ok(None) | Err(_) => return,
        }
    }
}

fn json(frame: &[u8]) -> serde_json::Value {
    serde_json::from_slice(&frame[4..]).expect("an encoded frame is JSON")
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, stream)) = data.split_first() else {
        return;
    };
    RUNTIME.block_on(async {
        match which % 3 {
            0 => frames::<Wire>(stream, usize::MAX).await,
            1 => frames::<JoinRequest>(stream, 1).await,
            _ => frames::<JoinAnswer>(stream, 1).await,
        }
    });
});

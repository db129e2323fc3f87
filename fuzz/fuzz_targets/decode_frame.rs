//! Feeds arbitrary bytes to the one frame decoder, as both message types.
//!
//! Checks: no panic; a frame that decodes re-encodes (with `encode_to_vec`
//! and with the hot path's `encode` into a fixed buffer, to the same bytes)
//! to a frame of at most `MAX_FRAME_LEN` bytes that decodes to an equal
//! value; a frame longer than `MAX_FRAME_LEN` is rejected as `TooLong`, both
//! as given and padded past the limit (libFuzzer's default `-max_len` is
//! 4096, so it rarely generates longer inputs itself).
#![no_main]

use std::fmt::Debug;

use handoff_proto::codec::{decode, encode, encode_to_vec, CodecError};
use handoff_proto::{MasterToWorker, WorkerToMaster, MAX_FRAME_LEN};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

fn check<T>(frame: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    match decode::<T>(frame) {
        Ok(msg) => {
            assert!(
                frame.len() <= MAX_FRAME_LEN,
                "a {}-byte frame decoded to {msg:?}",
                frame.len()
            );
            let bytes = encode_to_vec(&msg).expect("a decoded message re-encodes");
            assert!(bytes.len() <= MAX_FRAME_LEN, "{msg:?} re-encodes to {} bytes", bytes.len());
            let mut buf = [0u8; MAX_FRAME_LEN];
            let len = encode(&msg, &mut buf).expect("a decoded message encodes into a frame");
            assert_eq!(&buf[..len], &bytes[..], "encode and encode_to_vec differ for {msg:?}");
            let again: T = decode(&bytes).expect("a re-encoded message decodes");
            assert_eq!(again, msg, "round trip changed the message (re-encoded as {bytes:02x?})");
        }
        Err(CodecError::TooLong { len }) => {
            assert!(
                frame.len() > MAX_FRAME_LEN,
                "a {}-byte frame was called too long",
                frame.len()
            );
            assert_eq!(len, frame.len());
        }
        Err(CodecError::Empty) => assert!(frame.is_empty()),
        Err(_) => assert!(frame.len() <= MAX_FRAME_LEN, "an oversized frame was not TooLong"),
    }
}

fn check_both(frame: &[u8]) {
    check::<WorkerToMaster>(frame);
    check::<MasterToWorker>(frame);
}

fuzz_target!(|data: &[u8]| {
    check_both(data);
    // The same bytes padded past the limit: rejected before any decoding,
    // even when they start with a complete, valid message.
    if data.len() <= MAX_FRAME_LEN {
        let mut long = Vec::with_capacity(MAX_FRAME_LEN + 1);
        long.extend_from_slice(data);
        let fill = data.first().copied().unwrap_or(0);
        long.resize(MAX_FRAME_LEN + 1, fill);
        check_both(&long);
    }
});

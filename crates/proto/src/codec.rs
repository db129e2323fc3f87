//! The one codec: bincode 2 (serde) with a fixed configuration and size limit.
//!
//! Encoding writes into a caller's buffer, so the master's hand-off path does
//! not allocate. Decoding rejects frames longer than [`MAX_FRAME_LEN`],
//! truncated frames, and trailing bytes, and never panics on any input.

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use serde::{de::DeserializeOwned, Serialize};

/// The longest encoded message either side accepts.
pub const MAX_FRAME_LEN: usize = 16 * 1024;

type Config = Configuration<LittleEndian, Varint, Limit<MAX_FRAME_LEN>>;

const CONFIG: Config = config::standard().with_limit::<MAX_FRAME_LEN>();

/// Decoding's limit bounds what a length prefix may claim (and so
/// allocate). bincode counts the bytes a container claims on top of the
/// bytes it reads, so with the frame's own limit a frame of exactly
/// [`MAX_FRAME_LEN`] bytes would not decode; the frame's length is checked
/// first, so twice the limit still bounds every allocation.
const DECODE_LIMIT: usize = 2 * MAX_FRAME_LEN;

const DECODE_CONFIG: Configuration<LittleEndian, Varint, Limit<DECODE_LIMIT>> =
    config::standard().with_limit::<DECODE_LIMIT>();

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The frame is longer than [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes is longer than the limit of {MAX_FRAME_LEN}")]
    TooLong {
        /// Length of the offending frame.
        len: usize,
    },
    /// The frame is empty.
    #[error("empty frame")]
    Empty,
    /// The bytes after a complete message.
    #[error("{extra} trailing bytes after a {used}-byte message")]
    TrailingBytes {
        /// Bytes the message used.
        used: usize,
        /// Bytes left over.
        extra: usize,
    },
    /// The bytes are not a valid message.
    #[error("malformed frame: {0}")]
    Decode(#[source] bincode::error::DecodeError),
    /// The message does not fit the buffer (or the limit).
    #[error("cannot encode message: {0}")]
    Encode(#[source] bincode::error::EncodeError),
}

/// Encodes `msg` into `buf` and returns the number of bytes written.
pub fn encode<T: Serialize>(msg: &T, buf: &mut [u8]) -> Result<usize, CodecError> {
    bincode::serde::encode_into_slice(msg, buf, CONFIG).map_err(CodecError::Encode)
}

/// Encodes `msg` into a new vector (for paths off the hot one).
pub fn encode_to_vec<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(msg, CONFIG).map_err(CodecError::Encode)
}

/// Decodes one whole frame. Any bytes left over are an error.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, CodecError> {
    if frame.is_empty() {
        return Err(CodecError::Empty);
    }
    if frame.len() > MAX_FRAME_LEN {
        return Err(CodecError::TooLong { len: frame.len() });
    }
    let (msg, used) =
        bincode::serde::decode_from_slice(frame, DECODE_CONFIG).map_err(CodecError::Decode)?;
    if used != frame.len() {
        return Err(CodecError::TrailingBytes { used, extra: frame.len() - used });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use proptest::prelude::*;

    use super::*;
    use crate::msg::*;

    fn round_trip<T>(msg: &T) -> T
    where
        T: Serialize + DeserializeOwned,
    {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let len = encode(msg, &mut buf).expect("encodes");
        decode(&buf[..len]).expect("decodes")
    }

    fn any_peer() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
        ]
    }

    fn any_completion() -> impl Strategy<Value = Completion> {
        let outcome = prop_oneof![
            Just(Outcome::Served),
            Just(Outcome::Reset),
            Just(Outcome::Failed),
            Just(Outcome::TimedOut),
            Just(Outcome::NotReceived),
        ];
        (any::<u64>(), outcome, any::<u32>(), any::<u32>()).prop_map(
            |(conn_id, outcome, bytes_in, bytes_out)| Completion {
                conn_id,
                outcome,
                bytes_in,
                bytes_out,
            },
        )
    }

    fn any_reporting() -> impl Strategy<Value = Reporting> {
        prop_oneof![
            Just(Reporting::EachConnection),
            Just(Reporting::Counters),
            Just(Reporting::CountersAndWake),
        ]
    }

    fn any_totals() -> impl Strategy<Value = Totals> {
        any::<[u64; 7]>().prop_map(|t| Totals {
            served: t[0],
            resets: t[1],
            failed: t[2],
            timeouts: t[3],
            health_checks: t[6],
            bytes_in: t[4],
            bytes_out: t[5],
        })
    }

    fn any_dispatch() -> impl Strategy<Value = Dispatch> {
        (any::<u64>(), any::<u64>(), any::<u8>()).prop_map(|(conn_id, at, redispatches)| Dispatch {
            conn_id,
            accepted_at_ns: at,
            redispatches,
        })
    }

    fn any_master_msg() -> impl Strategy<Value = MasterToWorker> {
        prop_oneof![
            (any::<u32>(), any_reporting(), any::<u32>()).prop_map(
                |(worker_id, reporting, max_fds_per_packet)| {
                    MasterToWorker::Welcome { worker_id, reporting, max_fds_per_packet }
                }
            ),
            ".{0,200}".prop_map(|reason| MasterToWorker::Refused { reason }),
            any_dispatch().prop_map(MasterToWorker::Connection),
            Just(MasterToWorker::Shutdown),
            Just(MasterToWorker::ReportStats),
            Just(MasterToWorker::StopAccepting),
            Just(MasterToWorker::Listen(ListenMode::Shared)),
            (any_peer(), any::<u32>()).prop_map(|(addr, backlog)| {
                MasterToWorker::Listen(ListenMode::ReusePort { addr, backlog })
            }),
            any::<u32>().prop_map(|slot| MasterToWorker::Listen(ListenMode::Balanced { slot })),
            proptest::collection::vec(any_dispatch(), 0..crate::MAX_BATCH)
                .prop_map(MasterToWorker::Batch),
        ]
    }

    fn any_worker_msg() -> impl Strategy<Value = WorkerToMaster> {
        prop_oneof![
            (any::<u32>(), any::<u32>(), any::<u32>(), any::<bool>()).prop_map(
                |(protocol_version, pid, capacity, http)| {
                    let protocol =
                        if http { ClientProtocol::Http } else { ClientProtocol::Article };
                    WorkerToMaster::Hello(Hello { protocol_version, pid, capacity, protocol })
                }
            ),
            proptest::collection::vec(any_completion(), 0..MAX_COMPLETIONS_PER_REPORT)
                .prop_map(|conns| WorkerToMaster::Finished(Finished { conns })),
            Just(WorkerToMaster::Freed),
            Just(WorkerToMaster::Leaving),
            Just(WorkerToMaster::StoppedAccepting),
            Just(WorkerToMaster::OutOfFds),
            Just(WorkerToMaster::RoomForFds),
            (any::<u32>(), any::<[u64; 8]>(), any_totals()).prop_map(
                |(in_flight, v, self_accepted_done)| {
                    WorkerToMaster::Stats(WorkerStats {
                        self_accepted_done,
                        accepted: v[7],
                        in_flight,
                        cpu_user_us: v[0],
                        cpu_sys_us: v[1],
                        rss_bytes: v[2],
                        handling_p50_us: v[3],
                        handling_p99_us: v[4],
                        handoff_p50_us: v[5],
                        handoff_p99_us: v[6],
                    })
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn master_messages_round_trip(msg in any_master_msg()) {
            prop_assert_eq!(round_trip(&msg), msg);
        }

        #[test]
        fn worker_messages_round_trip(msg in any_worker_msg()) {
            prop_assert_eq!(round_trip(&msg), msg);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode::<MasterToWorker>(&bytes);
            let _ = decode::<WorkerToMaster>(&bytes);
        }
    }

    #[test]
    fn a_full_report_fits_in_a_frame() {
        let worst = Completion {
            conn_id: u64::MAX,
            outcome: Outcome::NotReceived,
            bytes_in: u32::MAX,
            bytes_out: u32::MAX,
        };
        let report =
            WorkerToMaster::Finished(Finished { conns: vec![worst; MAX_COMPLETIONS_PER_REPORT] });
        let mut buf = [0u8; MAX_FRAME_LEN];
        let len = encode(&report, &mut buf).expect("a full report fits");
        assert!(len < MAX_FRAME_LEN);
    }

    #[test]
    fn a_full_batch_fits_in_a_frame() {
        let worst = Dispatch { conn_id: u64::MAX, accepted_at_ns: u64::MAX, redispatches: u8::MAX };
        let batch = MasterToWorker::Batch(vec![worst; crate::MAX_BATCH]);
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        let len = encode(&batch, &mut buf).expect("a full batch fits");
        assert!(len < MAX_FRAME_LEN);
    }

    #[test]
    fn a_dispatch_header_is_small() {
        let msg = MasterToWorker::Connection(Dispatch {
            conn_id: u64::MAX,
            accepted_at_ns: u64::MAX,
            redispatches: u8::MAX,
        });
        let mut buf = [0u8; 64];
        let len = encode(&msg, &mut buf).expect("fits in 64 bytes");
        assert!(len <= 24, "dispatch header is {len} bytes");
    }

    #[test]
    fn rejects_trailing_bytes_truncation_and_oversize() {
        let mut buf = [0u8; 64];
        let len = encode(
            &MasterToWorker::Welcome {
                worker_id: 7,
                reporting: Reporting::Counters,
                max_fds_per_packet: 1,
            },
            &mut buf,
        )
        .expect("encodes");
        assert!(matches!(
            decode::<MasterToWorker>(&buf[..len + 1]),
            Err(CodecError::TrailingBytes { .. })
        ));
        let dispatch = MasterToWorker::Connection(Dispatch {
            conn_id: 1 << 40,
            accepted_at_ns: 1 << 50,
            redispatches: 0,
        });
        let len = encode(&dispatch, &mut buf).expect("encodes");
        assert!(matches!(decode::<MasterToWorker>(&buf[..len - 1]), Err(CodecError::Decode(_))));
        assert!(matches!(
            decode::<MasterToWorker>(&vec![0u8; MAX_FRAME_LEN + 1]),
            Err(CodecError::TooLong { .. })
        ));
        assert!(matches!(decode::<MasterToWorker>(&[]), Err(CodecError::Empty)));
        // A string length prefix that claims more than the limit.
        let huge_string = [1u8, 0xfc, 0xff, 0xff, 0xff, 0x7f];
        assert!(decode::<MasterToWorker>(&huge_string).is_err());
    }

    #[test]
    fn encode_to_vec_gives_the_same_bytes_as_encode() {
        let msg = MasterToWorker::Refused { reason: "a reason".into() };
        let mut buf = [0u8; 64];
        let len = encode(&msg, &mut buf).expect("encodes");
        let bytes = encode_to_vec(&msg).expect("encodes");
        assert_eq!(bytes, &buf[..len]);
        assert_eq!(decode::<MasterToWorker>(&bytes).expect("decodes"), msg);
    }

    #[test]
    fn a_frame_of_exactly_the_limit_is_accepted_and_one_byte_more_is_not() {
        // Variant index (1 byte) + string length (3 bytes: 0xfb + u16) + text.
        let reason = "r".repeat(MAX_FRAME_LEN - 4);
        let msg = MasterToWorker::Refused { reason };
        let bytes = encode_to_vec(&msg).expect("encodes");
        assert_eq!(bytes.len(), MAX_FRAME_LEN);
        assert_eq!(decode::<MasterToWorker>(&bytes).expect("exactly the limit decodes"), msg);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode::<MasterToWorker>(&longer),
            Err(CodecError::TooLong { len }) if len == MAX_FRAME_LEN + 1
        ));
    }

    #[test]
    fn trailing_bytes_are_counted_exactly() {
        let bytes = encode_to_vec(&MasterToWorker::Shutdown).expect("encodes");
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0, 0, 0]);
        match decode::<MasterToWorker>(&padded) {
            Err(CodecError::TrailingBytes { used, extra }) => {
                assert_eq!((used, extra), (bytes.len(), 3));
            }
            other => panic!("expected TrailingBytes, got {other:?}"),
        }
    }
}

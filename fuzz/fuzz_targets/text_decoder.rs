//! V1 and V2 text frames: decoding never panics, and whatever decodes re-encodes as a reply
//! (the path every accepted message takes).
#![no_main]

use channels::codec::{self, Format, Outbound};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for format in [Format::V1, Format::V2] {
        if let Ok(m) = codec::decode_text(format, data) {
            let _ = codec::encode(
                format,
                Outbound {
                    join_ref: m.join_ref.as_ref(),
                    msg_ref: m.msg_ref.as_ref(),
                    topic: &m.topic,
                    event: "phx_reply",
                    payload: "{}",
                },
            );
        }
    }
    let _ = codec::json_depth_within(data, codec::MAX_JSON_DEPTH);
});

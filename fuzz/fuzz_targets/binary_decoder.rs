//! V2 binary frames (kind 3 user broadcasts, and every other kind a client might send): decoding
//! never panics, and a decoded broadcast's fields fit the outbound kind-4 frame.
#![no_main]

use channels::codec::{self, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = codec::decode_binary(Format::V1, data);
    if let Ok(m) = codec::decode_binary(Format::V2, data) {
        assert!(
            m.topic.len() <= 255,
            "a decoded topic longer than its length byte allows"
        );
    }
});

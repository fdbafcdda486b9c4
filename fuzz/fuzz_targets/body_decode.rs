//! Decodes arbitrary bytes as the body of each message type. The envelope target cannot reach
//! body decoding without a valid signature; a malicious member can sign any body, so bodies get
//! their own target. Nothing may panic; accepted bodies re-encode to the same bytes.
#![no_main]

use kos_protocol::{MessageType, Payload};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let kind = MessageType::ALL[usize::from(selector) % MessageType::ALL.len()];
    if let Ok(p) = Payload::decode(kind, body) {
        assert_eq!(p.message_type(), kind);
        assert_eq!(p.encode(), body);
    }
});

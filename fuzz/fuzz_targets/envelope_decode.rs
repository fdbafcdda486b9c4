//! Decodes arbitrary bytes as a KLP envelope. Nothing may panic; whatever is accepted must
//! re-encode to the same bytes and the same id.
#![no_main]

use kos_protocol::{Message, message_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Message::decode(data) {
        assert_eq!(msg.bytes(), data);
        assert_eq!(msg.id(), message_id(data));
        // The body re-encodes to exactly the signed body bytes.
        let again = Message::decode(msg.bytes()).expect("accepted bytes decode again");
        assert_eq!(again.payload().encode(), msg.payload().encode());
    }
});

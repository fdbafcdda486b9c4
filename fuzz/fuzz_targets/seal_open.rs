//! Opens arbitrary SEALED bodies with a fixed recipient key: decryption failures and bad
//! plaintexts are errors, never panics.
#![no_main]

use kos_protocol::{Address, Message, Payload, SecretKey, payload::Sealed, seal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 32 {
        return;
    }
    let sender = SecretKey::from_seed(&[1; 32]);
    let recipient = SecretKey::from_seed(&[2; 32]);
    let mut enc = [0u8; 32];
    enc.copy_from_slice(&data[..32]);
    let body = Payload::Sealed(Sealed { ct: data[32..].to_vec().into(), enc });
    let to: Address = "agent://fuzz".parse().expect("static address");
    if let Ok(msg) = Message::sign(&sender, 1, 1, Some(to), body) {
        let _ = seal::open(&msg, &recipient);
    }
});

//! Fuzz target `binrpc`: arbitrary bytes through the BINRPC codec of the
//! kamcmd control socket (`sipedge::admin::binrpc`).
//!
//! - Header, request and body decoding must never panic, on any input.
//! - A body that decodes re-encodes (as a reply) to one that decodes to
//!   the same records: doubles within their fixed-point precision.
//! - Every decoded record converts to a JSON parameter.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sipedge::admin::binrpc::{
    decode_body, decode_request, encode_reply, parse_header, to_json, Record,
};

fn same(a: &Record, b: &Record) -> bool {
    match (a, b) {
        (Record::Double(x), Record::Double(y)) => {
            (x - y).abs() <= 0.002 + x.abs().max(y.abs()) * 1e-9
        }
        (Record::Struct(x), Record::Struct(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(m, n)| m.name == n.name && same(&m.value, &n.value))
        }
        (Record::Array(x), Record::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(m, n)| same(m, n))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = parse_header(data);
    let _ = decode_request(data);
    let Ok(records) = decode_body(data) else {
        return;
    };
    for r in &records {
        let _ = to_json(r);
    }
    let packet = encode_reply(7, &records);
    let header = parse_header(&packet)
        .expect("our own header parses")
        .expect("our own header is whole");
    assert_eq!(header.packet_len(), packet.len());
    let again = decode_body(&packet[header.header_len..]).expect("our own body decodes");
    assert_eq!(again.len(), records.len());
    for (a, b) in records.iter().zip(&again) {
        assert!(same(a, b), "{a:?} became {b:?}");
    }
});

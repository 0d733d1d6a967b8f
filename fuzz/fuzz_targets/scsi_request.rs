//! Fuzzes the virtio-scsi wire parsers: command request headers with any
//! cdb_size, control-queue requests, LUN fields, and response encoding. None
//! may panic; parsed values must stay within what the input held.
#![no_main]

use devices::virtio::scsi::request::{
    encode_cmd_response, parse_cmd_request, parse_control_request, parse_lun,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&size_byte, rest)) = data.split_first() else {
        return;
    };
    let cdb_size = usize::from(size_byte);
    if let Ok(request) = parse_cmd_request(rest, cdb_size) {
        assert_eq!(request.cdb.len(), cdb_size);
        assert!(rest.len() >= 19 + cdb_size);
        if let Some((_, lun)) = parse_lun(&request.lun) {
            assert!(lun < 16384);
        }
    }
    if let Ok(control) = parse_control_request(rest) {
        assert!(control.response_size() <= 5);
    }
    let sense_size = usize::from(size_byte);
    let response = encode_cmd_response(0, 2, 0, rest, sense_size);
    assert_eq!(response.len(), 12 + sense_size);
});

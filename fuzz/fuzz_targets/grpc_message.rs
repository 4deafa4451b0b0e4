//! The pipe's gRPC message reader, on any bytes cut into DATA frames at any
//! places: no panic; the message is the same however the bytes were cut,
//! and, unless compressed, is the bytes the 5-byte header announced.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tern_pipe::grpc::MessageReader;

/// Reads `wire` as the frames `cuts` make of it.
fn read(wire: &Bytes, cuts: &[usize], gzip: bool) -> Result<Bytes, String> {
    let mut reader = MessageReader::new(gzip);
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&wire.len())) {
        reader.push(wire.slice(at..cut)).map_err(|s| s.message().to_string())?;
        at = cut;
    }
    reader.finish().map_err(|s| s.message().to_string())
}

fuzz_target!(|data: &[u8]| {
    // The first byte: gzip or not, and how many cuts; the rest is the wire.
    let Some((&control, wire)) = data.split_first() else { return };
    let wire = Bytes::copy_from_slice(wire);
    let gzip = control & 1 == 1;
    let step = usize::from(control >> 1).max(1);
    let cuts: Vec<usize> = (step..wire.len()).step_by(step).collect();
    let whole = read(&wire, &[], gzip);
    let cut = read(&wire, &cuts, gzip);
    assert_eq!(whole, cut, "the same message however the frames cut it");
    if let (Ok(message), false) = (&whole, wire.first() == Some(&1)) {
        let len = u32::from_be_bytes([wire[1], wire[2], wire[3], wire[4]]) as usize;
        assert_eq!(&message[..], &wire[5..5 + len]);
    }
});

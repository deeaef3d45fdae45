//! The checked-in prost code for the Perfetto subset is current, and its wire format uses
//! Perfetto's real field numbers.

use mobilemoe_schema::perfetto::{self, trace_packet, track_event, TracePacket, TrackEvent};
use prost::Message;

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[test]
fn generated_code_matches_proto() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let proto = std::fs::read(format!("{dir}/proto/perfetto_trace.proto")).unwrap();
    let gen = std::fs::read_to_string(format!("{dir}/src/generated/perfetto.protos.rs")).unwrap();
    let line = gen.lines().find(|l| l.starts_with("// proto-fnv1a64: ")).expect("hash header");
    assert_eq!(
        line.trim_start_matches("// proto-fnv1a64: "),
        format!("{:016x}", fnv1a64(&proto)),
        "schema/proto/perfetto_trace.proto changed: run scripts/gen_perfetto_proto.sh"
    );
}

/// Tag bytes of a few fields, computed by hand from Perfetto's field numbers.
#[test]
fn wire_field_numbers() {
    let p = TracePacket {
        timestamp: Some(5),
        data: Some(trace_packet::Data::TrackEvent(TrackEvent {
            r#type: Some(track_event::Type::SliceBegin as i32),
            track_uuid: Some(7),
            name_field: Some(track_event::NameField::Name("x".into())),
            ..Default::default()
        })),
        optional_trusted_packet_sequence_id: Some(trace_packet::OptionalTrustedPacketSequenceId::TrustedPacketSequenceId(3)),
        ..Default::default()
    };
    let b = p.encode_to_vec();
    // timestamp = 8 (varint): key 0x40; trusted_packet_sequence_id = 10: key 0x50;
    // track_event = 11 (length-delimited): key 0x5a.
    assert!(b.windows(2).any(|w| w == [0x40, 5]), "{b:02x?}");
    assert!(b.windows(2).any(|w| w == [0x50, 3]), "{b:02x?}");
    let te = b.iter().position(|&x| x == 0x5a).unwrap();
    let inner = &b[te + 2..te + 2 + b[te + 1] as usize];
    // type = 9: key 0x48; track_uuid = 11: key 0x58; name = 23 (string): key 0xba 0x01.
    assert!(inner.windows(2).any(|w| w == [0x48, 1]), "{inner:02x?}");
    assert!(inner.windows(2).any(|w| w == [0x58, 7]), "{inner:02x?}");
    assert!(inner.windows(4).any(|w| w == [0xba, 0x01, 1, b'x']), "{inner:02x?}");

    let d = TracePacket {
        data: Some(trace_packet::Data::TrackDescriptor(perfetto::TrackDescriptor {
            uuid: Some(9),
            thread: Some(perfetto::ThreadDescriptor { pid: Some(1), tid: Some(2), thread_name: None }),
            ..Default::default()
        })),
        ..Default::default()
    };
    let b = d.encode_to_vec();
    // track_descriptor = 60: key (60 << 3 | 2) = 482 = varint e2 03.
    assert_eq!(&b[..2], &[0xe2, 0x03]);
    let back = TracePacket::decode(&b[..]).unwrap();
    assert_eq!(back, d);
    let t = perfetto::Trace { packet: vec![p, d] };
    assert_eq!(perfetto::Trace::decode(&t.encode_to_vec()[..]).unwrap(), t);
}

//! [`Recording`] -> Perfetto `Trace` (prost types from `mobilemoe_schema::perfetto`), and back to
//! slices (for tests and tools).
//!
//! Layout of the trace:
//! * one process track (`TrackDescriptor.process`), uuid [`process_uuid`];
//! * one thread track per recording thread (`TrackDescriptor.thread`, parent = process track);
//! * per thread one packet sequence (`trusted_packet_sequence_id` = 2 + thread index) whose first
//!   event packet clears incremental state and carries the interned event names of that thread;
//!   then `TYPE_SLICE_BEGIN` (interned name, span fields as debug annotations) / `TYPE_SLICE_END`.
//!
//! End events without a matching begin (spans entered before recording started) are dropped, and
//! slices still open at the end are closed at the thread's last timestamp, so every track nests.

use mobilemoe_executorch::profiling::recorder::{kind, RawEvent, Recording};
use mobilemoe_executorch::profiling::PerfettoRecorder;
use mobilemoe_schema::perfetto::{
    debug_annotation, trace_packet, track_event, DebugAnnotation, EventName, InternedData, ProcessDescriptor, ThreadDescriptor, Trace,
    TracePacket, TrackDescriptor, TrackEvent,
};
use prost::Message;
use std::collections::HashMap;

/// uuid of the process track.
pub fn process_uuid(pid: i32) -> u64 {
    0x4d4f_4500_0000_0000 | pid as u32 as u64
}

/// uuid of a thread track.
pub fn thread_uuid(pid: i32, tid: i32) -> u64 {
    0x5448_0000_0000_0000 ^ ((pid as u32 as u64) << 24) ^ tid as u32 as u64
}

fn seq(p: &mut TracePacket, id: u32) {
    p.optional_trusted_packet_sequence_id = Some(trace_packet::OptionalTrustedPacketSequenceId::TrustedPacketSequenceId(id));
}

fn annotation(e: &RawEvent) -> DebugAnnotation {
    let value = match e.kind {
        kind::ARG_I64 => debug_annotation::Value::IntValue(e.val as i64),
        kind::ARG_U64 => debug_annotation::Value::UintValue(e.val),
        kind::ARG_F64 => debug_annotation::Value::DoubleValue(f64::from_bits(e.val)),
        _ => debug_annotation::Value::BoolValue(e.val != 0),
    };
    DebugAnnotation { name_field: Some(debug_annotation::NameField::Name(e.name.to_owned())), value: Some(value) }
}

/// Balanced begin/end events of one thread: `(event, args)`, args only on begins.
pub(crate) fn balanced(events: &[RawEvent]) -> Vec<(RawEvent, Vec<RawEvent>)> {
    let mut out = Vec::with_capacity(events.len());
    let mut pending: HashMap<u64, Vec<RawEvent>> = HashMap::new();
    let mut depth = 0usize;
    let mut last_ts = 0u64;
    for e in events {
        match e.kind {
            kind::BEGIN => {
                depth += 1;
                last_ts = last_ts.max(e.ts);
                out.push((*e, pending.remove(&e.val).unwrap_or_default()));
            }
            kind::END => {
                if depth == 0 {
                    continue;
                }
                depth -= 1;
                last_ts = last_ts.max(e.ts);
                out.push((*e, Vec::new()));
            }
            _ => pending.entry(e.ts).or_default().push(*e),
        }
    }
    for _ in 0..depth {
        out.push((RawEvent { ts: last_ts, val: 0, name: "", kind: kind::END }, Vec::new()));
    }
    out
}

/// A [`Recording`] (made by the plugin's recorder) as a Perfetto trace.
pub trait PerfettoExport {
    /// The recording as a Perfetto trace.
    fn to_perfetto(&self) -> Trace;

    /// Writes [`to_perfetto`](Self::to_perfetto) (binary protobuf) to `path`.
    fn write_perfetto(&self, path: impl AsRef<std::path::Path>) -> std::io::Result<()> {
        std::fs::write(path, self.to_perfetto().encode_to_vec())
    }
}

/// Stops `recorder`, then writes its recording as a Perfetto trace (`.pftrace`) to `path`.
pub fn finish(recorder: PerfettoRecorder, path: impl AsRef<std::path::Path>) -> std::io::Result<Recording> {
    let recording = recorder.stop();
    recording.write_perfetto(path)?;
    Ok(recording)
}

impl PerfettoExport for Recording {
    fn to_perfetto(&self) -> Trace {
        let mut packets = Vec::new();
        let puuid = process_uuid(self.pid);
        let mut p = TracePacket {
            data: Some(trace_packet::Data::TrackDescriptor(TrackDescriptor {
                uuid: Some(puuid),
                process: Some(ProcessDescriptor { pid: Some(self.pid), cmdline: vec![], process_name: Some(self.process_name.clone()) }),
                ..Default::default()
            })),
            ..Default::default()
        };
        seq(&mut p, 1);
        packets.push(p);
        for th in &self.threads {
            let mut p = TracePacket {
                data: Some(trace_packet::Data::TrackDescriptor(TrackDescriptor {
                    uuid: Some(thread_uuid(self.pid, th.tid)),
                    parent_uuid: Some(puuid),
                    thread: Some(ThreadDescriptor { pid: Some(self.pid), tid: Some(th.tid), thread_name: Some(th.name.clone()) }),
                    ..Default::default()
                })),
                ..Default::default()
            };
            seq(&mut p, 1);
            packets.push(p);
        }
        for (i, th) in self.threads.iter().enumerate() {
            let evs = balanced(&th.events);
            if evs.is_empty() {
                continue;
            }
            let seq_id = 2 + i as u32;
            let track = thread_uuid(self.pid, th.tid);
            let mut iids: HashMap<&'static str, u64> = HashMap::new();
            let mut names = Vec::new();
            for (e, _) in &evs {
                if e.kind == kind::BEGIN && !iids.contains_key(e.name) {
                    let iid = iids.len() as u64 + 1;
                    iids.insert(e.name, iid);
                    names.push(EventName { iid: Some(iid), name: Some(e.name.to_owned()) });
                }
            }
            for (j, (e, args)) in evs.iter().enumerate() {
                let begin = e.kind == kind::BEGIN;
                let mut p = TracePacket {
                    timestamp: Some(e.ts),
                    data: Some(trace_packet::Data::TrackEvent(TrackEvent {
                        r#type: Some(if begin { track_event::Type::SliceBegin } else { track_event::Type::SliceEnd } as i32),
                        track_uuid: Some(track),
                        name_field: begin.then(|| track_event::NameField::NameIid(iids[e.name])),
                        debug_annotations: args.iter().map(annotation).collect(),
                        ..Default::default()
                    })),
                    ..Default::default()
                };
                seq(&mut p, seq_id);
                if j == 0 {
                    p.sequence_flags = Some(
                        trace_packet::SequenceFlags::SeqIncrementalStateCleared as u32
                            | trace_packet::SequenceFlags::SeqNeedsIncrementalState as u32,
                    );
                    p.first_packet_on_sequence = Some(true);
                    p.interned_data = Some(InternedData { event_names: std::mem::take(&mut names), ..Default::default() });
                } else {
                    p.sequence_flags = Some(trace_packet::SequenceFlags::SeqNeedsIncrementalState as u32);
                }
                if j == 0 && th.dropped > 0 {
                    p.previous_packet_dropped = Some(1);
                }
                packets.push(p);
            }
        }
        Trace { packet: packets }
    }
}

/// A slice reconstructed from a trace.
#[derive(Clone, Debug, PartialEq)]
pub struct Slice {
    pub track_uuid: u64,
    pub name: String,
    /// Nesting depth on its track (0 = outermost).
    pub depth: usize,
    pub ts: u64,
    pub dur: u64,
    /// Debug annotations with integer-like values.
    pub args: Vec<(String, i64)>,
}

/// Parses slices out of a trace the way trace_processor does for our subset: interned names per
/// packet sequence, BEGIN/END pairs nested per track. Errors on dangling references.
pub fn slices(trace: &Trace) -> Result<Vec<Slice>, String> {
    let mut names: HashMap<(u32, u64), String> = HashMap::new();
    let mut open: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut out: Vec<Slice> = Vec::new();
    for p in &trace.packet {
        let sid = match p.optional_trusted_packet_sequence_id {
            Some(trace_packet::OptionalTrustedPacketSequenceId::TrustedPacketSequenceId(s)) => s,
            None => 0,
        };
        if p.sequence_flags.unwrap_or(0) & trace_packet::SequenceFlags::SeqIncrementalStateCleared as u32 != 0 {
            names.retain(|k, _| k.0 != sid);
        }
        if let Some(i) = &p.interned_data {
            for n in &i.event_names {
                names.insert((sid, n.iid.unwrap_or(0)), n.name.clone().unwrap_or_default());
            }
        }
        let Some(trace_packet::Data::TrackEvent(te)) = &p.data else { continue };
        let track = te.track_uuid.unwrap_or(0);
        let ts = p.timestamp.ok_or("track event without timestamp")?;
        let stack = open.entry(track).or_default();
        match te.r#type() {
            track_event::Type::SliceBegin => {
                let name = match &te.name_field {
                    Some(track_event::NameField::NameIid(iid)) => {
                        names.get(&(sid, *iid)).cloned().ok_or(format!("unknown name iid {iid} on sequence {sid}"))?
                    }
                    Some(track_event::NameField::Name(n)) => n.clone(),
                    None => String::new(),
                };
                let args = te
                    .debug_annotations
                    .iter()
                    .filter_map(|a| {
                        let n = match &a.name_field {
                            Some(debug_annotation::NameField::Name(n)) => n.clone(),
                            _ => return None,
                        };
                        let v = match a.value {
                            Some(debug_annotation::Value::IntValue(v)) => v,
                            Some(debug_annotation::Value::UintValue(v)) => v as i64,
                            Some(debug_annotation::Value::BoolValue(v)) => v as i64,
                            _ => return None,
                        };
                        Some((n, v))
                    })
                    .collect();
                stack.push(out.len());
                out.push(Slice { track_uuid: track, name, depth: stack.len() - 1, ts, dur: 0, args });
            }
            track_event::Type::SliceEnd => {
                let i = stack.pop().ok_or(format!("slice end without begin on track {track:#x}"))?;
                if ts < out[i].ts {
                    return Err("slice ends before it begins".into());
                }
                out[i].dur = ts - out[i].ts;
            }
            _ => {}
        }
    }
    if let Some((t, _)) = open.iter().find(|(_, s)| !s.is_empty()) {
        return Err(format!("unterminated slice on track {t:#x}"));
    }
    Ok(out)
}

//! Reading an ExecuTorch program (`.pte`) without the runtime, with Rust code generated from the
//! wheel's `program.fbs` / `scalar_type.fbs` (checked in under `src/generated/`).

use crate::program_generated::executorch_flatbuffer as et;
use std::fmt;
use std::path::Path;

/// A problem with the file itself.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PteError {
    #[error("{0}: no such file")]
    Missing(String),
    #[error("{0}: cannot read: {1}")]
    Io(String, String),
    #[error("{0}: not an ExecuTorch program (.pte): {1}")]
    NotPte(String, String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    /// "Tensor", "Int", ...
    pub kind: String,
    /// ScalarType name for tensors.
    pub dtype: String,
    pub sizes: Vec<i32>,
    pub dynamic: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DelegateInfo {
    pub backend_id: String,
    /// "inline" or "segment"
    pub location: String,
    pub index: u32,
    pub blob_size: u64,
    /// MobileMoE blobs: the header's format version and graph summary.
    pub mobilemoe: Option<Result<String, String>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MethodInfo {
    pub name: String,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    pub operators: Vec<String>,
    pub delegates: Vec<DelegateInfo>,
    pub instructions: usize,
    pub non_const_buffer_sizes: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PteInfo {
    pub file_size: u64,
    pub program_version: u32,
    pub program_size: u64,
    pub segment_base_offset: u64,
    pub segments: Vec<(u64, u64)>,
    pub constant_segment: Option<(u32, Vec<u64>)>,
    pub constant_buffers: usize,
    pub named_data: usize,
    pub methods: Vec<MethodInfo>,
}

impl PteInfo {
    /// Every backend id used by some delegate.
    pub fn backend_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.methods.iter().flat_map(|m| m.delegates.iter().map(|d| d.backend_id.clone())).collect();
        v.sort();
        v.dedup();
        v
    }
    /// Every operator (`name.overload`) used by some method.
    pub fn operator_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.methods.iter().flat_map(|m| m.operators.iter().cloned()).collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Sizes of the constant sub-segments (from the offsets table).
fn constant_sizes(seg_size: Option<u64>, offsets: &[u64]) -> Vec<u64> {
    let mut v = vec![];
    for i in 0..offsets.len() {
        let end = offsets.get(i + 1).copied().or(seg_size).unwrap_or(offsets[i]);
        v.push(end.saturating_sub(offsets[i]));
    }
    v
}

fn value_info(v: &et::EValue<'_>) -> ValueInfo {
    let kind = v.val_type().variant_name().unwrap_or("?").to_string();
    match v.val_as_tensor() {
        Some(t) => ValueInfo {
            kind,
            dtype: t.scalar_type().variant_name().unwrap_or("?").to_string(),
            sizes: t.sizes().map(|s| s.iter().collect()).unwrap_or_default(),
            dynamic: t.shape_dynamism() != et::TensorShapeDynamism::STATIC,
        },
        None => ValueInfo { kind, dtype: String::new(), sizes: vec![], dynamic: false },
    }
}

/// Parse `bytes` (a whole .pte); `name` is used in error messages.
pub fn parse(name: &str, bytes: &[u8]) -> Result<PteInfo, PteError> {
    let not = |m: String| PteError::NotPte(name.to_string(), m);
    if bytes.len() < 8 || &bytes[4..8] != b"ET12" {
        let id = bytes.get(4..8).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
        return Err(not(format!("missing the \"ET12\" file identifier (found {id:?})")));
    }
    let (mut program_size, mut segment_base) = (bytes.len() as u64, 0u64);
    if bytes.len() >= 32 && &bytes[8..12] == b"eh00" {
        program_size = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
        segment_base = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
    }
    if program_size > bytes.len() as u64 {
        return Err(not(format!("program size {program_size} exceeds the file size {}", bytes.len())));
    }
    let opts = flatbuffers::VerifierOptions { max_tables: 100_000_000, max_apparent_size: 1 << 40, ..Default::default() };
    let p = et::root_as_program_with_opts(&opts, &bytes[..program_size as usize])
        .map_err(|e| not(format!("flatbuffer verification failed: {e}")))?;
    let segments: Vec<(u64, u64)> = p.segments().iter().flatten().map(|s| (s.offset(), s.size_())).collect();
    let inline = p.backend_delegate_data();
    let mut methods = vec![];
    for plan in p.execution_plan().iter().flatten() {
        let values = plan.values();
        let vinfo = |i: i32| -> ValueInfo {
            values
                .and_then(|vs| if i >= 0 && (i as usize) < vs.len() { Some(value_info(&vs.get(i as usize))) } else { None })
                .unwrap_or(ValueInfo { kind: "?".into(), dtype: String::new(), sizes: vec![], dynamic: false })
        };
        let operators = plan
            .operators()
            .iter()
            .flatten()
            .map(|o| {
                let (n, ov) = (o.name().unwrap_or(""), o.overload().unwrap_or(""));
                if ov.is_empty() {
                    n.to_string()
                } else {
                    format!("{n}.{ov}")
                }
            })
            .collect();
        let mut delegates = vec![];
        for d in plan.delegates().iter().flatten() {
            let (location, index) = d.processed().map(|r| (r.location(), r.index())).unwrap_or((et::DataLocation::INLINE, u32::MAX));
            let blob: Option<&[u8]> = if location == et::DataLocation::SEGMENT {
                segments.get(index as usize).and_then(|&(off, size)| {
                    let start = segment_base.checked_add(off)?;
                    bytes.get(start as usize..start.checked_add(size)? as usize)
                })
            } else {
                inline.and_then(|v| if (index as usize) < v.len() { v.get(index as usize).data().map(|d| d.bytes()) } else { None })
            };
            let backend_id = d.id().unwrap_or("").to_string();
            let mobilemoe = match (backend_id.as_str(), blob) {
                ("MobileMoEBackend", Some(b)) => Some(match mobilemoe_schema::parse(b) {
                    Ok(g) => Ok(format!(
                        "MMOE format v{}, {} nodes [{}], {} tensors, {} segments ({} weight bytes)",
                        g.header.version,
                        g.nodes.len(),
                        g.nodes.iter().map(|n| format!("{}:{}", n.op.kind(), n.name)).collect::<Vec<_>>().join(", "),
                        g.tensors.len(),
                        g.segments.len(),
                        g.weight_bytes()
                    )),
                    Err(e) => Err(e.to_string()),
                }),
                _ => None,
            };
            delegates.push(DelegateInfo {
                backend_id,
                location: if location == et::DataLocation::SEGMENT { "segment".into() } else { "inline".into() },
                index,
                blob_size: blob.map(|b| b.len() as u64).unwrap_or(0),
                mobilemoe,
            });
        }
        methods.push(MethodInfo {
            name: plan.name().unwrap_or("").to_string(),
            inputs: plan.inputs().iter().flatten().map(vinfo).collect(),
            outputs: plan.outputs().iter().flatten().map(vinfo).collect(),
            operators,
            delegates,
            instructions: plan.chains().iter().flatten().map(|c| c.instructions().map(|i| i.len()).unwrap_or(0)).sum(),
            non_const_buffer_sizes: plan.non_const_buffer_sizes().map(|v| v.iter().collect()).unwrap_or_default(),
        });
    }
    let constant_segment = p.constant_segment().map(|c| (c.segment_index(), c.offsets().map(|o| o.iter().collect()).unwrap_or_default()));
    Ok(PteInfo {
        file_size: bytes.len() as u64,
        program_version: p.version(),
        program_size,
        segment_base_offset: segment_base,
        segments,
        constant_segment,
        constant_buffers: p.constant_buffer().map(|b| b.len()).unwrap_or(0),
        named_data: p.named_data().map(|b| b.len()).unwrap_or(0),
        methods,
    })
}

/// Read and parse a .pte file.
pub fn inspect(path: &Path) -> Result<PteInfo, PteError> {
    let name = path.display().to_string();
    if !path.exists() {
        return Err(PteError::Missing(name));
    }
    let bytes = std::fs::read(path).map_err(|e| PteError::Io(name.clone(), e.to_string()))?;
    parse(&name, &bytes)
}

fn fmt_value(v: &ValueInfo) -> String {
    if v.kind == "Tensor" {
        format!("Tensor<{}>{:?}{}", v.dtype, v.sizes, if v.dynamic { " (dynamic)" } else { "" })
    } else {
        v.kind.clone()
    }
}

impl fmt::Display for PteInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "file size        : {} bytes", self.file_size)?;
        writeln!(f, "program version  : {}", self.program_version)?;
        writeln!(f, "flatbuffer size  : {} bytes", self.program_size)?;
        writeln!(f, "segment base     : {}", self.segment_base_offset)?;
        writeln!(f, "segments         : {}", self.segments.len())?;
        for (i, (o, s)) in self.segments.iter().enumerate() {
            writeln!(f, "  [{i}] offset {o}, {s} bytes")?;
        }
        match &self.constant_segment {
            Some((idx, offs)) if !offs.is_empty() => {
                let seg_size = self.segments.get(*idx as usize).map(|s| s.1);
                let sizes = constant_sizes(seg_size, offs);
                writeln!(f, "constant segment : segment {idx}, {} constants, {} bytes in total", offs.len(), seg_size.unwrap_or(0))?;
                let mut sorted = sizes.clone();
                sorted.sort_unstable_by(|a, b| b.cmp(a));
                writeln!(f, "  largest        : {:?}", &sorted[..sorted.len().min(8)])?;
            }
            _ => writeln!(f, "constant segment : none")?,
        }
        if self.constant_buffers > 0 {
            writeln!(f, "inline constants : {} buffers", self.constant_buffers)?;
        }
        if self.named_data > 0 {
            writeln!(f, "named data       : {} entries", self.named_data)?;
        }
        for m in &self.methods {
            writeln!(f, "method {:?}: {} instructions", m.name, m.instructions)?;
            for (i, v) in m.inputs.iter().enumerate() {
                writeln!(f, "  input  {i}: {}", fmt_value(v))?;
            }
            for (i, v) in m.outputs.iter().enumerate() {
                writeln!(f, "  output {i}: {}", fmt_value(v))?;
            }
            writeln!(f, "  operators ({}): {}", m.operators.len(), m.operators.join(", "))?;
            writeln!(f, "  delegates ({}):", m.delegates.len())?;
            for d in &m.delegates {
                writeln!(f, "    {} ({} #{}, {} bytes)", d.backend_id, d.location, d.index, d.blob_size)?;
                match &d.mobilemoe {
                    Some(Ok(s)) => writeln!(f, "      {s}")?,
                    Some(Err(e)) => writeln!(f, "      INVALID MobileMoE blob: {e}")?,
                    None => {}
                }
            }
            if !m.non_const_buffer_sizes.is_empty() {
                writeln!(f, "  planned memory : {:?} bytes", m.non_const_buffer_sizes)?;
            }
        }
        Ok(())
    }
}

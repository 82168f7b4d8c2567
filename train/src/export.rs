//! Exports: a LoRA adapter in PEFT's format (`adapter_config.json` + `adapter_model.safetensors`), and any engine
//! [`Model`] (a merged trained model, or a base model dequantized to f32) as an HF directory that transformers'
//! `AutoModelForCausalLM.from_pretrained` and `orchard generate --model DIR` both load.
//!
//! Directories are written under a temporary name next to the target and renamed into place: a failed export
//! leaves an existing directory as it was.

use std::collections::HashMap;
use std::path::Path;

use orchard_engine::autograd::{DiffModel, Target, Tuning};
use orchard_engine::model::qkv_split;
use orchard_engine::{Engine, Model};

use crate::error::{Error, Result};

/// PEFT's adapter weights file.
pub const PEFT_WEIGHTS: &str = "adapter_model.safetensors";
/// PEFT's adapter config file.
pub const PEFT_CONFIG: &str = "adapter_config.json";

/// Runs `write` on a fresh temporary directory beside `dir`, then moves it to `dir` (replacing what was there).
pub fn write_dir_atomically(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp =
        tempfile::Builder::new().prefix(".orchard-export-").tempdir_in(parent).map_err(|e| Error::io(parent, e))?;
    write(tmp.path())?;
    let staged = tmp.keep();
    if dir.exists() {
        let old = parent.join(format!(".orchard-old-{}", std::process::id()));
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
        std::fs::rename(&staged, dir).map_err(|e| Error::io(dir, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    } else {
        std::fs::rename(&staged, dir).map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Named f32 tensors (name, shape, little-endian bytes) as one safetensors file with PyTorch's `format` metadata.
fn write_f32_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<u8>)]) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    Ok(safetensors::serialize_to_file(views, Some(meta), path)?)
}

fn le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `model`'s adapters as a PEFT LoRA adapter for `base_model` (the `base_model_name_or_path` PEFT loads).
pub fn export_peft(model: &DiffModel, base_model: &str, dir: &Path) -> Result<()> {
    let Tuning::Lora(cfg) = model.tuning() else {
        return Err(Error::Config("only a LoRA run has an adapter to export; export the merged model instead".into()));
    };
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, layer) in model.layers().iter().enumerate() {
        for t in Target::ALL {
            let Some(ad) = layer.adapter(t) else { continue };
            let prefix = format!("base_model.model.model.layers.{i}.{}", t.hf_path());
            for (which, var) in [("lora_A", &ad.a), ("lora_B", &ad.b)] {
                let values: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
                tensors.push((format!("{prefix}.{which}.weight"), var.dims().to_vec(), le(&values)));
            }
        }
    }
    let mut targets: Vec<&str> = cfg.targets.iter().map(|t| t.peft_name()).collect();
    targets.sort_unstable();
    targets.dedup();
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    });
    write_dir_atomically(dir, |tmp| {
        write_f32_safetensors(&tmp.join(PEFT_WEIGHTS), &tensors)?;
        write_json(&tmp.join(PEFT_CONFIG), &config)
    })
}

/// `model`'s weights under HF transformers' names (`model.layers.0.self_attn.q_proj.weight` …).
pub fn hf_tensors(model: &Model) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let cfg = model.config();
    let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
    let [nq, nk, nv] = qkv_split(cfg);
    // Gemma stores RMSNorm weights as offsets from one (the engine holds `1 + w`).
    let offset = if cfg.arch.norm_weights_offset() { 1.0 } else { 0.0 };
    let norm = |w: &[f32]| -> Vec<f32> { w.iter().map(|x| x - offset).collect() };
    let mut out =
        vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab_size, d], model.embed_tokens().to_f32())];
    for (i, l) in model.layers().iter().enumerate() {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let qkv = l.qkv_proj.to_f32();
        let (q, kv) = qkv.split_at(nq * d);
        let (k, v) = kv.split_at(nk * d);
        out.push((p("self_attn.q_proj.weight"), vec![nq, d], q.to_vec()));
        out.push((p("self_attn.k_proj.weight"), vec![nk, d], k.to_vec()));
        out.push((p("self_attn.v_proj.weight"), vec![nv, d], v.to_vec()));
        if let Some(b) = &l.qkv_bias {
            out.push((p("self_attn.q_proj.bias"), vec![nq], b[..nq].to_vec()));
            out.push((p("self_attn.k_proj.bias"), vec![nk], b[nq..nq + nk].to_vec()));
            out.push((p("self_attn.v_proj.bias"), vec![nv], b[nq + nk..].to_vec()));
        }
        if let Some(n) = &l.qk_norm {
            out.push((p("self_attn.q_norm.weight"), vec![cfg.head_dim], norm(&n.q)));
            out.push((p("self_attn.k_norm.weight"), vec![cfg.head_dim], norm(&n.k)));
        }
        out.push((p("self_attn.o_proj.weight"), vec![d, cfg.num_heads * cfg.head_dim], l.o_proj.to_f32()));
        let gu = l.gate_up_proj.to_f32();
        let (g, u) = gu.split_at(f * d);
        out.push((p("mlp.gate_proj.weight"), vec![f, d], g.to_vec()));
        out.push((p("mlp.up_proj.weight"), vec![f, d], u.to_vec()));
        out.push((p("mlp.down_proj.weight"), vec![d, f], l.down_proj.to_f32()));
        out.push((p("input_layernorm.weight"), vec![d], norm(&l.input_layernorm)));
        match &l.sandwich {
            // Gemma's names: the norm after attention is its `post_attention_layernorm`, the one before the MLP
            // `pre_feedforward_layernorm`.
            Some(n) => {
                out.push((p("post_attention_layernorm.weight"), vec![d], norm(&n.after_attention)));
                out.push((p("pre_feedforward_layernorm.weight"), vec![d], norm(&l.post_attention_layernorm)));
                out.push((p("post_feedforward_layernorm.weight"), vec![d], norm(&n.after_mlp)));
            }
            None => out.push((p("post_attention_layernorm.weight"), vec![d], l.post_attention_layernorm.clone())),
        }
    }
    out.push(("model.norm.weight".into(), vec![d], norm(model.norm())));
    if !model.is_tied() {
        out.push(("lm_head.weight".into(), vec![cfg.vocab_size, d], model.lm_head().to_f32()));
    }
    out
}

/// HF `config.json` for `model`.
pub fn hf_config(model: &Model, bos: Option<u32>, eos: Option<u32>) -> Result<serde_json::Value> {
    let cfg = model.config();
    if model.inv_freq() != orchard_engine::config::rope_inv_freq(cfg).as_slice() {
        return Err(Error::Config(
            "the model's rotary frequencies carry per-frequency factors (GGUF rope_freqs) that an HF config cannot \
             express"
                .into(),
        ));
    }
    let mut c = cfg.to_hf_json(bos, eos);
    c["tie_word_embeddings"] = serde_json::Value::Bool(cfg.tie_word_embeddings && model.is_tied());
    Ok(c)
}

/// Writes `model` with `engine`'s tokenizer and chat template as an HF directory at `dir`.
pub fn export_hf(model: &Model, engine: &Engine, dir: &Path) -> Result<()> {
    let tok = engine.tokenizer();
    let (bos, eos) = (tok.bos(), tok.eos().first().copied());
    let config = hf_config(model, bos, eos)?;
    // The template the engine renders with (the file's own, or the built-in one a Gemma GGUF without one gets).
    let template = engine.template().map(|t| t.source().to_string());
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> =
        hf_tensors(model).into_iter().map(|(n, s, v)| (n, s, le(&v))).collect();
    let special = |id: Option<u32>| id.map(|i| tok.special_text(Some(i)));
    let mut tok_config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": special(bos),
        "eos_token": special(eos),
        "pad_token": special(eos),
        "add_bos_token": tok.adds_bos(),
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": model.config().max_position_embeddings,
    });
    if let Some(t) = &template {
        tok_config["chat_template"] = serde_json::Value::String(t.clone());
    }
    write_dir_atomically(dir, |tmp| {
        write_f32_safetensors(&tmp.join("model.safetensors"), &tensors)?;
        write_json(&tmp.join("config.json"), &config)?;
        write_json(
            &tmp.join("generation_config.json"),
            &serde_json::json!({"bos_token_id": bos, "eos_token_id": tok.eos()}),
        )?;
        write_json(&tmp.join("tokenizer_config.json"), &tok_config)?;
        let tj = tmp.join("tokenizer.json");
        tok.hf_tokenizer().save(&tj, false).map_err(|e| Error::schema(&tj, e.to_string()))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests;

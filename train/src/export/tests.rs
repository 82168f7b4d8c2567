use candle_core::{Device, Tensor};
use orchard_engine::autograd::{DiffModel, LoraConfig, Packed, Target, Tuning};
use orchard_engine::testing::{random_weights, tiny_config, write_hf_dir};
use orchard_engine::Arch;

use super::*;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn lora_model(engine: &Engine) -> Result<DiffModel> {
    let tuning = Tuning::Lora(LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec![Target::Q, Target::V, Target::Gate, Target::Down],
    });
    let m = DiffModel::new(engine.model(), &tuning, &Device::Cpu, 3)?;
    for (name, var) in m.named_parameters() {
        if name.ends_with("lora_b") {
            var.set(&Tensor::randn(0f32, 0.1, var.dims(), &Device::Cpu)?)?;
        }
    }
    Ok(m)
}

#[test]
fn peft_adapters_use_peft_names_and_shapes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = tiny_config(Arch::Llama);
    write_hf_dir(&dir.path().join("m"), &cfg, &random_weights(&cfg, 4))?;
    let engine = Engine::load(dir.path().join("m").to_str().ok_or("path")?)?;
    let m = lora_model(&engine)?;
    let out = dir.path().join("adapter");
    export_peft(&m, "base", &out)?;
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(PEFT_CONFIG))?)?;
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["target_modules"], serde_json::json!(["down_proj", "gate_proj", "q_proj", "v_proj"]));
    let bytes = std::fs::read(out.join(PEFT_WEIGHTS))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let a = st.tensor("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight")?;
    assert_eq!(a.shape(), &[4, cfg.hidden_size]);
    let b = st.tensor("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight")?;
    assert_eq!(b.shape(), &[cfg.hidden_size, 4]);
    assert_eq!(st.names().len(), 2 * 4 * cfg.num_layers);
    // A full fine-tuning run has no adapter to export.
    let full = DiffModel::new(engine.model(), &Tuning::Full, &Device::Cpu, 0)?;
    assert!(export_peft(&full, "base", &dir.path().join("none")).is_err());
    Ok(())
}

#[test]
fn a_merged_export_loads_back_into_the_engine_with_the_same_logits() -> TestResult {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3, Arch::Gemma3] {
        let dir = tempfile::tempdir()?;
        let cfg = tiny_config(arch);
        write_hf_dir(&dir.path().join("m"), &cfg, &random_weights(&cfg, 5))?;
        let engine = Engine::load(dir.path().join("m").to_str().ok_or("path")?)?;
        let m = lora_model(&engine)?;
        let out = dir.path().join("merged");
        // An existing directory is replaced only by a complete export.
        std::fs::create_dir_all(&out)?;
        std::fs::write(out.join("stale.txt"), "old")?;
        export_hf(&m.merged_model(&out)?, &engine, &out)?;
        assert!(!out.join("stale.txt").exists());
        let back = Engine::load(out.to_str().ok_or("path")?)?;
        let reloaded = DiffModel::new(back.model(), &Tuning::Full, &Device::Cpu, 0)?;
        let seqs = vec![(0..40u32).map(|i| (i * 7 + 3) % 280 + 3).collect::<Vec<_>>()];
        let batch = Packed::new(&seqs);
        let diff =
            (m.logits_all(&batch)? - reloaded.logits_all(&batch)?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(diff <= 1e-4, "{arch:?}: max |Δlogit| {diff}");
        assert_eq!(back.tokenizer().encode("hello 123", false)?, engine.tokenizer().encode("hello 123", false)?);
        assert_eq!(back.template().is_some(), engine.template().is_some(), "{arch:?}: chat template");
    }
    Ok(())
}

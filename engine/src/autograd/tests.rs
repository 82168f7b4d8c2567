use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::*;
use crate::arch::{Arch, ARCHITECTURES};
use crate::engine::Engine;
use crate::model::{Chunk, LogitRows};
use crate::testing::{random_weights, tiny_config, write_hf_dir};
use crate::tokenizer::Tokenizer;
use crate::weights::Precision;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn tiny(arch: Arch) -> Result<(tempfile::TempDir, Model)> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
    let cfg = tiny_config(arch);
    write_hf_dir(dir.path(), &cfg, &random_weights(&cfg, 7))?;
    let model = crate::hf::load_model(dir.path())?;
    Ok((dir, model))
}

fn seqs() -> Vec<Vec<TokenId>> {
    vec![(0..23).map(|i| (i * 37 + 5) % 288).collect(), (0..9).map(|i| (i * 11 + 40) % 288).collect()]
}

fn lora(dropout: f32) -> Tuning {
    Tuning::Lora(LoraConfig { rank: 4, alpha: 8.0, dropout, targets: Target::ALL.to_vec() })
}

/// Gives every LoRA `B` small random values (it starts at zero, which leaves `A` without gradient).
fn randomise_b(m: &DiffModel) -> Result<()> {
    for (name, var) in m.named_parameters() {
        if name.ends_with("lora_b") {
            var.set(&(Tensor::randn(0f32, 0.05, var.dims(), &Device::Cpu)?))?;
        }
    }
    Ok(())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// A scalar of every position's log-prob of the next token, weighted so every row matters differently.
fn objective(m: &DiffModel, batch: &Packed, mode: Mode) -> Result<Tensor> {
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for &(start, len) in batch.seqs() {
        for i in 0..len - 1 {
            rows.push(start + i);
            targets.push(batch.tokens[start + i + 1]);
        }
    }
    let lp = m.token_logprobs(batch, &rows, &targets, mode)?;
    let weights: Vec<f32> = (0..rows.len()).map(|i| 0.5 + (i % 7) as f32 / 7.0).collect();
    Ok((lp * Tensor::new(weights.as_slice(), &Device::Cpu)?)?.sum_all()?)
}

#[test]
fn all_position_logits_equal_the_inference_path() -> TestResult {
    for arch in ARCHITECTURES.iter().map(|s| s.arch) {
        let (_dir, model) = tiny(arch)?;
        let diff = DiffModel::new(&model, &Tuning::Full, &Device::Cpu, 0)?;
        let seqs = seqs();
        let packed = diff.logits_all(&Packed::new(&seqs))?;
        let mut row = 0;
        for s in &seqs {
            let mut cache = model.new_cache();
            let logits = model
                .forward(&mut [Chunk { cache: &mut cache, tokens: s, logits: LogitRows::From(0) }], Precision::F32)?;
            let want = Tensor::from_vec(logits.values, (s.len(), logits.vocab), &Device::Cpu)?;
            let diff = max_abs_diff(&packed.narrow(0, row, s.len())?, &want)?;
            assert!(diff <= 1e-4, "{arch:?}: max |Δlogit| {diff}");
            row += s.len();
        }
    }
    Ok(())
}

#[test]
fn token_logprobs_equal_engine_score() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = tiny_config(Arch::Llama);
    write_hf_dir(dir.path(), &cfg, &random_weights(&cfg, 3))?;
    let engine = Engine::from_parts(crate::hf::load_model(dir.path())?, Tokenizer::from_hf_dir(dir.path())?, None, "t");
    let diff = DiffModel::new(engine.model(), &Tuning::Full, &Device::Cpu, 0)?;
    let (prompt, completion): (Vec<TokenId>, Vec<TokenId>) = ((1..12).collect(), (50..70).collect());
    let scored = engine.score(&[(prompt.clone(), completion.clone())])?;
    let full = [prompt.clone(), completion.clone()].concat();
    let rows: Vec<usize> = (prompt.len() - 1..full.len() - 1).collect();
    let lp = diff.token_logprobs(&Packed::new(&[full]), &rows, &completion, Mode::Eval)?.to_vec1::<f32>()?;
    assert_eq!(lp.len(), scored[0].token_logprobs.len());
    for (a, b) in lp.iter().zip(&scored[0].token_logprobs) {
        assert!((a - b).abs() <= 1e-4, "{a} vs {b}");
    }
    let sum: f32 = lp.iter().sum();
    assert!((sum as f64 - scored[0].logprob_sum).abs() <= 1e-3);
    Ok(())
}

#[test]
fn every_trainable_tensor_receives_a_gradient() -> TestResult {
    for (arch, tuning) in [
        (Arch::Llama, Tuning::Full),
        (Arch::Qwen2, Tuning::Full),
        (Arch::Qwen3, Tuning::Full),
        (Arch::Gemma3, Tuning::Full),
        (Arch::Llama, lora(0.1)),
        (Arch::Gemma3, lora(0.1)),
    ] {
        let (_dir, model) = tiny(arch)?;
        let m = DiffModel::new(&model, &tuning, &Device::Cpu, 1)?;
        randomise_b(&m)?;
        let grads = objective(&m, &Packed::new(&seqs()), Mode::Train { dropout_seed: 5 })?.backward()?;
        let params = m.named_parameters();
        let expected = match tuning {
            // embedding, final norm, 6 per layer; Qwen2 adds its untied head and a bias per layer, Qwen3 two
            // q/k norms per layer, Gemma 3 those and two post-block norms per layer.
            Tuning::Full => {
                2 + 6 * 2
                    + usize::from(arch == Arch::Qwen2) * (1 + 2)
                    + usize::from(arch == Arch::Qwen3) * 4
                    + usize::from(arch == Arch::Gemma3) * 8
            }
            Tuning::Lora(_) => 2 * 7 * 2,
        };
        assert_eq!(params.len(), expected, "{arch:?} {tuning:?}");
        for (name, var) in params {
            let g = grads.get(var.as_tensor()).ok_or(format!("{name}: no gradient"))?;
            let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
            assert!(norm > 0.0 && norm.is_finite(), "{arch:?}: {name} has gradient norm² {norm}");
        }
    }
    Ok(())
}

#[test]
fn fused_kernels_equal_composed_ops_in_values_and_gradients() -> TestResult {
    for (arch, tuning) in [
        (Arch::Llama, Tuning::Full),
        (Arch::Qwen2, Tuning::Full),
        (Arch::Qwen3, Tuning::Full),
        (Arch::Gemma3, Tuning::Full),
        (Arch::Qwen2, lora(0.2)),
    ] {
        let (_dir, model) = tiny(arch)?;
        let fused = DiffModel::new(&model, &tuning, &Device::Cpu, 2)?;
        randomise_b(&fused)?;
        let composed = DiffModel::new(&model, &tuning, &Device::Cpu, 2)?.with_fused_kernels(false);
        let values: HashMap<String, Tensor> =
            fused.named_parameters().into_iter().map(|(n, v)| (n, v.as_tensor().copy().expect("copy"))).collect();
        composed.set_parameters(&values)?;
        let batch = Packed::new(&seqs());
        let mode = Mode::Train { dropout_seed: 9 };
        let (lf, lc) = (objective(&fused, &batch, mode)?, objective(&composed, &batch, mode)?);
        let (a, b) = (lf.to_scalar::<f32>()?, lc.to_scalar::<f32>()?);
        assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{arch:?}: objective {a} vs {b}");
        let (gf, gc) = (lf.backward()?, lc.backward()?);
        let (pf, pc) = (fused.named_parameters(), composed.named_parameters());
        let names = |p: &[(String, candle_core::Var)]| p.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&pf), names(&pc), "{arch:?}: the same parameters in the same order");
        for ((name, vf), (_, vc)) in pf.iter().zip(pc) {
            let (x, y) = (gf.get(vf.as_tensor()).ok_or("grad")?, gc.get(vc.as_tensor()).ok_or("grad")?);
            let scale = y.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1e-3);
            let diff = max_abs_diff(x, y)?;
            assert!(diff <= 2e-4 * scale.max(1.0), "{arch:?}: {name}: max |Δgrad| {diff} (scale {scale})");
        }
    }
    Ok(())
}

#[test]
fn gradients_match_finite_differences() -> TestResult {
    for (arch, tensors) in [(Arch::Qwen2, 17), (Arch::Gemma3, 22)] {
        gradients_match_finite_differences_for(arch, tensors)?;
    }
    Ok(())
}

fn gradients_match_finite_differences_for(arch: Arch, tensors: usize) -> TestResult {
    let (_dir, model) = tiny(arch)?;
    let m = DiffModel::new(&model, &Tuning::Full, &Device::Cpu, 0)?;
    let batch = Packed::new(&seqs());
    let grads = objective(&m, &batch, Mode::Train { dropout_seed: 0 })?.backward()?;
    let mut checked = 0;
    for (name, var) in m.named_parameters() {
        let g: Vec<f32> = grads.get(var.as_tensor()).ok_or("grad")?.flatten_all()?.to_vec1()?;
        // The entry with the largest gradient: finite differences in f32 resolve it well.
        let (i, &gi) = g.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).ok_or("empty")?;
        let orig: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
        let eps = 1e-2f32;
        let at = |delta: f32| -> Result<f32> {
            let mut v = orig.clone();
            v[i] += delta;
            var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu)?)?;
            Ok(objective(&m, &batch, Mode::Eval)?.to_scalar::<f32>()?)
        };
        let fd = (at(eps)? - at(-eps)?) / (2.0 * eps);
        var.set(&Tensor::from_vec(orig, var.dims(), &Device::Cpu)?)?;
        assert!(
            (fd - gi).abs() <= 2e-2 * gi.abs().max(0.1),
            "{arch:?} {name}[{i}]: autograd {gi}, finite difference {fd}"
        );
        checked += 1;
    }
    assert_eq!(checked, tensors);
    Ok(())
}

#[test]
fn merged_lora_model_equals_the_adapted_forward() -> TestResult {
    let (_dir, model) = tiny(Arch::Qwen2)?;
    let tuning =
        Tuning::Lora(LoraConfig { targets: vec![Target::Q, Target::V, Target::Up, Target::Down], ..lora_cfg() });
    let m = DiffModel::new(&model, &tuning, &Device::Cpu, 4)?;
    randomise_b(&m)?;
    let merged = DiffModel::new(&m.merged_model(Path::new("merged"))?, &Tuning::Full, &Device::Cpu, 0)?;
    let batch = Packed::new(&seqs());
    let diff = max_abs_diff(&m.logits_all(&batch)?, &merged.logits_all(&batch)?)?;
    assert!(diff <= 1e-4, "max |Δlogit| {diff}");
    // And the unchanged base: LoRA at init is the identity.
    let fresh = DiffModel::new(&model, &tuning, &Device::Cpu, 4)?;
    let base = DiffModel::new(&model, &Tuning::Full, &Device::Cpu, 0)?;
    assert_eq!(max_abs_diff(&fresh.logits_all(&batch)?, &base.logits_all(&batch)?)?, 0.0);
    Ok(())
}

fn lora_cfg() -> LoraConfig {
    LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: Target::ALL.to_vec() }
}

#[test]
fn bad_inputs_are_refused_with_context() -> TestResult {
    let (_dir, model) = tiny(Arch::Llama)?;
    let m = DiffModel::new(&model, &Tuning::Full, &Device::Cpu, 0)?;
    let long: Vec<TokenId> = vec![5; 600];
    let err = m.hidden(&Packed::new(&[long]), Mode::Eval).unwrap_err().to_string();
    assert!(err.contains("longer than the model's context"), "{err}");
    let err = m.hidden(&Packed::new(&[vec![1u32, 999]]), Mode::Eval).unwrap_err().to_string();
    assert!(err.contains("999"), "{err}");
    assert!("gate".parse::<Target>().is_ok() && "qkv".parse::<Target>().is_err());
    let bad = LoraConfig { rank: 0, ..lora_cfg() };
    assert!(DiffModel::new(&model, &Tuning::Lora(bad), &Device::Cpu, 0).is_err());
    Ok(())
}

/// A prompt packed once with three continuations gives, row for row, the logits of the three sequences packed
/// separately — with the fused kernels and with candle's reference ops (the unfused path builds the mask itself).
#[test]
fn grouped_branches_equal_separate_sequences() -> TestResult {
    grouped_branches_equal_separate_sequences_for(Arch::Qwen2, 7, [5, 1, 4])?;
    // Gemma 3's first layer is a 16-position sliding window: branches that run past it from a prompt of 12 (the
    // window then drops prompt rows, and for the longest branch its own first rows too).
    grouped_branches_equal_separate_sequences_for(Arch::Gemma3, 12, [9, 1, 30])
}

fn grouped_branches_equal_separate_sequences_for(arch: Arch, prompt: usize, lens: [usize; 3]) -> TestResult {
    let (_dir, model) = tiny(arch)?;
    let prompt: Vec<TokenId> = (0..prompt as u32).map(|i| (i * 13 + 2) % 288).collect();
    let branches: Vec<Vec<TokenId>> = lens
        .iter()
        .enumerate()
        .map(|(k, &n)| (0..n as u32).map(|i| (i * 7 + 3 + 31 * k as u32) % 288).collect())
        .collect();
    for fused in [true, false] {
        let diff = DiffModel::new(&model, &Tuning::Full, &Device::Cpu, 0)?.with_fused_kernels(fused);
        let grouped = Packed::groups(&[(&prompt[..], branches.iter().map(Vec::as_slice).collect())]);
        let g = diff.logits_all(&grouped)?;
        let mut at = prompt.len();
        for b in &branches {
            let alone = diff.logits_all(&Packed::new(&[[&prompt[..], &b[..]].concat()]))?;
            // The prompt's rows are the same computation in a taller product: equal but for the GEMM's blocking
            // (its AVX-512 kernels split rows by the product's height, so sums may round in another order).
            let p = max_abs_diff(&g.narrow(0, 0, prompt.len())?, &alone.narrow(0, 0, prompt.len())?)?;
            assert!(p < 1e-4, "{arch:?} fused {fused}: prompt rows differ by {p}");
            let d = max_abs_diff(&g.narrow(0, at, b.len())?, &alone.narrow(0, prompt.len(), b.len())?)?;
            assert!(d < 1e-4, "{arch:?} fused {fused}: branch rows differ by {d}");
            at += b.len();
        }
    }
    Ok(())
}

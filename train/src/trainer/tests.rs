use orchard_engine::autograd::LoraConfig;
use orchard_engine::testing::{random_weights, tiny_config, write_hf_dir};
use orchard_engine::Arch;

use super::*;
use crate::checkpoint;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// A tiny random model as an HF directory, loaded by the engine.
fn tiny_engine(dir: &Path, arch: Arch, seed: u64) -> Result<Engine> {
    let cfg = tiny_config(arch);
    write_hf_dir(dir, &cfg, &random_weights(&cfg, seed))?;
    Ok(Engine::load(dir.to_str().ok_or_else(|| Error::Config("path".into()))?)?)
}

/// `n` pairs of varied lengths over the tiny vocabulary.
fn pairs(n: usize) -> Vec<PairExample> {
    let ids = |k: usize, len: usize, mul: usize| -> Vec<TokenId> {
        (0..len).map(|i| ((i * mul + k * 13 + 3) % 280) as TokenId + 3).collect()
    };
    (0..n)
        .map(|k| PairExample {
            prompt: ids(k, 4 + k % 5, 7),
            chosen: ids(k, 3 + k % 4, 11),
            rejected: ids(k + 1, 2 + (k * 3) % 5, 17),
            behaviour: Some((-10.0 - k as f64, -12.0 + k as f64 * 0.5)),
            label_smoothing: None,
            origin: format!("test:{k}"),
        })
        .collect()
}

fn config(tuning: Tuning, batch_size: usize, micro: Option<usize>) -> TrainConfig {
    TrainConfig {
        objective: Objective::Preference {
            loss: DpoLoss::Rpo { beta: 0.5, alpha: 0.3 },
            reference: ReferenceSource::Model,
        },
        tuning,
        optim: OptimConfig { lr: 1e-3, warmup_steps: 1, ..OptimConfig::default() },
        batch: BatchConfig { batch_size, micro_batch_size: micro, memory_gb: 1.0 },
        epochs: 2,
        max_steps: None,
        seed: 11,
        checkpoint_every: 0,
        keep_checkpoints: 2,
    }
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

/// Gradient accumulation: a step of 4 pairs as 4 micro-batches of 1 gives the gradient of 1 micro-batch of 4.
#[test]
fn gradient_accumulation_4x1_equals_1x4() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = tiny_engine(dir.path(), Arch::Qwen2, 5)?;
    let lora = Tuning::Lora(LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: orchard_engine::autograd::Target::ALL.to_vec(),
    });
    for tuning in [Tuning::Full, lora] {
        let cache = tempfile::tempdir()?;
        let mut runs = Vec::new();
        for micro in [1, 4] {
            let cfg = config(tuning.clone(), 4, Some(micro));
            let mut t = Trainer::new(&engine, TrainData::Pairs(pairs(8)), cfg, cache.path(), &mut |_, _, _| {})?;
            if let Tuning::Lora(_) = tuning {
                // B starts at zero, which would leave A without gradient: give it values (same in both runs).
                for (name, var) in t.model.named_parameters() {
                    if name.ends_with("lora_b") {
                        let n = var.elem_count();
                        let v: Vec<f32> = (0..n).map(|i| ((i * 7919 % 101) as f32 - 50.0) * 1e-3).collect();
                        var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu)?)?;
                    }
                }
            }
            let (_, micro_batches) = t.plan();
            assert_eq!(micro_batches.len(), 4 / micro, "{micro} per micro-batch");
            let acc = t.accumulate()?;
            let names: Vec<String> = t.opt.params().iter().map(|(n, _)| n.clone()).collect();
            runs.push((acc.loss, t.opt.accumulated().to_vec(), names));
        }
        let ((l1, g1, names), (l4, g4, _)) = (&runs[0], &runs[1]);
        assert!((l1 - l4).abs() <= 1e-6 * l4.abs().max(1.0), "{tuning:?}: loss 4×1 {l1} vs 1×4 {l4}");
        assert!(g1.len() == g4.len() && !g1.is_empty());
        assert_eq!(names.len(), g1.len());
        for (name, (a, b)) in names.iter().zip(g1.iter().zip(g4)) {
            assert_eq!(a.len(), b.len(), "{name}");
            let scale = max_abs(b);
            assert!(scale > 0.0, "{tuning:?}: {name} has no gradient");
            let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff <= 1e-4 * scale, "{tuning:?}: {name}: max |Δgrad| {diff}, scale {scale}");
        }
    }
    Ok(())
}

fn param_bits(t: &Trainer<'_>) -> Result<Vec<Vec<u32>>> {
    Ok(t.opt.param_values()?.into_iter().map(|v| v.into_iter().map(f32::to_bits).collect()).collect())
}

/// A run stopped after 2 steps and resumed from its checkpoint ends bit for bit where an uninterrupted run does,
/// across an epoch boundary (new data order) and with LoRA dropout (masks drawn per step).
#[test]
fn resumed_runs_equal_uninterrupted_runs_exactly() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = tiny_engine(dir.path(), Arch::Llama, 6)?;
    let tuning = Tuning::Lora(LoraConfig {
        rank: 2,
        alpha: 4.0,
        dropout: 0.2,
        targets: vec![orchard_engine::autograd::Target::Q, orchard_engine::autograd::Target::Down],
    });
    let cfg = config(tuning, 2, None);
    let cache = tempfile::tempdir()?;
    let data = || TrainData::Pairs(pairs(6));

    let mut whole = Trainer::new(&engine, data(), cfg.clone(), cache.path(), &mut |_, _, _| {})?;
    assert_eq!(whole.total_steps(), 6);
    let mut want = Vec::new();
    while !whole.finished() {
        want.push(whole.step()?.loss);
    }

    let out = tempfile::tempdir()?;
    let mut first = Trainer::new(&engine, data(), cfg.clone(), cache.path(), &mut |_, _, _| {})?;
    let mut got = vec![first.step()?.loss, first.step()?.loss];
    first.save_checkpoint(out.path())?;
    drop(first);
    let mut second = Trainer::new(&engine, data(), cfg.clone(), cache.path(), &mut |_, _, _| {})?;
    second.resume(checkpoint::load(out.path())?)?;
    assert_eq!(second.step_index(), 2);
    while !second.finished() {
        got.push(second.step()?.loss);
    }
    assert_eq!(got, want, "per-step losses");
    assert!(param_bits(&second)? == param_bits(&whole)?, "final weights differ");
    assert_eq!(second.state().order, whole.state().order);
    Ok(())
}

/// A checkpoint of another model, other data or other settings is refused with the reason, and nothing changes.
#[test]
fn foreign_checkpoints_are_refused() -> TestResult {
    let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (engine_a, engine_b) = (tiny_engine(a.path(), Arch::Llama, 1)?, tiny_engine(b.path(), Arch::Llama, 2)?);
    let cfg = config(Tuning::Full, 2, None);
    let cache = tempfile::tempdir()?;
    let out = tempfile::tempdir()?;
    let mut t = Trainer::new(&engine_a, TrainData::Pairs(pairs(4)), cfg.clone(), cache.path(), &mut |_, _, _| {})?;
    t.step()?;
    let saved = t.save_checkpoint(out.path())?;
    let before = std::fs::read(saved.join(checkpoint::WEIGHTS_FILE))?;

    let mut other = Trainer::new(&engine_b, TrainData::Pairs(pairs(4)), cfg.clone(), cache.path(), &mut |_, _, _| {})?;
    let err = other.resume(checkpoint::load(out.path())?).unwrap_err().to_string();
    assert!(err.contains("another model") || err.contains("from a model with hash"), "{err}");
    assert!(err.contains("checkpoint"), "{err}");
    assert_eq!(other.step_index(), 0);

    let mut more = Trainer::new(&engine_a, TrainData::Pairs(pairs(5)), cfg.clone(), cache.path(), &mut |_, _, _| {})?;
    let err = more.resume(checkpoint::load(out.path())?).unwrap_err().to_string();
    assert!(err.contains("different data"), "{err}");

    let lr = TrainConfig { optim: OptimConfig { lr: 5e-4, ..cfg.optim }, ..cfg };
    let mut changed = Trainer::new(&engine_a, TrainData::Pairs(pairs(4)), lr, cache.path(), &mut |_, _, _| {})?;
    let err = changed.resume(checkpoint::load(out.path())?).unwrap_err().to_string();
    assert!(err.contains("optim"), "{err}");
    assert_eq!(std::fs::read(saved.join(checkpoint::WEIGHTS_FILE))?, before, "the checkpoint is untouched");
    Ok(())
}

/// TOPR trains on trajectories end to end: the loss is finite and positives become more likely.
#[test]
fn topr_steps_raise_the_likelihood_of_positive_trajectories() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = tiny_engine(dir.path(), Arch::Llama, 9)?;
    let t: Vec<TrajectoryExample> = pairs(4)
        .into_iter()
        .flat_map(|p| {
            [
                TrajectoryExample {
                    prompt: p.prompt.clone(),
                    completion: p.chosen,
                    behaviour: -8.0,
                    reward: 1.0,
                    origin: "c".into(),
                },
                TrajectoryExample {
                    prompt: p.prompt,
                    completion: p.rejected,
                    behaviour: -8.0,
                    reward: -1.0,
                    origin: "r".into(),
                },
            ]
        })
        .collect();
    let cfg = TrainConfig {
        objective: Objective::Topr(Topr::default()),
        optim: OptimConfig { lr: 1e-3, schedule: crate::optim::ScheduleKind::Constant, ..OptimConfig::default() },
        epochs: 3,
        ..config(Tuning::Full, 8, None)
    };
    let cache = tempfile::tempdir()?;
    let mut trainer = Trainer::new(&engine, TrainData::Trajectories(t), cfg, cache.path(), &mut |_, _, _| {})?;
    let first = trainer.step()?;
    let mut last = first.clone();
    while !trainer.finished() {
        last = trainer.step()?;
    }
    assert!(first.loss.is_finite() && last.loss.is_finite());
    let (a, b) = (first.topr.ok_or("topr metrics")?, last.topr.ok_or("topr metrics")?);
    assert_eq!(a.positive, 0.5);
    // Mean log-prob over all trajectories mixes both signs; the loss (−w·R·logπ/len) must fall.
    assert!(last.loss < first.loss, "loss {} -> {} ({a:?} -> {b:?})", first.loss, last.loss);
    Ok(())
}

fn sft_examples(n: usize) -> Vec<SftExample> {
    let ids = |k: usize, len: usize, mul: usize| -> Vec<TokenId> {
        (0..len).map(|i| ((i * mul + k * 13 + 3) % 280) as TokenId + 3).collect()
    };
    (0..n)
        .map(|k| SftExample {
            prompt: ids(k, 3 + k % 4, 7),
            completion: ids(k, 2 + k % 5, 11),
            weight: 1.0,
            origin: format!("test:{k}"),
        })
        .collect()
}

fn sft_config(batch_size: usize, micro: Option<usize>, sft: Sft) -> TrainConfig {
    TrainConfig {
        objective: Objective::Sft(sft),
        tuning: Tuning::Full,
        optim: OptimConfig { lr: 1e-3, ..OptimConfig::default() },
        batch: BatchConfig { batch_size, micro_batch_size: micro, memory_gb: 1.0 },
        epochs: 1,
        max_steps: None,
        seed: 3,
        checkpoint_every: 0,
        keep_checkpoints: 1,
    }
}

/// The first SFT step's loss is the per-token mean NLL of the step's completion tokens under the starting model,
/// as the engine's own teacher-forced scoring (checked against HF transformers in tests/reference) computes it.
#[test]
fn sft_loss_is_the_mean_completion_nll_the_engine_scores() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = tiny_engine(dir.path(), Arch::Llama, 9)?;
    let data = sft_examples(6);
    let mut trainer = Trainer::new(
        &engine,
        TrainData::Sft(data.clone()),
        sft_config(6, Some(2), Sft::default()),
        dir.path(),
        &mut |_, _, _| {},
    )?;
    let m = trainer.step()?;
    let order = epoch_order(6, 3, 0);
    let pairs: Vec<(Vec<TokenId>, Vec<TokenId>)> =
        order.iter().map(|&i| (data[i].prompt.clone(), data[i].completion.clone())).collect();
    let scored = engine.score(&pairs)?;
    let tokens: usize = scored.iter().map(|s| s.n_tokens).sum();
    let nll = -scored.iter().map(|s| s.logprob_sum).sum::<f64>() / tokens as f64;
    assert!((m.loss - nll).abs() < 1e-5, "trainer {} vs scored {nll}", m.loss);
    assert_eq!(m.sft.as_ref().map(|s| s.completion_tokens), Some(tokens));
    Ok(())
}

/// Gradient accumulation: the SFT step as micro-batches of 1 equals one micro-batch of 4 (per-token mean over the
/// step, not over each micro-batch).
#[test]
fn sft_accumulation_4x1_equals_1x4() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = tiny_engine(dir.path(), Arch::Llama, 4)?;
    let run = |micro| -> Result<(f64, Vec<f32>)> {
        let mut t = Trainer::new(
            &engine,
            TrainData::Sft(sft_examples(4)),
            sft_config(4, Some(micro), Sft::default()),
            dir.path(),
            &mut |_, _, _| {},
        )?;
        let m = t.step()?;
        let w = t.model().merged_model(dir.path())?.layers()[0].o_proj.to_f32();
        Ok((m.loss, w))
    };
    let (l1, w1) = run(1)?;
    let (l4, w4) = run(4)?;
    assert!((l1 - l4).abs() < 1e-6, "{l1} vs {l4}");
    assert!(!w1.is_empty() && w1.len() == w4.len());
    let diff = w1.iter().zip(&w4).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-5, "weights differ by {diff}");
    Ok(())
}

/// Masked Thought at ratio 1 from the first step: every completion input token is the mask token, the targets are
/// not — so the loss differs from plain SFT, and the metrics count every completion token as masked.
#[test]
fn masked_thought_masks_completion_inputs_not_targets() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = tiny_engine(dir.path(), Arch::Llama, 2)?;
    let mt = crate::sft::MaskedThought { max_ratio: 1.0, ramp: 0.0, mask_token: 1 };
    let data = sft_examples(4);
    let mut plain = Trainer::new(
        &engine,
        TrainData::Sft(data.clone()),
        sft_config(4, None, Sft::default()),
        dir.path(),
        &mut |_, _, _| {},
    )?;
    let mut masked = Trainer::new(
        &engine,
        TrainData::Sft(data.clone()),
        sft_config(4, None, Sft { masked_thought: Some(mt) }),
        dir.path(),
        &mut |_, _, _| {},
    )?;
    let (a, b) = (plain.step()?, masked.step()?);
    let s = b.sft.as_ref().ok_or("sft metrics")?;
    let tokens: usize = data.iter().map(|e| e.completion.len()).sum();
    // Only completion tokens that are not already the mask token count as masked; the prompt is never touched.
    let maskable: usize = data.iter().flat_map(|e| &e.completion).filter(|&&t| t != 1).count();
    assert_eq!((s.masked_tokens, s.completion_tokens, s.mask_ratio), (maskable, tokens, 1.0));
    assert!((a.loss - b.loss).abs() > 1e-4, "masking the inputs changed nothing: {} {}", a.loss, b.loss);
    Ok(())
}

/// A pair packed as one forked sequence (prompt once) gives the log-probs and the gradients of chosen and
/// rejected packed separately (prompt twice), on full fine-tuning and LoRA.
#[test]
fn forked_pairs_equal_separate_sequences_in_values_and_gradients() -> TestResult {
    use crate::batch::{completion_logps, pair_logps};
    let dir = tempfile::tempdir()?;
    let engine = tiny_engine(dir.path(), Arch::Qwen2, 12)?;
    let data = pairs(5);
    for tuning in [
        Tuning::Full,
        Tuning::Lora(LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: orchard_engine::autograd::Target::ALL.to_vec(),
        }),
    ] {
        let model = DiffModel::new(engine.model(), &tuning, &Device::Cpu, 1)?;
        let forked: Vec<(&[TokenId], &[TokenId], &[TokenId])> =
            data.iter().map(|e| (&e.prompt[..], &e.chosen[..], &e.rejected[..])).collect();
        let mut separate: Vec<(&[TokenId], &[TokenId])> = data.iter().map(|e| (&e.prompt[..], &e.chosen[..])).collect();
        separate.extend(data.iter().map(|e| (&e.prompt[..], &e.rejected[..])));
        let mode = Mode::Train { dropout_seed: 3 };
        let a = pair_logps(&model, &forked, mode)?;
        let b = completion_logps(&model, &separate, mode)?;
        let (va, vb): (Vec<f32>, Vec<f32>) = (a.to_vec1()?, b.to_vec1()?);
        assert_eq!((va.len(), vb.len()), (10, 10));
        for (x, y) in va.iter().zip(&vb) {
            assert!((x - y).abs() < 1e-4, "{va:?} vs {vb:?}");
        }
        // A loss weighting each completion differently: every parameter's gradient agrees.
        let w = Tensor::from_vec((0..10).map(|i| 0.3 + i as f32 * 0.17).collect::<Vec<f32>>(), 10, &Device::Cpu)?;
        let (ga, gb) = ((a * &w)?.sum_all()?.backward()?, (b * &w)?.sum_all()?.backward()?);
        let mut checked = 0;
        for (name, var) in model.named_parameters() {
            let (Some(x), Some(y)) = (ga.get(var.as_tensor()), gb.get(var.as_tensor())) else { continue };
            let (x, y): (Vec<f32>, Vec<f32>) = (x.flatten_all()?.to_vec1()?, y.flatten_all()?.to_vec1()?);
            assert_eq!(x.len(), y.len(), "{name}");
            let scale = max_abs(&y).max(1e-3);
            let diff = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
            assert!(diff <= 1e-3 * scale, "{name}: gradients differ by {diff} (scale {scale})");
            checked += 1;
        }
        assert!(checked > 0, "no gradient compared");
    }
    Ok(())
}

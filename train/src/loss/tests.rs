use candle_core::{Device, Tensor, Var};

use super::*;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Produced by `tests/reference/dpo_losses.py` (TRL 1.16's own loss code; see its docstring).
const REFERENCE: &str = include_str!("../../../tests/reference/dpo_losses.json");

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default()
}

struct Inputs {
    chosen: Var,
    rejected: Var,
    policy: PolicyLogps,
    reference: ReferenceLogps,
    tokens_chosen: usize,
}

fn inputs(r: &serde_json::Value) -> Result<Inputs> {
    let cpu = &Device::Cpu;
    let t = |k: &str| Tensor::new(floats(&r[k]).as_slice(), cpu);
    let (chosen, rejected) = (Var::from_tensor(&t("policy_chosen")?)?, Var::from_tensor(&t("policy_rejected")?)?);
    let policy = PolicyLogps {
        chosen: chosen.as_tensor().clone(),
        rejected: rejected.as_tensor().clone(),
        chosen_tokens: t("tokens_chosen")?,
        rejected_tokens: t("tokens_rejected")?,
    };
    let reference = ReferenceLogps { chosen: t("reference_chosen")?, rejected: t("reference_rejected")? };
    let tokens_chosen = floats(&r["tokens_chosen"]).iter().sum::<f64>() as usize;
    Ok(Inputs { chosen, rejected, policy, reference, tokens_chosen })
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{what}: orchard {a}, TRL {b}");
}

#[test]
fn every_loss_equals_trl_in_value_and_gradient() -> TestResult {
    let r: serde_json::Value = serde_json::from_str(REFERENCE)?;
    let p = &r["params"];
    let (beta, eps) = (p["beta"].as_f64().ok_or("beta")?, p["label_smoothing"].as_f64().ok_or("eps")?);
    let losses = [
        ("dpo", DpoLoss::Sigmoid { beta }),
        ("cdpo", DpoLoss::Cdpo { beta, label_smoothing: eps }),
        ("robust", DpoLoss::Robust { beta, label_smoothing: eps }),
        ("ipo", DpoLoss::Ipo { beta }),
        ("hinge", DpoLoss::Hinge { beta }),
        ("rpo", DpoLoss::Rpo { beta, alpha: 1.0 }),
        (
            "simpo",
            DpoLoss::Simpo { beta: p["simpo_beta"].as_f64().ok_or("b")?, gamma: p["simpo_gamma"].as_f64().ok_or("g")? },
        ),
        ("orpo", DpoLoss::Orpo { beta }),
    ];
    for (name, loss) in losses {
        let x = inputs(&r)?;
        let pairs = x.chosen.dim(0)?;
        let totals = UpdateTotals { pairs, chosen_tokens: x.tokens_chosen };
        let out = loss.compute(&x.policy, Some(&x.reference), None, totals)?;
        let case = &r["cases"][name];
        close(out.loss.to_scalar::<f64>()?, case["loss"].as_f64().ok_or("loss")?, name);
        let grads = out.loss.backward()?;
        for (var, key) in [(&x.chosen, "grad_chosen"), (&x.rejected, "grad_rejected")] {
            let got: Vec<f64> = grads.get(var.as_tensor()).ok_or("no grad")?.to_vec1()?;
            let want = floats(&case[key]);
            assert_eq!(got.len(), want.len(), "{name} {key}: a missing reference key would check nothing");
            for (k, (a, b)) in got.iter().zip(want).enumerate() {
                close(*a, b, &format!("{name} {key}[{k}]"));
            }
        }
    }
    Ok(())
}

#[test]
fn micro_batch_shares_add_up_to_the_full_batch_loss() -> TestResult {
    let r: serde_json::Value = serde_json::from_str(REFERENCE)?;
    let x = inputs(&r)?;
    let totals = UpdateTotals { pairs: 6, chosen_tokens: x.tokens_chosen };
    for loss in [DpoLoss::Rpo { beta: 0.1, alpha: 0.5 }, DpoLoss::Orpo { beta: 0.2 }, DpoLoss::Ipo { beta: 0.3 }] {
        let full = loss.compute(&x.policy, Some(&x.reference), None, totals)?.loss.to_scalar::<f64>()?;
        let mut parts = 0.0;
        for (start, len) in [(0, 1), (1, 3), (4, 2)] {
            let n = |t: &Tensor| t.narrow(0, start, len);
            let policy = PolicyLogps {
                chosen: n(&x.policy.chosen)?,
                rejected: n(&x.policy.rejected)?,
                chosen_tokens: n(&x.policy.chosen_tokens)?,
                rejected_tokens: n(&x.policy.rejected_tokens)?,
            };
            let reference = ReferenceLogps { chosen: n(&x.reference.chosen)?, rejected: n(&x.reference.rejected)? };
            parts += loss.compute(&policy, Some(&reference), None, totals)?.loss.to_scalar::<f64>()?;
        }
        assert!((full - parts).abs() < 1e-12, "{}: {full} vs {parts}", loss.name());
    }
    Ok(())
}

#[test]
fn log_sigmoid_is_exact_at_zero_and_saturates() -> TestResult {
    let x = Var::from_tensor(&Tensor::new(&[0f64, 800.0, -800.0], &Device::Cpu)?)?;
    let y = log_sigmoid(x.as_tensor())?;
    let v: Vec<f64> = y.to_vec1()?;
    assert!((v[0] + std::f64::consts::LN_2).abs() < 1e-15 && v[1] == 0.0 && v[2] == -800.0, "{v:?}");
    let g: Vec<f64> = y.sum_all()?.backward()?.get(x.as_tensor()).ok_or("grad")?.to_vec1()?;
    // d/dx log σ(x) = σ(−x): ½ at 0 (where every DPO run starts), 0 and 1 at the ends.
    assert_eq!(g, vec![0.5, 0.0, 1.0]);
    Ok(())
}

#[test]
fn per_pair_smoothing_overrides_the_constant() -> TestResult {
    let r: serde_json::Value = serde_json::from_str(REFERENCE)?;
    let x = inputs(&r)?;
    let totals = UpdateTotals { pairs: 6, chosen_tokens: x.tokens_chosen };
    let constant = DpoLoss::Cdpo { beta: 0.1, label_smoothing: 0.2 };
    let a = constant.compute(&x.policy, Some(&x.reference), None, totals)?.loss.to_scalar::<f64>()?;
    let eps = Tensor::full(0.2f64, 6, &Device::Cpu)?;
    let other = DpoLoss::Cdpo { beta: 0.1, label_smoothing: 0.0 };
    let b = other.compute(&x.policy, Some(&x.reference), Some(&eps), totals)?.loss.to_scalar::<f64>()?;
    assert_eq!(a, b);
    Ok(())
}

#[test]
fn invalid_settings_are_refused() {
    assert!(DpoLoss::Sigmoid { beta: 0.0 }.validate().is_err());
    assert!(DpoLoss::Robust { beta: 0.1, label_smoothing: 0.5 }.validate().is_err());
    assert!(DpoLoss::Simpo { beta: 2.0, gamma: f64::NAN }.validate().is_err());
    assert!(DpoLoss::Orpo { beta: 0.1 }.validate().is_ok());
}

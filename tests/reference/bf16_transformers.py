"""transformers' own bf16-vs-f32 gap on the default model: the yardstick of the device engine's bf16 bound
(engine/src/device.rs BF16_LOGPROB_BOUND; test engine/tests/device.rs default_model_on_the_device_within_the_stated_bounds,
same prompts). Run: `orchard convert --out /tmp/smolhf` then `.venv/bin/python tests/reference/bf16_transformers.py
/tmp/smolhf`. Printed on 2026-12-07 (transformers 5, torch 2.15, CPU): {'all': 0.7229886766833218,
'likely': 0.39723296131314356}; the device engine on candle's CPU backend in bf16: all 0.604, likely 0.377."""
import torch, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
d = sys.argv[1] if len(sys.argv) > 1 else "/tmp/smolhf"
tok = AutoTokenizer.from_pretrained(d)
texts = ["What is 17 times 23?", "Write a haiku about autumn leaves falling on a quiet pond.", "Hi"]
m32 = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
m16 = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.bfloat16)
allw = likw = 0.0
for t in texts:
    ids = torch.tensor([tok.encode(t, add_special_tokens=False)])
    with torch.no_grad():
        a = torch.log_softmax(m32(ids).logits[0, -1].double(), -1)
        b = torch.log_softmax(m16(ids).logits[0, -1].double(), -1)
    d_ = (a - b).abs()
    allw = max(allw, d_.max().item()); likw = max(likw, d_[a >= -10].max().item())
print({"all": allw, "likely": likw})

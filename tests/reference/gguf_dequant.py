"""Reference dequantization of every GGML block type by the `gguf` Python package (the one llama.cpp ships),
for engine/tests/loading.rs: SHA-256 of each tensor's dequantized values (little-endian f32, row-major).

The GGUF file is written by that test (one 8 × 512 tensor per type, quantized by candle from the same
deterministic values); write it and the reference with

    ORCHARD_WRITE_QUANT_GGUF=/tmp/quants.gguf cargo test --release -p orchard-engine --test tests dequant
    python tests/reference/gguf_dequant.py /tmp/quants.gguf      # needs `pip install gguf numpy`
"""
import hashlib
import json
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def main():
    reader = GGUFReader(sys.argv[1])
    out = {}
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type).astype("<f4").reshape(-1)
        out[t.name] = {"type": t.tensor_type.name, "sha256": hashlib.sha256(values.tobytes()).hexdigest(),
                       "first": [float(x) for x in values[:4]]}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gguf_dequant.json")
    with open(path, "w") as f:
        json.dump({"gguf": __import__("gguf").__version__ if hasattr(__import__("gguf"), "__version__") else "0.17.1",
                   "tensors": out}, f, indent=1, sort_keys=True)
    print("wrote", path, len(out), "tensors")


if __name__ == "__main__":
    main()

"""Thin helpers over llama-cpp-python's low-level API, shared by the comparison scripts.

Everything runs through `llama_decode` with explicit batches (tokens, positions, sequence ids), the way a serving
engine drives llama.cpp: one call per step for every open sequence.
"""
import ctypes
import os
import time

import numpy as np
import llama_cpp as L

L.llama_backend_init()


def default_gguf():
    cache = os.environ.get("ORCHARD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "orchard")
    return os.path.join(cache, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


class Model:
    def __init__(self, path):
        mp = L.llama_model_default_params()
        if os.environ.get("LLAMACPP_NO_EXTRA_BUFTS"):
            mp.use_extra_bufts = False
        self.model = L.llama_model_load_from_file(path.encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text):
        data = text.encode()
        buf = (L.llama_token * (len(data) + 16))()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, True)
        return list(buf[:n])

    def context(self, n_ctx, n_seq, threads, n_batch=512, unified=False):
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = n_batch
        cp.n_seq_max = n_seq
        cp.n_threads = threads
        cp.n_threads_batch = threads
        cp.kv_unified = unified
        cp.no_perf = True
        ctx = L.llama_init_from_model(self.model, cp)
        if not ctx:
            raise RuntimeError("llama.cpp could not create a context")
        return Context(self, ctx, n_batch)


class Context:
    def __init__(self, model, ctx, n_batch):
        self.m = model
        self.ctx = ctx
        self.n_batch = n_batch
        self.batch = L.llama_batch_init(max(n_batch, 1), 0, 64)
        self.mem = L.llama_get_memory(ctx)

    def clear(self):
        L.llama_memory_clear(self.mem, True)

    def decode(self, items):
        """items: list of (token, pos, seq_id, want_logits). Returns the batch indices that carry logits."""
        out = []
        for start in range(0, len(items), self.n_batch):
            chunk = items[start:start + self.n_batch]
            b = self.batch
            b.n_tokens = len(chunk)
            for i, (tok, pos, seq, logits) in enumerate(chunk):
                b.token[i] = tok
                b.pos[i] = pos
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = seq
                b.logits[i] = bool(logits)
            rc = L.llama_decode(self.ctx, b)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            out.append([i for i, it in enumerate(chunk) if it[3]])
        return out[-1] if out else []

    def logits(self, i):
        ptr = L.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.m.n_vocab,))

    def seq_cp(self, src, dst):
        L.llama_memory_seq_cp(self.mem, src, dst, -1, -1)

    def seq_rm(self, seq):
        L.llama_memory_seq_rm(self.mem, seq, -1, -1)


def prompt_ids(base, length, index):
    """Same construction as Orchard's `bench::prompt_ids`."""
    start = (index * 7) % len(base)
    return [base[(start + i) % len(base)] for i in range(length)]


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2

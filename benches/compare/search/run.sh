#!/usr/bin/env bash
# Equal-budget comparison on GSM8K train (NOTES-search.md): MCTS, Tree-of-Code (P-CoT) and best-of-N with the
# default model, 768 generated tokens per question.
set -euo pipefail
BIN=${BIN:-orchard}
N=${N:-100}
OUT=${OUT:-runs/measure}
COMMON=(--task gsm8k --split train --limit "$N" --seed 1 --workers 16)
mkdir -p "$OUT"
/usr/bin/time -f "%e s" "$BIN" search --algo mcts "${COMMON[@]}" --reward gsm8k --out "$OUT/mcts" \
  --iterations 256 --k 4 --parallel 4 --max-tokens 768 --policy agentq 2>&1 | tail -2
/usr/bin/time -f "%e s" "$BIN" search --algo bon "${COMMON[@]}" --reward gsm8k --out "$OUT/bon" \
  --n 3 --max-new-tokens 256 2>&1 | tail -2
/usr/bin/time -f "%e s" "$BIN" search --algo toc "${COMMON[@]}" --reward pot --out "$OUT/toc" \
  --m 3 --depth 3 --max-new-tokens 256 --max-tokens 768 2>&1 | tail -2
# Best-of-4: the closest best-of-N to MCTS's actual token use (NOTES-search.md).
/usr/bin/time -f "%e s" "$BIN" search --algo bon "${COMMON[@]}" --reward gsm8k --out "$OUT/bon4" \
  --n 4 --max-new-tokens 256 2>&1 | tail -2

#!/usr/bin/env bash
# The five-task language table's rows for one LM (benchmarks/RESULTS.md, "Five mixed tasks, 1,500 steps"):
# zero-shot, LoRAp(X) r8, Affix 3 tokens, Additional-scan N' 8, LoRAp(X) r16 + Additional-scan N' 8, full
# fine-tuning; all 3,000 training records, 4 epochs, batch 8, response-only loss, 20 warm-up steps, seed 0, the
# likelihood evaluator on the bundled test files. Resumable: a finished row is skipped.
# Usage: bash benchmarks/lm_table_rows.sh [MODEL (default mamba2-proxy)] [OUT (default runs/lm_rows/MODEL)]
set -uo pipefail
model=${1:-mamba2-proxy}
out=${2:-runs/lm_rows/$model}
mkdir -p "$out"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
recipe='{"batch_size": 8, "micro_batch_size": 8, "epochs": 4, "train_on_inputs": false, "warmup_steps": 20}'
row() {
  local name=$1; shift
  [ -f "$out/$name.done" ] && return
  local start; start=$(date +%s)
  hybridsearch finetune --model "$model" --out "$out/$name" --eval --recipe "$recipe" "$@" > "$out/$name.log" 2>&1 \
    || { echo "$name failed: $out/$name.log" >&2; return 1; }
  echo "seconds=$(( $(date +%s) - start )) load=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/$name.log"
  touch "$out/$name.done"
}
[ -f "$out/zeroshot.done" ] || { hybridsearch evaluate --model "$model" --json > "$out/zeroshot.log" && touch "$out/zeroshot.done"; }
row additional_scan --peft '{"methods": {"additional_scan": {"states": 8}}}' --lr 1e-2
row lora_X --peft '{"methods": {"lora_X": {"rank": 8}}}' --lr 1e-2
row hybrid --peft '{"methods": {"lora_X": {"rank": 16}, "additional_scan": {"states": 8}}}' --lr 0.0126
row affix --peft '{"methods": {"affix": {"tokens": 3}}}' --lr 5e-3
row full --lr 2e-3
echo "rows in $out (each .log ends with the run's JSON, its eval and its wall time)"

#!/usr/bin/env bash
# The GPU checks in one script: the speed table of the four scripts (benchmarks/bench.py, at each
# paper's batch and at 256 for MFU), then every paper's claims at the medium scale (benchmarks/
# claims all --scale medium, about 3 minutes per paper on one H200). Everything lands under OUTDIR:
# bench.md and bench-256.md (the tables), the four PAPER-medium.md reports, 8 figures, and the logs.
#
#   benchmarks/gpu.sh OUTDIR [DATA] [bench|claims|all]
#       DATA: the folder that holds mnist/, celeba/ and celeba_identities/ (default ../shared/data;
#       on a machine that has only the checkout, copy the sample data into an ignored folder of it)
#   DRY_RUN=1 benchmarks/gpu.sh OUTDIR     the same path on a CPU (tiny counts, --quick, batch 16 for
#       the large-batch phase): 12.5 minutes on 2 cores, measured 2026-12-04
#
# Each phase has its own time limit (BENCH_LIMIT, CLAIMS_LIMIT seconds), so one slow phase cannot
# eat the others' time; the claims write each paper's report as soon as that paper is done.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu.sh OUTDIR [DATA] [bench|claims|all]}
DATA=${2:-../shared/data}
PHASE=${3:-all}
PY=${PYTHON:-python}
cd "$(dirname "$0")/.."
mkdir -p "$OUT/figures"
OUT=$(cd "$OUT" && pwd)
WORK=runs/claims/medium
if [ "${DRY_RUN:-0}" = 1 ]; then
    BENCH=(--device cpu --quick --compile off --steps 2 --warmup 1)
    BIG=16  # the large-batch phase's path, at a batch a CPU steps in seconds
    CLAIMS=(--dry-run --device cpu)
    WORK=runs/claims/medium-dry
else
    BENCH=(--steps 20 --warmup 5)
    BIG=256
    CLAIMS=()
fi
status=0
if [ "$PHASE" = bench ] || [ "$PHASE" = all ]; then
    echo "bench: the four scripts at their papers' batches, then vlae and vae_began at $BIG ($(date -u))"
    timeout "${BENCH_LIMIT:-240}" "$PY" benchmarks/bench.py "${BENCH[@]}" --celeba "$DATA/celeba" \
        --identities "$DATA/celeba_identities" > "$OUT/bench.md" 2> "$OUT/bench.log" || { echo "bench failed: $OUT/bench.log"; status=1; }
    timeout "${BENCH_LIMIT:-240}" "$PY" benchmarks/bench.py "${BENCH[@]}" --scripts vlae,vae_began --batch-size "$BIG" \
        --celeba "$DATA/celeba" --identities "$DATA/celeba_identities" > "$OUT/bench-256.md" 2>> "$OUT/bench.log" \
        || { echo "bench at $BIG failed: $OUT/bench.log"; status=1; }
fi
if [ "$PHASE" = claims ] || [ "$PHASE" = all ]; then
    echo "claims: all four papers at the medium scale ($(date -u))"
    timeout "${CLAIMS_LIMIT:-600}" "$PY" benchmarks/claims all --scale medium "${CLAIMS[@]}" --data-dir "$DATA" \
        --work "$WORK" --out "$WORK/report" > "$OUT/claims.log" 2>&1 || { echo "claims failed: $OUT/claims.log"; status=1; }
    cp "$WORK"/report/*-medium.md "$OUT"/ 2>/dev/null
    for figure in vlae/faces-mmd_fig3_layers.png vlae/fig4_arithmetic_pale.png cmma/fig4_compare.png \
            disentangled/toy-lr-livae_fig2_toy.png disentangled/mnist-lr-livae_fig6_swap.png \
            vae_began/samples_compare.png vae_began/k_t.png vae_began/e_t_vae-began-lsm.png; do
        [ -f "$WORK/report/$figure" ] && cp "$WORK/report/$figure" "$OUT/figures/${figure//\//_}"
    done
fi
echo "done ($(date -u)): $(ls "$OUT" | tr '\n' ' ')"
exit $status

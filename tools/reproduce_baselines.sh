#!/usr/bin/env bash
# Regenerate the glyphs/v1 baseline study: train, evaluate, package as leaderboard entries.
#
#   tools/reproduce_baselines.sh [train|evaluate|submit|all]     (default: all)
#
# 4 losses x (without, with SEC) x 8 levels x 2 seeds = 128 trained models, each
# scored per level without adaptation and after 2- and 5-shot adaptation.  Every
# step is resumable: finished checkpoints and evaluations are kept, so rerunning
# the script after an interruption only does what is missing.
#
# Cost on a 2-core CPU: training about 60 minutes, evaluation about 40 minutes.
# Settings (all fixed before the study was run, none tuned on test classes):
#   glyph-cnn (width 16, 32-d: leaderboard entries stay small), 400 iterations,
#   batch 128 = 32 classes x 4,
#   Adam 1e-3, selection on the level's val classes every 150 iterations;
#   SEC weight eta = 1.0, the official SEC implementation's default;
#   few-shot: the first 5 episodes of each shot for prototypes and
#   finetune-last (1000 / 1500 iterations, the ooDML protocol), and the first
#   2 episodes with 150 iterations for finetune-all (seed 0 only: adapting
#   every weight costs ~10 s per episode on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

OODML=${OODML:-.venv/bin/oodml}
OUT=${OUT:-build/baselines}
JOBS=${JOBS:-2}                       # parallel processes, one CPU thread each
LOSSES=${LOSSES:-"margin multi-similarity proxy-anchor arcface"}
SEEDS=${SEEDS:-"0 1"}
ITERATIONS=${ITERATIONS:-400}
SEC_ETA=${SEC_ETA:-1.0}
export OMP_NUM_THREADS=1 OODML_QUIET=1

runs() {  # one line per run: NAME SEED [--sec ETA]
    for loss in $LOSSES; do
        for seed in $SEEDS; do
            echo "$loss $seed"
            echo "$loss+sec $seed --sec $SEC_ETA"
        done
    done
}

train_one() {  # NAME SEED [--sec ETA]
    local name=$1 seed=$2; shift 2
    "$OODML" -q train --dataset glyphs --splits v1 --level all --loss "${name%+sec}" "$@" \
        --embed-dim 32 --iterations "$ITERATIONS" --seed "$seed" --device cpu --out "$OUT/runs/$name/seed$seed" \
        > "$OUT/logs/train-$name-seed$seed.log"
}

evaluate_one() {  # NAME SEED [--sec ETA]
    local name=$1 seed=$2 run="$OUT/runs/$1/seed$2"
    local common=(--dataset glyphs --splits v1 --device cpu --save-embeddings)
    "$OODML" -q evaluate "$run/level{level}.pt" "${common[@]}" --fewshot 2,5 --episodes 5 \
        --adapt prototypes finetune-last --label "$name" --out "$OUT/results/$name/seed$seed" \
        > "$OUT/logs/evaluate-$name-seed$seed.log"
    if [ "$seed" = 0 ]; then
        "$OODML" -q evaluate "$run/level{level}.pt" "${common[@]}" --fewshot 2,5 --episodes 2 \
            --adapt finetune-all --adapt-iterations 150 --label "$name" \
            --out "$OUT/results/$name/seed$seed-finetune-all" > "$OUT/logs/evaluate-$name-seed$seed-all.log"
    fi
}

submit_all() {
    for name in $(runs | cut -d' ' -f1 | sort -u); do
        "$OODML" leaderboard submit "$OUT/results/$name"/seed* --name "$name" \
            --description "glyph-cnn, $name, ${ITERATIONS} iterations (tools/reproduce_baselines.sh)" \
            --baseline
    done
    "$OODML" leaderboard verify
    "$OODML" leaderboard build
}

export -f train_one evaluate_one
export OODML OUT ITERATIONS
mkdir -p "$OUT/logs"
step=${1:-all}
if [ "$step" = train ] || [ "$step" = all ]; then
    runs | xargs -P "$JOBS" -L 1 bash -c 'train_one "$@"' _
fi
if [ "$step" = evaluate ] || [ "$step" = all ]; then
    runs | xargs -P "$JOBS" -L 1 bash -c 'evaluate_one "$@"' _
fi
if [ "$step" = submit ] || [ "$step" = all ]; then
    submit_all
fi

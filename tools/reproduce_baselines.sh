#!/usr/bin/env bash
# Regenerate the glyphs/v1 baseline study: train, evaluate, package as leaderboard entries.
#
#   tools/reproduce_baselines.sh [train|evaluate|submit|all]     (default: all)
#
# 4 losses x (without, with SEC) x 8 levels x 2 seeds = 128 trained models, each
# scored per level without adaptation and after 2- and 5-shot adaptation.  Every
# step is resumable: finished checkpoints and evaluations are kept, so rerunning
# the script after an interruption only does what is missing (delete
# build/baselines/results to re-evaluate after changing the evaluation).  The
# runs go seed by seed: train all of seed 0, evaluate them, then seed 1.
#
# Cost on a 2-core CPU with JOBS=2, measured on 2026-11-27 with other work on
# the machine: training about 1.5 models a minute (about 85 minutes for 128);
# evaluating a seed about 40 minutes (most of it finetune-last on 10 episodes),
# seed 0 about 80 with finetune-all.  About 3 hours in all.
# Settings (all fixed before the study was run, none tuned on test classes):
#   glyph-cnn (width 16, 32-d: leaderboard entries stay small), 400 iterations,
#   batch 128 = 32 classes x 4,
#   Adam 1e-3, selection on the level's val classes every 150 iterations;
#   SEC weight eta = 1.0, the official SEC implementation's default;
#   few-shot (2 and 5 shots): prototypes and finetune-last (1000 / 1500
#   iterations, the ooDML protocol) on all 10 episodes of the manifest;
#   finetune-all (100 iterations) on the first episode for seed 0 only
#   (adapting every weight costs ~5 s per episode on 2 cores).
# Outputs: build/baselines/ (checkpoints, evaluation results), the entries in
# leaderboard/submissions/glyphs/v1/, the board, and docs/baselines-glyphs.md.
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

evaluate_one() {  # NAME SEED [--sec ETA]: each evaluation whose results.parquet exists is kept, not redone
    local name=$1 seed=$2 run="$OUT/runs/$1/seed$2" results="$OUT/results/$1"
    local common=(--dataset glyphs --splits v1 --device cpu --fewshot 2,5 --no-clustering)
    local log="$OUT/logs/evaluate-$name-seed$seed.log"
    # zero-shot retrieval and prototypes on all 10 episodes (cheap; these embeddings are the entry)
    [ -f "$results/seed$seed/results.parquet" ] || \
        "$OODML" -q evaluate "$run/level{level}.pt" "${common[@]}" --adapt prototypes --save-embeddings \
            --label "$name" --out "$results/seed$seed" >> "$log"
    # the ooDML fine-tuning of the embedding head (1000 / 1500 iterations) on every episode
    [ -f "$results/seed$seed-finetune-last/results.parquet" ] || \
        "$OODML" -q evaluate "$run/level{level}.pt" "${common[@]}" --adapt finetune-last \
            --label "$name" --out "$results/seed$seed-finetune-last" >> "$log"
    if [ "$seed" = 0 ] && [ ! -f "$results/seed$seed-finetune-all/results.parquet" ]; then
        # adapting every weight: seed 0, 1 episode, 100 iterations
        "$OODML" -q evaluate "$run/level{level}.pt" "${common[@]}" --adapt finetune-all --episodes 1 \
            --adapt-iterations 100 --label "$name" --out "$results/seed$seed-finetune-all" >> "$log"
    fi
}

submit_all() {
    for name in $(runs | cut -d' ' -f1 | sort -u); do
        local loss=${name%+sec} method
        method="$loss"; [ "$name" != "$loss" ] && method="$loss + SEC (eta $SEC_ETA)"
        local seeds=()
        for seed in $SEEDS; do seeds+=("$OUT/results/$name/seed$seed"); done
        "$OODML" -q leaderboard submit "${seeds[@]}" --name "$name" --method "$method" --baseline --replace \
            --description "glyph-cnn (width 16, 32-d) trained per level with the $method loss, $ITERATIONS iterations, selected on val classes; few-shot: prototypes (tools/reproduce_baselines.sh)" \
            --authors "oodml baselines" --training-data "glyphs@v1: each level's train classes only (per-level protocol)" \
            --pretraining none
    done
    "$OODML" leaderboard verify
    "$OODML" leaderboard build
    "${PYTHON:-.venv/bin/python}" tools/baseline_findings.py "$OUT/results" --update docs/baselines-glyphs.md
}

export -f train_one evaluate_one
export OODML OUT ITERATIONS
mkdir -p "$OUT/logs"
step=${1:-all}
for seed in $SEEDS; do  # seed by seed: a complete first seed early, and a study that resumes where it stopped
    if [ "$step" = train ] || [ "$step" = all ]; then
        runs | awk -v s="$seed" '$2 == s' | xargs -P "$JOBS" -L 1 bash -c 'train_one "$@"' _
    fi
    if [ "$step" = evaluate ] || [ "$step" = all ]; then
        runs | awk -v s="$seed" '$2 == s' | xargs -P "$JOBS" -L 1 bash -c 'evaluate_one "$@"' _
    fi
done
if [ "$step" = submit ] || [ "$step" = all ]; then
    submit_all
fi

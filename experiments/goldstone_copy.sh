#!/bin/bash
# Copy task: every model (10 seeds each, one vmapped program per model) at one maximum delay.
# Usage: nohup bash experiments/goldstone_copy.sh [max_delay=200] [steps=2000] [models] \
#          > workdirs/goldstone/copy.log 2>&1 &
# models: space-separated cell:units, default all six: "eq_gru:32 eq_rnn:32 gru:32 gru:64 rnn:32 rnn:64"
set -e
cd "$(dirname "$0")/.."
T=${1:-200}; STEPS=${2:-2000}; MODELS=${3:-eq_gru:32 eq_rnn:32 gru:32 gru:64 rnn:32 rnn:64}
for MODEL in $MODELS; do
  CELL=${MODEL%:*}; UNITS=${MODEL#*:}
  .venv/bin/python -m krause.goldstone.main \
    --config "configs/goldstone_copy.py:cell=$CELL,units=$UNITS,max_delay=$T,steps=$STEPS" \
    --config.eval_every_steps=$(( STEPS < 250 ? STEPS : 100 )) \
    --workdir "workdirs/goldstone/copy/T${T}_steps${STEPS}/${CELL}_${UNITS}"
done

#!/usr/bin/env bash
# CheetahRun and WalkerWalk on one lent GPU with 1,024 envs per seed (MJX; Warp does not fit the upload), two
# seeds in one vmapped program per task, one task after the other, each stopped by `timeout` (stability.py
# writes its JSON after every evaluation, so a stopped run keeps its curve: return against wall time).
# Run from the repository root on the device machine, with the wheels of ../shared/device/wheels.sh in .whl/.
# Sizes: 1,024 envs × 4 steps per iteration and 16 updates of 1,024 sequences × 8 steps keep the DM Control
# preset's 32 sampled transitions per env step; replay 4,096 steps per env; a reset pool as large as num_envs.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
T=${T:-200}
ENVS=${ENVS:-1024}
STEPS=${STEPS:-40960000}
EVALS=${EVALS:-80}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
python3 -c "import jax, mujoco, mujoco_playground, brax, distrax; print(jax.devices(), jax.__version__)" || exit 1
GPU="--set impl=jax --set num_envs=$ENVS --set batch_size=$ENVS --set replay_size=$((ENVS * 4096))
     --set reset_pool_size=$ENVS --set total_steps=$STEPS --set num_evals=$EVALS"
for env in CheetahRun WalkerWalk; do
  timeout $T python3 benchmarks/stability.py --env $env --seeds 0 1 $GPU --name ${env}_gpu${ENVS} --out $OUT \
    > $OUT/${env}.log 2>&1
  echo "$env: exit $?"; tail -n 4 $OUT/${env}.log
done

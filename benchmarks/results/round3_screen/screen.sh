#!/usr/bin/env bash
# Device screen: pendulum drift fixes, 3 seeds x 243k each (GPU + CPU processes side by side).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
R="python3 benchmarks/stability.py --env inverted_pendulum --set total_steps=243200 --set num_evals=25 --out $OUT/res"
mkdir -p $OUT/res $OUT/log
T=${T:-530}
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.3
timeout $T $R --seeds 0 1 2 --set num_critics=2 --sweep critic_pessimism=0,0.5,1 --name gpu_k2 > $OUT/log/gpu_k2.txt 2>&1 &
timeout $T $R --seeds 0 1 2 --set num_critics=4 --sweep critic_pessimism=0.5,1 --name gpu_k4 > $OUT/log/gpu_k4.txt 2>&1 &
c=2
run_cpu() { name=$1; shift; JAX_PLATFORMS=cpu timeout $T taskset -c $c,$((c+1)) $R --name $name "$@" > $OUT/log/$name.txt 2>&1 & c=$((c+2)); }
run_cpu base012 --seeds 0 1 2
run_cpu base345 --seeds 3 4 5
run_cpu decay1000 --seeds 0 1 2 --set policy_lr_decay_updates=1000
run_cpu decay3000 --seeds 0 1 2 --set policy_lr_decay_updates=3000
run_cpu k2b1_345 --seeds 3 4 5 --set num_critics=2 --set critic_pessimism=1
run_cpu k2b1_decay3000 --seeds 0 1 2 --set num_critics=2 --set critic_pessimism=1 --set policy_lr_decay_updates=3000
run_cpu k2b05_345 --seeds 3 4 5 --set num_critics=2 --set critic_pessimism=0.5
wait
nproc; nvidia-smi --query-gpu=name --format=csv
for f in $OUT/log/*.txt; do echo "== $f"; grep -E "steps|Error" $f | tail -n 2; done
tar czf $OUT/screen.tgz -C $OUT res log && rm -rf $OUT/res $OUT/log

#!/usr/bin/env bash
# Device screen, round 4: correlated exploration from the start (rho 0.5) on 10 seeds x 486k, alone and with a
# faster policy step or a 2-critic ensemble. Seven 2-core CPU processes and two GPU processes side by side.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
R="python3 benchmarks/stability.py --env inverted_pendulum --set exploration_correlation=0.5 --out $OUT/res"
mkdir -p $OUT/res $OUT/log
T=${T:-545}
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.3
timeout $T $R --seeds 0 1 2 3 4 5 6 7 8 9 --set num_critics=2 --name gpu_rho0.5_k2 > $OUT/log/gpu_rho0.5_k2.txt 2>&1 &
timeout $T $R --seeds 4 5 6 7 8 9 --set policy_lr=1e-3 --name gpu_rho0.5_lr1e-3_s4-9 > $OUT/log/gpu_lr.txt 2>&1 &
c=2
run_cpu() { name=$1; shift; JAX_PLATFORMS=cpu timeout $T taskset -c $c,$((c+1)) $R --name $name "$@" > $OUT/log/$name.txt 2>&1 & c=$((c+2)); }
for s in 0 2 4 6 8; do run_cpu rho0.5_s$s-$((s+1)) --seeds $s $((s+1)); done
run_cpu rho0.5_lr1e-3_s0-1 --seeds 0 1 --set policy_lr=1e-3
run_cpu rho0.5_lr1e-3_s2-3 --seeds 2 3 --set policy_lr=1e-3
wait
nproc; nvidia-smi --query-gpu=name --format=csv
for f in $OUT/log/*.txt; do echo "== $f"; grep -E "steps|Error" $f | tail -n 2; done
tar czf $OUT/screen.tgz -C $OUT res log && rm -rf $OUT/res $OUT/log

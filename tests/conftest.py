"""Test-session settings, set before JAX starts a back end so that every process the tests start (xdist workers,
CLI runs, the notebook's kernel, benchmark scripts) inherits them. A user's own setting of either is left alone.

- Most tests train tiny configs for a few iterations, so their time goes to XLA compiling the trainer, not to
  running it. The suite compiles without XLA's CPU back-end optimisation (LLVM -O0, no expensive passes): about
  30% less time per compiled trainer, and a slower run time that a tiny config does not feel. It also emits
  fusions with XLA's older loop emitters instead of its MLIR fusion emitters: another third off the compile of
  a tiny trainer (`benchmarks/build_cost.py --flags`). Bit-identity tests compare programs compiled the same
  way. The learning tests, whose time goes to running, pass XLA's defaults back (`FULL_OPTIMISATION`, given
  to `jax.jit(..., compiler_options=...)`; child processes get XLA_FLAGS without these).
- Several tests compile the same program again in another process (a CLI run killed and resumed, the CLI's run
  against the library loop), so the session shares one persistent compilation cache in a temporary directory,
  removed when the session ends. A cached executable is the compiled code itself: its results are the same bits.
- `purempo train` keeps compiled programs under `$XDG_CACHE_HOME/purempo/xla` unless JAX_COMPILATION_CACHE_DIR
  is set: the session points XDG_CACHE_HOME at a temporary directory too, so that tests leave the user's
  cache alone.
"""

import atexit
import os
import shutil
import tempfile

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                "xla_cpu_use_fusion_emitters": False}
# XLA's defaults for the same options, as `jax.jit(..., compiler_options=...)` takes them.
FULL_OPTIMISATION = {"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False,
                     "xla_cpu_use_fusion_emitters": True}


def as_xla_flags(options: dict) -> str:
    """`options` as XLA_FLAGS takes them: `--name=value`, booleans in lower case."""
    return " ".join(f"--{name}={str(value).lower()}" for name, value in options.items())


FAST_COMPILE_FLAGS = as_xla_flags(FAST_COMPILE)

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the controller makes it; xdist workers inherit it
    cache_dir = tempfile.mkdtemp(prefix="purempo-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    atexit.register(shutil.rmtree, cache_dir, ignore_errors=True)

if "PUREMPO_TEST_CACHE_HOME" not in os.environ:  # the controller makes it; xdist workers inherit it
    cache_home = tempfile.mkdtemp(prefix="purempo-test-cache-home-")
    os.environ["PUREMPO_TEST_CACHE_HOME"] = os.environ["XDG_CACHE_HOME"] = cache_home
    atexit.register(shutil.rmtree, cache_home, ignore_errors=True)

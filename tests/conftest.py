"""Test-session settings.

Most tests train tiny configs for a few iterations, so their time goes to XLA compiling the trainer, not to
running it. The suite therefore compiles without XLA's CPU back-end optimisation (LLVM -O0, no expensive
passes): about 30% less time per compiled trainer, at the cost of slower run time that a tiny config does not
feel. Set here, before JAX starts a back end, so every process the tests start (CLI runs, the notebook's kernel,
benchmark scripts) inherits it. Bit-identity tests compare programs compiled the same way. A test whose time
goes to running (the learning test) passes XLA's defaults back as `jax.jit(..., compiler_options=...)`; a user's own
`--xla_backend_optimization_level` in XLA_FLAGS is left alone.
"""

import os

FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()

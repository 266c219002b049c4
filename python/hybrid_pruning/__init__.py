"""tf-hybrid-pruning: data-free compression of Keras CNNs into LiteRT models running our
sparse HybridSparseConv2D op."""

import os as _os

# OpenBLAS's threads busy-wait between calls: with another busy process on the machine (a
# second prune, or tests beside each other) our many small solves ran ten times slower
# (docs/design_history.md, 2026-12-06). One BLAS thread unless the user asks otherwise; the
# variable reaches BLAS copies loaded later (SciPy's) and child processes, threadpoolctl the
# copies already loaded.
if "OPENBLAS_NUM_THREADS" not in _os.environ:
    _os.environ["OPENBLAS_NUM_THREADS"] = "1"
    import threadpoolctl as _threadpoolctl

    _threadpoolctl.threadpool_limits(1, user_api="blas")

"""tickpipe's stages, launcher and tools. Importing the package loads nothing else (run.py relies on it)."""

from __future__ import annotations

from collections.abc import MutableMapping

#: BLAS thread-count variables: OpenBLAS's (and OpenMP's) workers spin after each call, on the very cores
#: the stages spin on; one thread does a stage's or the launcher's small products with no worker at all.
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def one_blas_thread(env: MutableMapping[str, str]) -> None:
    """Set each BLAS thread-count variable to 1 unless the user set it (numpy reads them when it loads)."""
    for v in BLAS_THREAD_VARS:
        env.setdefault(v, "1")

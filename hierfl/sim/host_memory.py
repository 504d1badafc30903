"""Freed host memory handed back to the system, so the simulator's memory follows what is live.

XLA on a CPU allocates a jitted call's temporaries and every transfer's buffer with the C
library's malloc, from many threads. glibc gives each thread its own heap (up to 8 per
core), keeps what is freed there for that heap's threads, and serves blocks above its mmap
threshold with mappings of their own, unmapped on free, but raises that threshold to the
largest block freed (up to 32 MB): the simulator's per-chunk temporaries and evaluation
batches then come from the heaps. Measured on 2,080 devices (`large` x 2), one round and
one evaluation peaked 330 MB higher for it, growing with every chunk trained.
`release_freed_memory` fixes the threshold and allows two heaps.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc's <malloc.h>
MMAP_THRESHOLD = 1 << 20
ARENAS = 2


def release_freed_memory() -> bool:
    """From now on in this process, malloc maps each block of 1 MiB or more on its own (and
    unmaps it when freed), and threads share at most `ARENAS` heaps. Call it before JAX
    starts its threads. False where the C library has no `mallopt` (not glibc) or refuses
    a setting; the allocator's defaults stay then."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_ARENA_MAX, ARENAS) == 1

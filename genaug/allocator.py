"""glibc's allocator set for scoring and training: large blocks reused, not mapped and unmapped.

A model's activations are blocks of megabytes to a few hundred megabytes
(a VAE's 256-way pixel likelihood on a block of 256 28x28 images is 200
MB), allocated and freed on every batch. glibc serves blocks above its mmap
threshold (at most 32 MiB, however it adapts) with fresh mappings, so each
batch pays page faults for memory it just gave back: in a streamed detection
a fifth of the time went to the kernel (5.1 s of system time in 28 s;
`benchmarks/README.md`). Raising the threshold to 256 MiB and the trim
threshold to 512 MiB keeps those blocks in the heap for the next batch:
a 20,000-row streamed detection 1.38x faster and the in-memory one 1.17x,
for about 15 MiB more peak memory.

`tune()` sets both once per process, where glibc is the C library (Linux);
elsewhere, or with GENAUG_TUNE_MALLOC=0, it does nothing. The training loop
and the scorer call it, so the CLI and the Python API both get it.
"""

from __future__ import annotations

import ctypes
import os
import platform

MMAP_THRESHOLD = 256 * 2**20
TRIM_THRESHOLD = 512 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
_tuned: bool | None = None  # decided once: the scorer calls this for every shard


def tune() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (decided once); whether they are set."""
    global _tuned
    if _tuned is None:
        _tuned = _set_thresholds()
    return _tuned


def _set_thresholds() -> bool:
    # platform.libc_ver reads the interpreter's binary: one more reason to decide only once.
    if os.environ.get("GENAUG_TUNE_MALLOC", "1").strip() == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        return False

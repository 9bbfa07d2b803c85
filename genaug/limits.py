"""Resource limits of the in-memory jobs, checked before anything is allocated.

Every job holds its images as one uint8 tensor until it writes them (the
streaming engine is for data larger than that); a typo such as `-n 1e9` or
`--copies 100000` must be one line, not an out-of-memory kill minutes later.
"""

from __future__ import annotations

import math

from genaug.errors import GenaugError

# The most image bytes one job builds in memory.
MAX_IN_MEMORY_BYTES = 8 * 2**30


def check_fits_in_memory(count: int, shape: tuple[int, ...], what: str) -> None:
    """Raise a GenaugError when `count` uint8 images of `shape` exceed MAX_IN_MEMORY_BYTES.

    `what` names the option that asked for them (e.g. "-n"), for the message.
    """
    per_image = math.prod(int(s) for s in shape)
    if count * per_image > MAX_IN_MEMORY_BYTES:
        raise GenaugError(
            f"{what} asks for {count:,} images of {tuple(shape)} (C, H, W): {count * per_image / 2**30:,.1f} GiB "
            f"in memory, over the {MAX_IN_MEMORY_BYTES / 2**30:.0f} GiB limit; ask for at most "
            f"{MAX_IN_MEMORY_BYTES // per_image:,} images"
        )

"""Input complexity: the PNG-compressed size of an image in bits/dim.

Serrà et al. 2020 ("Input complexity and out-of-distribution detection with
likelihood-based generative models") show that likelihoods are dominated by
how compressible an image is, which is why a Fashion-MNIST model prefers
MNIST. Subtracting a lossless compressor's code length leaves what the model
knows beyond generic compressibility: `S(x) = bpd_model(x) - bpd_png(x)`.

NOTE: we count only the compressed pixel stream, not PNG's fixed container
bytes: for an 8x8 image the container alone is ~7 bits/dim and would drown
the signal. The ranking within one image size is the same either way.
"""

from __future__ import annotations

import numpy as np

from genaug.data.parquet import png_payload_bits


def png_bits_per_dim(png: list[bytes], num_dims: int) -> np.ndarray:
    """[N] compressed pixel-stream bits per subpixel of each PNG."""
    return np.fromiter((png_payload_bits(b) for b in png), dtype=np.float64, count=len(png)) / num_dims

"""VAE benchmark: training and scoring throughput, and a full default training run.

    python benchmarks/bench_vae.py                    # 8x8 and 28x28, plus train() on 10,000 28x28 images
    python benchmarks/bench_vae.py --sizes 28 64 --no-full
    python benchmarks/bench_vae.py --channels 3       # RGB

Data: scikit-learn's bundled digits (8x8), upsampled and randomly shifted for
larger sizes (no download). Throughput is of the model alone: training steps
at the default batch size (forward, backward, AdamW), and `model.nll` under
`torch.inference_mode` at batch 1024 for k = 1, 4, 8 importance samples.
Each figure is the median of `--repeats` timed runs after one warm-up, with
torch's default thread count.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from genaug.models.vae import VAE
from genaug.train import TrainConfig, train


def digits_at(size: int, n: int, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """`n` uint8 digits at `size`x`size`: upsampled (for size > 8) and shifted by up to 2 px."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    base = torch.from_numpy(load_digits().images * (255.0 / 16.0)).float()[:, None]
    x = base[torch.from_numpy(rng.integers(0, len(base), n))]
    if size != 8:
        x = F.pad(F.interpolate(x, size=(size - 4, size - 4), mode="bilinear", align_corners=False), (2, 2, 2, 2))
        shifts = rng.integers(-2, 3, size=(n, 2))
        x = torch.stack([torch.roll(img, (int(a), int(b)), dims=(1, 2)) for img, (a, b) in zip(x, shifts)])
    return x.round().clamp(0, 255).to(torch.uint8).expand(-1, channels, -1, -1).contiguous()


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first calls pick kernels and allocate
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_images_per_second(model: VAE, x: torch.Tensor, steps: int, batch_size: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    batches = [x[torch.randint(len(x), (batch_size,))] for _ in range(steps)]

    def run():
        for batch in batches:
            loss = model.training_losses(batch)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    seconds = median_seconds(run, max(1, min(3, steps)))
    model.eval()
    return steps * batch_size / seconds


def score_images_per_second(model: VAE, x: torch.Tensor, k: int, repeats: int) -> float:
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        return len(x) / median_seconds(lambda: model.nll(x, k=k, generator=generator), repeats)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 28], help="image sizes (square)")
    parser.add_argument("--channels", type=int, default=1, choices=[1, 3])
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed run")
    parser.add_argument("--batch", type=int, default=1024, help="scoring batch size")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median)")
    parser.add_argument("--n", type=int, default=10_000, help="images for the full training run")
    parser.add_argument("--full", action=argparse.BooleanOptionalAction, default=True,
                        help="also run train() at the default TrainConfig on --n images of the largest size")
    args = parser.parse_args()

    config = TrainConfig()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, training batch {config.batch_size}, scoring batch {args.batch}")
    header = f"{'image':>9} {'params':>8} {'train img/s':>12} {'score k=1':>10} {'score k=4':>10} {'score k=8':>10}"
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        torch.manual_seed(0)
        shape = (args.channels, size, size)
        model = VAE(shape)
        x = digits_at(size, max(args.batch, config.batch_size), args.channels)
        train_rate = train_images_per_second(model, x, args.steps, config.batch_size)
        scores = [score_images_per_second(model, x[: args.batch], k, args.repeats) for k in (1, 4, 8)]
        params = sum(p.numel() for p in model.parameters())
        print(f"{'x'.join(map(str, shape)):>9} {params / 1e3:>7.0f}k {train_rate:>12,.0f} "
              + " ".join(f"{s:>10,.0f}" for s in scores), flush=True)

    if args.full:
        size = max(args.sizes)
        x = digits_at(size, args.n, args.channels, seed=1)
        torch.manual_seed(0)
        model = VAE((args.channels, size, size))
        report = train(model, x, config=TrainConfig(progress=False))
        print(f"\ntrain() at defaults on {args.n:,} {args.channels}x{size}x{size} images: {report.summary()}")
    print(f"peak RSS {peak_rss_mib():,.0f} MiB")


if __name__ == "__main__":
    main()

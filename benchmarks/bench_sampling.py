"""Autoregressive sampling, naive vs fast: seconds per image for every autoregressive family.

    python benchmarks/bench_sampling.py                          # 28x28 grey and 32x32 RGB, batch 8
    python benchmarks/bench_sampling.py --shapes 1x28x28 --families pixelcnn++ --batch 16
    python benchmarks/bench_sampling.py --device cuda

Both samplers run the same model (default options, random weights: the
work per step does not depend on what the weights are) on the same seed:
`naive` runs the network on the rows filled so far for every step, `fast`
answers each step from the family's per-layer caches. The table gives
seconds per image of each, their ratio, and whether both drew the same
images (they should, up to float rounding flipping a rare draw).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from genaug.models.autoregressive import AutoregressiveModel
from genaug.models.registry import available_families, build_model, get_family
from genaug.train import resolve_device


def autoregressive_families() -> list[str]:
    return [f for f in available_families() if issubclass(get_family(f), AutoregressiveModel)]


def parse_shape(text: str) -> tuple[int, int, int]:
    c, h, w = (int(p) for p in text.lower().split("x"))
    return c, h, w


def timed_sample(model, n: int, sampler: str, seed: int, device: torch.device) -> tuple[torch.Tensor, float]:
    gen = torch.Generator(device=device).manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    images = model.sample(n, generator=gen, sampler=sampler)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return images.cpu(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=None, help="default: every autoregressive family")
    parser.add_argument("--shapes", nargs="+", default=["1x28x28", "3x32x32"], help="CxHxW")
    parser.add_argument("--batch", type=int, default=8, help="images sampled at once")
    parser.add_argument("--option", nargs="*", default=[], help="FAMILY:KEY=VALUE model options, e.g. pixelrnn:variant=diagonal")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from tables import print_table

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}\n")
    options: dict[str, dict] = {}
    for item in args.option:
        family, _, pair = item.partition(":")
        key, _, value = pair.partition("=")
        options.setdefault(family, {})[key] = int(value) if value.isdigit() else value
    rows = []
    for shape in map(parse_shape, args.shapes):
        for family in args.families or autoregressive_families():
            torch.manual_seed(args.seed)
            model = build_model(family, shape, **options.get(family, {})).to(device).eval()
            label = family + "".join(f" {k}={v}" for k, v in options.get(family, {}).items())
            fast, fast_s = timed_sample(model, args.batch, "fast", args.seed, device)
            naive, naive_s = timed_sample(model, args.batch, "naive", args.seed, device)
            rows.append({
                "shape": "x".join(map(str, shape)), "family": label,
                "naive s/img": naive_s / args.batch, "fast s/img": fast_s / args.batch,
                "speed-up": f"{naive_s / fast_s:.1f}x",
                "same images": "yes" if torch.equal(fast, naive) else f"{(fast != naive).float().mean():.2%} subpixels differ",
            })  # fmt: skip
            print_table(rows[-1:])
            print(flush=True)
    print("## all\n")
    print_table(rows)


if __name__ == "__main__":
    main()

"""Every family at an equal training time: test bits/dim, AE reconstruction, speeds.

    python benchmarks/bench_families.py --emoji-dir ../shared/data            # all sets, 2 min per family
    python benchmarks/bench_families.py --sets digits grey28 --time-limit 1
    python benchmarks/bench_families.py --emoji-dir DIR --device cuda --time-limit 3

Sets (train / test split 80/20, seeded):
* `digits`: scikit-learn's 1,797 8x8 digits.
* `grey28`: 12,000 28x28 grey patches of the two photographs scikit-learn
  ships (`load_sample_images`), random crops of 28..96 px downscaled with
  antialiasing. The photos are cut into 96 px tiles and a seeded fifth of
  the tiles give the test patches, so no test pixel was seen in training.
* `emoji-google`, `emoji-twitter`: the 3,491 32x32 RGB emoji of
  `DIR/emoji-<style>-32.npz` (skipped without `--emoji-dir`).

Every family trains through `genaug.train` with the same `--time-limit` and
no epoch cap, so each gets the same wall-clock budget; then, on the test
split: bits/dim from `model.nll` (the VAE's ELBO and its IWAE bound with
`--iwae-k` samples; exact for the autoregressive families), the AE's
reconstruction RMSE in pixel levels (0..255), scoring img/s (`nll`, or the
AE's `recon`, at batch 512 under `torch.inference_mode`) and sampling
seconds per image (`model.sample` of `--samples` images; the fast cached
sampler for the autoregressive families, see bench_sampling.py for naive
vs fast).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from genaug.models.registry import build_model
from photo_crops import random_crops
from genaug.train import TrainConfig, resolve_device, train

FAMILIES = ("vae", "ae", "pixelcnn", "gated-pixelcnn", "pixelcnn++", "pixelrnn")
SETS = ("digits", "grey28", "emoji-google", "emoji-twitter")


def digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    x = np.round(load_digits().images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return torch.from_numpy(x)[:, None]


BLOCK = 96  # photos are cut into BLOCK x BLOCK tiles; each tile is train or test, crops stay inside one


def photo_patches(n_train: int, n_test: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey 28x28 crops (sides 28..BLOCK px, downscaled with antialiasing) of scikit-learn's
    two sample photos. The photos are tiled, a seeded 20% of the tiles give the test crops
    and the rest the training crops, so no test pixel is seen in training."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    tiles = []
    for img in load_sample_images().images:
        grey = torch.from_numpy(np.array(img, dtype=np.float32)) @ torch.tensor([0.299, 0.587, 0.114])
        tiles += [grey[None, r : r + BLOCK, c : c + BLOCK]
                  for r in range(0, grey.shape[0] - BLOCK + 1, BLOCK)
                  for c in range(0, grey.shape[1] - BLOCK + 1, BLOCK)]
    order = rng.permutation(len(tiles))
    n_test_tiles = max(1, len(tiles) // 5)
    return (random_crops([tiles[i] for i in order[n_test_tiles:]], n_train, 28, (28, BLOCK), rng),
            random_crops([tiles[i] for i in order[:n_test_tiles]], n_test, 28, (28, BLOCK), rng))


def emoji(path: Path) -> torch.Tensor:
    with np.load(path, allow_pickle=False) as data:
        return torch.from_numpy(data["x"]).permute(0, 3, 1, 2).contiguous()


def load_set(name: str, emoji_dir: Path | None, seed: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(train, test) uint8 [N, C, H, W], or None when the set's file is not given."""
    if name == "grey28":
        return photo_patches(9_600, 2_400, seed)
    if name == "digits":
        x = digits()
    else:
        if emoji_dir is None:
            return None
        x = emoji(emoji_dir / f"{name}-32.npz")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))
    return x[perm[:cut]], x[perm[cut:]]


@torch.inference_mode()
def batched(fn, x: torch.Tensor, device: torch.device, batch: int = 512) -> tuple[torch.Tensor, float]:
    """fn over `x` in batches on `device`: (concatenated result on CPU, seconds)."""
    out = []
    sync(device)
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        out.append(fn(x[i : i + batch].to(device)).float().cpu())
    sync(device)
    return torch.cat(out), time.perf_counter() - start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_family(spec: str) -> tuple[str, dict]:
    """`pixelrnn:variant=diagonal,layers=4` -> ("pixelrnn", {"variant": "diagonal", "layers": 4})."""
    family, _, rest = spec.partition(":")
    options = {}
    for pair in filter(None, rest.split(",")):
        key, _, value = pair.partition("=")
        options[key] = int(value) if value.lstrip("-").isdigit() else value
    return family, options


def bench_family(spec: str, train_x, test_x, args, device: torch.device) -> dict:
    family, options = parse_family(spec)
    model = build_model(family, tuple(train_x.shape[1:]), **options)
    config = TrainConfig(epochs=100_000, time_limit=args.time_limit, patience=10_000, device=args.device,
                         seed=args.seed, progress=False)
    report = train(model, train_x, config=config)  # trains in place, keeps the best weights
    model.eval()
    dims = model.num_dims
    row = {"family": spec, "params": f"{sum(p.numel() for p in model.parameters()) / 1e3:,.0f}k",
           "epochs": report.epochs_run, "train img/s": report.images_per_second}
    gen = torch.Generator(device=device).manual_seed(args.seed)
    if model.likelihood != "none":
        nll, seconds = batched(lambda b: model.nll(b, generator=gen), test_x, device)
        row["test bits/dim"] = float(nll.mean()) / (dims * np.log(2.0))
        if "iwae_k" in model.nll_options:
            nll_k, _ = batched(lambda b: model.nll(b, generator=gen, iwae_k=args.iwae_k), test_x, device)
            row[f"IWAE-{args.iwae_k} bits/dim"] = float(nll_k.mean()) / (dims * np.log(2.0))
    else:
        recon, seconds = batched(lambda b: model.raw_scores(b, generator=gen)["recon"], test_x, device)
        # recon is the mean squared error per subpixel in [-1, 1] units: x 127.5 for pixel levels.
        row["recon RMSE"] = float(recon.mean().sqrt()) * 127.5
    row["score img/s"] = len(test_x) / seconds
    n = args.samples if model.likelihood == "exact" else max(args.samples, 64)
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        model.sample(n, generator=gen)
    sync(device)
    row["sample s/img"] = (time.perf_counter() - start) / n
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emoji-dir", type=Path, help="folder with emoji-google-32.npz and emoji-twitter-32.npz")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES),
                        help="families, each optionally FAMILY:KEY=VALUE,... (e.g. pixelrnn:variant=diagonal)")
    parser.add_argument("--time-limit", type=float, default=2.0, help="training minutes per family (default 2)")
    parser.add_argument("--iwae-k", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8, help="images sampled per family (at least 64 for non-AR)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from tables import print_table

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"time limit {args.time_limit} min per family\n")
    for set_name in args.sets:
        split = load_set(set_name, args.emoji_dir, args.seed)
        if split is None:
            print(f"({set_name}: skipped, no --emoji-dir)\n")
            continue
        train_x, test_x = split
        print(f"### {set_name}: {len(train_x)} train / {len(test_x)} test, {'x'.join(map(str, train_x.shape[1:]))}\n")
        rows = [bench_family(f, train_x, test_x, args, device) for f in args.families]
        print_table(rows)
        print(flush=True)


if __name__ == "__main__":
    main()

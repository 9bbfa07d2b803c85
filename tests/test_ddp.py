"""Multi-process training under torchrun (gloo, CPU, 2 processes): one model, written once.

Each test starts real processes. The first runs the documented command,
`torchrun --nproc_per_node=2 -m genaug fit ...` (slow lane: the launcher is a
third process importing torch). The second starts the two ranks itself with
the environment torchrun gives them; this file is their script (`__main__`
at the bottom) and each rank prints one result line.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from genaug.errors import GenaugError
from genaug.models.base import GenerativeModel, Losses
from genaug.train import TrainConfig, train

SHAPE = (1, 8, 8)
TINY_AE = {"latent_dim": 4, "channels": 8, "hidden": 32, "mixture_components": 2}
TINY_VAE = {"latent_dim": 4, "channels": 8, "hidden": 32}
TINY_PIXELCNN = {"channels": 12, "layers": 2, "head_channels": 12}
# Float32 sums taken in another order differ by ~1e-7 relative; Adam turns a gradient's
# relative error into about the same relative error of a step (<= lr), so over the ~20
# steps here the gap stays near 1e-7 (measured: 7e-8 for pixelcnn, 2.4e-7 for ae with its
# mixture fit). 1e-5 leaves room and is 100x below what one epoch changes (asserted below).
TOLERANCE = 1e-5


def images(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth-ish uint8 images (a gradient plus noise): something to learn."""
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0, 255, SHAPE[-1]).expand(*SHAPE)
    return (base + torch.randint(-30, 31, (n, *SHAPE), generator=g)).clamp(0, 255).to(torch.uint8)


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 ARGS` (a free port, so parallel test runs do not collide)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.slow  # three processes start torch (the launcher and two ranks): ~50 s on 2 shared cores
def test_torchrun_fit_writes_one_checkpoint_equal_to_one_process_training(tmp_path):
    from genaug.data.readers import load_images
    from genaug.fit import fit
    from genaug.models.store import load_model

    np.savez(tmp_path / "data.npz", x=images(240).numpy())
    options = [arg for k, v in TINY_AE.items() for arg in ("--model-option", f"{k}={v}")]
    done = torchrun("-m", "genaug", "fit", "data.npz", "-o", "out/model.safetensors", "--model", "ae",
                    "--epochs", "2", "--batch-size", "16", "--device", "cpu", "--seed", "0", *options, cwd=tmp_path)
    # Rank 0 alone wrote (no temp file or second copy of rank 1's) and alone showed the training summary.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.safetensors"]
    assert done.stderr.count("trained ae for 2 epochs") == 1
    ddp = load_model(tmp_path / "out" / "model.safetensors")
    assert ddp.metadata["training"]["world_size"] == 2

    data = load_images(str(tmp_path / "data.npz"))
    def one_process(epochs):
        config = TrainConfig(epochs=epochs, batch_size=16, device="cpu", seed=0, progress=False)
        return fit(data, family="ae", model_options=TINY_AE, train_config=config, console=None)

    single = one_process(2)
    assert ddp.metadata["data"]["fingerprint"] == single.metadata["data"]["fingerprint"]
    assert ddp.metadata["training"]["best_epoch"] == single.metadata["training"]["best_epoch"]
    # Global batch 16 split 8 + 8 over the ranks: the one-process model, up to summation order.
    gap = max_difference(ddp.state_dict(), single.state_dict())
    assert gap < TOLERANCE
    assert max_difference(single.state_dict(), one_process(1).state_dict()) > 100 * TOLERANCE
    # Calibration ran on every rank's identical model: the stored scores are the one-process ones.
    ddp_scores, single_scores = ddp.metadata["calibration"]["scores"], single.metadata["calibration"]["scores"]
    assert ddp_scores.keys() == single_scores.keys() and "recon" in ddp_scores
    for key in ddp_scores:
        np.testing.assert_allclose(np.asarray(ddp_scores[key], dtype=float),
                                   np.asarray(single_scores[key], dtype=float), rtol=1e-4, err_msg=key)


def launch_two(*args: str, cwd: Path) -> list[dict]:
    """Run this file's worker as ranks 0 and 1 of a gloo group, with the environment torchrun gives
    (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT) but without its launcher's start-up; returns
    each rank's result line."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    procs = [
        subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], cwd=cwd,
                         env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for r in (0, 1)
    ]
    try:
        outputs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:  # a rank left waiting for a failed one would wait for the group's timeout
            p.kill()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:] + err[-3000:]
    return [json.loads(line.split(" ", 1)[1]) for out, _ in outputs for line in out.splitlines()
            if line.startswith("DDP-RESULT ")]


def test_two_processes_train_one_model_from_sharded_batches_and_take_every_branch_together(tmp_path):
    from genaug.models.store import load_model

    results = launch_two(str(tmp_path), cwd=tmp_path)
    assert [r["rank"] for r in results] == [0, 1]
    r0, r1 = results

    # One epoch of 100 images (90 train, 10 validation) read from an image source: the ranks' reads
    # are disjoint and cover every image exactly once, each at most a rank's half of a batch of 16.
    fetched = [i for r in results for batch in r["fetched"] for i in batch]
    assert sorted(fetched) == list(range(100))
    assert max(len(batch) for r in results for batch in r["fetched"]) == 8
    # Same weights and the same validation score (bit for bit) on both ranks; rank 0 alone wrote.
    assert r0["vae"] == r1["vae"] and r0["best_val"] == r1["best_val"] is not None
    assert r0["world_size"] == r1["world_size"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pixelcnn.safetensors", "vae.safetensors"]
    assert digest(load_model(tmp_path / "vae.safetensors")) == r0["vae"]
    # A loss that turned NaN on rank 1 alone sent both ranks back to the last good weights at a lower rate.
    assert r0["diverged"] == r1["diverged"] == {"lr_lowered_at_epoch": 1, "final_lr": 0.01}
    assert r0["toy"] == r1["toy"]
    # A write that fails on rank 0 fails on every rank, as one line.
    assert r0["write_error"].startswith("cannot write checkpoint")
    assert r1["write_error"].startswith("writing checkpoint") and "failed on rank 0" in r1["write_error"]

    # Training left nothing holding the process group: it was freed when destroyed, on both ranks.
    assert r0["group_freed"] and r1["group_freed"]

    # A deterministic loss: the two-process model is the one-process model, up to summation order.
    assert r0["pixelcnn"] == r1["pixelcnn"]
    ddp = load_model(tmp_path / "pixelcnn.safetensors").state_dict()
    single, one_epoch = pixelcnn_trained(epochs=2).state_dict(), pixelcnn_trained(epochs=1).state_dict()
    assert max_difference(ddp, single) < TOLERANCE
    assert max_difference(single, one_epoch) > 100 * TOLERANCE


def pixelcnn_trained(epochs: int):
    """A tiny PixelCNN (no random draws in its loss) trained on 117 images: 105 to train on, in batches
    of 16 and a last one of 9, which two ranks split 5 + 4 (shares weigh their gradients)."""
    from genaug.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("pixelcnn", SHAPE, 0, **TINY_PIXELCNN)
    train(model, images(117, seed=1), config=TrainConfig(epochs=epochs, batch_size=16, device="cpu", progress=False))
    return model


# -- the worker of the second test: run on every rank ---------------------------------------------
class CountingSource:
    """An image source over a tensor that records the indices of every read."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x, self.shape, self.fetched = x, tuple(x.shape), []

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        assert idx.device.type == "cpu" and idx.dtype == torch.int64
        self.fetched.append(idx.tolist())
        return self.x[idx]


class Toy(GenerativeModel):
    """One weight fitted to the mean pixel; its loss turns NaN once, on rank 1 only, at step 3."""

    name = "toy"

    def __init__(self) -> None:
        super().__init__(SHAPE)
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.fired = False  # once: the epoch that runs again must not diverge again

    def training_losses(self, x, y=None, *, step=0):
        per_image = (x.float().flatten(1) / 255 - self.w).square().mean(1)
        loss = per_image.mean()
        if step == 3 and int(os.environ["RANK"]) == 1 and not self.fired:
            self.fired = True
            loss = loss * float("nan")
        return Losses(loss=loss, per_image=per_image)

    def validation_score(self, x, y=None, *, generator=None):
        return (x.float().flatten(1) / 255 - self.w).square().mean(1)


def digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def worker(out: Path) -> None:
    from genaug import distributed
    from genaug.models.registry import build_model
    from genaug.models.store import save_model

    config = TrainConfig(epochs=1, batch_size=16, device="cpu", seed=0, progress=False)
    source = CountingSource(images(100))
    torch.manual_seed(0)
    vae = build_model("vae", SHAPE, 0, **TINY_VAE)
    report = train(vae, source, config=config)
    save_model(vae, out / "vae.safetensors")  # every rank calls it; rank 0 writes
    result = {"rank": distributed.rank(), "fetched": source.fetched, "vae": digest(vae),
              "best_val": report.best_val_bits_per_dim, "world_size": report.world_size}

    toy = Toy()
    report = train(toy, images(64), config=TrainConfig(epochs=2, batch_size=8, lr=0.1, device="cpu", progress=False))
    result["diverged"] = {"lr_lowered_at_epoch": report.lr_lowered_at_epoch, "final_lr": round(report.final_lr, 9)}
    result["toy"] = digest(toy)

    pixelcnn = pixelcnn_trained(epochs=2)
    result["pixelcnn"] = digest(pixelcnn)
    save_model(pixelcnn, out / "pixelcnn.safetensors")

    try:
        save_model(vae, out / "vae.safetensors" / "inside-a-file.safetensors")
    except GenaugError as e:
        result["write_error"] = str(e)

    # The group must die with destroy_process_group: one kept alive (by a module imported after
    # it was made) keeps gloo's threads running into interpreter shutdown, which can abort the process.
    group = weakref.ref(torch.distributed.group.WORLD)
    torch.distributed.destroy_process_group()
    result["group_freed"] = group() is None
    print("DDP-RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))

"""SIGKILL write-heavy genaug commands at many points; are their outputs whole or absent? (issue 7)

    python benchmarks/kill_points.py /tmp/kills                 # 4 commands x 10 kill points, + disk-full
    python benchmarks/kill_points.py /tmp/kills --points 4 --only augment
    python benchmarks/kill_points.py /tmp/kills --source /tmp/old   # test another checkout's genaug

A full run (10 points) took 6 to 7 minutes on the project's 2-core CPU
machine: each command (5 to 10 s) runs once unkilled to time it, then per
kill point once killed and once again to completion, and checkpoints are
checked with `genaug info` (4 s each). Runs are sequential: one heavy
process at a time.

For every command (augment with --copies 4, detect-outliers against a
checkpoint, fit to a checkpoint, rebalance with two outputs):

1. a run without a kill measures its duration T (and gives the reference
   outputs);
2. at N points the command is started again and killed with SIGKILL (the
   whole process group): half at times spread over 0.15 T up to the moment
   the unkilled run's first temp file appeared (the folder is polled every
   millisecond), half at delays spread over the measured write window after
   the killed run's own first temp file appears, since a write of a few ms
   is rarely hit by time alone. For every other point a previous, complete
   output (made with other settings) is in place first;
3. after the kill each target must be absent, the previous file byte for
   byte, or a complete new file (a Parquet file pyarrow reads whole; a
   checkpoint `genaug info` accepts). A two-output job must leave both old
   or both new (or neither), never one of each. The inputs (the checkpoint
   read by detect/rebalance) must be unchanged;
4. the command then runs again, unkilled, in the same folder; afterwards
   no hidden file (a name starting with '.') may remain: the next write
   cleans what the killed one left.

Disk full: as root, a small tmpfs (`mount -t tmpfs -o size=...`) sized to
hold the previous output and half of the new one; the write must fail
with one line, leave the previous file intact and no temp file. Where
mounting is not allowed the check is skipped with a note.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import print_table  # noqa: E402


@dataclass
class Job:
    """A write-heavy command: its arguments, its output files, and how to make a different previous output."""

    name: str
    argv: list[str]
    targets: list[str]
    previous_extra: list[str]  # appended to argv to produce a different, complete previous output
    needs_model: bool = False


JOBS = [
    Job("augment", ["augment", "digits", "-o", "out.parquet", "--copies", "4", "--quiet"], ["out.parquet"],
        ["--seed", "1"]),
    Job("detect-outliers", ["detect-outliers", "digits", "-o", "out.parquet", "--model-path", "model.safetensors",
                            "--quiet"], ["out.parquet"], ["--score", "nll"], needs_model=True),
    Job("fit", ["fit", "digits", "-o", "m.safetensors", "--epochs", "3", "--quiet"], ["m.safetensors"],
        ["--seed", "1"]),
    Job("rebalance --resampled", ["rebalance", "digits", "-o", "w.parquet", "--resampled", "r.parquet",
                                  "--model-path", "model.safetensors", "--quiet"], ["w.parquet", "r.parquet"],
        ["--seed", "1"], needs_model=True),
]


@dataclass
class Tally:
    """What the kill points of one job found."""

    job: str
    seconds: float = 0.0
    write_began: float | None = None  # when the unkilled run's first temp file appeared
    write_ended: float | None = None
    tried: int = 0
    during_write: int = 0  # kills that struck while a temp file existed
    finished_first: int = 0  # the command ended before its kill point
    intact: int = 0
    temps_after_kill: int = 0
    temps_after_rerun: int = 0
    problems: list[str] = field(default_factory=list)


def genaug(argv: list[str], cwd: Path, **kw) -> subprocess.Popen:
    """Start `python -m genaug argv` in `cwd`, in its own process group (so a kill reaches all of it)."""
    env = {k: v for k, v in os.environ.items() if k != "GENAUG_DEBUG"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen([sys.executable, "-m", "genaug", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True, **kw)


def run(argv: list[str], cwd: Path, timeout: float = 600) -> tuple[int, str, float]:
    """Run genaug to completion: exit code, stderr, seconds."""
    t0 = time.perf_counter()
    p = genaug(argv, cwd)
    _, err = p.communicate(timeout=timeout)
    return p.returncode, err.decode("utf-8", "backslashreplace"), time.perf_counter() - t0


def timed_run(job: Job, cwd: Path, timeout: float = 600) -> tuple[int, str, float, float | None, float | None]:
    """Run `job` unkilled: exit code, stderr, seconds, and when its write began and ended (None if unseen).

    The write begins when a hidden temp file first shows in the folder and
    ends when no hidden file is left and every target is in place (the run
    starts with none), polled every millisecond.
    """
    t0 = time.perf_counter()
    p = genaug(job.argv, cwd)
    began = ended = None
    while p.poll() is None and time.perf_counter() - t0 < timeout:
        names = os.listdir(cwd)
        now = time.perf_counter() - t0
        temps = any(n.startswith(".") for n in names)
        if began is None and temps:
            began = now
        elif began is not None and ended is None and not temps and all(t in names for t in job.targets):
            ended = now  # every target renamed into place: a two-output job's window spans both
        time.sleep(0.001)
    _, err = p.communicate()
    seconds = time.perf_counter() - t0
    if began is not None and ended is None:
        ended = seconds
    return p.returncode, err.decode("utf-8", "backslashreplace"), seconds, began, ended


@dataclass
class KillPoint:
    """When to kill: `at` seconds after the start, or `after_temp` seconds after the first temp file shows."""

    at: float | None = None
    after_temp: float | None = None

    def describe(self) -> str:
        if self.at is not None:
            return f"kill at {self.at:.2f}s"
        return f"kill {self.after_temp * 1000:.0f} ms after the first temp file"


def schedule(points: int, seconds: float, began: float | None, ended: float | None) -> list[KillPoint]:
    """Half the points spread over the start-up (0.15 T up to the write), half inside the write.

    Time alone rarely lands in a write of a few ms (runs wander by +-30%),
    so the write-window points watch the folder and kill a fixed delay after
    the first temp file appears, the delays spread over the measured window.
    """
    if began is None:  # no temp file seen: the whole run, by time
        return [KillPoint(at=f * seconds) for f in np.linspace(0.15, 1.0, points)]
    early = points // 2
    window = max(ended - began, 0.002)
    return [KillPoint(at=t) for t in np.linspace(0.15 * seconds, began, early, endpoint=False)] + [
        KillPoint(after_temp=d) for d in np.linspace(0.0, window * 1.2, points - early)
    ]


def killed_run(job: Job, cwd: Path, point: KillPoint, timeout: float = 600) -> tuple[bool, bool]:
    """Run `job` and SIGKILL it at `point`: (ended on its own first, a temp file existed at the kill)."""
    t0 = time.perf_counter()
    p = genaug(job.argv, cwd)
    seen = None
    while p.poll() is None and time.perf_counter() - t0 < timeout:
        now = time.perf_counter() - t0
        if point.at is not None and now >= point.at:
            break
        if point.after_temp is not None:
            if seen is None and any(n.startswith(".") for n in os.listdir(cwd)):
                seen = now
            if seen is not None and now - seen >= point.after_temp:
                break
        time.sleep(0.0005 if point.after_temp is not None else 0.005)
    if p.poll() is not None:
        p.communicate()
        return True, False
    during_write = any(n.startswith(".") for n in os.listdir(cwd))
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate()
    return False, during_write


def sha(path: Path) -> str:
    """The sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hidden(folder: Path) -> list[str]:
    """The hidden names (temp files) in `folder`."""
    return sorted(n for n in os.listdir(folder) if n.startswith("."))


def complete(path: Path, cwd: Path) -> str:
    """'' when `path` is a whole output; else what is wrong."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
            return "" if table.num_rows else "has no rows"
        except Exception as e:  # noqa: BLE001 - any failure to read back is the finding
            return f"unreadable ({type(e).__name__}: {str(e)[:60]})"
    rc, err, _ = run(["info", str(path)], cwd)
    return "" if rc == 0 else f"`genaug info` exit {rc}: {err.strip()[:80]}"


def state(path: Path, previous: str | None, new: str, cwd: Path) -> str:
    """absent | previous | new | broken: <why>."""
    if not os.path.lexists(path):
        return "absent"
    digest = sha(path)
    if digest == previous:
        return "previous"
    if digest == new:
        return "new"
    problem = complete(path, cwd)
    return f"broken: {problem}" if problem else "new"


def kill_points(job: Job, root: Path, points: int, model: Path | None) -> Tally:
    """Time `job`, then kill it at `points` moments and check its outputs and the next run's cleanup."""
    tally = Tally(job.name)
    work = root / job.name.split()[0]
    stash = root / f"{job.name.split()[0]}-previous"
    work.mkdir()
    stash.mkdir()
    if job.needs_model:
        shutil.copy2(model, work / "model.safetensors")
    inputs = {n: sha(work / n) for n in os.listdir(work)}

    rc, err, seconds, began, ended = timed_run(job, work)
    if rc != 0:
        tally.problems.append(f"the unkilled run failed (exit {rc}): {err.strip()[-200:]}")
        return tally
    tally.seconds = seconds
    tally.write_began, tally.write_ended = began, ended
    new = {t: sha(work / t) for t in job.targets}
    for t in job.targets:
        (work / t).unlink()
    rc, err, _ = run(job.argv + job.previous_extra, work)
    if rc != 0:
        tally.problems.append(f"making the previous output failed (exit {rc}): {err.strip()[-200:]}")
        return tally
    previous = {}
    for t in job.targets:
        previous[t] = sha(work / t)
        shutil.move(work / t, stash / t)

    for i, point in enumerate(schedule(points, seconds, began, ended)):
        with_previous = i % 2 == 1
        for t in job.targets:
            (work / t).unlink(missing_ok=True)
            if with_previous:
                shutil.copy2(stash / t, work / t)
        for n in hidden(work):
            (work / n).unlink()
        ended_first, during_write = killed_run(job, work, point)
        tally.finished_first += ended_first
        tally.during_write += during_write
        tally.tried += 1
        where = f"{point.describe()}{' over a previous output' if with_previous else ''}"
        states = {t: state(work / t, previous[t] if with_previous else None, new[t], work) for t in job.targets}
        bad = [f"{t} {s}" for t, s in states.items() if s.startswith("broken")]
        kinds = {s for s in states.values()}
        if len(job.targets) > 1 and "new" in kinds and kinds != {"new"}:
            bad.append("outputs not both-or-neither: " + ", ".join(f"{t} {s}" for t, s in states.items()))
        changed = [n for n, h in inputs.items() if not (work / n).is_file() or sha(work / n) != h]
        if changed:
            bad.append(f"input changed: {changed[0]}")
        if bad:
            tally.problems.append(f"{where}: {'; '.join(bad)}")
        else:
            tally.intact += 1
        if hidden(work):
            tally.temps_after_kill += 1

        rc, err, _ = run(job.argv, work)
        left = hidden(work)
        if rc != 0:
            tally.problems.append(f"{where}: the next run failed (exit {rc}): {err.strip()[-160:]}")
        if left:
            tally.temps_after_rerun += 1
            tally.problems.append(f"{where}: temps left after the next run: {', '.join(left)[:160]}")
    return tally


def disk_full(root: Path) -> tuple[list[dict], str]:
    """Each job writing onto a tmpfs too small for the new output: one line, previous intact, no temp."""
    rows = []
    for job in JOBS:
        if job.name not in ("augment", "fit"):
            continue
        scratch = root / f"full-{job.name}-sizes"
        scratch.mkdir()
        rc, err, _ = run(job.argv + job.previous_extra, scratch)
        if rc != 0:
            return rows, f"disk-full check skipped: {job.name} failed ({err.strip()[-120:]})"
        target = job.targets[0]
        size = (scratch / target).stat().st_size
        mount = root / f"full-{job.name}"
        mount.mkdir()
        # Room for the previous output and half of a new one of the same size.
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size + size // 2 + 8192}", "tmpfs", str(mount)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return rows, f"disk-full check skipped: cannot mount a tmpfs here ({(r.stderr or r.stdout).strip()[:120]})"
        try:
            shutil.copy2(scratch / target, mount / target)
            before = sha(mount / target)
            argv = [a if a != target else str(mount / target) for a in job.argv]
            rc, err, _ = run(argv, root)
            lines = [ln for ln in err.splitlines() if ln.strip()]
            intact = (mount / target).is_file() and sha(mount / target) == before
            left = hidden(mount)
            verdict = "clean"
            if rc == 0 or not intact or left or "Traceback" in err:
                verdict = "failed"
            elif rc != 2 or len(lines) != 1 or not lines[0].startswith("error:"):
                verdict = "degraded"
            rows.append({"command": job.name, "exit": rc, "stderr lines": len(lines),
                         "previous intact": "yes" if intact else "NO", "temps left": len(left),
                         "verdict": verdict, "message": (lines[-1] if lines else "")[:90]})
        finally:
            subprocess.run(["umount", str(mount)], capture_output=True)
    return rows, ""


def _window(t: Tally) -> str:
    if t.write_began is None:
        return "not seen"
    return f"{(t.write_ended - t.write_began) * 1000:.0f} at {t.write_began:.2f}s"


def main() -> None:
    """Parse the arguments, run the kill points of each selected command, then the disk-full check."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="where to work (a new sub-folder is made)")
    parser.add_argument("--points", type=int, default=10, help="kill points per command")
    parser.add_argument("--only", action="append", default=[], help="commands whose name holds this text")
    parser.add_argument("--no-disk-full", action="store_true")
    parser.add_argument("--source", type=Path, help="test the genaug package in this folder instead of the installed one")
    args = parser.parse_args()
    if args.source is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.source.resolve()), os.environ.get("PYTHONPATH")]))
    args.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=time.strftime("kills-%Y%m%d-%H%M%S-"), dir=args.dir)).resolve()
    jobs = [j for j in JOBS if not args.only or any(s in j.name for s in args.only)]
    t0 = time.perf_counter()

    model = None
    if any(j.needs_model for j in jobs):
        model = root / "model.safetensors"
        rc, err, _ = run(["fit", "digits", "-o", str(model), "--epochs", "1", "--quiet"], root)
        if rc != 0:
            sys.exit(f"cannot make the checkpoint the jobs read: {err.strip()[-200:]}")

    tallies = []
    for job in jobs:
        print(f"{job.name}: {args.points} kill points ...", file=sys.stderr, flush=True)
        tallies.append(kill_points(job, root, args.points, model))
    rows = [{"command": t.job, "run s": t.seconds, "write window ms": _window(t), "kill points tried": t.tried,
             "ended before kill": t.finished_first, "killed while writing": t.during_write, "outputs intact": f"{t.intact}/{t.tried}",
             "kills leaving temps": t.temps_after_kill, "temps left after next run": t.temps_after_rerun}
            for t in tallies]
    print(f"\nkill points: {sum(t.tried for t in tallies)} kills in {time.perf_counter() - t0:.0f} s; work in {root}\n")
    print_table(rows)
    problems = [f"- {t.job}: {p}" for t in tallies for p in t.problems]
    if problems:
        print("\nproblems:\n")
        print("\n".join(problems))
    if not args.no_disk_full and any(j.name in ("augment", "fit") for j in jobs):
        full_rows, note = disk_full(root)
        print("\ndisk full (tmpfs with room for the previous output and half a new one):\n")
        if full_rows:
            print_table(full_rows)
        if note:
            print(note)


if __name__ == "__main__":
    main()

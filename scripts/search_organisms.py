"""Search for an organism whose gates hold: :func:`caft_tl.runner.gate_search.run` per organism of a grid.

Organisms are the cross product of pre-training seeds, pre-training step counts and design
variants (task config overrides, JSON); each runs in its own process (``--workers`` at a time,
each pinned to its share of the cores, so its fine-tunes fan out over those only; torch on one
thread), in its own run directory ``<out>/<organism>/`` with the organisms cached under
``<out>/cache``. ``<out>/search.csv`` gets one row per organism — each gate's verdict and numbers,
or the error — rewritten atomically as each organism finishes; a finished organism is read back
on a rerun. Example (16 cores)::

    python scripts/search_organisms.py --task pronoun_profession --out runs/search \\
        --pretrain-seeds 0 1 2 3 4 5 6 7 --variant base='{}' --variant purity8='{"corpus_purity": 0.8}' \\
        --workers 16
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
META = [
    "organism",
    "task",
    "variant",
    "pretrain_seed",
    "pretrain_steps",
    "pretrain_threads",
    "pretrain_decay",
    "task_cfg",
    "status",
    "gates_held",
    "seconds",
    "error",
]


def organisms(args) -> list[dict]:
    """One spec per (variant, pre-training steps, pre-training seed)."""
    variants = dict(
        v.split("=", 1) if "=" in v else (f"v{i}", v) for i, v in enumerate(args.variant or ["{}"])
    )
    out = []
    for (name, overrides), steps, seed in itertools.product(
        variants.items(), args.pretrain_steps, args.pretrain_seeds
    ):
        task_cfg = {**json.loads(args.task_cfg), **json.loads(overrides)}
        threads = "" if args.pretrain_threads == 1 else f"-threads{args.pretrain_threads}"
        decay = f"-decay{args.pretrain_decay:g}" if args.pretrain_decay else ""
        out.append(
            {
                "organism": f"{name}-steps{steps}{decay}-seed{seed}{threads}",
                "task": args.task,
                "variant": name,
                "pretrain_seed": seed,
                "pretrain_steps": steps,
                "task_cfg": task_cfg,
                "seeds": args.seeds,
                "n_examples": args.n_examples,
                **({"pretrain_threads": args.pretrain_threads} if threads else {}),
                **({"pretrain_decay": args.pretrain_decay} if decay else {}),
            }
        )  # absent at the defaults: earlier specs read back
    if len({o["organism"] for o in out}) != len(out):
        raise SystemExit("variant names must be distinct")
    return out


def flatten(verdicts: dict) -> dict:
    """``{gate.number: value}`` from the gates' verdicts (per-seed lists joined by ``/``)."""

    def fmt(v):
        if isinstance(v, list):
            return "/".join(str(fmt(x)) for x in v)
        return round(v, 3) if isinstance(v, float) else v

    row = {}
    for gate, numbers in verdicts.items():
        for key, v in numbers.items():
            if isinstance(v, dict):
                row.update({f"{gate}.{key}.{k}": fmt(x) for k, x in v.items()})
            else:
                row[f"{gate}.{key}"] = fmt(v)
    return row


def run_one(spec: dict, out: Path, cores: list[int]) -> None:
    """In the child process, on ``cores``: run the gates of one organism; write ``result.json``."""
    os.sched_setaffinity(0, cores)  # before torch: caft_tl.training.finetunes fans fine-tunes out over these
    import torch

    torch.set_num_threads(1)
    from caft_tl.runner import gate_search

    folder = out / spec["organism"]
    cfg = gate_search.GateConfig(
        task=spec["task"],
        task_cfg=spec["task_cfg"],
        pretrain_steps=spec["pretrain_steps"],
        pretrain_seed=spec["pretrain_seed"],
        seeds=spec["seeds"],
        n_examples=spec["n_examples"],
        pretrain_threads=spec.get("pretrain_threads", 1),
        pretrain_decay=spec.get("pretrain_decay", 0.0),
    )
    t0 = time.time()
    out = gate_search.run(folder, cfg, progress=False)
    verdicts = {
        g: v for g, v in {**out["validity"], **out["outcomes"]}.items() if g != "valid"
    }  # V1–V3, then the outcomes
    result = {"spec": spec, "status": "ok", "seconds": round(time.time() - t0, 1), "verdicts": verdicts}
    tmp = folder / "result.json.tmp"
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, folder / "result.json")


def launch(spec: dict, out: Path, cores: list[int], timeout: float | None, device: str) -> dict:
    """Run one organism in a child process pinned to ``cores``; its result, or an error row."""
    folder = out / spec["organism"]
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "result.json"
    if done.exists():
        result = json.loads(done.read_text())
        if result["spec"] == spec:
            return result
    threads = str(spec.get("pretrain_threads", 1))
    env = {
        **os.environ,
        "CAFT_TL_CACHE": str(out / "cache"),
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    }
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [
        sys.executable,
        __file__,
        "--one",
        json.dumps(spec),
        "--cores",
        ",".join(map(str, cores)),
        "--out",
        str(out),
    ]
    t0 = time.time()
    with open(folder / "log.txt", "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            rc = "timeout"
    if rc == 0 and done.exists():
        return json.loads(done.read_text())
    tail = (folder / "log.txt").read_text().strip().splitlines()[-1:] or [""]
    return {
        "spec": spec,
        "status": "timeout" if rc == "timeout" else f"error (exit {rc})",
        "seconds": round(time.time() - t0, 1),
        "error": tail[0][-300:],
    }


def csv_row(result: dict) -> dict:
    spec = result["spec"]
    row = {k: spec[k] for k in META[:5]} | {
        "pretrain_threads": spec.get("pretrain_threads", 1),
        "pretrain_decay": spec.get("pretrain_decay", 0.0),
        "task_cfg": json.dumps(spec["task_cfg"], sort_keys=True),
        "status": result["status"],
        "seconds": result["seconds"],
        "error": result.get("error", ""),
    }
    if "verdicts" in result:
        row["gates_held"] = "".join(
            "+" if v["holds"] else "-" for v in result["verdicts"].values()
        )  # gate 1, 2, ...
        row.update(flatten(result["verdicts"]))
    return row


def write_csv(results: dict[str, dict], specs: list[dict], path: Path) -> None:
    """All finished organisms, in grid order, written atomically."""
    rows = [csv_row(results[s["organism"]]) for s in specs if s["organism"] in results]
    df = pd.DataFrame(rows)
    df = df[[c for c in META if c in df] + [c for c in df if c not in META]]
    tmp = path.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="pronoun_profession")
    ap.add_argument("--out", default="runs/search")
    ap.add_argument("--pretrain-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--pretrain-steps", type=int, nargs="+", default=[3000])
    ap.add_argument(
        "--variant",
        action="append",
        help="NAME=JSON task config overrides (repeatable; default one variant, {})",
    )
    ap.add_argument("--task-cfg", default="{}", help="JSON task config shared by every variant")
    ap.add_argument(
        "--pretrain-threads",
        type=int,
        default=1,
        help="torch threads while pre-training "
        "(a worker gets cores for them: use --workers <= cores / threads)",
    )
    ap.add_argument(
        "--pretrain-decay",
        type=float,
        default=0.0,
        help="share of the last pre-training steps over which the rate decays to zero (default 0: constant)",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="fine-tuning seeds")
    ap.add_argument("--n-examples", type=int, default=3200)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument(
        "--timeout", type=float, default=None, help="seconds per organism; a slower one gets a timeout row"
    )
    ap.add_argument(
        "--device", choices=("cpu", "auto"), default="cpu", help="cpu hides any GPU from the children"
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child mode: one organism's spec (JSON)
    ap.add_argument("--cores", help=argparse.SUPPRESS)  # child mode: its cores, comma-separated
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    if args.one:
        run_one(json.loads(args.one), out, [int(c) for c in args.cores.split(",")])
        return 0

    specs = organisms(args)
    out.mkdir(parents=True, exist_ok=True)
    cores = sorted(os.sched_getaffinity(0))
    workers = max(1, min(args.workers, len(specs)))
    slots: queue.Queue = queue.Queue()
    for i in range(workers):  # each worker's share of the cores
        slots.put(cores[i % len(cores) :: workers] or [cores[i % len(cores)]])
    results: dict[str, dict] = {}
    lock = threading.Lock()
    t0 = time.time()

    def work(spec: dict) -> None:
        cores_ = slots.get()
        try:
            result = launch(spec, out, cores_, args.timeout, args.device)
        except Exception as e:
            result = {"spec": spec, "status": "error", "seconds": 0.0, "error": repr(e)[-300:]}
        finally:
            slots.put(cores_)
        with lock:
            results[spec["organism"]] = result
            write_csv(results, specs, out / "search.csv")
            held = csv_row(result).get("gates_held", "-")
            print(
                f"[{len(results)}/{len(specs)} {time.time() - t0:5.0f}s] {spec['organism']}: "
                f"{result['status']} "
                f"({result['seconds']:.0f}s) gates {held}",
                flush=True,
            )

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, specs))
    print(f"wrote {out / 'search.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

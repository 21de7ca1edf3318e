"""The machine record and the results table of ``benchmarks/gpu.sh``.

    python benchmarks/gpu_report.py machine OUT [--require-cuda]   # OUT/machine.json (first)
    python benchmarks/gpu_report.py report OUT [--dry-run]         # OUT/results.json, OUT/results.md

``machine`` records the GPU (name, memory, driver), torch and CUDA versions,
the CPU and the package versions; with ``--require-cuda`` it stops with one
line when torch sees no CUDA device.  ``report`` gathers ``OUT/parts/*.json``
(written by ``train_throughput.py --json`` and ``detect_throughput.py
--json``) and ``OUT/parts.tsv`` (each part's exit code, seconds, time limit
and command, written by gpu.sh) into one JSON and one Markdown file, and
checks the goals of issue 15 beside the figures (PASS/MISS, never an
assertion; a part that gave no figure is "not measured").
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

#: issue 15's goals on one GPU
TRAIN_RATIO_GOAL = 1.2  # eftclip train / open_clip_train samples/s, same model, data and precision
DETECT_GOALS = {"fastsam": 1000.0, "owlv2": 400.0}  # images/s of the whole detection step
DETECT_NAMES = {"fastsam": "FastSAM-s", "owlv2": "OWLv2-base"}
BASELINES = {"fastsam": "fastsam-predictor"}  # the path a goal's backend replaces, measured beside it


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return None


def _nvidia_smi() -> list[dict]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return gpus


def machine(require_cuda: bool) -> dict:
    """What the figures were measured on."""
    import torch

    cuda = torch.cuda.is_available()
    if require_cuda and not cuda:
        raise SystemExit("gpu.sh: torch sees no CUDA device; this script is for a GPU machine "
                         "(bash benchmarks/gpu.sh --dry-run checks it on a CPU)")
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": _cpu_model(), "cpus": os.cpu_count(), "memory_gib": _memory_gib(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "packages": {d: _version(d) for d in ("open_clip_torch", "ultralytics", "transformers", "pandas")},
        "gpus": [],
    }
    smi = _nvidia_smi()
    if cuda:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpu = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                   "capability": f"{p.major}.{p.minor}"}
            if i < len(smi):
                gpu["driver"] = smi[i]["driver"]
            info["gpus"].append(gpu)
    return info


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def goals(parts: list[dict]) -> list[dict]:
    """Issue 15's goals checked against the parts' results: one row per goal, status PASS, MISS or not measured.

    Training: one row per trained model (eftclip / reference >= 1.2; a note says when the
    reference was not open_clip_train).  Detection: the best batch size of each goal's backend.
    """
    rows = []
    trains = [p for p in parts if p.get("benchmark") == "train_throughput"]
    for p in trains:
        ratio = p.get("ratio")
        ok = _finite_positive(ratio)
        notes = [] if p["reference"]["name"] == "open_clip_train.main" else [f"reference: {p['reference']['name']}"]
        if not p.get("complete", True):
            notes.append("the reference did not finish (time limit?)")
        note = "; ".join(notes)
        rows.append({
            "goal": f"training {p['model']} ({p['precision']}): eftclip >= {TRAIN_RATIO_GOAL}x open_clip_train",
            "measured": f"{ratio:.2f}x" if ok else "not measured",
            "status": ("PASS" if ratio >= TRAIN_RATIO_GOAL else "MISS") if ok else "not measured",
            "note": note,
        })
    if not trains:
        rows.append({"goal": f"training: eftclip >= {TRAIN_RATIO_GOAL}x open_clip_train", "measured": "not measured",
                     "status": "not measured", "note": "no training part finished"})
    detected = {}
    for p in parts:
        if p.get("benchmark") == "detect_throughput":
            for name, b in p.get("backends", {}).items():
                detected[name] = dict(b, complete=p.get("complete", True))
    for name, goal in DETECT_GOALS.items():
        b = detected.get(name)
        ips = b.get("best_images_per_s") if b else None
        ok = _finite_positive(ips)
        rows.append({
            "goal": f"detection with {DETECT_NAMES[name]}: >= {goal:,.0f} images/s",
            "measured": f"{ips:,.1f} images/s (batch {b['best_batch_size']})" if ok else "not measured",
            "status": ("PASS" if ips >= goal else "MISS") if ok else "not measured",
            "note": "; ".join(_detect_notes(b, detected.get(BASELINES.get(name)))) if b else "",
        })
    return rows


def _detect_notes(b: dict, baseline: dict | None) -> list[str]:
    notes = [b["description"]]
    if not b["complete"]:
        notes.append("stopped early: the best batch size that finished")
    base = baseline.get("best_images_per_s") if baseline else None
    if _finite_positive(base) and _finite_positive(b.get("best_images_per_s")):
        notes.append(f"{b['best_images_per_s'] / base:.2f}x the {baseline['description']} ({base:,.1f} images/s)")
    return notes


def read_parts_tsv(path: Path) -> list[dict]:
    """gpu.sh's part log: name, exit code, seconds, limit, command (tab-separated, one line a part)."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            cells = line.split("\t")
            if len(cells) == 5:
                name, rc, secs, limit, cmd = cells
                rows.append({"part": name, "rc": int(rc), "seconds": int(secs), "limit_s": int(limit), "command": cmd})
    return rows


def _fmt(x, spec=".1f") -> str:
    return format(x, spec) if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def markdown(result: dict) -> str:
    m, dry = result["machine"] or {}, result["dry_run"]
    lines = [f"# GPU benchmarks{' (DRY RUN: tiny models on the CPU)' if dry else ''}", ""]
    if dry:
        lines += ["A dry run checks that every part of `benchmarks/gpu.sh` still runs; its figures are tiny",
                  "models on a CPU, so the goal rows below say nothing about the goals.", ""]
    gpus = "; ".join(f"{g['name']} ({g['memory_gib']} GiB, driver {g.get('driver', '?')}, "
                     f"compute {g['capability']})" for g in m.get("gpus", [])) or "none"
    if m:
        lines += [f"Machine ({m['date_utc']}): GPU {gpus}; torch {m['torch']} (CUDA {m['torch_cuda']}); "
                  f"CPU {m['cpu']} x {m['cpus']}, {m['memory_gib']} GiB; python {m['python']}; "
                  + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v), ""]
    else:
        lines += ["Machine: not recorded (machine.json missing)", ""]
    lines += ["## Goals", "", "| goal | measured | status | note |", "| --- | --- | --- | --- |"]
    for g in result["goals"]:
        lines.append(f"| {g['goal']} | {g['measured']} | {g['status']} | {g['note']} |")
    trains = [p for p in result["parts"] if p.get("benchmark") == "train_throughput"]
    if trains:
        lines += ["", "## Training throughput (samples/s, steady state)", "",
                  "| model | px | pairs | batch | device | precision | eftclip train | reference | reference samples/s "
                  "| eftclip / reference |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for p in trains:
            lines.append(f"| {p['model']} | {p['image_size']} | {p['pairs']} | {p['batch_size']} | {p['device']} | "
                         f"{p['precision']} | {_fmt(p['eftclip']['samples_per_s'])} | {p['reference']['name']} | "
                         f"{_fmt(p['reference']['samples_per_s'])} | {_fmt(p['ratio'], '.2f')} |")
    dets = [p for p in result["parts"] if p.get("benchmark") == "detect_throughput"]
    if dets:
        lines += ["", "## Detection throughput (images/s of the whole step: CLIP, oracle, crops, decisions)", "",
                  "| backend | CLIP | device | precision | batch | images | images/s | finds/img | raw finds/img |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for p in dets:
            for name, b in p["backends"].items():
                for r in b["rows"]:
                    lines.append(f"| {b['description']} | {p['model']} | {p['device']} | {p['precision']} | "
                                 f"{r['batch_size']} | {r['images']} | {_fmt(r['images_per_s'])} | {_fmt(r['finds_per_image'])} | "
                                 f"{_fmt(r['raw_finds_per_image'])} |")
            for name, why in p.get("not_measured", {}).items():
                lines.append(f"| {name}: not measured ({why}) | | | | | | | | |")
    lines += ["", "## Parts", "", "| part | exit code | seconds | limit s |", "| --- | --- | --- | --- |"]
    for r in result["part_runs"]:
        lines.append(f"| {r['part']} | {r['rc']}{' (time limit)' if r['rc'] in (124, 137) else ''} | "
                     f"{r['seconds']} | {r['limit_s']} |")
    lines += ["", "Commands (from the repository root):", ""]
    lines += [f"    {r['command']}" for r in result["part_runs"]]
    return "\n".join(lines) + "\n"


def report(out: Path, dry_run: bool) -> dict:
    parts = []
    for f in sorted((out / "parts").glob("*.json")):
        parts.append({"file": f.name, **json.loads(f.read_text())})
    machine_file = out / "machine.json"
    result = {
        "dry_run": dry_run,
        "machine": json.loads(machine_file.read_text()) if machine_file.exists() else {},
        "goals": goals(parts),
        "parts": parts,
        "part_runs": read_parts_tsv(out / "parts.tsv"),
    }
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "results.md").write_text(text)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("machine", "report"))
    ap.add_argument("out", type=Path)
    ap.add_argument("--require-cuda", action="store_true")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "machine":
        info = machine(args.require_cuda)
        (args.out / "machine.json").write_text(json.dumps(info, indent=2) + "\n")
        gpus = ", ".join(f"{g['name']} (driver {g.get('driver', '?')})" for g in info["gpus"]) or "no GPU"
        print(f"machine: {gpus}; torch {info['torch']}; CPU {info['cpu']} x {info['cpus']}")
    else:
        report(args.out, args.dry_run)
        sys.stdout.write((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

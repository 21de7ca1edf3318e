"""A run folder's checkpoints and summary: written atomically, pruned, restored on ``--resume``.

A checkpoint is the weights (``checkpoints/<tag>.safetensors`` + ``.json`` via
:func:`eftclip.models.save_checkpoint`), a state file
(``checkpoints/<tag>.state.pt``: optimiser, grad scaler, the objectives'
state, position, summary rows; written with ``torch.save`` and read with
``weights_only=True``) and, written last, ``checkpoints/latest.json`` naming
them; a killed run leaves the previous complete checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eftclip.errors import EftclipError
from eftclip.io import atomic_open, atomic_path, write_json


@dataclass(frozen=True)
class Position:
    """Where a run stands: what a resumed run continues from."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # optimiser steps done in the current epoch
    rows: tuple = ()  # summary rows of the completed epochs
    partial: dict | None = None  # running sums of the current epoch's terms (``_steps``: their count)


class RunFiles:
    """The files of one run folder (``out``), written by the main process."""

    def __init__(self, out: Path, *, kind: str, keep: int):
        self.out = out
        self.ckpt_dir = out / "checkpoints"
        self.kind = kind  # "train" | "finetune": recorded in the checkpoints' meta
        self.keep = keep  # step/epoch checkpoints kept

    def state_path(self, tag: str) -> Path:
        return self.ckpt_dir / f"{tag}.state.pt"

    def drop_stale_temps(self) -> None:
        """Temp files of a writer killed mid-write (SIGKILL skips atomic_open's clean-up)."""
        if self.ckpt_dir.is_dir():
            for stale in self.ckpt_dir.glob(".*.tmp*"):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()

    def drop_torn_checkpoints(self, latest: dict | None) -> list[str]:
        """Remove the files of a checkpoint that ``latest.json`` does not name and that was torn or
        never recorded: weights without their state (killed or a full disk between the two writes), or
        a pair written after ``latest.json`` was last updated.  Returns the tags removed."""
        if not self.ckpt_dir.is_dir():
            return []
        keep = (latest or {}).get("tag")
        marker = self.ckpt_dir / "latest.json"
        recorded = marker.stat().st_mtime if marker.exists() else float("-inf")
        removed = []
        for weights in self.ckpt_dir.glob("*.safetensors"):
            tag = weights.name.split(".")[0]
            state = self.state_path(tag)
            newer = state.exists() and state.stat().st_mtime > recorded
            if tag != keep and (not state.exists() or newer):
                for suffix in (".safetensors", ".json", ".state.pt"):
                    with contextlib.suppress(FileNotFoundError):
                        (self.ckpt_dir / f"{tag}{suffix}").unlink()
                removed.append(tag)
        return removed

    def save(self, tag: str, model, name: str, optimizer, scaler, objective_states: list[dict], *,
             position: Position, global_step: int) -> None:
        from eftclip.models import save_checkpoint

        weights = save_checkpoint(
            model, self.ckpt_dir / f"{tag}.safetensors", model_name=name,
            meta={"kind": self.kind, "epoch": position.epoch, "step_in_epoch": position.step_in_epoch,
                  "global_step": global_step},
        )
        state = {
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "objectives": objective_states,
            "epoch": position.epoch,
            "step_in_epoch": position.step_in_epoch,
            "global_step": global_step,
            "rows_json": json.dumps(list(position.rows)),
            "partial_json": json.dumps(position.partial or {}),
        }
        with atomic_path(self.state_path(tag)) as tmp:
            torch.save(state, tmp)
        write_json(
            self.ckpt_dir / "latest.json",
            {"tag": tag, "weights": weights.name, "state": self.state_path(tag).name,
             "epoch": position.epoch, "step_in_epoch": position.step_in_epoch, "global_step": global_step},
        )
        self._prune(keep=tag)

    def _prune(self, keep: str) -> None:
        tags = sorted(
            {p.name.split(".")[0] for p in self.ckpt_dir.glob("*.state.pt")},
            key=lambda t: os.path.getmtime(self.state_path(t)),
        )
        for tag in tags[: max(0, len(tags) - max(1, self.keep))]:
            if tag == keep:
                continue
            for suffix in (".safetensors", ".json", ".state.pt"):
                with contextlib.suppress(FileNotFoundError):
                    (self.ckpt_dir / f"{tag}{suffix}").unlink()

    def restore(self, latest: dict, model, optimizer, scaler, device, *, model_name: Any) -> tuple[Position, list[dict]]:
        """Load the checkpoint ``latest`` names into ``model``/``optimizer``/``scaler``.

        Returns the position and the objectives' saved states (one per objective).
        """
        from eftclip.models import read_state_dict

        weights = self.ckpt_dir / latest["weights"]
        state_path = self.ckpt_dir / latest["state"]
        if not weights.is_file() or not state_path.is_file():
            raise EftclipError(f"{self.ckpt_dir / 'latest.json'}: names {weights.name} / {state_path.name}, which are missing")
        try:
            model.load_state_dict(read_state_dict(weights), strict=True)
        except RuntimeError as exc:
            raise EftclipError(f"{weights}: does not fit --model {model_name!r} ({str(exc)[:200]})") from None
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise EftclipError(f"{state_path}: cannot read the training state ({exc})") from None
        optimizer.load_state_dict(state["optimizer"])
        for st in optimizer.state.values():
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and k != "step":
                    st[k] = v.to(device)
        if scaler is not None and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        # a state file written before objectives had their own states kept RoCLIP's pool under "pool"
        objective_states = state.get("objectives", [state.get("pool", {})])
        position = Position(int(state["epoch"]), int(state["step_in_epoch"]), tuple(json.loads(state["rows_json"])),
                            json.loads(state["partial_json"]))
        return position, objective_states

    def write_summary(self, rows: list[dict]) -> None:
        """``summary.csv``: one row per epoch, columns in order of first appearance (nested values left out)."""
        columns: list[str] = []
        for r in rows:
            for k in r:
                if k not in columns and not isinstance(r[k], dict):
                    columns.append(k)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in columns})
        with atomic_open(self.out / "summary.csv", "w") as fh:
            fh.write(buf.getvalue())

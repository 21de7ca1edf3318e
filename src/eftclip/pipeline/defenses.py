"""Fine-tuning set builders, by name: what a :class:`DefenseSpec`'s ``set`` means.

Each builder adds the stages that make the set to a cell's plan and returns the id of the
stage whose result is ``{"csv", "subset"?}`` (a caption CSV, and optionally a number of
random pairs fine-tuning draws from it itself).
"""

from __future__ import annotations

from typing import Callable, Protocol

from eftclip.pipeline.plan import Node
from eftclip.pipeline.recipes import DefenseSpec


class CellPlan(Protocol):
    """What a set builder needs from the cell it plans for."""

    prefix: str  # stage-id prefix of the cell, e.g. "s0/badnet"
    seed: int  # the cell's seed
    source: dict  # the data source's settings (what tasks rebuild it from)

    def add(self, node: Node) -> str: ...

    def data_id(self) -> str: ...

    def detection_id(self) -> str: ...

    def detect_set_id(self) -> str: ...

    def recovered_id(self) -> str: ...


SET_BUILDERS: dict[str, Callable[[CellPlan, DefenseSpec, int], str]] = {}


def set_builder(name: str):
    def deco(fn: Callable[[CellPlan, DefenseSpec, int], str]):
        SET_BUILDERS[name] = fn
        return fn

    return deco


@set_builder("random")
def random_set(cell: CellPlan, spec: DefenseSpec, size: int) -> str:
    """CleanCLIP's baseline: ``size`` random pairs of the clean pool."""
    return cell.add(Node(id=f"{cell.prefix}/random_{size}", kind="random_subset", task="random_subset",
                         params={"size": size}, needs={"data": cell.data_id()},
                         label=f"{size} random clean pool pairs"))


@set_builder("curated")
def curated_set(cell: CellPlan, spec: DefenseSpec, size: int) -> str:
    """The paper's compact set: pool pairs following the detection's affected-label profile."""
    options = {"profile": "paper", **({"repair_share": spec.unlearn_share} if spec.unlearn_share else {})}
    return _curate(cell, spec, size, options, cell.detection_id())


@set_builder("eftclip_stamp")
def eftclip_stamp_set(cell: CellPlan, spec: DefenseSpec, size: int) -> str:
    """The ``eftclip`` set, with ``stamp_share`` of its pairs stamped with the recovered trigger."""
    curated = eftclip_set(cell, spec, size)
    return cell.add(Node(id=f"{cell.prefix}/stamp_{spec.name}", kind="stamp", task="stamp_set",
                         params={"share": spec.stamp_share, "seed": cell.seed},
                         needs={"set": curated, "recovered": cell.recovered_id()},
                         label=f"stamp the recovered trigger on {spec.stamp_share:.0%} of {spec.name}'s pairs"))


@set_builder("eftclip")
def eftclip_set(cell: CellPlan, spec: DefenseSpec, size: int) -> str:
    """Ours: a second look names what is really in each flagged image; a share of the set is those
    flagged (triggered) images captioned with it, the rest pool pairs following that profile."""
    look = cell.add(Node(id=f"{cell.prefix}/second_look", kind="second_look", task="second_look",
                         params={"source": cell.source}, label="second look at the flagged images",
                         needs={"detection": cell.detection_id(), "data": cell.data_id(),
                                "images": cell.detect_set_id()}))
    options = {"profile": spec.profile, "unlearn_share": spec.unlearn_share}
    return _curate(cell, spec, size, options, look)


def _curate(cell: CellPlan, spec: DefenseSpec, size: int, options: dict, detection: str) -> str:
    return cell.add(Node(
        id=f"{cell.prefix}/curate_{spec.name}", kind="curate", task="curate",
        params={"size": size, "unaffected_ratio": spec.unaffected_ratio, "seed": cell.seed, "options": options},
        needs={"data": cell.data_id(), "detection": detection}, label=f"curate {size} pairs for {spec.name}"))

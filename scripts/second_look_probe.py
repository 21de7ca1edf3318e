"""How well the second look names what is in triggered world scenes, with the world oracle.

A probe of the labelling alone, apart from detection: a fresh world (the
default demo's reference split size), its detection split with half the
scenes triggered per attack (the demo's trigger parameters), every image
treated as flagged, K = {target}; then the second look with the world oracle
(region classifier trained on the clean reference split only, world regions)
and ``profile_vs_truth`` over the triggered scenes.  No CLIP is involved, so
the numbers bound what the second look can give once detection has flagged
an image.

    PYTHONPATH=src python scripts/second_look_probe.py --out /tmp/probe [--attacks badnet,blended,wanet]

Writes ``OUT/second_look_probe.json`` (``{attack: profile_vs_truth block without
the distributions}``) and prints it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _flag_everything(det: Path, records, K, vocab, oracle_args: dict, theta: float) -> None:
    """A detection folder in which every image is flagged (the probe skips detection on purpose)."""
    det.mkdir(parents=True, exist_ok=True)
    (det / "images.jsonl").write_text("".join(json.dumps({"key": r.key, "image": r.image, "flagged": True}) + "\n"
                                              for r in records))
    (det / "metrics.json").write_text(json.dumps({"K": list(K)}))
    (det / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (det / "config.yaml").write_text(json.dumps({"oracle": "reference", "oracle_args": oracle_args, "theta": theta}))
    (det / "second_look.jsonl").unlink(missing_ok=True)


def main() -> None:
    from eftclip.attacks import create_trigger
    from eftclip.attacks.poison import poison_dataset
    from eftclip.data.captions import read_captions
    from eftclip.detection.profile_truth import score_detection
    from eftclip.detection.second_look import run_second_look
    from eftclip.io import read_json, write_json
    from eftclip.pipeline.demo import ATTACK_DEFAULTS
    from eftclip.world import WorldSize, synth, train_region_classifier, world_paths
    from eftclip.world.truth import detection_truth

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenes", type=int, default=150, help="detection scenes (half triggered)")
    ap.add_argument("--reference-per-class", type=int, default=250, help="the default demo's reference split size")
    ap.add_argument("--attacks", default="badnet,blended,wanet")
    ap.add_argument("--target", default="umbrella")
    ap.add_argument("--theta", type=float, default=0.5)
    args = ap.parse_args()

    out = Path(args.out)
    if not (out / "world").exists():
        synth(out / "world", seed=args.seed, size=WorldSize(train=8, pool=8, detect=args.scenes,
                                                           reference_per_class=args.reference_per_class,
                                                           eval_per_class=2))
    paths = world_paths(out / "world")
    rc = out / "region_classifier.safetensors"
    if not rc.exists():
        train_region_classifier(paths["reference"], rc, seed=args.seed, epochs=10)
    oracle_args = {"region_classifier": str(rc), "regions": "world", "wordnet": False}
    vocab = read_json(paths["classnames"])
    table = {}
    for attack in args.attacks.split(","):
        folder = out / attack
        poison_dataset(paths["detect_csv"], create_trigger(attack, **ATTACK_DEFAULTS[attack]), args.target,
                       num=args.scenes // 2, out=folder / "set", seed=args.seed, avoid_target=True, force=True,
                       progress=False)
        _flag_everything(folder / "det", read_captions(folder / "set" / "data.csv").records, [args.target], vocab,
                         oracle_args, args.theta)
        run_second_look(folder / "det", progress=False)
        objects, triggered = detection_truth(folder / "set" / "data.csv", [paths["detect_meta"]])
        block = score_detection(folder / "det", objects, triggered)["second_look"]
        table[attack] = {k: v for k, v in block.items() if k not in ("profile", "truth")}
        print(attack, json.dumps(table[attack]), flush=True)
    table["val_accuracy_of_region_classifier"] = read_json(rc.with_suffix(".json"))["metrics"]["val_accuracy"]
    write_json(out / "second_look_probe.json", table)


if __name__ == "__main__":
    main()

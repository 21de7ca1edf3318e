"""``eftclip convert``: a TorchScript CLIP (OpenAI's original ``.pt``) to an eftclip checkpoint, once."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eftclip.errors import EftclipError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "convert",
        help="convert a TorchScript CLIP .pt (OpenAI's downloads) to .safetensors, without running it",
        description=(
            "Read the tensors of a TorchScript archive with a restricted unpickler (its TorchScript code is "
            "never run), map them onto the open_clip architecture --model, and write OUT.safetensors with "
            "its OUT.json side file. Then use it anywhere with --checkpoint OUT.safetensors."
        ),
    )
    p.add_argument("torchscript", metavar="FILE.pt", help="the TorchScript archive (e.g. OpenAI's ViT-B-32.pt)")
    p.add_argument("--model", required=True, metavar="NAME",
                   help="open_clip architecture of the weights (OpenAI's: RN50-quickgelu, ViT-B-32-quickgelu, ...)")
    p.add_argument("--out", required=True, metavar="OUT.safetensors", help="where to write the checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite an existing OUT")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from eftclip.models.convert import convert_torchscript

    out = Path(args.out)
    if out.suffix == "":  # save_checkpoint adds it; check the file that would really be replaced
        out = out.with_suffix(".safetensors")
    if out.exists() and not args.force:
        raise EftclipError(f"--out {out}: already exists; pass --force to overwrite it")
    path = convert_torchscript(args.torchscript, out, model_name=args.model)
    print(f"converted {args.torchscript} -> {path} ({args.model})", file=sys.stderr)
    return 0

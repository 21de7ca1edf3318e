"""Lay files out as huggingface_hub's cache does, for offline tests of loading by hub id.

``HF_HOME/hub/models--org--name/refs/main`` holds the revision and
``snapshots/<revision>/`` the files (plain copies; the real cache links them
to ``blobs/``, which huggingface_hub does not require for reading).
"""

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

REVISION = "0123456789abcdef0123456789abcdef01234567"
#: the hf-hub repo id tiny_hub_repo() fills by default
REPO = "tiny-org/tiny-clip"


def put_in_hub_cache(folder: Path, hf_home: Path, repo_id: str) -> Path:
    """Copy every file of ``folder`` into the cache of ``repo_id``; returns the snapshot folder."""
    repo = Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / REVISION
    snap.mkdir(parents=True)
    for f in Path(folder).iterdir():
        shutil.copy2(f, snap / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return snap


def tiny_hub_repo(tmp_path, hf_home, repo_id=REPO, weights="open_clip_model.safetensors"):
    """A tiny open_clip model saved as an hf-hub repo (config + weights) in the cache; returns its state dict."""
    from eftclip.models import create_model, model_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = create_model("eftclip-tiny-vit", seed=0).model
    state = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    src = tmp_path / "repo"
    src.mkdir()
    cfg = {"model_cfg": model_config("eftclip-tiny-vit"),
           "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    (src / "open_clip_config.json").write_text(json.dumps(cfg))
    if weights.endswith(".safetensors"):
        save_file(state, str(src / weights))
    else:
        torch.save(state, src / weights)
    put_in_hub_cache(src, hf_home, repo_id)
    return state

"""Lay files out as huggingface_hub's cache does, for offline tests of loading by hub id.

``HF_HOME/hub/models--org--name/refs/main`` holds the revision and
``snapshots/<revision>/`` the files (plain copies; the real cache links them
to ``blobs/``, which huggingface_hub does not require for reading).
"""

import shutil
from pathlib import Path

REVISION = "0123456789abcdef0123456789abcdef01234567"


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

"""A training stage as one ``torchrun`` job (``ExperimentConfig.train_procs`` > 1).

The stage writes its resolved :class:`~eftclip.training.TrainConfig` or
:class:`~eftclip.training.FinetuneConfig` as YAML into ``<stage folder>/torchrun/config.yaml``
and runs::

    python -m torch.distributed.run --standalone --nproc_per_node N -m eftclip train|finetune --config FILE

``batch_size`` in the training configs is per process, while a pipeline recipe's is the
global contrastive batch; the YAML holds ``batch_size / N``, so the job trains on the same
global batch as the one-process stage (the loop gathers features over the ranks).  Its numbers
equal one process's to float noise for models without BatchNorm; a BatchNorm model (the world's
ResNet, RN50) normalises over each rank's share, so the pipeline caches N-process stages apart.  The job's stdout and stderr go to ``torchrun/stdout.txt`` and
``torchrun/stderr.txt`` (stderr is also echoed when progress is shown); its result is the run
folder's ``summary.json``, what :func:`eftclip.training.train` returns in process.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, TextIO

from eftclip.errors import EftclipError

# set by a launcher around us (an outer torchrun, a SLURM step): the inner job must make its own
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def per_process(cfg: Any, procs: int) -> Any:
    """``cfg`` with its global ``batch_size`` split over ``procs`` ranks (an error naming both when uneven)."""
    if cfg.batch_size % procs:
        raise EftclipError(f"{cfg.out}: batch_size {cfg.batch_size} does not split evenly over train_procs {procs}")
    return dataclasses.replace(cfg, batch_size=cfg.batch_size // procs)


def command(verb: str, config: Path, procs: int) -> list[str]:
    """The job's argv: ``verb`` is ``train`` or ``finetune``, ``config`` the YAML it reads."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
            "-m", "eftclip", verb, "--config", str(config)]


def child_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: ours) without the rank variables of an enclosing launcher."""
    environ = dict(os.environ) if environ is None else dict(environ)
    return {k: v for k, v in environ.items() if k not in RANK_VARIABLES}


def write_job_config(cfg: Any, folder: Path) -> Path:
    """The per-process config as ``folder/torchrun/config.yaml`` (the project's config writer)."""
    from eftclip.config import to_dict, write_config

    path = folder / "torchrun" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    # records are in-memory pairs, never part of a file; the job reads cfg.data
    write_config(path, {k: v for k, v in to_dict(cfg).items() if k != "records"})
    return path


def run_job(argv: list[str], folder: Path, *, echo: TextIO | None = None) -> None:
    """Run ``argv`` with :func:`child_env`; its output goes to ``folder/torchrun/{stdout,stderr}.txt``.

    ``echo``: a text stream that also gets stderr as it comes (progress bars).  A job that
    fails raises :class:`EftclipError` naming ``folder``, the command and the tail of its stderr.
    """
    logs = folder / "torchrun"
    logs.mkdir(parents=True, exist_ok=True)
    err_path = logs / "stderr.txt"
    with open(logs / "stdout.txt", "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, env=child_env(), stdout=out, stderr=subprocess.PIPE,
                                preexec_fn=_die_with_parent)
        try:
            _copy_stream(proc.stderr, err, echo)
            code = proc.wait()
        except BaseException:  # interrupted here: the ranks must not keep writing the run folder
            proc.terminate()
            proc.wait()
            raise
    if code != 0:
        tail = err_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise EftclipError(f"{folder}: the torchrun job failed with exit code {code} ({' '.join(argv)}); "
                           f"its stderr ({err_path}) ends:\n{tail}")


def _copy_stream(source, log, echo: TextIO | None) -> None:
    """Copy ``source`` to the binary ``log`` and, decoded, to ``echo``, chunk by chunk as it comes."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    # read1 returns what is there: tqdm's carriage-return updates come through without a newline
    for chunk in iter(lambda: source.read1(65536), b""):
        log.write(chunk)
        log.flush()
        if echo is not None:
            echo.write(decoder.decode(chunk))
            echo.flush()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the stage's process dies (torchrun then stops its ranks)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: an orphaned job finishes on its own
        pass


def check_resume_split(cfg: Any, procs: int) -> None:
    """A run continued with another ``train_procs`` would fail the loop's config check on ``batch_size``
    (it is per process); say which setting continues it instead."""
    from eftclip.config import load_yaml

    saved_path = Path(cfg.out) / "config.yaml"
    if not cfg.resume or not saved_path.is_file():
        return
    saved = load_yaml(saved_path).get("batch_size")
    if isinstance(saved, int) and saved > 0 and saved * procs != cfg.batch_size:
        before = f"train_procs {cfg.batch_size // saved}" if cfg.batch_size % saved == 0 else "another batch_size"
        raise EftclipError(f"{saved_path}: this run was started with batch_size {saved} per process ({before}); "
                           f"continue it with that setting, not train_procs {procs}")


def train_with_torchrun(cfg: Any, verb: str, procs: int, folder: Path, *, echo: TextIO | None = None) -> dict:
    """Run ``cfg`` (a TrainConfig for ``train``, a FinetuneConfig for ``finetune``, with the global batch)
    as one ``procs``-process job; return the run's ``summary.json``, as :func:`eftclip.training.train` would."""
    from eftclip.io import read_json

    job = per_process(cfg, procs)
    job.validate()  # a bad config fails here, with its flag named, not inside N ranks
    run_job(command(verb, write_job_config(job, folder), procs), folder, echo=echo)
    summary = Path(cfg.out) / "summary.json"
    if not summary.is_file():
        raise EftclipError(f"{folder}: the torchrun job ended without writing {summary}")
    return read_json(summary)

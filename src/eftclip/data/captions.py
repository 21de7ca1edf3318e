"""Image-caption datasets: CleanCLIP CSV, open_clip CSV/TSV and webdataset tar shards.

Whatever the format on disk, :func:`read_captions` returns one
:class:`CaptionTable` of :class:`CaptionRecord` s, and :func:`open_image` opens
any record's image.  Formats:

``cleanclip``
    CSV with columns ``image,caption`` (image paths relative to the CSV's folder
    or absolute) and an optional ``is_backdoor`` column (CleanCLIP's poisoned
    sets) or ``is_poisoned`` (the files ``eftclip poison`` writes), read into
    :attr:`CaptionRecord.is_poisoned`.  An image cell may also name a tar member
    as ``shards/000.tar::0001.jpg`` (shard path relative to the CSV), which is
    how :func:`write_captions_csv` refers to webdataset images.
``openclip``
    CSV or TSV as ``open_clip``'s training reads it: columns ``filepath`` and
    ``title`` by default (``image_key``/``caption_key`` choose others), separator
    ``sep`` (default: a tab when the header line holds one, else a comma).
``webdataset``
    tar shards whose samples pair ``<key>.jpg|jpeg|png`` with ``<key>.txt``;
    a single ``.tar``, a folder of shards, a glob or a brace pattern such as
    ``shards/{000..003}.tar``.  ``image_key``/``caption_key`` choose other
    extensions (``"png;jpg"`` lists alternatives in order of preference).  A
    ``<key>.json`` member with ``is_poisoned`` (or ``is_backdoor``) sets the flag.

Rows are numbered from 1 after the header (CSV) or by 1-based member index
(tar).  A bad row -- missing or undecodable image, empty caption, wrong number
of fields, unreadable flag -- raises :class:`EftclipError` naming the file and
row when ``on_error="fail"``, or is dropped and recorded as a
:class:`SkippedRow` when ``on_error="skip"``.  A missing column, a file with no
data rows, or a table whose every row was skipped always fails.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from tqdm import tqdm

from eftclip.data.images import (
    IMAGE_EXTENSIONS,
    check_image,
    close_tar_handles,
    make_ref,
    open_image,
    read_image_bytes,
    split_ref,
)
from eftclip.data.shards import is_shard_spec, resolve_shards, scan_tar
from eftclip.errors import EftclipError
from eftclip.io import atomic_open
from eftclip.progress import bars_enabled

__all__ = [
    "FORMATS",
    "CaptionDataset",
    "CaptionRecord",
    "CaptionTable",
    "SkippedRow",
    "close_tar_handles",
    "open_image",
    "read_captions",
    "write_captions_csv",
]

#: the values ``read_captions(fmt=...)`` accepts
FORMATS = ("auto", "cleanclip", "openclip", "webdataset")

# default (image, caption) column names per table format
_DEFAULT_KEYS = {"cleanclip": ("image", "caption"), "openclip": ("filepath", "title")}
# poison-flag columns, in order of precedence (ours, then CleanCLIP's)
_POISON_COLUMNS = ("is_poisoned", "is_backdoor")
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}

# images per chunk handed to the checking threads; also bounds the wasted work
# after the first failure when on_error="fail"
_CHECK_CHUNK = 256
# show a progress bar when checking at least this many images
_PROGRESS_MIN = 2000


@dataclass(frozen=True)
class CaptionRecord:
    """One image-caption pair, whatever file it came from."""

    key: str  # stable id: the image cell as written (CSV; "#n" added on its n-th repeat) or the tar sample key
    image: str  # absolute image path, or "<absolute shard.tar>::<member>" for a tar member
    caption: str  # the caption, surrounding whitespace stripped; never empty
    row: int  # 1-based data row in its CSV/TSV (header not counted), or 1-based member index in its tar
    source: str  # absolute path of the CSV/TSV/tar the record came from
    is_poisoned: bool | None = None  # from is_poisoned/is_backdoor (CSV) or <key>.json (tar); None if absent
    extra: dict[str, str] = field(default_factory=dict)  # other columns (CSV) or small text members by extension (tar)


@dataclass(frozen=True)
class SkippedRow:
    """A row dropped by ``on_error="skip"``, with the reason it was bad."""

    source: str  # the CSV/TSV/tar file
    row: int  # 1-based data row, or 1-based member index for a tar
    reason: str  # what was wrong, e.g. "image 'x.jpg' not found"

    def __str__(self) -> str:
        return f"{self.source} row {self.row}: {self.reason}"


@dataclass
class CaptionTable:
    """The records read from one dataset and the rows that were skipped."""

    records: list[CaptionRecord]  # good rows, in file order (shards in the order resolved)
    skipped: list[SkippedRow]  # bad rows dropped under on_error="skip" (empty under "fail")
    format: str  # "cleanclip", "openclip" or "webdataset"
    sources: list[str]  # the files read, absolute paths

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[CaptionRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> CaptionRecord:
        return self.records[index]


def read_captions(
    path: str | os.PathLike,
    *,
    fmt: str = "auto",
    image_key: str | None = None,
    caption_key: str | None = None,
    sep: str | None = None,
    on_error: str = "fail",
    check_images: bool = True,
) -> CaptionTable:
    """Read an image-caption dataset into a :class:`CaptionTable`.

    ``path`` is a CSV/TSV file, a ``.tar`` shard, a folder of shards, or a
    glob/brace pattern of shards.  ``fmt="auto"`` picks webdataset for those
    shard specs and otherwise reads the header: ``image,caption`` is CleanCLIP,
    ``filepath,title`` is open_clip (explicit ``image_key``/``caption_key``
    always win).  Image files must exist; with ``check_images`` each is also
    decoded once (see :func:`eftclip.data.images.check_image`).  See the module
    docstring for the formats and for ``on_error``.
    """
    if fmt not in FORMATS:
        raise EftclipError(f"unknown caption format '{fmt}'; known: {', '.join(FORMATS)}")
    if on_error not in ("fail", "skip"):
        raise EftclipError(f"on_error must be 'fail' or 'skip', not '{on_error}'")
    text = os.path.expanduser(os.fspath(path))
    if fmt == "webdataset" or (fmt == "auto" and is_shard_spec(text)):
        if sep is not None:
            raise EftclipError(f"{text}: sep applies to CSV/TSV files, not to webdataset shards")
        return _read_webdataset(text, image_key, caption_key, on_error, check_images)
    if os.path.isdir(text):
        raise EftclipError(f"{text}: is a folder, but format '{fmt}' reads a CSV/TSV file")
    if not os.path.isfile(text):
        raise EftclipError(f"{text}: caption file not found")
    return _read_table(Path(os.path.abspath(text)), fmt, image_key, caption_key, sep, on_error, check_images)


# --- CSV / TSV ---------------------------------------------------------------------------


@dataclass
class _Pending:
    """A parsed row waiting for its image check."""

    row: int
    record: CaptionRecord | None
    problem: str | None
    image_cell: str = ""  # the image reference as written, for messages


def _read_table(path, fmt, image_key, caption_key, sep, on_error, check_images) -> CaptionTable:
    source = str(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EftclipError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise EftclipError(f"{source}: cannot read ({exc})") from None
    first_line = text.split("\n", 1)[0]
    if sep is None:
        sep = "\t" if ("\t" in first_line or path.suffix.lower() == ".tsv") else ","
    if len(sep) != 1:
        raise EftclipError(f"{source}: sep must be one character, not {sep!r}")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    try:
        header = next((cells for cells in reader if cells), None)
    except csv.Error as exc:
        raise EftclipError(f"{source}: header is not valid CSV ({exc})") from None
    if header is None:
        raise EftclipError(f"{source}: empty file (no header, no data rows)")
    header = [cell.strip() for cell in header]
    dupes = sorted(name for name, n in Counter(header).items() if n > 1)
    if dupes:
        raise EftclipError(f"{source}: duplicate column(s) {', '.join(dupes)} in the header")
    fmt, image_col, caption_col = _pick_columns(source, header, fmt, image_key, caption_key)
    poison_col = next((c for c in _POISON_COLUMNS if c in header), None)
    skip_cols = {image_col, caption_col, *_POISON_COLUMNS}
    index = {name: i for i, name in enumerate(header)}
    base = path.parent

    pending: list[_Pending] = []
    seen: Counter[str] = Counter()
    row = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            row += 1
            pending.append(_Pending(row, None, f"not valid CSV ({exc})"))
            if on_error == "fail":
                break
            continue
        if not cells:
            continue  # a blank line is not a data row
        row += 1
        item = _parse_row(cells, row, header, index, image_col, caption_col, poison_col, skip_cols, base, source, seen)
        pending.append(item)
        if item.problem and on_error == "fail":
            break  # no need to parse (or check images) past the first bad row
    if row == 0:
        raise EftclipError(f"{source}: no data rows (only a header)")
    records, skipped = _finish(pending, source, on_error, check_images)
    return CaptionTable(records=records, skipped=skipped, format=fmt, sources=[source])


def _pick_columns(source, header, fmt, image_key, caption_key) -> tuple[str, str, str]:
    if fmt == "auto":
        cols = set(header)
        # a format whose (possibly overridden) columns are all present wins; else the
        # one whose image column is present, so the error names the missing caption
        for name in ("cleanclip", "openclip"):
            keys = (image_key or _DEFAULT_KEYS[name][0], caption_key or _DEFAULT_KEYS[name][1])
            if set(keys) <= cols:
                fmt = name
                break
        else:
            for name in ("cleanclip", "openclip"):
                if (image_key or _DEFAULT_KEYS[name][0]) in cols:
                    fmt = name
                    break
            else:
                raise EftclipError(
                    f"{source}: cannot tell the format from the header ({', '.join(header)}); expected "
                    "columns image,caption (CleanCLIP) or filepath,title (open_clip), or pass "
                    "image_key/caption_key (--image-key/--caption-key)"
                )
    default_image, default_caption = _DEFAULT_KEYS[fmt]
    image_col, caption_col = image_key or default_image, caption_key or default_caption
    for role, col in (("image", image_col), ("caption", caption_col)):
        if col not in header:
            raise EftclipError(f"{source}: missing {role} column '{col}' (header: {', '.join(header)})")
    if image_col == caption_col:
        raise EftclipError(f"{source}: image and caption columns are both '{image_col}'")
    return fmt, image_col, caption_col


def _parse_row(cells, row, header, index, image_col, caption_col, poison_col, skip_cols, base, source, seen) -> _Pending:
    if len(cells) != len(header):
        return _Pending(row, None, f"{len(cells)} fields, but the header has {len(header)}")
    image_cell = cells[index[image_col]].strip()
    caption = cells[index[caption_col]].strip()
    if not image_cell:
        return _Pending(row, None, f"empty image path in column '{image_col}'")
    if not caption:
        return _Pending(row, None, f"empty caption in column '{caption_col}'", image_cell)
    flag = None
    if poison_col is not None:
        value = cells[index[poison_col]].strip().lower()
        if value in _TRUE:
            flag = True
        elif value in _FALSE:
            flag = False
        elif value:
            return _Pending(row, None, f"{poison_col} value '{cells[index[poison_col]]}' is not 0/1/true/false", image_cell)
    image = _resolve_image(image_cell, base)
    file_path, _ = split_ref(image)
    if not os.path.isfile(file_path):
        what = f"tar shard '{file_path}'" if file_path != image else f"image '{image_cell}'"
        return _Pending(row, None, f"{what} not found", image_cell)
    seen[image_cell] += 1
    key = image_cell if seen[image_cell] == 1 else f"{image_cell}#{seen[image_cell]}"
    extra = {name: cells[i] for name, i in index.items() if name not in skip_cols}
    record = CaptionRecord(
        key=key, image=image, caption=caption, row=row, source=source, is_poisoned=flag, extra=extra
    )
    return _Pending(row, record, None, image_cell)


def _resolve_image(cell: str, base: Path) -> str:
    """Absolute image reference for a cell; relative paths are relative to ``base``."""
    file_part, member = split_ref(cell)
    full = os.path.normpath(os.path.join(base, os.path.expanduser(file_part)))
    return make_ref(full, member) if member is not None else full


def _finish(pending: list[_Pending], source: str, on_error: str, check_images: bool):
    """Check the images of parsed rows and split them into records and skipped rows."""
    records: list[CaptionRecord] = []
    skipped: list[SkippedRow] = []
    verdicts: dict[str, str | None] = {}  # image ref -> None (fine) or reason; shared by repeats
    to_check = sum(1 for p in pending if p.record is not None) if check_images else 0
    bar = tqdm(total=to_check, desc="checking images", unit="img", mininterval=1.0, disable=to_check < _PROGRESS_MIN or not bars_enabled())
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(pending), _CHECK_CHUNK):
            chunk = pending[start : start + _CHECK_CHUNK]
            if check_images:
                new = sorted({p.record.image for p in chunk if p.record is not None} - verdicts.keys())
                for ref, verdict in zip(new, pool.map(_check_ref, new)):
                    verdicts[ref] = verdict
                bar.update(sum(1 for p in chunk if p.record is not None))
            for item in chunk:
                problem = item.problem
                if problem is None and check_images:
                    verdict = verdicts[item.record.image]
                    if verdict is not None:
                        problem = f"image '{item.image_cell}' {verdict}"
                if problem is None:
                    records.append(item.record)
                    continue
                if on_error == "fail":
                    bar.close()
                    raise EftclipError(f"{source} row {item.row}: {problem}")
                skipped.append(SkippedRow(source, item.row, problem))
    bar.close()
    if not records:
        raise EftclipError(f"{source}: all {len(skipped)} rows were skipped; the first: {skipped[0]}")
    return records, skipped


def _check_ref(ref: str) -> str | None:
    path, member = split_ref(ref)
    if member is None:
        return check_image(path)
    try:
        data = read_image_bytes(ref)
    except EftclipError as exc:
        return f"cannot be read ({exc})"
    return check_image(data)


# --- webdataset --------------------------------------------------------------------------


def _split_exts(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if value is None:
        return default
    exts = tuple(part.strip().lower().lstrip(".") for part in value.split(";") if part.strip())
    if not exts:
        raise EftclipError(f"empty extension list {value!r}")
    return exts


def _read_webdataset(spec, image_key, caption_key, on_error, check_images) -> CaptionTable:
    image_exts = _split_exts(image_key, IMAGE_EXTENSIONS)
    caption_exts = _split_exts(caption_key, ("txt",))
    shards = resolve_shards(spec)
    read_exts = set(caption_exts) | (set(image_exts) if check_images else set())
    records: list[CaptionRecord] = []
    skipped: list[SkippedRow] = []
    n_samples = 0
    for shard in tqdm(shards, desc="reading shards", unit="shard", disable=len(shards) < 4 or not bars_enabled()):
        source = str(shard)
        for sample in scan_tar(shard, read_exts, image_exts):
            n_samples += 1
            record, row, problem = _sample_record(sample, source, image_exts, caption_exts, check_images)
            if problem is None:
                records.append(record)
            elif on_error == "fail":
                raise EftclipError(f"{source} member {row} (sample '{sample.key}'): {problem}")
            else:
                skipped.append(SkippedRow(source, row, f"sample '{sample.key}': {problem}"))
    if n_samples == 0:
        raise EftclipError(f"{spec}: no samples in {len(shards)} shard(s)")
    if not records:
        raise EftclipError(f"{spec}: all {len(skipped)} samples were skipped; the first: {skipped[0]}")
    return CaptionTable(records=records, skipped=skipped, format="webdataset", sources=[str(s) for s in shards])


def _sample_record(sample, source, image_exts, caption_exts, check_images):
    """Build the record of one tar sample: ``(record, row, None)`` or ``(None, row, problem)``."""
    image_ext = next((e for e in image_exts if e in sample.files), None)
    row = sample.rows[image_ext] if image_ext else sample.row
    if sample.problem:
        return None, row, sample.problem
    members = ", ".join(sorted(sample.files.values()))
    if image_ext is None:
        return None, row, f"no image member ({'|'.join(image_exts)}) among {members}"
    caption_ext = next((e for e in caption_exts if e in sample.files), None)
    if caption_ext is None:
        return None, row, f"no caption member ({'|'.join(caption_exts)}) among {members}"
    try:
        caption = sample.data[caption_ext].decode("utf-8").strip()
    except UnicodeDecodeError:
        return None, row, f"caption '{sample.files[caption_ext]}' is not UTF-8 text"
    if not caption:
        return None, row, f"empty caption in '{sample.files[caption_ext]}'"
    if check_images:
        verdict = check_image(sample.data[image_ext])
        if verdict is not None:
            return None, row, f"image '{sample.files[image_ext]}' {verdict}"
    extra: dict[str, str] = {}
    for ext, data in sample.data.items():
        if ext in image_exts or ext == caption_ext:
            continue
        try:
            extra[ext] = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            continue  # binary side members (masks, features) are not text metadata
    flag, problem = _json_flag(extra.get("json"), sample.files.get("json"))
    if problem:
        return None, row, problem
    record = CaptionRecord(
        key=sample.key,
        image=make_ref(source, sample.files[image_ext]),
        caption=caption,
        row=row,
        source=source,
        is_poisoned=flag,
        extra=extra,
    )
    return record, row, None


def _json_flag(text: str | None, member: str | None) -> tuple[bool | None, str | None]:
    if text is None:
        return None, None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"'{member}' is not valid JSON ({exc})"
    if not isinstance(meta, dict):
        return None, None
    for name in _POISON_COLUMNS:
        if name in meta:
            value = meta[name]
            if isinstance(value, bool) or value in (0, 1):
                return bool(value), None
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE, None
            return None, f"'{member}': {name} value {value!r} is not 0/1/true/false"
    return None, None


# --- writing -----------------------------------------------------------------------------


def write_captions_csv(
    path: str | os.PathLike,
    rows: Iterable[Mapping[str, Any] | CaptionRecord],
    columns: Sequence[str],
) -> Path:
    """Write a CleanCLIP-layout CSV atomically; return its path.

    ``columns`` must include ``image`` and ``caption``; each row is a mapping
    whose keys are among ``columns`` (missing ones are written empty) or a
    :class:`CaptionRecord` (its fields and ``extra`` fill the columns asked
    for).  ``image`` values are absolute paths, paths relative to the current
    folder, or ``"<shard.tar>::<member>"`` references; they are written
    relative to the CSV's folder.  Booleans are written ``1``/``0``, None as an
    empty cell.  Empty images or captions raise :class:`EftclipError` and
    nothing is written.
    """
    path = Path(path)
    columns = [str(c) for c in columns]
    for required in ("image", "caption"):
        if required not in columns:
            raise EftclipError(f"{path}: columns must include '{required}' (got {', '.join(columns)})")
    dupes = sorted(c for c, n in Counter(columns).items() if n > 1)
    if dupes:
        raise EftclipError(f"{path}: duplicate column(s) {', '.join(dupes)}")
    base = Path(os.path.abspath(path)).parent
    out_rows = []
    for number, row in enumerate(rows, start=1):
        if isinstance(row, CaptionRecord):
            row = _record_row(row, columns)
        unknown = [k for k in row if k not in columns]
        if unknown:
            raise EftclipError(f"{path}: row {number} has keys not among the columns: {', '.join(map(str, unknown))}")
        image = row.get("image")
        if image is None or not str(image).strip():
            raise EftclipError(f"{path}: row {number} has no image")
        caption = row.get("caption")
        if caption is None or not str(caption).strip():
            raise EftclipError(f"{path}: row {number} has an empty caption")
        out_rows.append([_relative_image(row[c], base) if c == "image" else _cell(row.get(c)) for c in columns])
    if not out_rows:
        raise EftclipError(f"{path}: no rows to write")
    with atomic_open(path, "w") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(out_rows)
    return path


def _record_row(record: CaptionRecord, columns: Sequence[str]) -> dict[str, Any]:
    fields = {"image": record.image, "caption": record.caption, "is_poisoned": record.is_poisoned}
    fields.update({k: v for k, v in record.extra.items() if k not in fields})
    return {c: fields.get(c) for c in columns}


def _relative_image(value: Any, base: Path) -> str:
    file_part, member = split_ref(os.fspath(value))
    rel = os.path.relpath(os.path.abspath(os.path.expanduser(file_part)), base)
    return make_ref(rel, member) if member is not None else rel


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


# --- torch dataset -----------------------------------------------------------------------


class CaptionDataset(torch.utils.data.Dataset):
    """A map-style torch dataset over caption records.

    Item ``i`` is a dict: ``"image"`` = ``transform(PIL RGB)`` (e.g. a CLIP
    preprocess giving a ``(3, H, W)`` float tensor; the PIL image itself when
    ``transform`` is None), ``"caption"`` = the caption string, ``"index"`` =
    ``i``, and, when a tokenizer is given, ``"text"`` = ``tokenizer([caption])[0]``
    (open_clip tokenizers give a ``(context_length,)`` int64 tensor).  Images are
    opened lazily, so the dataset works in DataLoader worker processes (tar
    shards are reopened per process).
    """

    def __init__(
        self,
        records: CaptionTable | Sequence[CaptionRecord],
        transform: Callable[[Any], Any] | None,
        tokenizer: Callable[[list[str]], Any] | None = None,
    ):
        self.records = list(records.records if isinstance(records, CaptionTable) else records)
        self.transform = transform
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = open_image(record)
        item: dict[str, Any] = {
            "image": self.transform(image) if self.transform is not None else image,
            "caption": record.caption,
            "index": index,
        }
        if self.tokenizer is not None:
            item["text"] = self.tokenizer([record.caption])[0]
        return item

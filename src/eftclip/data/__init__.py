"""Datasets: image-caption tables (CleanCLIP CSV, open_clip CSV/TSV, webdataset
shards) in :mod:`eftclip.data.captions`, and zero-shot image folders, class
names and prompt templates in :mod:`eftclip.data.zeroshot`.
"""

from eftclip.data.captions import (
    FORMATS,
    CaptionDataset,
    CaptionRecord,
    CaptionTable,
    SkippedRow,
    open_image,
    read_captions,
    write_captions_csv,
)
from eftclip.data.zeroshot import ImageFolderSet, load_classnames, load_templates

__all__ = [
    "FORMATS",
    "CaptionDataset",
    "CaptionRecord",
    "CaptionTable",
    "ImageFolderSet",
    "SkippedRow",
    "load_classnames",
    "load_templates",
    "open_image",
    "read_captions",
    "write_captions_csv",
]

"""Tables (Markdown, CSV, JSON) and figures for the paper-shaped results."""

from eftclip.reporting.tables import Table, format_fraction, write_table

__all__ = ["Table", "format_fraction", "write_table"]

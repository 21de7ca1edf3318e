"""Whole-story pipelines: ``eftclip demo`` (built-in world) and ``eftclip study`` (YAML)."""

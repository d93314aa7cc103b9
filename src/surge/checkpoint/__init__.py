"""Saving: atomic writes and model export (save_state / load_state arrive with the
checkpoint issue)."""

from surge.checkpoint.atomic import atomic_write, publish_directory, publish_files, staging_dir
from surge.checkpoint.export import parse_size, save_weights

__all__ = ["atomic_write", "parse_size", "publish_directory", "publish_files", "save_weights", "staging_dir"]

"""A task's data, from files to batches: reading a split from the demo, files, a declared source or the hub (`read.py`),
local files as validated Arrow (`arrow_split.py`) or raw rows with their line numbers (`file_rows.py`), tokenisation
with `datasets.map`, the multitask dataset and per-batch padding (`dataset.py`), and padding-free packing
(`packing.py`).

May import: `trainer.tasks`, `trainer.config` and below.
"""

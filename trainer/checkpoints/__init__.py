"""Checkpoints, local and in a bucket: completion markers and verified lookup (`local.py`), which checkpoint a run
resumes from and every other decision RESUME makes (`resume.py`), the bucket's commit protocol, rotation and
verified downloads (`remote.py`), the Trainer callback that mirrors a run to the bucket (`mirror.py`), and the one
background upload thread (`uploader.py`).

May import: `trainer.model`, `trainer.storage`, `trainer.layout`, `trainer.config` and below.
"""

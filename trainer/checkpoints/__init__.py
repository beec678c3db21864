"""Checkpoints, local and in a bucket: completion markers and verified lookup (`local.py`), which checkpoint a run
resumes from and every other decision RESUME makes (`resume.py`), the bucket's commit protocol, rotation and
verified downloads (`remote.py`), the Trainer callback that mirrors a run to the bucket (`mirror.py`), the one
background upload thread (`uploader.py`), and the one `on_save` that links the selection, marks a checkpoint complete
and queues its upload, in that order (`save_sequence.py`).

May import: `trainer.model`, `trainer.storage`, `trainer.layout`, `trainer.config` and below.
"""

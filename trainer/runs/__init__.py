"""One run per OUTPUT_DIR and JOB_DIR: claiming them before anything is written (`claim.py`), the run's identity
(`identity.py`), the local flock (`lock.py`) and the bucket lease (`lease.py`).

May import: `trainer.checkpoints` and below.
"""

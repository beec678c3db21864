"""Vertex AI and the bucket from the command line: the CustomJobSpec (`job_spec.py`), gcloud calls with argument lists
(`gcloud.py`), the bucket's creation (`bucket.py`), and how training starts on a machine: one process or torchrun
(`launcher.py`).

May import: `trainer.config`, `trainer.storage` and the shared modules; nothing that trains.
"""

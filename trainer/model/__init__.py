"""The model: one shared encoder with a stock `AutoModelFor...` head per task (`modeling.py`), loading MODEL_NAME
(`loading.py`) and recording which base it was (`base_record.py`: its weights' fingerprint), adapters on the
encoder (`adapters/`), loss weighting (`weighting.py`), the GPU fast path (`gpu.py`) and the positions a model takes
(`positions.py`).

May import: `trainer.tasks`, `trainer.config` and below.
"""

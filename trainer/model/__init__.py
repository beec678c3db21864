"""The model: one shared encoder with a stock `AutoModelFor...` head per task (`modeling.py`), loading MODEL_NAME
(`loading.py`) and recording which base it was (`base_record.py`: its weights' fingerprint), loss weighting
(`weighting.py`), the GPU fast path (`gpu.py`), the positions a model takes (`positions.py`) and the adapters on
the encoder (`adapters/`, ADAPTER: peft LoRA on a frozen base).

May import: `trainer.tasks`, `trainer.config` and below.
"""

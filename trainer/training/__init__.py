"""Training with the stock `transformers.Trainer`, hooks overridden, never its loop copied: the Trainer subclass
(`trainer.py`), its arguments and cadence (`arguments.py`), small callbacks (`callbacks.py`), non-finite losses and
full disks (`divergence.py`), SIGTERM (`preemption.py`), the console tables and summary (`console.py`) and the
metrics' vocabulary (`metrics.py`).

May import: `trainer.runs`, `trainer.checkpoints`, `trainer.model`, `trainer.data`, `trainer.sampling` and below.
"""

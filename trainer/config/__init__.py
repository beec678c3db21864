"""Settings: typed `Settings` from defaults, `.env`, the environment and flags (`settings.py`), and the one parser of
environment values and `.env` files (`env.py`, standard library only: the Makefile runs `python3 -m
trainer.config.env` before `.venv` exists).

May import: `trainer.errors`, `trainer.storage` (bucket URIs), `trainer.layout` (LOG_DIR's default folder),
`trainer.sampling` (the strategies' names).
"""

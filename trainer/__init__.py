"""One transformer trained jointly on several NLP tasks: `python -m trainer <command>`.

The recipes are the modules here: `train.py`, `evaluate.py`, `check.py`, and the CLI in `__main__.py`. Each folder is
one concern, and imports go one way, from the recipes down (`scripts/import_graph.py` lists the order and checks it):
cloud, outputs, training, runs, checkpoints, model, data, tasks, config, sampling, then `layout.py` (every path of a
run), storage, and `files.py` and `errors.py`.
"""

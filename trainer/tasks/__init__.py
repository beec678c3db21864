"""What a task is: `TaskSpec` and its rows (`spec.py`), the built-in tasks (`catalog.py`), tasks declared in TASKS_FILE
and the run's choice of tasks (`declare.py`), the offline demo (`demo.py`), batched tokenisation (`encode.py`), and
one module per task kind in `kinds/` (a new kind is one module plus one line in `kinds.KINDS`).

May import: `trainer.errors`, `trainer.config`. Reading a task's files is `trainer.data`'s.
"""

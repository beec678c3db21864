"""What a run leaves for people: model selection (`selection.py`), standalone task exports (`export.py`), loading and
predicting (`inference.py`), model cards (`model_card.py`), the HTML report (`report.py`) and pushing to the Hub
(`hub.py`).

May import: `trainer.training` and below.
"""

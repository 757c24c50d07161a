"""The paper's comparison in one command: ``python -m recipe.lte.reproduce`` (see ``cli.py``)."""

"""selbench: which instruction-data selection method gives the best model, under identical conditions?

The pipeline, one module per stage:
    protocol -> select -> train -> evaluate -> record -> leaderboard   (tracking logs each cell to wandb)
`selbench.pipeline` strings them together; `selbench.cli` is the command line.
"""

__version__ = "0.1.0"

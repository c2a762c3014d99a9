"""Runtime side of shifter-py: everything that runs on login and compute nodes.

Slurm drives it through the SPANK plugin (spank/); users reach the image gateway
through `shifterimg`.  Modules are named for the concept they hold; the
per-context SPANK logic lives in shifter_core.spank.
"""

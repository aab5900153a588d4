"""Runnable examples of fixpoint.

Each script is a module of this package: run it from the repository root with
``python -m examples.<name>`` (for instance ``python -m examples.jfb_table2 --help``), so that the
scripts import the code they share (``examples.common``, ``examples.jfb_networks``, ...) as
ordinary modules.
"""

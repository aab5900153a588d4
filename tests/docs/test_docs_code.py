"""Every code block of the documentation runs, or is marked as not run with a reason.

Each page's ``python`` blocks run in order in one fresh module namespace, so a later block can
use the names an earlier block defined (as a reader would run them). See ``blocks.py`` for the
``<!-- not-run: reason -->`` convention.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from tests.docs.blocks import ROOT, Block, blocks, pages

ALL_BLOCKS = [block for page in pages() for block in blocks(page)]
RUNNABLE_PAGES = [page for page in pages() if any(b.runs for b in blocks(page))]


def test_the_docs_have_code():
    assert sum(b.runs for b in ALL_BLOCKS) >= 20


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: b.where)
def test_every_block_runs_or_says_why_not(block: Block):
    if block.not_run is not None:
        assert block.not_run, f"{block.where}: a not-run marker needs a reason"
        return
    assert block.language == "python", (
        f"{block.where}: a ```{block.language or '(no language)'} block is not run by the "
        "tests; put <!-- not-run: reason --> right before it"
    )


@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=lambda p: str(p.relative_to(ROOT / "docs")))
def test_page_code_runs(page, capsys):
    name = "docs_page_" + "_".join(page.relative_to(ROOT / "docs").with_suffix("").parts)
    name = name.replace("-", "_")
    module = types.ModuleType(name)
    module.__file__ = str(page)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    torch.manual_seed(0)
    # The examples use small tensors: one thread is fastest, and with pytest-xdist's workers on
    # a small machine more threads oversubscribe the cores and run several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for block in blocks(page):
            if block.runs:
                exec(compile(block.code, block.where, "exec"), module.__dict__)
    finally:
        torch.set_num_threads(threads)
        del sys.modules[name]

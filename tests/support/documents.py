"""The code examples of the documentation, for tests that run them as written."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.processes import ROOT


def code_blocks(documents: list[Path], fence: str) -> list[tuple[str, str]]:
    """The code of every block fenced ```<fence> in ``documents``, each named ``<path from the repository
    root>#<n>`` (its rank among the document's blocks of that fence, from 1)."""
    block = re.compile(rf"^```{re.escape(fence)}\n(.*?)^```", re.DOTALL | re.MULTILINE)
    found = []
    for document in documents:
        for index, match in enumerate(block.finditer(document.read_text())):
            found.append((f"{document.relative_to(ROOT)}#{index + 1}", match.group(1)))
    return found

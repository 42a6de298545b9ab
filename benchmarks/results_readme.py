"""The README of a results folder, written by the benchmark beside its numbers: what it
measures, how it was run (command, machine, wall time), what the numbers cover, the
table, the caveats and the files beside it. Each benchmark fills a :class:`ResultsReadme`
from what it saved, so re-tabulating saved results rewrites the README too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from orthosae_plugin.saving import write_file_atomically

REPOSITORY = Path(__file__).resolve().parents[1]
"""The checkout: links to ``docs/`` are written relative to the results folder."""


@dataclass
class ResultsReadme:
    title: str
    measures: str
    """What the benchmark measures, in a paragraph or two."""
    provenance: list[tuple[str, str]]
    """``(label, text)``: command, machine, wall time, what the numbers cover."""
    table: str
    """The headline table (Markdown), with any lines that read it."""
    caveats: list[str]
    files: list[tuple[str, str]] = field(default_factory=list)
    """``(file name, what it holds)`` of the folder."""
    docs: str | None = None
    """The page of ``docs/`` that explains the benchmark (a file name there)."""
    regenerate: str | None = None
    """The command that rewrites this folder's tables and README from its saved results."""

    def render(self, folder: Path) -> str:
        lines = [f"# {self.title}", "", self.measures.strip(), ""]
        lines += [f"- **{label}:** {text}" for label, text in self.provenance]
        table = self.table.strip()
        lines += ["", *([] if table.startswith("## ") else ["## Results", ""]), table, ""]
        if self.caveats:
            lines += ["## Caveats", "", *[f"- {caveat}" for caveat in self.caveats], ""]
        if self.files:
            lines += ["## Files", "", *[f"- `{name}`: {what}" for name, what in self.files], ""]
        footer = []
        if self.docs is not None:
            footer.append(f"How the benchmark works and how to read it: [{self.docs}]({docs_link(folder, self.docs)}).")
        footer.append("This README is written by the benchmark with its results"
                      + (f"; `{self.regenerate}` rewrites it from the saved results." if self.regenerate else "."))
        return "\n".join(lines + footer) + "\n"


def docs_link(folder: Path, page: str) -> str:
    """``docs/<page>`` relative to ``folder`` (absolute when the folder is outside the checkout)."""
    target = REPOSITORY / "docs" / page
    folder = folder.resolve()
    if REPOSITORY not in folder.parents and folder != REPOSITORY:
        return str(target)
    return os.path.relpath(target, folder)


def write_results_readme(folder: Path, readme: ResultsReadme) -> Path:
    path = folder / "README.md"
    write_file_atomically(path, readme.render(folder))
    return path


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"

"""report.md: the same report as index.html, in Markdown, without the plots.

Every value from the data goes through md_escape: Markdown viewers render raw HTML, so
'<script>' in a model name must arrive as text, and '|' must not split a table cell.
"""

from __future__ import annotations

import html
import re

from pipeline.report.tables import FIDELITY_NOTE, NOISE_HEADERS

# Characters that Markdown would read as formatting, links or table structure.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]{}|#~!])")


def md_escape(value) -> str:
    one_line = " ".join(str(value).split())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(one_line, quote=False))


def fenced(text: str) -> str:
    """A code block no line of the text can close: the fence is longer than any backtick run in it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text.rstrip()}\n{fence}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(md_escape(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(md_escape(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def bullets(items: list[str]) -> str:
    return "\n".join(f"- {md_escape(item)}" for item in items)


def _verdict(context: dict) -> list[str]:
    verdict = context["verdict"]
    parts = ["## Verdict", ""]
    if verdict.overall:
        parts += [bullets(verdict.overall), ""]
    for model in verdict.models:
        if context["multiple_models"]:
            parts += [f"### {md_escape(model.model)}", ""]
        parts += [bullets(model.sentences), ""]
    return parts


def _cells(context: dict) -> list[str]:
    headers = ["cell", *[c.header for c in context["columns"]], "notes"]
    rows = [[row.cell_id, *row.values, row.notes] for row in context["rows"]]
    return ["## All cells", "", table(headers, rows), ""]


def _failures(context: dict) -> list[str]:
    parts = ["## Failed and unsupported cells", ""]
    if context["failures"]:
        rows = [[f["cell_id"], f["status"], f["reason"]] for f in context["failures"]]
        parts += [table(["cell", "status", "reason"], rows), ""]
    else:
        parts += ["None: every cell succeeded.", ""]
    if context["flagged"]:
        parts += [
            "### Flagged by the roofline check",
            "",
            "MBU above 1.0 against the measured peak: a bytes count or a peak is wrong; not a success.",
            "",
            table(["cell", "flag"], [[f["cell_id"], f["flag"]] for f in context["flagged"]]),
            "",
        ]
    return parts


def _search(context: dict) -> list[str]:
    if not context["search_rows"]:
        return []
    headers = [header for header, _ in context["search_headers"]]
    rows = [[r[key] for _, key in context["search_headers"]] for r in context["search_rows"]]
    return ["## The most load within the SLO", "", table(headers, rows), ""]


def _fidelity(context: dict) -> list[str]:
    if not context["fidelity_rows"]:
        return []
    headers = [header for header, _ in context["fidelity_headers"]]
    rows = [[r[key] for _, key in context["fidelity_headers"]] for r in context["fidelity_rows"]]
    return ["## Precision fidelity", "", md_escape(FIDELITY_NOTE), "", table(headers, rows), ""]


def _noise(context: dict) -> list[str]:
    parts = [
        "## Noise",
        "",
        f"Repeats setting: {md_escape(context['repeats'])}. {md_escape(context['noise_rule'])}",
        "",
    ]
    if context["noise_warnings"]:
        parts += [bullets(context["noise_warnings"]), ""]
    elif context["noise_unknown"]:
        parts += ["Only one repeat ran: run-to-run noise is unknown.", ""]
    rows = [[r[key] for _, key in NOISE_HEADERS] for r in context["noise_rows"]]
    if rows:
        parts += [table([header for header, _ in NOISE_HEADERS], rows), ""]
    return parts


def _environment(context: dict) -> list[str]:
    return [
        "## Environment",
        "",
        table(["", ""], [list(pair) for pair in context["environment"]]),
        "",
        f"Matrix file {md_escape(context['matrix_name'])}:",
        "",
        fenced(context["matrix_text"]),
        "",
    ]


def render_markdown(context: dict) -> str:
    head = [
        f"# {md_escape(context['title'])}",
        "",
        f"{context['cell_count']} cells ({md_escape(context['status_counts'])}); "
        f"generated {md_escape(context['generated_at'])}. The plots are in index.html.",
        "",
    ]
    sections = _verdict(context) + _cells(context) + _failures(context) + _search(context) + _fidelity(context)
    sections += _noise(context)
    sections += _environment(context)
    return "\n".join(head + sections)

"""What the user sees: a progress bar per stage (records done, calls in flight, cost) and a summary."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from factory.engine.stats import Stats


class _Calls(ProgressColumn):
    def __init__(self, stats: Stats):
        super().__init__()
        self.stats = stats

    def render(self, task) -> Text:
        st = self.stats[task.fields["stage"]]
        text = f"{st.in_flight:3d} in flight {st.calls:6d} calls  ${st.cost:.4f}"
        if st.retries or st.rate_limited:
            text += f"  {st.retries} retries, {st.rate_limited}x429"
        if st.waiting and st.outage is not None and st.outage.down:
            return Text(f"{text}  waiting: {st.outage.describe()}", style="yellow")
        return Text(text, style="cyan")


class Display:
    def __init__(self, stats: Stats, console: Console):
        self.stats = stats
        self.progress = Progress(
            TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TextColumn("records"),
            _Calls(stats), TimeElapsedColumn(), console=console, transient=False,
        )
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> Display:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def stage(self, name: str, total: int | None) -> None:
        self.tasks[name] = self.progress.add_task(name, total=total, stage=name)

    def advance(self, name: str, n: int = 1) -> None:
        self.progress.advance(self.tasks[name], n)

    def advance_all(self, names: list[str]) -> None:
        """A record that leaves early (dropped, failed, finished before a resume) fills every later bar."""
        for name in names:
            self.advance(name)

    def totals(self, produced: int, names: list[str]) -> None:
        """The source is done: now every bar knows its total."""
        for name in ["questions", *names]:
            self.progress.update(self.tasks[name], total=produced)


def summary_table(stats: Stats) -> Table:
    table = Table(title="Run summary")
    for col in ("stage", "in", "out", "dropped", "calls", "cached", "failed", "retries", "tokens in/out", "USD",
                "USD saved", "seconds"):
        table.add_column(col, justify="left" if col in ("stage", "dropped") else "right")
    for name, st in stats.stages.items():
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(st.dropped.items())) or "-"
        d = st.to_dict()
        table.add_row(name, str(d["in"]), str(d["out"]), dropped, str(st.calls), str(st.cached_calls),
                      str(st.failed_calls), str(st.retries), f"{st.prompt_tokens}/{st.completion_tokens}",
                      f"{st.cost:.4f}", f"{st.saved:.4f}", f"{d['seconds']:.1f}")
    return table


def gates_summary(stats: Stats, judged: bool = False) -> str:
    """One line: how many pairs each revision gate removed at export, and generated prompts the
    request gate removed (zeros included, so a reader sees the gates ran)."""
    pairs = ["critique", "off_topic"] + ["judge_reversed"] * judged
    dropped = {reason: n for st in stats.stages.values() for reason, n in st.dropped.items()}
    parts = [f"{gate} {dropped.get(f'prefs:gate_{gate}', 0)} pairs" for gate in pairs]
    parts.append(f"incoherent_request {dropped.get('gate_incoherent_request', 0)} generated prompts")
    return "gates removed: " + ", ".join(parts)


def judge_table(report: dict) -> Table:
    """The judge quality report (stats.json `judge_quality`): how far to trust the preference labels."""
    table = Table(title="Judge quality")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in report.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
        table.add_row(key.replace("_", " "), "-" if value is None else str(value))
    return table

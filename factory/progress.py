"""What the user sees: a progress bar per stage (records done, calls in flight) and a summary."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from factory.stats import Stats


class _InFlight(ProgressColumn):
    def __init__(self, stats: Stats):
        super().__init__()
        self.stats = stats

    def render(self, task) -> Text:
        st = self.stats[task.fields["stage"]]
        return Text(f"{st.in_flight:3d} in flight  {st.calls:5d} calls", style="cyan")


class Display:
    def __init__(self, stats: Stats, console: Console):
        self.stats = stats
        self.progress = Progress(
            TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TextColumn("records"),
            _InFlight(stats), TimeElapsedColumn(), console=console, transient=False,
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

    def finish(self, name: str, total: int) -> None:
        self.progress.update(self.tasks[name], total=total, completed=total)


def summary_table(stats: Stats) -> Table:
    table = Table(title="Run summary")
    for col in ("stage", "in", "out", "dropped", "calls", "cached", "failed", "tokens in/out", "seconds"):
        table.add_column(col, justify="left" if col in ("stage", "dropped") else "right")
    for name, st in stats.stages.items():
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(st.dropped.items())) or "-"
        d = st.to_dict()
        table.add_row(name, str(d["in"]), str(d["out"]), dropped, str(st.calls), str(st.cached_calls),
                      str(st.failed_calls), f"{st.prompt_tokens}/{st.completion_tokens}", f"{d['seconds']:.1f}")
    return table

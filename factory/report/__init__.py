"""The run report: `write_report(run_dir)` writes RUN_DIR/report.html, one self-contained page (the
run's config, constitution and models, funnels, plots, per-principle tables and sampled records)."""

from factory.report.html import write_report

__all__ = ["write_report"]

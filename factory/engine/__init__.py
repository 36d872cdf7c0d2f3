"""The engine: pipeline, runner, caller, endpoints, call log, run state and directory, stats, progress,
prices, rate limits. It never imports export, report or review (see docs/architecture.md)."""

"""The CLI commands that are more than a few lines: try, judge-check, eval, inspect."""

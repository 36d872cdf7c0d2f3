"""Human review of a finished run: `factory review RUN_DIR` (a local web app), the decisions it saves in
RUN_DIR/review.sqlite (store.py), and how every export applies them (decisions.py)."""

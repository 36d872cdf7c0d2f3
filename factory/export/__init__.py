"""Export: labelled rows (rows), cleaning (clean), the Parquet writer (writer), dataset card (card),
the hub push (hub) and merging runs (merge)."""

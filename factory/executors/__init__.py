"""Executors other than the local one. `ray_run` drives a run as shards on a Ray cluster; nothing here
imports Ray until that executor is chosen (`factory run --executor ray`)."""

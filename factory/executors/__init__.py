"""Executors: `local` runs a pipeline in this process and finishes every run (export, report); `ray_run`
and `shards` drive it as shards on a Ray cluster (nothing imports Ray until that executor is chosen);
`dispatch` picks one: the flag for a new run, the manifest for a resumed one."""

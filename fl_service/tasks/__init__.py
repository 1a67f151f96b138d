"""Built-in tasks, one module per dataset, each following the task contract of
docs/architecture.md: `load_model(cfg)`, `load_data(cfg)`, `train(model, loader, cfg, device)`,
`test(model, loader, cfg, device)`. `cfg` is a `Mapping[str, Any]` of fl_service config keys.
On a client they run inside the built-in Flower app (fl_service/apps/builtin.py), which passes
its run_config (the same key names) plus `partition_id` and `num_partitions` as `cfg`."""

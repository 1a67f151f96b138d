"""Built-in tasks, one module per dataset, each following the task contract of
docs/architecture.md: `load_model(cfg)`, `load_data(cfg)`, `train(model, loader, cfg, device)`,
`test(model, loader, cfg, device)`. `cfg` is a `Mapping[str, Any]` of fl_service config keys."""

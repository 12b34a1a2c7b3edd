"""Service glue around the pipeline: systemd notify/watchdog, health, Prometheus metrics,
``<prefix>/stats``, and config reload on SIGHUP. The pipeline never imports this package;
``Service`` attaches to it as a ``PipelineObserver`` and reads its ``status()``."""

"""The ready configs, shipped with the package: ``--config NAME`` finds them from any folder
(:func:`actgen.shards.config.resolve_config_path`); a path to a file of your own always wins."""

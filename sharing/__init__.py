"""``actgen-data``: inspect and check shard data sets that are shared between teams."""

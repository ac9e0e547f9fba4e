# Makes conf/ importable, so that config.yaml can add it to the search path as pkg://conf
# wherever the sweep is started from.

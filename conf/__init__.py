# Hydra's config folder as a package: where sweep_deployer is imported rather than run (its
# main called in-process, as tests/test_cli.py does), @hydra.main's config_path="conf" means
# the package `conf`, which Hydra loads only if it has an __init__.py.

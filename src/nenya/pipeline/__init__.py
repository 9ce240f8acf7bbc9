"""The extraction core: items, registries, storage and the runner."""

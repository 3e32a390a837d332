"""Data: corpora on disk (a registry of named ones), their one split path, byte windows and
streams, example datasets, and `pipeline.build`. Imports nothing else of the package."""

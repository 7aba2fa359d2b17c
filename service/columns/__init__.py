"""Columns: the structured World View column, its parsers and where columns come from."""

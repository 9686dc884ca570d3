"""Flatfile backend: the whole service on one machine with no database."""

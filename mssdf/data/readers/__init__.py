"""Readers for the paper datasets in their official layouts (registry added below)."""

"""Conventions as data, torch-free: model families and their encoder roles, compatibility presets, clip skip.

Every table that names a role or a family lives here once; loading, textual inversion, presets, the CLI
and the tests' model builders read it.
"""

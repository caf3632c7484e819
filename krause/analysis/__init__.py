"""Analyses behind the paper's claims: token-synchronisation and sink metrics of trained models
(`metrics`), their figures (`plots`) and the interacting-particle simulation (`particles`).

See docs/analyses.md for the definitions, thresholds and commands.
"""

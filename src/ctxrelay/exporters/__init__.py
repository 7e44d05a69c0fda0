"""Span exporters shipped with ctxrelay.

``tree``: prints each trace as an indented tree (threads, hops, queue waits, errors),
selected with ``OTEL_TRACES_EXPORTER=ctxrelay_tree``: see ``docs/configuration.md``.
"""

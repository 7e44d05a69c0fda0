"""One module per runner: each declares its wrapt patches in ``PATCHES``.

Runners import :mod:`ctxrelay.relay`, :mod:`ctxrelay.spans` and
:mod:`ctxrelay.patching`, never each other, and never import the framework they
patch at module level (it is patched when the application imports it).
"""

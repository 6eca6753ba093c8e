"""Transports: thin adapters between a wire and the session core (``server/core/``).

Each turns its wire's input into text frames for the ``Dispatcher`` and offers a
``Sink`` for the ``SessionReader``; ``ws`` is the WebSocket (``/v1/ws``).
"""

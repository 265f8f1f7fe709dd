"""Pieces shared by LAN discovery modules, so each discovery plugin depends on ``exo-core`` only.

- :mod:`exo_core.lan.netif`: this machine's IPv4 interfaces with their real netmasks, and the choice of
  interfaces from a ``--...-interfaces`` flag.
- :mod:`exo_core.lan.wire`: discovery protocol version 1, the signed frame every ``udp`` and ``tcp``
  discovery message travels in (cluster id and HMAC tag derived from the cluster key), and rate-limited
  logging of bad input.
- :mod:`exo_core.lan.peers`: :class:`~exo_core.lan.peers.LanPeerTable`, the live peers a module has heard
  from, reported to the discovery sink once per change and forgotten after a timeout.
- :mod:`exo_core.lan.testing`: test helpers for discovery modules (a recording sink, a module running in a
  child process, throwaway network namespaces); imported only by tests.

Nothing here is imported at package import time: ``import exo_core.lan`` costs nothing.
"""

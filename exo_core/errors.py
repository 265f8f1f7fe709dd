"""Exceptions shared by the core and plugins.

Every error a user can meet carries a message that says what went wrong and what to do about it.
"""

from __future__ import annotations


class ExoError(Exception):
    """Base class of every error exo raises on purpose."""


class ConfigError(ExoError):
    """A setting, flag or configuration file is invalid."""


class PluginError(ExoError):
    """A plugin could not be loaded, or registered something inconsistent."""


class UnknownComponentError(PluginError):
    """The user asked for a component (discovery module, engine, ...) that no installed plugin provides."""


class ComponentUnavailableError(PluginError):
    """A component is installed but cannot run here (missing library, unsupported platform, not built yet)."""


class NotImplementedYetError(ComponentUnavailableError):
    """The component is registered so it can be listed and selected, but its real work is not built yet."""

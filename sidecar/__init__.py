"""forestreet-sidecar: keeps a fresh Forestreet session token on disk."""

__version__ = "0.1.0"

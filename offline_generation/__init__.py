"""The offline generator."""

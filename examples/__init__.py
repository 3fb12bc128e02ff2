"""Runnable examples of cascademl."""
